"""Export a checkpoint's network to ONNX or TorchScript, with ``model.json`` beside it.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``), which needs
no ``onnxscript``. Batch and spatial axes are made dynamic when the traced network gives
the same result on a second shape; with ``onnxruntime`` installed, the ONNX file itself
is checked against PyTorch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from volseg.checkpoint import check_checkpoint, checkpoint_config, model_from_checkpoint
from volseg.errors import CheckpointError, ConfigError, OutputError, OutputExistsError, ShapeError
from volseg.export.describe import FILE_NAMES, INPUT_NAME, OUTPUT_NAME, default_roi_size, export_description
from volseg.inference.openvino_runner import quiet_tracing
from volseg.io.atomic import atomic_target, write_text
from volseg.nn import SegmentationNetwork

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
#: Opsets of PyTorch's TorchScript-based ONNX exporter.
ONNX_OPSETS = range(9, 21)
_TOLERANCE = 1e-3  # relative to the largest |logit|: baked-in sizes miss by far more
_DYNAMIC_LEVELS: tuple[tuple[str, ...], ...] = (("batch", "spatial"), ("batch",), ())


def export_model(
    checkpoint: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    fmt: Literal["onnx", "torchscript"],
    roi_size: Sequence[int] | None = None,
    opset: int = 17,
    overwrite: bool = False,
) -> list[Path]:
    """Write the network (``model.onnx`` / ``model.ts``, float32, eval mode) and ``model.json``
    into ``out_dir``; returns their paths.

    The network is traced on a (1, C, *roi_size) input; ``roi_size`` defaults to the
    checkpoint's inference window (else its training patch size). Raises
    :class:`OutputExistsError` for existing files unless ``overwrite``, :class:`ShapeError`
    for a window the network cannot take and :class:`CheckpointError` when the network
    cannot be traced or exported.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not valid; allowed: {', '.join(FORMATS)}")
    if fmt == "onnx" and opset not in ONNX_OPSETS:
        raise ConfigError(f"opset={opset} is not valid; allowed: {ONNX_OPSETS.start} .. {ONNX_OPSETS.stop - 1}")
    checkpoint = check_checkpoint(checkpoint)
    model_path, json_path = output_paths(out_dir, [FILE_NAMES[fmt], "model.json"], overwrite)

    config = checkpoint_config(checkpoint)
    model = model_from_checkpoint(checkpoint)
    roi = check_roi(model, roi_size if roi_size is not None else default_roi_size(config))
    probes = _probe_inputs(model, roi)
    with torch.no_grad():
        expected = {name: model(x) for name, x in probes.items()}

    with quiet_tracing():
        traced = _trace(model, probes["roi"], fmt)
        if fmt == "torchscript":
            dynamic = _first_level(_checker(traced, probes, expected), probes)
            with atomic_target(model_path) as temporary:
                torch.jit.save(traced, str(temporary))
        else:
            dynamic = _export_onnx(model, model_path, probes, expected, traced, opset)
    if "batch" not in dynamic:
        logger.warning("the exported network takes batches of exactly 1")
    description = export_description(
        checkpoint, config, model, roi, fmt=fmt, dynamic=dynamic, opset=opset if fmt == "onnx" else None
    )
    write_text(json_path, json.dumps(description, indent=2) + "\n")
    logger.info("exported %s (%s, input %s) and %s", model_path, fmt, description["model"]["input_shape"], json_path)
    return [model_path, json_path]


def output_paths(out_dir: str | os.PathLike, names: Sequence[str], overwrite: bool) -> list[Path]:
    """``out_dir / name`` for each name; an error if ``out_dir`` is a file or, unless ``overwrite``, a path exists."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"cannot export into '{out_dir}': it is a file, not a folder")
    paths = [out_dir / name for name in names]
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"'{path}' exists; pass --overwrite to replace it")
    return paths


def check_roi(model: SegmentationNetwork, roi_size: Sequence[int]) -> tuple[int, ...]:
    """``roi_size`` as a tuple, or a :class:`ShapeError` when ``model`` cannot take it."""
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != model.spatial_dims or any(r < 1 for r in roi):
        raise ShapeError(f"roi_size={list(roi_size)} is not valid; give {model.spatial_dims} positive sizes")
    try:
        model.output_shape(roi)
    except ShapeError as error:
        raise ShapeError(f"roi_size={list(roi)}: {error}") from None
    return roi


def _probe_inputs(model: SegmentationNetwork, roi: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Random inputs: "roi" (1, C, *roi), "batch" (2, C, *roi), "spatial" (2, C, *another valid shape)."""
    other = model.nearest_valid_shape([max(1, r // 2) for r in roi], "up")
    if other is None or other == roi:
        other = model.nearest_valid_shape([r + 1 for r in roi], "up")
    generator, channels = torch.Generator().manual_seed(0), model.in_channels
    shapes = {"roi": (1, channels, *roi), "batch": (2, channels, *roi)}
    if other is not None:
        shapes["spatial"] = (2, channels, *other)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _trace(model: SegmentationNetwork, example: torch.Tensor, fmt: str) -> torch.jit.ScriptModule:
    try:
        with torch.no_grad():
            return torch.jit.trace(model, (example,), check_trace=False)
    except Exception as error:  # the tracer fails in many ways (outputs, control flow, unsupported ops)
        raise CheckpointError(
            f"the {_name(model)} network cannot be traced for {fmt} export: {_reason(error)}"
        ) from error


def _first_level(check: Callable[[str], bool], probes: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The most dynamic level (batch + spatial, batch, none) whose probe input passes ``check``."""
    if not check("roi"):
        raise CheckpointError("the traced network does not reproduce the PyTorch output on the export shape")
    return next((level for level in _DYNAMIC_LEVELS[:-1] if level[-1] in probes and check(level[-1])), ())


def _checker(
    run: Callable[[torch.Tensor], torch.Tensor], probes: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> Callable[[str], bool]:
    """``check(name)``: whether ``run`` (a trace or an ONNX session) reproduces PyTorch on probe ``name``."""

    def check(name: str) -> bool:
        try:
            with torch.no_grad():
                return outputs_match(run(probes[name]), expected[name])
        except Exception:  # sizes baked into a trace or graph fail inside it
            return False

    return check


def _export_onnx(
    model: SegmentationNetwork,
    path: Path,
    probes: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    traced: torch.jit.ScriptModule,
    opset: int,
) -> tuple[str, ...]:
    """Write ``path``; returns the dynamic level, checked with onnxruntime when it is installed."""
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
        logger.warning("onnxruntime is not installed: the ONNX file is not checked (pip install onnxruntime)")
    levels = _DYNAMIC_LEVELS
    if onnxruntime is None:  # the traced graph is what the exporter converts: let it pick the level
        levels = (_first_level(_checker(traced, probes, expected), probes),)
    spatial = model.spatial_dims
    with atomic_target(path) as temporary:
        for level in levels:
            axes = {0: "batch"} if "batch" in level else {}
            if "spatial" in level:
                axes.update({2 + i: f"spatial{i}" for i in range(spatial)})
            try:
                torch.onnx.export(
                    model,
                    (probes["roi"],),
                    str(temporary),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if axes else None,
                    do_constant_folding=True,
                )
            except Exception as error:  # unsupported operators, tracing failures, ...
                raise CheckpointError(
                    f"the {_name(model)} network cannot be exported to ONNX "
                    f"(opset {opset}): {_reason(error)}; try --format torchscript"
                ) from error
            if onnxruntime is None:
                return level
            try:
                session = onnxruntime.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
            except Exception as error:  # onnxruntime reports invalid graphs in its own exception types
                raise CheckpointError(f"onnxruntime cannot load the exported network: {_reason(error)}") from error
            check = _checker(functools.partial(_run_session, session), probes, expected)
            if check("roi") and (not level or (level[-1] in probes and check(level[-1]))):
                return level
            logger.info(
                "ONNX export with dynamic %s does not match PyTorch; trying fewer dynamic axes", " and ".join(level)
            )
        # Raised inside the block, so that the failed file is removed rather than renamed into place.
        raise CheckpointError(
            "the exported ONNX network does not reproduce the PyTorch output (checked with "
            f"onnxruntime {onnxruntime.__version__}); try --format torchscript"
        )


def _run_session(session: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])


def outputs_match(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Same shape, and within :data:`_TOLERANCE` of the largest |logit| (at least 1)."""
    if actual.shape != expected.shape:
        return False
    scale = max(1.0, float(expected.abs().max()))
    return bool((actual.float() - expected.float()).abs().max() <= _TOLERANCE * scale)


def _name(model: SegmentationNetwork) -> str:
    return model.config.get("name") or type(model).__name__


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300] if lines else 'no message'}"
