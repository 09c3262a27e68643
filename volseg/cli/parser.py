"""The ``volseg`` argument parser: one subparser per command, each naming its handler."""

from __future__ import annotations

import argparse

import volseg.cli.commands as commands
import volseg.cli.predict as predict_cli
from volseg._version import __version__


def _common_options(for_subcommand: bool) -> argparse.ArgumentParser:
    """--debug and --quiet, accepted both before and after the subcommand."""
    parser = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if for_subcommand else False
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", default=default, help="only print warnings and errors")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand stores its handler in ``handler``."""
    parser = argparse.ArgumentParser(
        prog="volseg",
        description="Segment 3D and 2D medical images with U-Net-family networks.",
        parents=[_common_options(for_subcommand=False)],
    )
    parser.add_argument("--version", action="version", version=f"volseg {__version__}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    common = _common_options(for_subcommand=True)

    models = subcommands.add_parser("models", parents=[common], help="list the network architectures volseg can build")
    models.add_argument("name", nargs="?", help="describe this network: its arguments and parameter count")
    models.add_argument("--dims", type=int, default=3, help="spatial dimensions, 2 or 3 (default 3)")
    models.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    models.add_argument("--classes", type=int, default=2, help="output classes (default 2)")
    models.set_defaults(handler=commands.models_command)

    plan = subcommands.add_parser(
        "plan", parents=[common], help="propose a training config from a dataset's fingerprint"
    )
    plan.add_argument("data", help="dataset folder: MSD, nnU-Net raw, BraTS or images/ + labels/")
    plan.add_argument("-o", "--output", help="write the config YAML here (default: print it)")
    plan.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3D (default) or 2D slice network")
    plan.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="what training will run on (default cuda)"
    )
    plan.add_argument("--memory-gb", type=float, help="memory budget for training (default 8 on cuda, 4 on cpu)")
    plan.add_argument("--layout", default="auto", help="force the dataset layout (default: detect it)")
    plan.add_argument("--workers", type=int, default=2, help="processes reading cases (default 2)")
    plan.add_argument("--fingerprint", help="also write the dataset fingerprint as JSON here")
    plan.add_argument("--overwrite", action="store_true", help="replace existing output files")
    plan.set_defaults(handler=commands.plan_command)

    train = subcommands.add_parser("train", parents=[common], help="train a network from a YAML config")
    train.add_argument("config", nargs="?", help="the run's YAML config (volseg plan writes one)")
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=50"
    )
    train.add_argument("-o", "--output", help="run folder (default runs/<config name>/fold_<k>)")
    train.add_argument(
        "--fold",
        help="cross-validation fold to train; all: every fold, one after another, "
        "into RUN_DIR/fold_<k>; -1: one model on every case",
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--until-epoch", type=int, metavar="N", help="stop after epoch N (continue later with --resume)")
    train.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds a run")
    train.set_defaults(handler=commands.train_command, runtime=True)

    predict = subcommands.add_parser(
        "predict", parents=[common], help="segment volumes with a trained or bundled model"
    )
    predict.add_argument(
        "-m", "--model", required=True, help="checkpoint file or bundled model name (e.g. hippocampus)"
    )
    predict.add_argument(
        "-i", "--input", required=True, help="volume file, folder of cases, BraTS case folder or DICOM series"
    )
    predict.add_argument("-o", "--output", required=True, help="output file (one case) or folder")
    predict.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto picks CUDA when present"
    )
    predict.add_argument(
        "--backend",
        choices=("auto", "torch", "openvino"),
        help="what runs the network: torch, openvino (CPU; pip install 'volseg[openvino]') or auto: OpenVINO "
        "on the CPU where installed, else torch (default: the model's setting, usually auto)",
    )
    predict.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep networks converted for OpenVINO here (default: $VOLSEG_CACHE_DIR, else ~/.cache/volseg/openvino)",
    )
    predict.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model's, usually 0.5)")
    predict.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirror test-time augmentation (default: on with CUDA, off on CPU)",
    )
    predict.add_argument(
        "--batch",
        metavar="N|auto",
        help="windows per network call; auto: as many as fit in memory (default: the model's)",
    )
    predict.add_argument("--save-probabilities", action="store_true", help="also write class probabilities (4D)")
    predict.add_argument(
        "--uncertainty",
        nargs="?",
        const="entropy",
        choices=("entropy", "tta-variance"),
        help="also write a voxel-wise uncertainty map (default entropy)",
    )
    predict.add_argument(
        "--largest-component",
        action="store_true",
        help="keep each label's (region models: each region's) largest connected component",
    )
    predict.add_argument(
        "--min-size",
        type=float,
        metavar="ML",
        help="remove connected components smaller than ML millilitres, per label or region",
    )
    predict.add_argument(
        "--mask-nonzero",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="background wherever every input channel is 0 (default: the model's setting)",
    )
    predict.add_argument("--stats", action="store_true", help="print and write per-label volumes and component counts")
    predict.add_argument(
        "--preview", action="store_true", help="write a PNG of three orthogonal slices with the labels"
    )
    predict.add_argument(
        "--format",
        default="nifti",
        metavar="FORMATS",
        help="output formats, comma-separated (e.g. nifti,dicom-seg,seg-nrrd): nifti (.nii.gz, default) or "
        "same (the input's own where volseg writes it: NIfTI, NIfTI pairs, MGH/MGZ, NRRD, MHA, MINC as "
        "MINC 2, else NIfTI) for the label file, which is always written; dicom-seg (<name>.dcm, a DICOM "
        "Segmentation of the input's DICOM series or --reference-dicom; needs volseg[dicom]); seg-nrrd "
        "(<name>_segmentation.seg.nrrd, a 3D Slicer segmentation)",
    )
    predict.add_argument(
        "--reference-dicom",
        metavar="SERIES_DIR",
        help="for --format dicom-seg of an input that is not a DICOM series: the series it was made from (same grid)",
    )
    predict.add_argument(
        "--strict",
        action="store_true",
        help="refuse inputs with NaN/Inf voxels (default: replace them by 0, or the image minimum "
        "for a CT model, with a warning) and inputs unlike the model's training scans: another modality "
        "(CT/MRI), field of view or voxel spacing (default: a warning each)",
    )
    predict.add_argument(
        "--fast",
        action="store_true",
        help="fewer network evaluations: no mirroring, overlap 0.25 (docs/performance.md has its speed and accuracy)",
    )
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument(
        "--report",
        metavar="PATH",
        help="the run report's JSON (default OUTPUT/report.json for a folder run); report.html, a QC page, "
        "and report_previews/ go beside it",
    )
    predict.add_argument("--no-report", action="store_true", help="write no run report")
    predict.add_argument(
        "--shard", metavar="I/N", help="segment only shard I of N of a folder's cases (job arrays; balanced by size)"
    )
    predict.set_defaults(handler=predict_cli.predict_command, runtime=True)

    evaluate = subcommands.add_parser("evaluate", parents=[common], help="compare predictions with reference labels")
    evaluate.add_argument("prediction", help="predicted label file or folder")
    evaluate.add_argument("reference", help="reference label file or folder")
    structures = evaluate.add_mutually_exclusive_group()
    structures.add_argument("--labels", help="label values to score, e.g. 1,2 (default: every non-zero value)")
    structures.add_argument(
        "--regions", help="named regions: brats (2018-2021 or 2023+ from the labels), brats2021, brats2023"
    )
    evaluate.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    evaluate.add_argument("-o", "--output", help="write a CSV report (per case and summary)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing report")
    evaluate.set_defaults(handler=commands.evaluate_command)

    evaluate_run = subcommands.add_parser(
        "evaluate-run", parents=[common], help="predict and score a run's held-out cases (per label or region)"
    )
    evaluate_run.add_argument("run_dir", help="a run folder, or a cross-validation folder of fold_<k> runs")
    evaluate_run.add_argument("-o", "--output", help="output folder (default RUN_DIR/evaluation)")
    evaluate_run.add_argument(
        "--checkpoint",
        default="best.pt",
        choices=["best.pt", "last.pt"],
        help="best.pt (chosen on the validation cases; default) or last.pt",
    )
    evaluate_run.add_argument("--no-mirroring", action="store_true", help="no mirrored test-time augmentation")
    evaluate_run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    evaluate_run.add_argument("--overwrite", action="store_true", help="replace an evaluation made with other settings")
    evaluate_run.set_defaults(handler=commands.evaluate_run_command, runtime=True)

    quantize = subcommands.add_parser(
        "quantize",
        parents=[common],
        help="add an int8 OpenVINO network to a model, refused if it loses Dice on held-out cases",
    )
    quantize.add_argument("model", help="checkpoint file or bundled model name")
    quantize.add_argument(
        "--calibration", required=True, metavar="DATA", help="dataset folder (any layout volseg trains on)"
    )
    quantize.add_argument("-o", "--output", required=True, help="the quantized checkpoint (.pt) to write")
    quantize.add_argument(
        "--validation",
        metavar="DATA2",
        help="dataset whose cases check the Dice (default: the cases of DATA not used for calibration)",
    )
    quantize.add_argument(
        "--max-drop",
        type=float,
        default=0.005,
        help="largest mean Dice drop allowed for any label or region (default 0.005)",
    )
    quantize.add_argument(
        "--calibration-cases", type=int, metavar="N", help="cases to calibrate on (default: half of DATA, at most 8)"
    )
    quantize.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    quantize.set_defaults(handler=commands.quantize_command, runtime=True)

    info = subcommands.add_parser("info", parents=[common], help="show what a checkpoint contains")
    info.add_argument("model", help="checkpoint file or bundled model name")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=commands.info_command)

    export = subcommands.add_parser(
        "export", parents=[common], help="export a model to ONNX, TorchScript, OpenVINO IR or a MONAI bundle"
    )
    export.add_argument("model", help="checkpoint file or bundled model name")
    export.add_argument(
        "--format",
        choices=("onnx", "torchscript", "openvino", "monai-bundle"),
        default="onnx",
        help="default onnx; openvino: model.xml + model.bin (the int8 network of a quantized model); "
        "monai-bundle: a bundle folder that `python -m monai.bundle run` executes",
    )
    export.add_argument("-o", "--output", required=True, help="output folder")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.set_defaults(handler=commands.export_command)
    return parser
