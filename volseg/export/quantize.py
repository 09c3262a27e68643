"""Post-training int8 quantization of a checkpoint's network, refused when it costs Dice.

1. **Calibration windows.** The float32 OpenVINO network segments calibration cases through the
   Predictor (the same preprocessing and sliding window as ``volseg predict``); a recorder on its
   runner keeps an even, seeded sample of the windows it is given (:class:`WindowSample`).
2. **Quantization.** NNCF quantizes the converted network (batch axis dynamic) on those windows.
3. **The guard.** Held-out cases (cases of the calibration dataset not used for calibration, or
   those of a validation dataset) are segmented with both networks and scored as ``evaluate-run``
   scores (:func:`volseg.metrics.evaluate_files`, per label or region of the label space). If the
   mean Dice of any structure drops by more than ``max_drop``, :class:`AccuracyError` is raised
   and nothing is returned to write.
4. **The result** is the checkpoint without training state, its float32 weights kept, plus the
   int8 IR and what calibrated and checked it (``checkpoint["openvino"]``):
   ``volseg predict`` runs the int8 network on the CPU (backend auto or openvino).
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from volseg.checkpoint import (
    check_checkpoint,
    checkpoint_config,
    checkpoint_label_space,
    inference_only,
    model_from_checkpoint,
)
from volseg.data.datasets import Case, find_cases
from volseg.data.label_space import BRATS_ENHANCING, LabelSpace
from volseg.errors import AccuracyError, ConfigError, InputFileError
from volseg.inference.inputs import PredictionInput
from volseg.inference.openvino_runner import (
    CHECKPOINT_KEY,
    INSTALL_HINT,
    OpenVINOModel,
    checkpoint_entry,
    load_openvino,
)
from volseg.inference.predictor import Predictor
from volseg.inference.segment import OutputOptions, read_channels, segment_case
from volseg.metrics import evaluate_files

#: Calibration windows kept (NNCF's default subset is 300; a BraTS window is 4 MB of float32).
CALIBRATION_WINDOWS = 128
#: Calibration cases by default: half of the dataset when it also gives the held-out cases, at most this.
CALIBRATION_CASES = 8
#: Held-out cases scored by default (each is segmented twice).
VALIDATION_CASES = 16
SEED = 0

#: ``on_case(stage, case_id, index, total)``, stage "calibration" or "validation".
CaseCallback = Callable[[str, str, int, int], None]


@dataclass
class QuantizationResult:
    """The checkpoint to write and the guard's report (:func:`format_report`)."""

    checkpoint: dict[str, Any]
    report: dict[str, Any]


class WindowSample:
    """A runner recorder keeping ``size`` windows (C, *roi) drawn evenly from all it is given
    (reservoir sampling, seeded)."""

    def __init__(self, size: int, seed: int = SEED) -> None:
        self.size, self.seen, self.windows = size, 0, []
        self._random = random.Random(seed)

    def __call__(self, batch: torch.Tensor) -> None:
        for window in batch:
            self.seen += 1
            if len(self.windows) < self.size:
                self.windows.append(window.numpy().copy())
            else:
                slot = self._random.randrange(self.seen)
                if slot < self.size:
                    self.windows[slot] = window.numpy().copy()


def quantize_checkpoint(
    checkpoint: dict[str, Any],
    calibration: str | Path,
    *,
    validation: str | Path | None = None,
    max_drop: float = 0.005,
    calibration_cases: int | None = None,
    validation_cases: int = VALIDATION_CASES,
    windows: int = CALIBRATION_WINDOWS,
    on_case: CaseCallback | None = None,
) -> QuantizationResult:
    """The checkpoint with an int8 OpenVINO network calibrated on ``calibration`` (a dataset folder
    in any layout volseg trains on), after checking it on held-out cases (see the module doc).

    Raises :class:`AccuracyError` when a label or region loses more than ``max_drop`` mean Dice,
    :class:`ConfigError` without OpenVINO/NNCF, for a checkpoint that is already quantized or
    for too few cases.
    """
    nncf = _load_nncf()
    if not math.isfinite(max_drop):
        raise ConfigError(f"max_drop={max_drop} is not valid; allowed: a finite Dice difference, e.g. 0.005")
    checkpoint = check_checkpoint(checkpoint)
    if CHECKPOINT_KEY in checkpoint:
        raise ConfigError("this checkpoint already holds an int8 network; quantize the model it was made from")
    calibrate_on, check_on, layout = _split_cases(calibration, validation, calibration_cases, validation_cases)
    config, space = checkpoint_config(checkpoint), checkpoint_label_space(checkpoint)
    network = model_from_checkpoint(checkpoint)
    options = dict(device="cpu", backend="openvino", tta=False, label_space=space)
    fp32 = Predictor(network, config, **options)

    sample = WindowSample(windows)
    fp32.runner.recorders.append(sample)
    for index, case in enumerate(calibrate_on, 1):
        channels, _ = read_channels(
            PredictionInput(case.case_id, case.images), ct=config.preprocessing.intensity == "ct"
        )
        fp32.predict_volumes(channels, case_id=case.case_id)  # read as predict reads: NaN/Inf replaced
        if on_case is not None:
            on_case("calibration", case.case_id, index, len(calibrate_on))
    fp32.runner.recorders.remove(sample)
    window_shape = tuple(sample.windows[0].shape)
    int8 = quantize_network(nncf, fp32.runner.model(window_shape), sample)
    int8_predictor = Predictor(network, config, **options, openvino_model=int8)

    convention, structures = scored_structures(space, layout)
    report = score_both(fp32, int8_predictor, check_on, structures, on_case, convention=convention)
    report["max_drop"] = max_drop
    too_far = {k: v["drop"] for k, v in report["structures"].items() if v["drop"] > max_drop}
    if too_far:
        drops = ", ".join(f"{k} {v['drop']:+.4f}" for k, v in report["structures"].items())
        raise AccuracyError(
            f"int8 network refused: mean Dice drops by more than --max-drop {max_drop} on "
            f"{', '.join(too_far)} over {len(check_on)} held-out case(s) (drops: {drops}); nothing written"
        )
    details = {
        "openvino_version": load_openvino().get_version(),
        "nncf_version": nncf.__version__,
        "window_shape": list(window_shape),
        "calibration": {
            "dataset": str(calibration),
            "cases": [c.case_id for c in calibrate_on],
            "windows": len(sample.windows),
            "windows_seen": sample.seen,
        },
        "validation": {
            "dataset": str(validation or calibration),
            "cases": report["cases"],
            "fp32_dice": {k: v["fp32"] for k, v in report["structures"].items()},
            "int8_dice": {k: v["int8"] for k, v in report["structures"].items()},
            "drops": {k: v["drop"] for k, v in report["structures"].items()},
            "max_drop": max_drop,
        },
    }
    quantized_checkpoint = {**inference_only(checkpoint), CHECKPOINT_KEY: checkpoint_entry(int8, **details)}
    return QuantizationResult(quantized_checkpoint, report)


def quantize_network(nncf: Any, model: Any, sample: WindowSample) -> OpenVINOModel:
    """The int8 network NNCF makes of ``model`` (an ``openvino.Model``), calibrated on ``sample``'s windows."""
    dataset = nncf.Dataset([window[None] for window in sample.windows])  # each (1, C, *roi)
    quantized = nncf.quantize(model, dataset, subset_size=len(sample.windows))
    return OpenVINOModel.from_model(quantized, precision="int8")


def scored_structures(space: LabelSpace, layout: str) -> tuple[str | None, dict[str, list[int]]]:
    """The BraTS convention of a dataset ``layout`` (None for others) and the label space's
    structures in its label values: BraTS cases are scored in their own labels."""
    convention = layout if layout in BRATS_ENHANCING else None
    mapping = space.convention_map(convention)
    return convention, {name: [mapping.get(v, v) for v in values] for name, values in space.structures().items()}


def score_both(
    reference: Predictor,
    candidate: Predictor,
    cases: list[Case],
    structures: dict[str, list[int]],
    on_case: CaseCallback | None = None,
    *,
    convention: str | None = None,
) -> dict[str, Any]:
    """Mean Dice per structure of both predictors over ``cases``, and its drop (reference - candidate).
    ``convention``: the BraTS label convention the cases' labels use (the predictions are written
    in it, and ``structures`` name its values)."""
    totals = {name: {"fp32": 0.0, "int8": 0.0} for name in structures}
    with tempfile.TemporaryDirectory(prefix="volseg-quantize-") as folder:
        for index, case in enumerate(cases, 1):
            for key, predictor in (("fp32", reference), ("int8", candidate)):
                labels_path = Path(folder) / key / f"{case.case_id}.nii.gz"
                case_input = PredictionInput(case.case_id, case.images, convention)
                segment_case(predictor, case_input, labels_path, OutputOptions(overwrite=True))
                metrics = evaluate_files(labels_path, case.label, regions=structures)
                for name in structures:
                    totals[name][key] += metrics[name]["dice"]
            if on_case is not None:
                on_case("validation", case.case_id, index, len(cases))
    rows = {}
    for name, sums in totals.items():
        fp32, int8 = sums["fp32"] / len(cases), sums["int8"] / len(cases)
        rows[name] = {"fp32": fp32, "int8": int8, "drop": fp32 - int8}
    return {"cases": [c.case_id for c in cases], "structures": rows}


def format_report(report: dict[str, Any]) -> str:
    """The guard's table: mean Dice per structure, float32 and int8, and the drop."""
    lines = [
        f"{len(report['cases'])} held-out case(s); mean Dice, limit of the drop {report.get('max_drop')}",
        f"{'structure':<14} {'float32':>8} {'int8':>8} {'drop':>8}",
    ]
    for name, row in report["structures"].items():
        lines.append(f"{name:<14} {row['fp32']:>8.4f} {row['int8']:>8.4f} {row['drop']:>+8.4f}")
    return "\n".join(lines)


def _split_cases(
    calibration: str | Path, validation: str | Path | None, calibration_cases: int | None, validation_cases: int
) -> tuple[list[Case], list[Case], str]:
    """(calibration cases, held-out cases, the held-out dataset's layout): from ``calibration``
    alone, a seeded shuffle split (half, at most :data:`CALIBRATION_CASES`, calibrates); else
    every case of ``calibration`` may calibrate and ``validation``'s cases are held out."""
    if calibration_cases is not None and calibration_cases < 1:
        raise ConfigError(f"calibration_cases={calibration_cases} is not valid; allowed: 1 or more")
    if validation_cases < 1:
        raise ConfigError(f"validation_cases={validation_cases} is not valid; allowed: 1 or more")
    dataset = find_cases(calibration)
    cases = list(dataset.cases)
    if not cases:
        raise InputFileError(f"--calibration {calibration}: no labelled cases found")
    random.Random(SEED).shuffle(cases)
    if validation is not None:
        count = min(calibration_cases or CALIBRATION_CASES, len(cases))
        other = find_cases(validation)
        held_out = list(other.cases)
        if not held_out:
            raise InputFileError(f"--validation {validation}: no labelled cases found")
        return cases[:count], held_out[:validation_cases], other.layout
    count = calibration_cases or min(CALIBRATION_CASES, len(cases) // 2)
    if count < 1 or count >= len(cases):
        raise ConfigError(
            f"--calibration {calibration} has {len(cases)} labelled case(s): too few to calibrate on "
            f"{count or 1} and hold out the rest; give --validation DATA2 or use fewer calibration cases"
        )
    return cases[:count], cases[count:][:validation_cases], dataset.layout


def _load_nncf() -> Any:
    load_openvino("volseg quantize")
    try:
        import nncf
    except ImportError:
        raise ConfigError(f"volseg quantize needs NNCF, which is not installed: {INSTALL_HINT}") from None
    return nncf
