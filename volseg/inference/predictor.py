"""Segment new images with a trained model: preprocess as in training, window, invert, write.

``Predictor.from_checkpoint(path_or_bundled_name)`` rebuilds the network and its
preprocessing from the checkpoint alone. Every output lies on its input's grid (same
shape and affine): predictions made on the reoriented, resampled and cropped grid are
brought back by the inverses of exactly those operations (:mod:`volseg.data.preprocess`). On a
GPU the logits stay there when they fit (else in host memory) and softmax/sigmoid, resampling
and argmax run there too, a chunk of classes at a time (:mod:`volseg.inference.class_maps`); only
the labels, and the probabilities or uncertainty when asked for, come back to the host.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volseg.bundled import int8_version, resolve_model
from volseg.checkpoint import (
    checkpoint_config,
    checkpoint_fingerprint,
    checkpoint_label_space,
    load_checkpoint,
    model_from_checkpoint,
)
from volseg.config import Config
from volseg.data.label_space import LabelSpace
from volseg.data.preprocess import PreparedCase, inference_transforms
from volseg.data.training_fingerprint import TrainingFingerprint
from volseg.errors import ConfigError, ShapeError, choice_error
from volseg.inference.backends import openvino_installed, resolve_backend, runner_for
from volseg.inference.class_maps import (
    RunningDecision,
    class_chunk,
    entropy_terms,
    normalised_entropy,
    probability_chunks,
)
from volseg.inference.input_checks import check_input
from volseg.inference.openvino_runner import OpenVINOModel, checkpoint_model
from volseg.inference.sliding_window import check_sw_batch_size, flip_combinations, sliding_window_inference
from volseg.inference.window_batch import free_memory
from volseg.io import Volume
from volseg.nn import SegmentationNetwork
from volseg.runtime import resolve_device

logger = logging.getLogger(__name__)

UNCERTAINTY_MODES = ("entropy", "tta-variance")


#: ``fast``: the windows' overlap (the model's default is usually 0.5)
FAST_OVERLAP = 0.25


@dataclass
class Prediction:
    """One segmented case, on the grid of ``reference`` (its first input channel).

    ``labels`` (*S) in the dataset's label values; ``probabilities`` (*S, K) (softmax classes or
    sigmoid regions) and ``uncertainty`` (*S) when asked for.
    """

    case_id: str
    labels: np.ndarray
    reference: Volume
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: how the input differs from the model's training scans (:mod:`volseg.inference.input_checks`)
    warnings: list[str] = field(default_factory=list)


class Predictor:
    """A network with the preprocessing and inference settings it was trained with.

    Args:
        network: the trained network.
        config: its run config (labels/regions, channels, preprocessing, inference defaults).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``, or a ``torch.device``.
        overlap, sw_batch_size, blend: override the checkpoint's inference defaults.
        tta: mirror over every spatial axis (default: on with CUDA, off on CPU where it
            multiplies the time).
        autocast: ``"fp16"``/``"bf16"`` mixed precision, or ``None``; ``"auto"``: bf16 on a GPU that
            supports it, else fp16; none on the CPU (:func:`default_autocast`).
        cudnn_benchmark: let cuDNN time its convolution algorithms for each window shape while
            this predictor runs (faster after the first batch on CUDA); the flag is restored after
            each case. ``None`` leaves ``torch.backends.cudnn.benchmark`` as it is.
        mask_nonzero: background wherever every input channel is 0 (default: the checkpoint's
            ``inference.mask_nonzero``; off for checkpoints that predate it).
        progress: ``progress(done_windows, total_windows)`` for each case.
        label_space: what the outputs mean (default: from ``config``; :meth:`from_checkpoint` passes
            the checkpoint's).
        fingerprint: the training scans, to compare each input with before the network runs
            (:mod:`volseg.inference.input_checks`); :meth:`from_checkpoint` passes the checkpoint's.
            ``None``: inputs are not compared.
        backend: what runs the network: ``torch``, ``openvino`` (CPU) or ``auto`` (default: the
            checkpoint's ``inference.backend``; :mod:`volseg.inference.backends`).
        cache_dir: with OpenVINO, keep converted networks here across processes.
        openvino_model: an OpenVINO network to run in place of ``network`` on the OpenVINO backend
            (the int8 network of ``volseg quantize``; :meth:`from_checkpoint` passes the checkpoint's).
        fast: fewer network evaluations (``volseg predict --fast``): no mirroring, and overlap
            :data:`FAST_OVERLAP` unless ``overlap`` is given; a quantized model runs its int8 network
            under ``auto`` anyway, and :meth:`from_checkpoint` takes a bundled model's int8 version.
    """

    def __init__(
        self,
        network: SegmentationNetwork,
        config: Config,
        *,
        device: str | torch.device = "auto",
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        blend: str | None = None,
        tta: bool | None = None,
        autocast: str | None = "auto",
        cudnn_benchmark: bool | None = None,
        mask_nonzero: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
        label_space: LabelSpace | None = None,
        fingerprint: TrainingFingerprint | None = None,
        backend: str | None = None,
        cache_dir: str | Path | None = None,
        openvino_model: OpenVINOModel | None = None,
        fast: bool = False,
    ) -> None:
        self.config = config
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.network = network.to(self.device).eval()
        inference = config.inference
        self.roi_size = list(inference.roi_size or config.sampling.patch_size)
        self.fast = bool(fast)
        self.overlap = (FAST_OVERLAP if self.fast else inference.overlap) if overlap is None else overlap
        self.sw_batch_size = inference.sw_batch_size if sw_batch_size is None else sw_batch_size
        if not 0.0 <= self.overlap < 1.0:  # checked here, before any case is read
            raise ConfigError(f"overlap={self.overlap} is not valid; allowed: 0 <= overlap < 1")
        check_sw_batch_size(self.sw_batch_size)
        self.blend = blend or inference.blend
        tta = self.device.type == "cuda" and not self.fast if tta is None else tta
        self.tta_flips = (list(inference.tta_flips) or list(range(self.network.spatial_dims))) if tta else []
        self.autocast = default_autocast(self.device) if autocast == "auto" else autocast
        if self.autocast not in (None, "fp16", "bf16"):
            raise choice_error("autocast", self.autocast, ("auto", "fp16", "bf16"))
        self.cudnn_benchmark = cudnn_benchmark
        self.progress = progress
        self.label_space = label_space or LabelSpace.from_config(config)
        self.regions = self.label_space.regions
        self.labels = self.label_space.labels
        self.mask_nonzero = inference.mask_nonzero if mask_nonzero is None else bool(mask_nonzero)
        if self.mask_nonzero and self.regions is None and 0 not in self.labels:
            raise ConfigError(
                f"mask_nonzero needs label 0 (background) in data.labels; got labels {sorted(self.labels)}"
            )
        self.transforms = inference_transforms(config.preprocessing)
        self.fingerprint = fingerprint
        self._backend_options = dict(backend=backend or inference.backend, model=openvino_model, cache_dir=cache_dir)
        self._runner, self._runner_source, self._backend_source = None, None, self.network
        self.backend = resolve_backend(backend or inference.backend, self.device, self.network, model=openvino_model)
        if openvino_model is not None and self.backend == "torch":
            logger.info(
                "backend torch: the %s OpenVINO network is not used, the float32 weights are", openvino_model.precision
            )

    @classmethod
    def from_checkpoint(cls, path_or_name: str | Path, **options: Any) -> Predictor:
        """A predictor from a checkpoint file or the name of a bundled model (``hippocampus``).

        With ``fast=True``, a bundled model that ships an int8 version (``brats-int8``) runs that
        version's int8 network where it can (OpenVINO installed, the CPU, backend ``auto`` or
        ``openvino``): Dice within 0.003 of the float network on the held-out cases
        (docs/performance.md); its float weights are the same.
        """
        int8 = int8_version(path_or_name) if options.get("fast") else None
        if int8 is not None and _int8_runs_here(options):
            logger.info("fast: running %s, the int8 version of %s", int8, path_or_name)
            path_or_name = int8
        checkpoint = load_checkpoint(resolve_model(path_or_name))
        options.setdefault("label_space", checkpoint_label_space(checkpoint))
        options.setdefault("openvino_model", checkpoint_model(checkpoint))
        if "fingerprint" not in options:
            options["fingerprint"] = checkpoint_fingerprint(checkpoint)
            if options["fingerprint"] is None:
                logger.info(
                    "%s records no training fingerprint: inputs are not compared with its training scans", path_or_name
                )
        return cls(model_from_checkpoint(checkpoint), checkpoint_config(checkpoint), **options)

    @property
    def runner(self) -> Any:
        """What the sliding window calls: :attr:`network` itself, or its OpenVINO runner (made on first
        use; made again, with the backend resolved again, when :attr:`network` is replaced)."""
        options = self._backend_options
        if self.network is not self._backend_source:  # replaced: the checkpoint's OpenVINO network is not its
            options["model"] = None
            self.backend = resolve_backend(options["backend"], self.device, self.network)
            self._backend_source = self.network
        if self._runner_source is not self.network:
            self._runner = runner_for(
                self.network, self.backend, model=options["model"], cache_dir=options["cache_dir"]
            )
            self._runner_source = self.network
        return self._runner

    @property
    def channel_names(self) -> list[str]:
        return list(self.config.data.channels)

    @property
    def label_names(self) -> dict[int, str]:
        """Written label value -> name (regions are written as the dataset's label values)."""
        return self.label_space.label_names

    def predict_file(self, input_path: str | Path, output_path: str | Path, **options: Any) -> Path:
        """Segment one case (a file, BraTS case folder or DICOM series) into ``output_path``.

        ``options`` are those of :class:`volseg.inference.segment.OutputOptions` (``overwrite``,
        ``probabilities``, ``uncertainty``, ``stats``, ``preview``, ...).
        """
        from volseg.inference.segment import OutputOptions, segment

        return segment(self, input_path, output_path, OutputOptions(**options))[0].labels_path

    def predict_folder(self, input_dir: str | Path, output_dir: str | Path, **options: Any) -> list[Path]:
        """Segment every case in ``input_dir`` into ``output_dir``; finished cases are skipped."""
        from volseg.inference.segment import OutputOptions, segment

        return [outcome.labels_path for outcome in segment(self, input_dir, output_dir, OutputOptions(**options))]

    # ------------------------------------------------------------------ core
    def predict(self, image: np.ndarray | Volume, *, affine: np.ndarray | None = None) -> np.ndarray:
        """Label map (*S) for ``image``: a :class:`Volume`, or an array (*S) / (*S, C) with an
        optional voxel -> RAS ``affine`` (default: 1 mm voxels, RAS)."""
        if not isinstance(image, Volume):
            image = Volume(np.asarray(image), np.eye(4) if affine is None else np.asarray(affine, dtype=float))
        return self.predict_volumes([image]).labels

    def predict_volumes(
        self,
        channels: Sequence[Volume],
        *,
        case_id: str = "case",
        probabilities: bool = False,
        uncertainty: str | None = None,
        strict: bool = False,
    ) -> Prediction:
        """Segment one case given as one :class:`Volume` per channel file (or one 4D volume).

        An input unlike the training scans is logged and listed in ``Prediction.warnings``;
        ``strict`` raises :class:`volseg.errors.InputMismatchError` instead, before the network runs.
        """
        if uncertainty is not None and uncertainty not in UNCERTAINTY_MODES:
            raise ConfigError(f"uncertainty={uncertainty!r} is not valid; allowed: {', '.join(UNCERTAINTY_MODES)}")
        started = time.perf_counter()
        warnings = []
        # Before the network; an input of another channel count gets the channel error below instead.
        if self.fingerprint is not None and sum(v.num_channels for v in channels) == len(self.fingerprint.channels):
            warnings = check_input(channels, self.fingerprint, case_id=case_id, strict=strict)
        case = self.transforms({"image": list(channels), "case_id": case_id})
        image = case.image
        if image.shape[0] != self.network.in_channels:
            expected = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
            raise ShapeError(
                f"case {case_id}: the model takes {self.network.in_channels} channels{expected}; "
                f"the input has {image.shape[0]}"
            )
        with self._cudnn_flags():
            scores, variance = self._scores(image[None], uncertainty == "tta-variance")
        labels, probs, entropy = self._outputs_on_input_grid(
            scores, case, activated=variance is not None, probabilities=probabilities, entropy=uncertainty == "entropy"
        )
        result = Prediction(case_id, labels, channels[0], probabilities=probs, uncertainty=entropy, warnings=warnings)
        if variance is not None:
            on_input = case.to_input_grid(variance, mode="bilinear")
            result.uncertainty = on_input.mean(dim=0).numpy().astype(np.float32)
        if self.mask_nonzero:
            self._mask_outside(result, nonzero_mask(channels))
        result.seconds = time.perf_counter() - started
        return result

    def _mask_outside(self, result: Prediction, inside: np.ndarray) -> None:
        """Make ``result`` background where ``inside`` (*S) is False: label 0, probability 1 for
        the background class (0 for every region), uncertainty 0."""
        outside = ~inside
        result.labels[outside] = 0
        if result.probabilities is not None:
            background = np.zeros(result.probabilities.shape[-1], dtype=np.float32)
            if self.regions is None:
                background[sorted(self.labels).index(0)] = 1.0
            result.probabilities[outside] = background
        if result.uncertainty is not None:
            result.uncertainty[outside] = 0.0

    @contextlib.contextmanager
    def _cudnn_flags(self) -> Iterator[None]:
        """``torch.backends.cudnn.benchmark`` set to :attr:`cudnn_benchmark` inside (unless ``None``),
        restored after."""
        before = torch.backends.cudnn.benchmark
        if self.cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before

    def _scores(self, image: torch.Tensor, with_variance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (K, *S) on the preprocessed grid of ``image`` (1, C, *S), on the device when they fit
        there, else on the host; with ``with_variance`` the mean class/region probabilities over the
        mirrored copies and their variance instead (each copy runs separately; on the host)."""
        options = dict(
            overlap=self.overlap,
            blend=self.blend,
            sw_batch_size=self.sw_batch_size,
            device=self.device,
            autocast=self.autocast,
            progress=self.progress,
        )
        image = image.to(self.device)
        roi = self.roi_size
        if not with_variance:
            logits = sliding_window_inference(
                self.runner, image, roi, tta_flips=self.tta_flips, output_device="auto", **options
            )
            return logits[0], None
        flips = flip_combinations(self.tta_flips or range(self.network.spatial_dims))
        total = squares = None
        for flip in flips:
            dims = [axis + 2 for axis in flip]
            logits = sliding_window_inference(
                self.runner, image.flip(dims) if dims else image, roi, output_device="cpu", **options
            )
            probs = self._activate((logits.flip(dims) if dims else logits)[0])
            total = probs if total is None else total + probs
            squares = probs.square() if squares is None else squares + probs.square()
        mean = total / len(flips)
        return mean, (squares / len(flips) - mean.square()).clamp_min(0)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (K, *S) -> probabilities (K, *S), by the label space's activation."""
        return self.label_space.activate(logits, dim=0)

    def _outputs_on_input_grid(
        self, scores: torch.Tensor, case: PreparedCase, *, activated: bool, probabilities: bool, entropy: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Labels (*S_in), probabilities (*S_in, K) and normalised entropy (*S_in) (``None`` unless asked
        for) from ``scores`` (K, *S) on the preprocessed grid: logits, or probabilities when ``activated``.

        The labels are decided on the grid that crop and reorientation alone make from the input
        (after resampling the probabilities linearly back to it, when the preprocessing resampled),
        then placed on the input grid: the same labels as deciding on the whole input grid, on fewer
        voxels. Runs on the predictor's device a chunk of classes at a time
        (:mod:`volseg.inference.class_maps`); on the host when not even one class fits on the GPU.
        """
        regions = self.regions is not None
        count, device = scores.shape[0], self.device
        maps_on_input = probabilities or entropy  # class maps wanted on the whole input grid
        voxels = scores[0].numel() + int(np.prod(case.input_shape if maps_on_input else case.exact_shape))
        chunk = class_chunk(count, voxels, free_memory(device))
        if chunk == 0 and device.type != "cpu":
            device, chunk = torch.device("cpu"), class_chunk(count, voxels, free_memory(torch.device("cpu")))
        decision, probs, entropy_sum = RunningDecision(regions, count), None, None
        for classes, maps in probability_chunks(
            scores, regions=regions, device=device, chunk=max(chunk, 1), activated=activated
        ):
            exact = case.to_exact_grid(maps, mode="bilinear")  # the maps themselves when nothing was resampled
            decision.add(classes.start, exact)
            if not maps_on_input:
                continue
            on_input = case.place_on_input(exact)  # zero outside the crop
            if probabilities:
                if probs is None:
                    probs = np.empty((*on_input.shape[1:], count), dtype=np.float32)
                probs[..., classes] = on_input.movedim(0, -1).cpu().numpy()
            if entropy:
                terms = entropy_terms(on_input, regions)
                entropy_sum = terms if entropy_sum is None else entropy_sum.add_(terms)
        decided = case.place_on_input(decision.result())  # 0 outside the crop: the decision on zero maps
        labels = self.label_space.decode(decided.cpu().numpy())  # (R, *S) masks or (*S) class indices
        if entropy_sum is not None:
            entropy_sum = normalised_entropy(entropy_sum, count, regions).cpu().numpy().astype(np.float32)
        return labels, probs, entropy_sum


def _int8_runs_here(options: dict[str, Any]) -> bool:
    """Whether a predictor made with ``options`` would run an int8 OpenVINO network."""
    if options.get("backend") not in (None, "auto", "openvino") or not openvino_installed():
        return False
    return str(options.get("device", "auto")).startswith("cpu") or not torch.cuda.is_available()


def default_autocast(device: torch.device) -> str | None:
    """Mixed precision for ``auto``: bf16 on a GPU that supports it, fp16 on one that does not, none on the CPU."""
    if device.type != "cuda":
        return None
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def nonzero_mask(channels: Sequence[Volume]) -> np.ndarray:
    """Voxels (*S) where any input channel (of any of ``channels``) is not 0."""
    inside = None
    for volume in channels:
        found = volume.array != 0
        if volume.array.ndim > volume.spatial_dims:  # (*S, C)
            found = found.any(axis=-1)
        inside = found if inside is None else inside | found
    return inside
