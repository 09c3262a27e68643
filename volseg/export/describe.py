"""What a checkpoint holds, for people (``volseg info``) and for other runtimes (``model.json``).

``model.json`` sits beside every exported network: everything needed to run it without volseg
(channel order, label values, activation, preprocessing with its statistics, window size,
tensor layout and axis convention).
"""

from __future__ import annotations

import datetime
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from volseg._version import __version__
from volseg.checkpoint import check_checkpoint, checkpoint_config, checkpoint_label_space, model_from_checkpoint
from volseg.config import Config
from volseg.data.label_space import LabelSpace
from volseg.errors import VolsegError
from volseg.inference.openvino_runner import CHECKPOINT_KEY
from volseg.inference.sliding_window import SIGMA_SCALE
from volseg.nn import SegmentationNetwork
from volseg.nn.registry import model_entry, to_json

EXPORT_FORMAT = "volseg-export"
EXPORT_FORMAT_VERSION = 1
#: The network file of each export format.
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts", "openvino": "model.xml"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
_NETWORK_KEYS = ("name", "spatial_dims", "in_channels", "num_classes")

logger = logging.getLogger(__name__)


def describe_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able summary of a checkpoint: versions, network, inputs, outputs, preprocessing,
    inference defaults, metrics, training state and weights dtype."""
    checkpoint = check_checkpoint(checkpoint)
    config = checkpoint_config(checkpoint)
    network = dict(checkpoint["network"])
    # Built on the CPU: on the meta device torch's first random init costs a second.
    parameters = sum(p.numel() for p in model_from_checkpoint(checkpoint).parameters())
    training = checkpoint.get("training")
    return {
        "format": checkpoint["format"],
        "format_version": checkpoint["format_version"],
        "volseg_version": checkpoint.get("volseg_version"),
        "created": checkpoint.get("created"),
        "network": {
            "name": network.get("name"),
            "parameters": int(parameters),
            "arguments": {k: v for k, v in network.items() if k not in _NETWORK_KEYS},
        },
        "spatial_dims": network.get("spatial_dims"),
        "input_channels": channel_names(config, network.get("in_channels", 1)),
        "outputs": _outputs(checkpoint_label_space(checkpoint), network.get("num_classes")),
        "preprocessing": _preprocessing(config),
        "inference": _inference(config, default_roi_size(config)),
        "training_patch_size": list(config.sampling.patch_size),
        "metrics": _plain(checkpoint.get("metrics") or {}),
        "training_state": training is not None,
        "epoch": _plain(training.get("epoch")) if isinstance(training, dict) else None,
        "weights_dtype": weights_dtype(checkpoint["state_dict"]),
        "openvino": _openvino(checkpoint.get(CHECKPOINT_KEY)),
        "fingerprint": _plain(checkpoint.get("fingerprint")),
    }


def format_description(description: dict[str, Any]) -> str:
    """:func:`describe_checkpoint`'s summary as aligned ``key: value`` lines."""
    d = description
    net, out, pre, inf = d["network"], d["outputs"], d["preprocessing"], d["inference"]
    arguments = ", ".join(f"{k}={v}" for k, v in _non_default(net["name"], net["arguments"]).items()) or "defaults"
    if out["activation"] == "sigmoid":
        structures = "; ".join(f"{name}={values}" for name, values in out["regions"].items())
        outputs = f"sigmoid, {len(out['regions'])} regions: {structures}"
    else:
        outputs = f"softmax, {len(out['labels'])} labels: " + ", ".join(f"{v} {n}" for v, n in out["labels"].items())
    intensity = pre["intensity"]["preset"]
    if intensity == "ct":
        stats = pre["intensity"]
        intensity += f" (clip {stats['clip']}, mean {stats['mean']:.4g}, std {stats['std']:.4g})"
    spacing = "x".join(f"{s:g}" for s in pre["spacing"]) + " mm" if pre["spacing"] else "native"
    metrics = ", ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in d["metrics"].items()) or "-"
    state = f"yes (epoch {d['epoch']})" if d["training_state"] else "no (inference only)"
    rows = [
        ("format", f"{d['format']} v{d['format_version']}, volseg {d['volseg_version']}"),
        ("created", d["created"] or "?"),
        ("network", f"{net['name']} {d['spatial_dims']}D, {net['parameters']:,} parameters"),
        ("arguments", arguments),
        ("inputs", f"{len(d['input_channels'])} channels: " + ", ".join(d["input_channels"])),
        ("outputs", outputs),
        ("preprocessing", f"{pre['orientation']}, spacing {spacing}, intensity {intensity}"),
        (
            "inference",
            f"roi {'x'.join(map(str, inf['roi_size']))}, overlap {inf['overlap']}, {inf['blend']} blend, "
            f"TTA flips {inf['tta_flips'] or 'none'}",
        ),
        ("metrics", metrics),
        ("training state", state),
        ("weights", d["weights_dtype"] + _openvino_text(d.get("openvino"))),
        ("trained on", _fingerprint_text(d.get("fingerprint"))),
    ]
    width = max(len(key) for key, _ in rows) + 2
    return "\n".join(f"{key + ':':<{width}}{value}" for key, value in rows)


def _fingerprint_text(fingerprint: dict[str, Any] | None) -> str:
    """``"166 cases, MRI; spacing 1-1 x 1-1 x 1-1 mm; field of view 31-43 x 40-59 x 24-47 mm"``."""
    if not fingerprint:
        return "not recorded (inputs are not compared with the training scans)"

    def ranges(values: list[list[float]]) -> str:
        return " x ".join(f"{low:g}-{high:g}" for low, high in values)

    modalities = ", ".join(sorted({str(c.get("modality") or "unknown modality") for c in fingerprint["channels"]}))
    return (
        f"{fingerprint['cases']} cases, {modalities}; spacing {ranges(fingerprint['spacing'])} mm; "
        f"field of view {ranges(fingerprint['field_of_view'])} mm ({fingerprint['orientation']} axes)"
    )


def _openvino(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The OpenVINO network a checkpoint carries (``volseg quantize``): everything but the IR itself."""
    if not isinstance(entry, dict):
        return None
    return _plain({k: v for k, v in entry.items() if k not in ("xml", "weights")})


def _openvino_text(summary: dict[str, Any] | None) -> str:
    if not summary:
        return ""
    text = f"; OpenVINO {summary.get('precision')} network"
    drops = (summary.get("validation") or {}).get("drops")
    if drops:
        worst = max(drops, key=lambda k: drops[k] if drops[k] is not None else float("-inf"))
        text += f" (largest Dice drop {drops[worst]:+.4f} on {worst}, limit {summary['validation'].get('max_drop')})"
    return text + " for --backend openvino/auto on the CPU"


def _non_default(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The network arguments that differ from the registered network's defaults."""
    try:
        entry = model_entry(name)
    except VolsegError:
        return arguments
    defaults = {k: p.default for k, p in inspect.signature(entry.builder).parameters.items()}
    defaults.update(entry.defaults)
    return {k: v for k, v in arguments.items() if to_json(defaults.get(k, inspect.Parameter.empty)) != v}


def weights_dtype(state_dict: dict[str, torch.Tensor]) -> str:
    """ "fp32", "fp16", "bf16" (or e.g. "mixed (fp16, fp32)") from the floating tensors."""
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
    found = sorted({names.get(t.dtype, str(t.dtype)) for t in state_dict.values() if t.is_floating_point()})
    return (found[0] if len(found) == 1 else f"mixed ({', '.join(found)})") if found else "none"


def default_roi_size(config: Config) -> list[int]:
    """The inference window: ``inference.roi_size``, else the training patch size."""
    return list(config.inference.roi_size or config.sampling.patch_size)


def channel_names(config: Config, in_channels: int) -> list[str]:
    """Input channel names in network order (``channel0``, ... when the config names none)."""
    names = list(config.data.channels)
    if len(names) != in_channels:
        if names:
            logger.warning("config names %d channels (%s) but the network takes %d", len(names), names, in_channels)
        names = ["image"] if in_channels == 1 else [f"channel{i}" for i in range(in_channels)]
    return names


def _outputs(space: LabelSpace, num_outputs: int | None) -> dict[str, Any]:
    outputs: dict[str, Any] = {"activation": space.activation}
    if space.regions:
        outputs["regions"] = {k: list(v) for k, v in space.regions.items()}
    if num_outputs is not None and num_outputs != space.num_outputs:
        logger.warning("the network has %d outputs but the config describes %d", num_outputs, space.num_outputs)
    return {**outputs, "labels": {str(v): n for v, n in space.labels.items()}, "num_outputs": num_outputs}


def _inference(config: Config, roi: Sequence[int]) -> dict[str, Any]:
    inference = config.inference
    return {
        "roi_size": list(roi),
        "overlap": inference.overlap,
        "blend": inference.blend,
        "sw_batch_size": inference.sw_batch_size,
        "tta_flips": list(inference.tta_flips),
        "mask_nonzero": inference.mask_nonzero,
        "mask_nonzero_rule": "background wherever every input channel is 0 (on the input grid)",
    }


def _preprocessing(config: Config) -> dict[str, Any]:
    pre = config.preprocessing
    intensity: dict[str, Any] = {"preset": pre.intensity}
    if pre.intensity == "ct":
        intensity.update(
            clip=list(pre.clip or []), mean=pre.mean, std=pre.std, rule="x = (clip(x, clip[0], clip[1]) - mean) / std"
        )
    elif pre.intensity == "mri":
        intensity["rule"] = "per case and channel: z-score over the non-zero voxels; zero voxels stay 0"
    return {
        "order": ["orientation", "crop_foreground", "spacing (linear)", "intensity"],
        "orientation": pre.orientation.upper(),
        "crop_foreground": pre.crop_foreground,
        "spacing": list(pre.spacing) if pre.spacing else None,
        "intensity": intensity,
    }


def _plain(value: Any) -> Any:
    """Tensors, arrays and numpy scalars as JSON values; non-finite floats as None."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def export_description(
    checkpoint: dict[str, Any],
    config: Config,
    model: SegmentationNetwork,
    roi: tuple[int, ...],
    *,
    fmt: str,
    dynamic: Sequence[str],
    opset: int | None,
) -> dict[str, Any]:
    """The ``model.json`` of an export: how to feed the network and read its output without volseg."""
    spatial = model.spatial_dims
    tile = model.output_shape(roi)
    context = [(r - t) // 2 for r, t in zip(roi, tile)]
    spatial_names = [f"spatial{i}" if "spatial" in dynamic else r for i, r in enumerate(roi)]
    batch = "batch" if "batch" in dynamic else 1
    orientation = config.preprocessing.orientation.upper()
    space = checkpoint_label_space(checkpoint)
    outputs = _outputs(space, model.num_classes)
    if not space.regions:
        outputs["channels"] = [{"index": i, "label": v, "name": space.labels[v]} for i, v in enumerate(space.values)]
        outputs["decode"] = "label map = channels[argmax over axis 1].label"
    else:
        outputs["channels"] = [
            {"index": i, "name": k, "label_values": list(v)} for i, (k, v) in enumerate(space.regions.items())
        ]
        outputs["decode"] = (
            "region r is present where sigmoid(logit r) > 0.5; label map = region_lookup[code], "
            "code = sum over r of (region r present) << r"
        )
        outputs["region_lookup"] = space.region_lookup()
    axes = (
        f"spatial axis i of the input is voxel axis i of the image reoriented to {orientation} "
        f"(nibabel/MONAI axis codes: the index grows toward {', '.join(orientation)})"
    )
    if spatial == 2:
        axes += f"; 2D: each input is one slice along the last axis ({orientation[2]}), H and W the first two"
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "volseg_version": __version__,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "created": checkpoint.get("created"),
            "volseg_version": checkpoint.get("volseg_version"),
            "metrics": _plain(checkpoint.get("metrics") or {}),
        },
        "model": {
            "file": FILE_NAMES[fmt],
            "format": fmt,
            "opset": opset,
            "dtype": "float32",
            "network": model.config.get("name"),
            "arguments": {k: v for k, v in model.config.items() if k != "name"},
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "input_shape": [batch, model.in_channels, *spatial_names],
            "output_shape": [batch, model.num_classes, *("?" if "spatial" in dynamic else t for t in tile)],
            "dynamic_axes": list(dynamic),
            "size_rule": model.size_rule(),
        },
        "tensor_layout": "NCDHW" if spatial == 3 else "NCHW",
        "axis_convention": axes,
        "input_channels": channel_names(config, model.in_channels),
        "outputs": outputs,
        "preprocessing": _preprocessing(config),
        "inference": {
            **_inference(config, roi),
            "output_size": list(tile),
            "context": context,
            "gaussian_sigma_scale": SIGMA_SCALE,
            "slice_axis": 2 if spatial == 2 else None,
        },
    }
