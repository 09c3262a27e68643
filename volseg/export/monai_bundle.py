"""Export a checkpoint as a MONAI bundle that MONAI's own runner executes.

The folder follows MONAI's bundle layout::

    DIR/configs/metadata.json    what the network takes and gives (MONAI's metadata fields)
    DIR/configs/inference.json   network, preprocessing, sliding-window inferer, postprocessing, run
    DIR/models/model.pt          the weights (a state dict, float32)
    DIR/models/model.ts          the network as TorchScript, so the bundle runs with MONAI alone
    DIR/LICENSE, DIR/docs/README.md

``inference.json`` loads ``model.ts`` and then the weights of ``model.pt`` into it (a bundle
fine-tuned elsewhere only needs a new ``model.pt``). Every step is a MONAI transform with the
settings volseg uses itself (reorientation, crop to the non-zero box, resampling, intensity
normalisation; Gaussian-blended sliding window; inversion of the spatial steps on the
probabilities, then argmax or region decoding), so its labels agree with ``volseg predict``
without mirroring. Run it with::

    python -m monai.bundle run --config_file DIR/configs/inference.json \\
        --dataset_dir IN_FOLDER --output_dir OUT_FOLDER

Single-channel models segment every ``*.nii``/``*.nii.gz`` file of ``dataset_dir``;
multi-channel models every case folder in it, channel ``k`` from the file ending in
``_<channel k>.nii.gz`` (BraTS naming). Override ``datalist`` for other layouts.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volseg._version import __version__
from volseg.checkpoint import check_checkpoint, checkpoint_config, checkpoint_label_space, model_from_checkpoint
from volseg.config import Config
from volseg.data.label_space import LabelSpace
from volseg.errors import ConfigError, OutputError, OutputExistsError
from volseg.export.describe import channel_names, default_roi_size
from volseg.export.traced import export_model
from volseg.inference.sliding_window import SIGMA_SCALE
from volseg.io.atomic import atomic_target, write_text

logger = logging.getLogger(__name__)

BUNDLE_FILES = (
    "configs/metadata.json",
    "configs/inference.json",
    "models/model.pt",
    "models/model.ts",
    "LICENSE",
    "docs/README.md",
)
_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"


def export_monai_bundle(
    checkpoint: dict[str, Any], out_dir: str | os.PathLike, *, name: str = "volseg_model", overwrite: bool = False
) -> list[Path]:
    """Write a MONAI bundle of ``checkpoint`` into ``out_dir``; returns the files written.

    Raises :class:`OutputExistsError` for existing bundle files unless ``overwrite`` and
    :class:`ConfigError` for a network whose output is smaller than its input window (a
    valid-convolution U-Net: MONAI's sliding window needs outputs of the window's size).
    """
    checkpoint, out_dir = check_checkpoint(checkpoint), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"cannot export into '{out_dir}': it is a file, not a folder")
    paths = [out_dir / relative for relative in BUNDLE_FILES]
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"'{path}' exists; pass --overwrite to replace it")
    config, space = checkpoint_config(checkpoint), checkpoint_label_space(checkpoint)
    if config.network.spatial_dims != 3:
        raise ConfigError(
            f"network.spatial_dims={config.network.spatial_dims}: a MONAI bundle runs its sliding window over "
            "the 3D volume, so only 3D networks can be exported as one (volseg predict runs 2D ones slice by slice)"
        )
    model = model_from_checkpoint(checkpoint)
    roi = [int(r) for r in default_roi_size(config)]
    if list(model.output_shape(tuple(roi))) != roi:
        raise ConfigError(
            f"the {model.config.get('name')} network's output {list(model.output_shape(tuple(roi)))} is smaller "
            f"than its window {roi}; MONAI's sliding window needs a network whose output has the window's size"
        )
    models_dir = out_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    _, traced_json = export_model(checkpoint, models_dir, fmt="torchscript", roi_size=roi, overwrite=True)
    dynamic = json.loads(traced_json.read_text())["model"]["dynamic_axes"]
    traced_json.unlink()  # the bundle's own metadata.json describes the network
    with atomic_target(out_dir / "models/model.pt") as temporary:
        torch.save({k: v.float() for k, v in model.state_dict().items()}, temporary)
    batch = config.inference.sw_batch_size  # "auto" (volseg sizes it to memory): MONAI takes a number
    batch = (batch if isinstance(batch, int) else 2) if "batch" in dynamic else 1
    channels = channel_names(config, model.in_channels)
    inference = inference_config(config, space, roi, channels, sw_batch_size=int(batch))
    write_text(out_dir / "configs/inference.json", json.dumps(inference, indent=2) + "\n")
    metadata = metadata_config(checkpoint, config, space, roi, channels, name=name)
    write_text(out_dir / "configs/metadata.json", json.dumps(metadata, indent=2) + "\n")
    write_text(out_dir / "LICENSE", _licence_text())
    write_text(out_dir / "docs/README.md", _readme(name, config, space, channels, roi))
    logger.info("exported a MONAI bundle of %s into %s", model.config.get("name"), out_dir)
    return paths


# ----------------------------------------------------------------------------- inference.json


def _preprocessing(config: Config, channels: list[str]) -> list[dict[str, Any]]:
    """MONAI transforms equal to volseg's inference preprocessing (volseg.data.preprocess)."""
    pre = config.preprocessing
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, "ensure_channel_first": True},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        *_nonzero_mask(config),
        {"_target_": "Orientationd", "keys": "image", "axcodes": pre.orientation.upper(), "labels": None},
    ]
    if pre.crop_foreground:  # the non-zero box; everything when the image is all zeros
        steps.append(
            {
                "_target_": "CropForegroundd",
                "keys": "image",
                "source_key": "image",
                "select_fn": "$lambda x: (x != 0) if bool((x != 0).any()) else torch.ones_like(x, dtype=torch.bool)",
                "allow_smaller": True,
            }
        )
    if pre.spacing is not None:
        steps.append(
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [float(s) for s in pre.spacing],
                "mode": "bilinear",
                "dtype": "$torch.float32",  # volseg's precision: float64 moves near-zero voxels and so the z-score mask
            }
        )
    if pre.intensity == "mri":
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    elif pre.intensity == "ct":
        (lo, hi), mean, std = pre.clip, pre.mean, pre.std
        steps.append(
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": float(lo),
                "a_max": float(hi),
                "b_min": (float(lo) - mean) / std,
                "b_max": (float(hi) - mean) / std,
                "clip": True,
            }
        )
    return steps


def _nonzero_mask(config: Config) -> list[dict[str, Any]]:
    """With ``inference.mask_nonzero``: ``nonzero`` (1, *S_in), where any input channel is not 0."""
    if not config.inference.mask_nonzero:
        return []
    return [
        {"_target_": "CopyItemsd", "keys": "image", "times": 1, "names": "nonzero"},
        {"_target_": "Lambdad", "keys": "nonzero", "func": "$lambda x: (x != 0).any(0, keepdim=True)"},
    ]


def _decoding(space: LabelSpace) -> list[dict[str, Any]]:
    """From probabilities on the input grid ``(K, *S)`` to the label map ``(1, *S)`` of label values."""
    if space.regions:
        weights = [float(2**r) for r in range(len(space.regions))]
        return [
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            {  # region-membership code: bit r set where region r is present
                "_target_": "Lambdad",
                "keys": "pred",
                "func": f"$lambda x: (x * torch.tensor({weights}).view(-1, *[1] * (x.ndim - 1))).sum(0, keepdim=True)",
            },
            {
                "_target_": "MapLabelValued",
                "keys": "pred",
                "orig_labels": list(range(2 ** len(space.regions))),
                "target_labels": space.region_lookup(),
            },
        ]
    steps: list[dict[str, Any]] = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    if space.values != list(range(len(space.values))):
        steps.append(
            {
                "_target_": "MapLabelValued",
                "keys": "pred",
                "orig_labels": list(range(len(space.values))),
                "target_labels": space.values,
            }
        )
    return steps


def _datalist(channels: list[str]) -> str:
    if len(channels) == 1:
        return "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))]"
    return (
        "$[{'image': [sorted(glob.glob(os.path.join(case, '*_' + c + '.nii*')))[0] for c in @channels]} "
        "for case in sorted(glob.glob(os.path.join(@dataset_dir, '*'))) if os.path.isdir(case)]"
    )


def inference_config(
    config: Config, space: LabelSpace, roi: list[int], channels: list[str], *, sw_batch_size: int = 1
) -> dict[str, Any]:
    """The ``configs/inference.json`` of a bundle (MONAI's config syntax: ``_target_``, ``@ref``, ``$expr``)."""
    dtype = "uint8" if max(space.values) < 256 else "int16"
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "input",
        "output_dir": "$@bundle_root + '/eval'",
        "channels": [c.lower() for c in channels],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "datalist": _datalist(channels),
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": "$@network_def.eval()",
        "load_weights": (
            "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', "
            "map_location=@device, weights_only=True))"
        ),
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(config, channels)},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": roi,
            "sw_batch_size": sw_batch_size,
            "overlap": float(config.inference.overlap),
            "mode": "gaussian" if config.inference.blend == "gaussian" else "constant",
            "sigma_scale": SIGMA_SCALE,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "Activationsd",
                    "keys": "pred",
                    **({"sigmoid": True} if space.regions else {"softmax": True}),
                },
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                *_decoding(space),
                *(
                    [{"_target_": "MaskIntensityd", "keys": "pred", "mask_key": "nonzero"}]
                    if config.inference.mask_nonzero
                    else []
                ),
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": f"$numpy.{dtype}",
                    "resample": False,
                    "separate_folder": False,
                    "print_log": False,
                },
            ],
        },
        "predict": (
            "$lambda d: @postprocessing({**d, 'pred': @inferer(d['image'][None].to(@device), @network)[0].cpu()})"
        ),
        "initialize": ["$torch.set_grad_enabled(False)", "$@load_weights"],
        "run": ["$[@predict(d) for d in @dataset]"],
    }


# ----------------------------------------------------------------------------- metadata.json, docs


def metadata_config(
    checkpoint: dict[str, Any], config: Config, space: LabelSpace, roi: list[int], channels: list[str], *, name: str
) -> dict[str, Any]:
    """The ``configs/metadata.json`` of a bundle: versions, task and the network's data format."""
    import monai

    intensity = "CT (Hounsfield units)" if config.preprocessing.intensity == "ct" else "MRI"
    outputs = space.output_names if space.regions else [space.labels[v] for v in space.values]
    return {
        "schema": _SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by volseg {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "name": name,
        "task": f"segmentation of {', '.join(space.label_names.values())}",
        "description": f"A {config.network.name} network trained with volseg {checkpoint.get('volseg_version')}.",
        "authors": "volseg",
        "copyright": "see LICENSE",
        "data_source": str(config.data.root),
        "data_type": "nibabel",
        "image_classes": ", ".join(channels),
        "label_classes": json.dumps({str(v): n for v, n in space.labels.items()}),
        "pred_classes": json.dumps({str(v): n for v, n in space.labels.items()}),
        "intended_use": "research only; not for clinical diagnosis",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": intensity,
                    "num_channels": len(channels),
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): c for i, c in enumerate(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "probabilities" if space.regions else "segmentation",
                    "num_channels": space.num_outputs,
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): n for i, n in enumerate(outputs)},
                }
            },
        },
        "volseg": {"version": __version__, "platform": platform.platform(), "metrics": checkpoint.get("metrics")},
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _licence_text() -> str:
    return (
        "The bundle's configuration files were written by volseg (Apache License 2.0).\n\n"
        "The network weights (models/model.pt, models/model.ts) are derived from the data the model\n"
        "was trained on and carry that data's terms; see docs/README.md for the training data.\n"
    )


def _readme(name: str, config: Config, space: LabelSpace, channels: list[str], roi: list[int]) -> str:
    labels = "\n".join(f"| {v} | {n} |" for v, n in space.labels.items())
    return f"""# {name}

A {config.network.name} segmentation network exported from volseg {__version__} as a MONAI bundle.

- Input: {len(channels)} channel(s) ({", ".join(channels)}), NIfTI; reoriented to
  {config.preprocessing.orientation}, resampled to {config.preprocessing.spacing} mm,
  normalised as volseg's `{config.preprocessing.intensity}` preset.
- Sliding window {roi} voxels, overlap {config.inference.overlap}, Gaussian blending.
- Output: a label map on the input's grid, `<case>_seg.nii.gz`.
- Training data: `{config.data.root}`.

| value | label |
|---|---|
{labels}

Run:

```
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir INPUT_FOLDER --output_dir OUTPUT_FOLDER
```
"""
