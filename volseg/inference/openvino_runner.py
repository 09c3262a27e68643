"""OpenVINO runs a volseg network on the CPU: conversion, compiled-model caches and the window call.

:class:`OpenVINONetwork` is what the sliding window calls in place of the ``nn.Module`` when the
backend is ``openvino``: (B, C, *roi) float32 windows in, (B, K, *out) float32 logits out.

- **Conversion** (:func:`convert_network`): a copy of the network in eval mode (deep supervision
  gives the full-resolution output only) is traced on a window and converted with
  ``openvino.convert_model``, with a dynamic batch axis: one compiled model serves every batch
  size, the smaller last batch included (on a 3D U-Net and the bundled BraTS network a dynamic
  batch ran as fast as a static one, within the noise, and nothing is padded). Max-unpooling
  (SegNet), which OpenVINO's PyTorch frontend lacks, is traced as the equivalent scatter.
- **Precision**: compiled with ``INFERENCE_PRECISION_HINT`` f32; OpenVINO's default on CPUs with
  bf16 instructions is bf16, which changed 0.4 % of the BraTS labels.
- **Threads**: ``INFERENCE_NUM_THREADS`` is ``torch.get_num_threads()`` at compile time.
- **Caches**: converted and compiled models are kept in the process, keyed by the network's
  digest (:func:`network_digest`: class, description, weights) and the window shape (C, *roi),
  compiled ones also by the threads. With ``cache_dir`` the converted model is also kept on disk
  under a key of volseg's version, OpenVINO's version, :data:`CONVERSION_VERSION`, the digest and
  the window shape, and OpenVINO keeps its compiled blobs in ``cache_dir/compiled``.

OpenVINO is imported on first use only (``pip install 'volseg[openvino]'``).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg._version import __version__
from volseg.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'volseg[openvino]'"
#: Part of the disk cache key: change it when the conversion changes what it writes.
CONVERSION_VERSION = 1
#: Converted and compiled models kept per process (least recently used dropped first).
PROCESS_CACHE_SIZE = 4
#: Key of the int8 network in a checkpoint written by ``volseg quantize``.
CHECKPOINT_KEY = "openvino"

#: What this process converted, compiled and read from the disk cache (logs and tests read it).
counts: collections.Counter[str] = collections.Counter()
_converted: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_compiled: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_core: Any = None


def load_openvino(what: str = "backend 'openvino'") -> Any:
    """The ``openvino`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ConfigError(
            f"{what} needs OpenVINO, which is not installed: {INSTALL_HINT}, or use backend torch"
        ) from None
    return openvino


def default_cache_dir() -> Path:
    """The command line's disk cache: ``$VOLSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/volseg/openvino``
    (``~/.cache/volseg/openvino``)."""
    if os.environ.get("VOLSEG_CACHE_DIR"):
        return Path(os.environ["VOLSEG_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "volseg" / "openvino"


def openvino_core() -> Any:
    """The process's ``openvino.Core`` (one is enough; made on first use)."""
    global _core
    if _core is None:
        _core = load_openvino().Core()
    return _core


@dataclass(frozen=True)
class OpenVINOModel:
    """A serialised OpenVINO model (IR): ``xml`` text and ``weights`` (the .bin file's bytes)."""

    xml: str
    weights: bytes
    precision: str = "fp32"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.xml.encode() + self.weights).hexdigest()

    def read(self) -> Any:
        ov = load_openvino()
        return openvino_core().read_model(self.xml, ov.Tensor(np.frombuffer(self.weights, dtype=np.uint8)))

    @classmethod
    def from_model(cls, model: Any, precision: str = "fp32") -> OpenVINOModel:
        """Serialise ``model`` (weights kept as they are: not compressed to fp16)."""
        with tempfile.TemporaryDirectory() as folder:
            xml = Path(folder) / "model.xml"
            load_openvino().save_model(model, xml, compress_to_fp16=False)
            return cls(xml.read_text(), xml.with_suffix(".bin").read_bytes(), precision)


def network_digest(network: nn.Module) -> str:
    """SHA-256 of what ``network`` computes: its class, description, module tree and weights."""
    digest = hashlib.sha256()
    digest.update(f"{type(network).__module__}.{type(network).__qualname__}\n".encode())
    digest.update(json.dumps(getattr(network, "config", {}), sort_keys=True, default=str).encode())
    digest.update(repr(network).encode())
    for name, tensor in network.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class ScatterMaxUnpool(nn.Module):
    """Max-unpooling as a scatter into the flattened output, (N, C, *S) -> (N, C, *output_size):
    the same values as ``nn.MaxUnpool2d/3d`` for the indices of a max-pooling, in operations that
    OpenVINO converts."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: list[int]) -> torch.Tensor:
        size = [int(s) for s in output_size][-(x.ndim - 2) :]
        flat = x.new_zeros(x.shape[0], x.shape[1], math.prod(size))
        flat = flat.scatter(2, indices.flatten(2), x.flatten(2))
        return flat.reshape(x.shape[0], x.shape[1], *size)


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Hide the tracer's shape-to-constant warnings (callers check the result) and torch.jit's deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit and the TorchScript-based ONNX exporter
        warnings.filterwarnings("ignore", message=".*instance_norm.*train=True", category=UserWarning)
        yield


def convert_network(network: nn.Module, window_shape: tuple[int, ...]) -> Any:
    """``network`` as an ``openvino.Model`` taking (batch, *window_shape) float32, batch dynamic.

    A copy is converted, in eval mode, with max-unpooling as :class:`ScatterMaxUnpool`;
    ``network`` is left as it is. Raises :class:`ConfigError` when it cannot be converted.
    """
    ov = load_openvino()
    source = copy.deepcopy(network).cpu().float().eval()
    for parent in list(source.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.MaxUnpool2d, nn.MaxUnpool3d)):
                setattr(parent, name, ScatterMaxUnpool())
    example = torch.randn((2, *window_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), quiet_tracing():
            traced = torch.jit.trace(source, (example,), check_trace=False)
            model = ov.convert_model(traced, example_input=example, input=[ov.PartialShape([-1, *window_shape])])
    except Exception as error:  # tracing and conversion fail in many ways (unsupported operators, control flow)
        name = getattr(network, "config", {}).get("name") or type(network).__name__
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = f"{type(error).__name__}: {lines[0][:200] if lines else 'no message'}"
        raise ConfigError(f"the {name} network cannot be converted to OpenVINO ({reason}); use backend torch") from None
    counts["conversions"] += 1
    return model


def _remember(cache: collections.OrderedDict, key: tuple, value: Any) -> Any:
    cache[key] = value
    while len(cache) > PROCESS_CACHE_SIZE:
        cache.popitem(last=False)
    return value


def clear_caches() -> None:
    """Forget every converted and compiled model of this process (the disk cache stays)."""
    _converted.clear()
    _compiled.clear()


class OpenVINONetwork:
    """A network run by OpenVINO on the CPU, called like the ``nn.Module``: (B, C, *roi) float32
    windows -> (B, K, *out) float32 logits (a new CPU tensor).

    Args:
        network: the PyTorch network; converted on first use per window shape, and asked for
            ``spatial_dims``, ``in_channels``, ``num_classes`` and ``output_shape``.
        model: run this OpenVINO model (e.g. the int8 network of ``volseg quantize``) instead of
            converting ``network``; reshaped when the window differs from its own.
        cache_dir: keep converted models (and OpenVINO's compiled blobs) here across processes.

    ``recorders`` are called with every window batch before it runs (calibration records
    windows this way).
    """

    device = torch.device("cpu")
    _DELEGATED = ("spatial_dims", "in_channels", "num_classes", "output_shape")

    def __init__(
        self, network: nn.Module, *, model: OpenVINOModel | None = None, cache_dir: str | os.PathLike | None = None
    ) -> None:
        load_openvino()
        self.network, self.source = network, model
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.digest = model.digest if model is not None else network_digest(network)
        self.precision = model.precision if model is not None else "fp32"
        self.recorders: list[Callable[[torch.Tensor], None]] = []
        self.last_window_shape: tuple[int, ...] | None = None
        self._estimates: dict[tuple[int, ...], tuple[int, int]] = {}

    def __getattr__(self, name: str) -> Any:
        if name in OpenVINONetwork._DELEGATED:
            return getattr(self.network, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"OpenVINONetwork({type(self.network).__name__}, {self.precision}, digest {self.digest[:12]})"

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, C, *roi) -> (B, K, *out) logits."""
        for record in self.recorders:
            record(windows)
        shape = tuple(int(s) for s in windows.shape[1:])
        compiled = self.compiled(shape)
        self.last_window_shape = shape
        output = compiled(windows.detach().to("cpu", torch.float32).contiguous().numpy())[0]
        return torch.from_numpy(output)

    def compiled(self, window_shape: tuple[int, ...]) -> Any:
        """The compiled model for windows of ``window_shape`` (C, *roi), any batch size (cached)."""
        threads = torch.get_num_threads()
        key = (self.digest, window_shape, threads, str(self.cache_dir))
        if key in _compiled:
            _compiled.move_to_end(key)
            return _compiled[key]
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir / "compiled")
        compiled = openvino_core().compile_model(self.model(window_shape), "CPU", config)
        counts["compilations"] += 1
        logger.debug("compiled %r for windows %s on %d threads", self, window_shape, threads)
        return _remember(_compiled, key, compiled)

    def model(self, window_shape: tuple[int, ...]) -> Any:
        """The ``openvino.Model`` for windows of ``window_shape`` (C, *roi), batch dynamic (cached)."""
        key = (self.digest, window_shape)
        if key in _converted:
            _converted.move_to_end(key)
            return _converted[key]
        if self.source is not None:
            model = self.source.read()
            model.reshape({0: load_openvino().PartialShape([-1, *window_shape])})
        else:
            model = self._from_disk(window_shape)
            if model is None:
                model = convert_network(self.network, window_shape)
                self._to_disk(window_shape, model)
        return _remember(_converted, key, model)

    def disk_key(self, window_shape: tuple[int, ...]) -> str:
        """The disk cache entry's name: volseg's and OpenVINO's versions, the conversion, the network, the window."""
        key = {
            "volseg": __version__,
            "openvino": load_openvino().get_version(),
            "conversion": CONVERSION_VERSION,
            "network": self.digest,
            "window": list(window_shape),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def _from_disk(self, window_shape: tuple[int, ...]) -> Any | None:
        if self.cache_dir is None:
            return None
        xml = self.cache_dir / self.disk_key(window_shape) / "model.xml"
        if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
            return None
        try:
            model = openvino_core().read_model(xml)
        except Exception as error:  # a damaged entry is converted again and replaced
            logger.warning("OpenVINO cache entry %s is not readable (%s); converting again", xml.parent, error)
            shutil.rmtree(xml.parent, ignore_errors=True)
            return None
        counts["disk_hits"] += 1
        return model

    def _to_disk(self, window_shape: tuple[int, ...], model: Any) -> None:
        """Write the entry into a temporary folder renamed into place: complete or absent."""
        if self.cache_dir is None:
            return
        final = self.cache_dir / self.disk_key(window_shape)
        temporary = self.cache_dir / f".tmp-{secrets.token_hex(6)}-{final.name}"
        try:
            temporary.mkdir(parents=True)
            load_openvino().save_model(model, temporary / "model.xml", compress_to_fp16=False)
            os.replace(temporary, final)
        except OSError as error:  # no room, no permission, or another process wrote it first
            if not final.is_dir():
                logger.warning("cannot keep the converted network in %s: %s", self.cache_dir, error)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    def meter(self) -> GraphMeter:
        """The sliding window's memory measure for this network (see :class:`GraphMeter`)."""
        return GraphMeter(self)

    def activation_estimate(self, window_shape: tuple[int, ...]) -> tuple[int, int]:
        """(bytes, largest element count) of the outputs of every operation for one window."""
        if window_shape not in self._estimates:
            model = self.model(window_shape).clone()
            model.reshape({0: load_openvino().PartialShape([1, *window_shape])})
            total = largest = 0
            for op in model.get_ordered_ops():
                if op.get_type_name() in ("Parameter", "Constant", "Result"):
                    continue
                for output in op.outputs():
                    shape = output.get_partial_shape()
                    if shape.is_static:
                        elements = math.prod(shape.to_shape())
                        total += elements * output.get_element_type().size
                        largest = max(largest, elements)
            self._estimates[window_shape] = (total, largest)
        return self._estimates[window_shape]


class GraphMeter:
    """:class:`volseg.inference.window_batch.ActivationMeter`'s interface for an
    :class:`OpenVINONetwork`: after the call inside it, ``per_call`` is the summed size of every
    operation's output in the graph for one window (as the CPU meter sums leaf-module outputs) and
    ``largest_per_window`` the largest output's element count."""

    def __init__(self, network: OpenVINONetwork) -> None:
        self.network, self.per_call, self.largest_per_window = network, 1, 0

    def __enter__(self) -> GraphMeter:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None and self.network.last_window_shape is not None:
            total, largest = self.network.activation_estimate(self.network.last_window_shape)
            self.per_call, self.largest_per_window = max(total, 1), largest


def checkpoint_model(checkpoint: dict[str, Any]) -> OpenVINOModel | None:
    """The OpenVINO network a checkpoint carries (``volseg quantize``), or ``None``."""
    entry = checkpoint.get(CHECKPOINT_KEY)
    if entry is None:
        return None
    try:
        weights = entry["weights"]
        return OpenVINOModel(str(entry["xml"]), weights.numpy().tobytes(), str(entry["precision"]))
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {CHECKPOINT_KEY!r} entry is not valid: {error!r}") from None


def checkpoint_entry(model: OpenVINOModel, **details: Any) -> dict[str, Any]:
    """``model`` as a checkpoint entry (loads with ``weights_only=True``), with JSON-able ``details``."""
    weights = torch.frombuffer(bytearray(model.weights), dtype=torch.uint8)
    return {"precision": model.precision, "xml": model.xml, "weights": weights, **details}
