"""A case's deterministic preprocessing and the way back to its input grid, on torch and nibabel alone.

:func:`preprocess` reads nothing: it takes the image ``(C, *S)`` and its voxel -> RAS ``affine``,
crops to the non-zero box, reorients, resamples to the configured spacing and normalises, and
records each spatial step so that :meth:`PreparedCase.to_input_grid` can put a prediction back on
the input grid exactly (zero outside the crop). :func:`read_case` reads and checks a case's files.
Training pipelines wrap both in a MONAI map transform (:mod:`volseg.data.transforms`); inference
calls them directly, so ``volseg predict`` does not import MONAI (its package import costs more
than two seconds). The results match MONAI's ``Orientation``, ``CropForeground``, ``Spacing``
(bilinear or nearest, border padding, ``align_corners=False``), ``NormalizeIntensity(nonzero=True,
channel_wise=True)`` and ``ScaleIntensityRange(clip=True)`` up to float32 rounding;
``tests/data/test_preprocess.py`` compares them.

The spatial steps are :class:`Crop`, :class:`Reorient` and :class:`Resample`, in that order; each
maps ``(C, *S_in)`` to ``(C, *S_out)`` (``forward``), back (``backward``), and the grid's affine
(``affine_after``). The first two move voxels without interpolating: the grid they reach is the
case's *exact grid*, on which a voxel-wise decision equals one made on the input grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F

from volseg import io as vio
from volseg.config import PreprocessingConfig
from volseg.errors import ConfigError, InputFileError, ShapeError

__all__ = [
    "CasePreprocessor",
    "PreparedCase",
    "check_preprocessing",
    "inference_transforms",
    "invert_to_input",
    "preprocess",
    "read_case",
]

Mode = Literal["nearest", "bilinear"]
#: Spacings (mm) and affines closer than this count as equal (no resampling); MONAI's tolerance.
AFFINE_TOL = 1e-3


# ---------------------------------------------------------------------------------------- reading
def read_case(
    images: Any, label: Any = None, *, case_id: str = "?"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image ``(C, *S)`` float32, its voxel -> RAS affine and the label ``(1, *S)`` float32 (or ``None``).

    ``images``: channel files (or :class:`volseg.io.Volume` objects already read), stacked, or one
    4D file; ``label``: a file or ``None``. Channel files and the label must share the first file's
    grid (:class:`ShapeError`); unreadable files raise :class:`InputFileError`.
    """
    paths = [images] if isinstance(images, (str, os.PathLike, vio.Volume)) else list(images)
    if not paths:
        raise InputFileError(f"case {case_id}: no image files")
    volumes = [p if isinstance(p, vio.Volume) else vio.read_volume(p) for p in paths]
    first = volumes[0]
    for volume in volumes:
        if volume.spatial_dims != 3:
            raise ShapeError(
                f"case {case_id}: {volume.path} is {volume.spatial_dims}D; volseg pipelines need 3D "
                "volumes (2D networks take slices of them)"
            )
        if volume is not first and not vio.same_grid(first, volume, atol=AFFINE_TOL):
            raise ShapeError(
                f"case {case_id}: channel files {first.path} and {volume.path} have different grids "
                f"(shapes {first.spatial_shape} vs {volume.spatial_shape} or affines differ)"
            )
    image = np.empty((sum(v.num_channels for v in volumes), *first.spatial_shape), dtype=np.float32)
    start = 0
    for volume in volumes:  # one converting copy per channel, straight into the stacked array
        channels = image[start : start + volume.num_channels]
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, refused just below
            multi = volume.array.ndim > volume.spatial_dims  # (*S, C), C = 1 included
            channels[...] = np.moveaxis(volume.array, -1, 0) if multi else volume.array
        start += volume.num_channels
        if volume.array.dtype.kind == "f" and not (np.isfinite(channels.min()) and np.isfinite(channels.max())):
            # finite in the file (float64, scaled) but not in float32
            raise InputFileError(
                f"case {case_id}: {volume.path} has values beyond the float32 range "
                f"(magnitude over {np.finfo(np.float32).max:.3g}); rescale the file"
            )
    label_array = None
    if label is not None:
        label_volume = vio.read_volume(label)
        vio.check_same_grid(first, label_volume, atol=AFFINE_TOL)
        if label_volume.num_channels != 1:
            raise ShapeError(
                f"case {case_id}: label {label_volume.path} has {label_volume.num_channels} channels; allowed: 1"
            )
        label_array = label_volume.channels_first()
    return image, np.asarray(first.affine, dtype=np.float64), label_array


def check_preprocessing(pre: PreprocessingConfig) -> None:
    """Raise :class:`ConfigError` for an orientation code, spacing or CT statistics that cannot work."""
    code = pre.orientation.upper()
    if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in ("LR", "AP", "IS")):
        raise ConfigError(
            f"preprocessing.orientation={pre.orientation!r} is not valid; give one letter of L/R, "
            "A/P and I/S each, e.g. 'RAS' or 'LPS'"
        )
    if pre.spacing is not None and (len(pre.spacing) != 3 or not all(float(s) > 0 for s in pre.spacing)):
        raise ConfigError(
            f"preprocessing.spacing={list(pre.spacing)} is not valid; give 3 positive sizes in mm, or null"
        )
    if pre.intensity == "ct":
        missing = [f"preprocessing.{k}" for k in ("clip", "mean", "std") if getattr(pre, k) is None]
        if missing:
            raise ConfigError(
                f"preprocessing.intensity='ct' needs {', '.join(missing)} (dataset statistics; "
                "`volseg plan` writes them)"
            )
        if len(pre.clip) != 2 or pre.clip[0] >= pre.clip[1] or pre.std <= 0:
            raise ConfigError(
                f"preprocessing.clip={pre.clip} / std={pre.std} are not valid; "
                "give clip [low, high] with low < high and std > 0"
            )
    elif pre.intensity not in ("mri", "none"):
        raise ConfigError(f"preprocessing.intensity={pre.intensity!r} is not valid; allowed: 'mri', 'ct', 'none'")


# ---------------------------------------------------------------------------------- spatial steps
class Step(Protocol):
    """A spatial step of the preprocessing (``x``: ``(C, *S)``; ``mode``: how values are interpolated,
    ``fill``: the value of voxels the step had dropped; steps that neither interpolate nor drop voxels
    ignore them)."""

    def forward(self, x: torch.Tensor, mode: Mode) -> torch.Tensor: ...

    def backward(self, x: torch.Tensor, mode: Mode, fill: float = 0) -> torch.Tensor: ...

    def affine_after(self, affine: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Reorient:
    """Flips, then an axis permutation, given as a nibabel orientation ``(axis, flip)`` per input
    axis; ``in_shape``: the spatial shape before."""

    ornt: np.ndarray
    in_shape: tuple[int, ...]

    def _flipped(self) -> list[int]:
        return [axis + 1 for axis, flip in enumerate(self.ornt[:, 1]) if flip == -1]

    def forward(self, x: torch.Tensor, mode: Mode) -> torch.Tensor:
        flips = self._flipped()
        x = x.flip(flips) if flips else x
        return x.permute(0, *(int(a) + 1 for a in np.argsort(self.ornt[:, 0])))

    def backward(self, x: torch.Tensor, mode: Mode, fill: float = 0) -> torch.Tensor:
        x = x.permute(0, *(int(a) + 1 for a in self.ornt[:, 0]))
        flips = self._flipped()
        return x.flip(flips) if flips else x

    def affine_after(self, affine: np.ndarray) -> np.ndarray:
        return affine @ nio.inv_ornt_aff(self.ornt, self.in_shape)


@dataclass(frozen=True)
class Crop:
    """The box ``start:stop`` of a grid of spatial shape ``in_shape``; the way back pads with ``fill``."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    in_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor, mode: Mode) -> torch.Tensor:
        return x[(slice(None), *(slice(a, b) for a, b in zip(self.start, self.stop)))]

    def backward(self, x: torch.Tensor, mode: Mode, fill: float = 0) -> torch.Tensor:
        out = x.new_full((x.shape[0], *self.in_shape), fill)
        out[(slice(None), *(slice(a, b) for a, b in zip(self.start, self.stop)))] = x
        return out

    def affine_after(self, affine: np.ndarray) -> np.ndarray:
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return affine @ shift


@dataclass(frozen=True)
class Resample:
    """From the grid (``in_affine``, ``in_shape``) to (``out_affine``, ``out_shape``) and back,
    interpolating linearly (``bilinear``) or taking the nearest voxel, border values outside."""

    in_affine: np.ndarray
    out_affine: np.ndarray
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor, mode: Mode) -> torch.Tensor:
        return _sample(x, np.linalg.solve(self.in_affine, self.out_affine), self.out_shape, mode)

    def backward(self, x: torch.Tensor, mode: Mode, fill: float = 0) -> torch.Tensor:
        return _sample(x, np.linalg.solve(self.out_affine, self.in_affine), self.in_shape, mode)

    def affine_after(self, affine: np.ndarray) -> np.ndarray:
        return self.out_affine


def _index_to_normalised(shape: Sequence[int]) -> np.ndarray:
    """Voxel index -> grid_sample's [-1, 1] coordinate (``align_corners=False``), as a float32 ``(D+1, D+1)``."""
    n = np.asarray(shape, dtype=np.float64)
    to_norm = np.diag([*(2.0 / n), 1.0])
    to_norm[:-1, -1] = 1.0 / n - 1.0
    return to_norm.astype(np.float32)


def _sample(x: torch.Tensor, xform: np.ndarray, out_shape: Sequence[int], mode: Mode) -> torch.Tensor:
    """``x`` ``(C, *S_in)`` sampled at ``xform @ j`` (input voxel index of output voxel ``j``) -> ``(C, *out_shape)``.

    Every dtype is sampled as float32 (as MONAI does) and cast back; integers are rounded first. The
    sampling matrix is composed in float32, in MONAI's order, so that nearest-voxel ties fall the same way.
    """
    integral = not x.is_floating_point()
    source = x.float()
    theta = (
        _index_to_normalised(source.shape[1:])
        @ xform.astype(np.float32)
        @ np.linalg.inv(_index_to_normalised(out_shape))
    )
    theta = theta[::-1, ::-1][1:]  # grid_sample's axes run last to first; drop the homogeneous row
    theta = np.concatenate([theta[:, 1:], theta[:, :1]], axis=1)  # the translation column back last
    theta_t = torch.as_tensor(np.ascontiguousarray(theta)[None], dtype=source.dtype, device=source.device)
    grid = F.affine_grid(theta_t, [1, source.shape[0], *out_shape], align_corners=False)
    out = F.grid_sample(source[None], grid, mode=mode, padding_mode="border", align_corners=False)[0]
    return out.round().to(x.dtype) if integral else out.to(x.dtype)


def _spacing_target(affine: np.ndarray, shape: Sequence[int], spacing: Sequence[float]) -> tuple[np.ndarray, tuple]:
    """The grid of ``spacing`` (mm) covering the voxel centres of (``affine``, ``shape``): its affine and shape.

    Each axis keeps its direction (and its spacing when within :data:`AFFINE_TOL` of the target);
    the grid starts at the corner voxel that comes first along every output axis, or, when no corner
    does (oblique grids), is centred on the input.
    """
    linear = affine[:3, :3]
    current = np.sqrt((linear**2).sum(axis=0))
    target = np.array([c if abs(c - float(s)) <= AFFINE_TOL else float(s) for c, s in zip(current, spacing)])
    upper = np.linalg.cholesky(linear.T @ linear).T  # linear = rotation @ upper
    new = np.eye(4)
    new[:3, :3] = linear @ np.linalg.inv(upper) @ np.diag(target)
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones((1, corners.shape[1]))])
    in_out = np.linalg.solve(new, affine) @ corners  # corners in output voxel units (without offset)
    out_shape = tuple(int(v) for v in np.round(np.ptp(in_out[:3], axis=1) + 1.0))
    world = affine @ corners
    for i in range(corners.shape[1]):
        if np.allclose(np.min(in_out[:3] - in_out[:3, i : i + 1], axis=1), 0.0, rtol=0.0, atol=1e-8):
            new[:3, 3] = world[:3, i]
            break
    else:
        half_in = linear @ (np.asarray(shape, dtype=float) / 2.0) + affine[:3, 3]
        new[:3, 3] = half_in - new[:3, :3] @ (np.asarray(out_shape, dtype=float) / 2.0)
    return new, out_shape


# ----------------------------------------------------------------------------------- the case
@dataclass
class PreparedCase:
    """A preprocessed case: ``image`` ``(C, *S)`` float32 (``label`` ``(1, *S)`` when given) on the grid
    ``affine``, and the spatial steps (:class:`Step`, applied in order) that led there from the input
    grid ``input_affine`` / ``input_shape``. The exact grid (see the module) has shape :attr:`exact_shape`."""

    image: torch.Tensor
    affine: np.ndarray
    input_affine: np.ndarray
    input_shape: tuple[int, ...]
    steps: list[Step] = field(default_factory=list)
    label: torch.Tensor | None = None
    case_id: str = "case"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def exact_shape(self) -> tuple[int, ...]:
        """The spatial shape of :meth:`to_exact_grid`'s results."""
        resampling = self._resampling_steps()
        return tuple(resampling[0].in_shape) if resampling else self.spatial_shape

    def to_input_grid(self, prediction: torch.Tensor | np.ndarray, mode: Mode = "nearest") -> torch.Tensor:
        """``prediction`` ``(C, *S)`` or ``(*S)`` on this grid -> ``(C, *S_in)`` (or ``(*S_in)``) on the input grid.

        ``nearest`` for labels (integer dtypes are kept), ``bilinear`` for probabilities; zero
        outside the crop. Runs on the prediction's device.
        """
        return self.place_on_input(self.to_exact_grid(prediction, mode))

    def to_exact_grid(self, prediction: torch.Tensor | np.ndarray, mode: Mode = "nearest") -> torch.Tensor:
        """Undo only the resampling: ``(C, *S)`` or ``(*S)`` -> the same on the grid that crop and
        reorientation alone make from the input (each voxel an input voxel). A voxel-wise decision
        made there and then placed by :meth:`place_on_input` equals one made on the input grid,
        on fewer voxels."""
        if mode not in ("nearest", "bilinear"):
            raise ConfigError(f"mode={mode!r} is not valid; allowed: 'nearest', 'bilinear'")
        pred = torch.as_tensor(prediction)
        squeeze = pred.ndim == len(self.spatial_shape)
        pred = pred[None] if squeeze else pred
        if tuple(pred.shape[1:]) != self.spatial_shape:
            raise ShapeError(
                f"prediction shape {tuple(pred.shape)} does not match the preprocessed image "
                f"(C, {', '.join(map(str, self.spatial_shape))})"
            )
        for step in reversed(self._resampling_steps()):
            pred = step.backward(pred, mode)
        return pred[0] if squeeze else pred

    def place_on_input(self, values: torch.Tensor | np.ndarray, fill: float = 0) -> torch.Tensor:
        """``values`` ``(C, *S_exact)`` or ``(*S_exact)`` from :meth:`to_exact_grid` (or decided there)
        -> the input grid, ``fill`` outside the crop; exact for any dtype."""
        exact_steps = self.steps[: len(self.steps) - len(self._resampling_steps())]
        values = torch.as_tensor(values)
        squeeze = values.ndim == len(self.exact_shape)
        out = values[None] if squeeze else values
        for step in reversed(exact_steps):
            out = step.backward(out, "nearest", fill)
        return out[0] if squeeze else out

    def _resampling_steps(self) -> list[Step]:
        """The trailing steps that interpolate (all of them come after the exact ones)."""
        count = 0
        for step in reversed(self.steps):
            if not isinstance(step, Resample):
                break
            count += 1
        return self.steps[len(self.steps) - count :]


def _normalise_nonzero(image: torch.Tensor) -> torch.Tensor:
    """Each channel of ``image`` ``(C, *S)``, in place: its non-zero voxels to zero mean and unit
    standard deviation (population); zeros stay."""
    for channel in image:
        inside = channel != 0
        if bool(inside.any()):
            values = channel[inside]
            std = float(values.std(unbiased=False))
            channel[inside] = (values - values.mean()) / (std if std != 0.0 else 1.0)
    return image


def preprocess(
    image: torch.Tensor | np.ndarray,
    affine: np.ndarray,
    pre: PreprocessingConfig,
    *,
    label: torch.Tensor | np.ndarray | None = None,
    case_id: str = "case",
) -> PreparedCase:
    """Crop to the non-zero box (``pre.crop_foreground``; the whole volume when it is all zeros),
    reorient to ``pre.orientation`` (the same result as reorienting first), resample to
    ``pre.spacing`` (linear for the image, nearest for the label), normalise (``mri``: z-score of
    each channel's non-zero voxels; ``ct``: clip, then z-score).

    ``image`` ``(C, *S)``, ``label`` ``(1, *S)`` on the grid ``affine`` (voxel -> RAS mm). The
    returned tensors never share memory with the arguments.
    """
    check_preprocessing(pre)
    image_t, label_t = _native_tensor(image, np.float32), None if label is None else _native_tensor(label)
    if image_t.ndim != 4 or (label_t is not None and (label_t.ndim != 4 or label_t.shape[1:] != image_t.shape[1:])):
        found = "" if label_t is None else f" and label {tuple(label_t.shape)}"
        raise ShapeError(
            f"case {case_id}: preprocess takes an image (C, X, Y, Z) and a label (1, X, Y, Z) on its grid; "
            f"got image {tuple(image_t.shape)}{found}"
        )
    input_affine = np.asarray(affine, dtype=np.float64)
    input_shape = tuple(int(n) for n in image_t.shape[1:])
    out_image, out_label, grid_affine, steps = image_t.float(), label_t, input_affine.copy(), []

    def apply(step: Step) -> None:
        nonlocal out_image, out_label, grid_affine
        out_image = step.forward(out_image, "bilinear")
        out_label = None if out_label is None else step.forward(out_label, "nearest")
        grid_affine = step.affine_after(grid_affine)
        steps.append(step)

    if pre.crop_foreground:  # first: the reorientation and resampling then touch only the box
        inside = (out_image != 0).any(dim=0)
        if bool(inside.any()):
            bounds = [torch.nonzero(inside.any(dim=[d for d in range(3) if d != axis])) for axis in range(3)]
            start = tuple(int(b[0]) for b in bounds)
            stop = tuple(int(b[-1]) + 1 for b in bounds)
            if start != (0, 0, 0) or stop != input_shape:
                apply(Crop(start, stop, input_shape))
    ornt = nio.ornt_transform(nio.io_orientation(grid_affine), nio.axcodes2ornt(tuple(pre.orientation.upper())))
    if not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        apply(Reorient(ornt, tuple(out_image.shape[1:])))
    if pre.spacing is not None:
        shape = tuple(out_image.shape[1:])
        target_affine, target_shape = _spacing_target(grid_affine, shape, pre.spacing)
        unchanged = np.allclose(target_affine, grid_affine, atol=AFFINE_TOL) or np.allclose(
            np.linalg.solve(grid_affine, target_affine), np.eye(4), atol=AFFINE_TOL
        )
        if not (unchanged and target_shape == shape):
            apply(Resample(grid_affine, target_affine, shape, target_shape))
    if pre.intensity == "mri":  # in place, so never on the caller's memory
        out_image = _normalise_nonzero(_own_copy(out_image, image_t))
    elif pre.intensity == "ct":  # a new tensor
        (low, high), mean, std = pre.clip, pre.mean, pre.std
        out_image = (out_image.clamp(low, high) - mean) / std
    else:
        out_image = _own_copy(out_image, image_t)
    out_label = None if out_label is None else _own_copy(out_label, label_t)
    return PreparedCase(out_image.contiguous(), grid_affine, input_affine, input_shape, steps, out_label, case_id)


def _native_tensor(array: torch.Tensor | np.ndarray, dtype: Any = None) -> torch.Tensor:
    """A tensor view of ``array`` where it can be one; numpy arrays in another byte order (or not
    ``dtype``, when given) are converted first."""
    if isinstance(array, torch.Tensor):
        return array
    array = np.asarray(array)
    wanted = np.dtype(dtype) if dtype is not None else array.dtype.newbyteorder("=")
    return torch.as_tensor(array if array.dtype == wanted else array.astype(wanted))


def _own_copy(result: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``result``, copied when it still shares memory with the caller's ``source``."""
    return result.clone() if result.untyped_storage().data_ptr() == source.untyped_storage().data_ptr() else result


# ------------------------------------------------------------------------- the inference door
class CasePreprocessor:
    """Preprocessing of an inference item ``{"image": channel files or Volumes, "case_id": str}``
    into a :class:`PreparedCase`; pair with :func:`invert_to_input` for the predictions."""

    def __init__(self, preprocessing: PreprocessingConfig) -> None:
        check_preprocessing(preprocessing)
        self.preprocessing = preprocessing

    def __call__(self, item: dict[str, Any]) -> PreparedCase:
        case_id = str(item.get("case_id") or item.get("image", "?"))
        image, affine, _ = read_case(item["image"], case_id=case_id)
        return preprocess(image, affine, self.preprocessing, case_id=case_id)


def inference_transforms(preprocessing: PreprocessingConfig) -> CasePreprocessor:
    """The preprocessing of inference items (see :class:`CasePreprocessor`)."""
    return CasePreprocessor(preprocessing)


def invert_to_input(
    prediction: torch.Tensor | np.ndarray, case: PreparedCase, *, mode: Mode = "nearest"
) -> torch.Tensor:
    """``prediction`` on ``case``'s preprocessed grid back on its input grid (:meth:`PreparedCase.to_input_grid`)."""
    if not isinstance(case, PreparedCase):
        raise ShapeError(f"expected the PreparedCase that inference_transforms returned; got {type(case).__name__}")
    return case.to_input_grid(prediction, mode)
