"""volseg's own preprocessing against MONAI's transforms, which it replaces on the inference path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CropForegroundd, NormalizeIntensityd, Orientationd, Spacingd

from volseg.config import PreprocessingConfig
from volseg.data.preprocess import Crop, Reorient, Resample, inference_transforms, invert_to_input, preprocess
from volseg.errors import ConfigError, ShapeError
from volseg.io import Volume


def rotation(degrees: np.ndarray) -> np.ndarray:
    """A rotation about x, then y, then z (degrees)."""
    out = np.eye(3)
    for axis, angle in enumerate(np.radians(degrees)):
        c, s = np.cos(angle), np.sin(angle)
        r = np.eye(3)
        i, j = [a for a in range(3) if a != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def random_case(seed: int, oblique: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image (1, *S) with zero slabs, a label (1, *S) and an affine with permuted, flipped,
    anisotropic (and, when ``oblique``, rotated) axes."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(10, 22, 3))
    image = (rng.normal(size=shape) * 100 + 50).astype(np.float32)
    image[:2], image[:, -3:] = 0, 0
    label = ((rng.random(shape) > 0.6) * rng.integers(1, 3, shape)).astype(np.float32)
    label[image == 0] = 0
    affine = np.eye(4)
    turn = rotation(rng.uniform(-30, 30, 3)) if oblique else np.eye(3)
    axes = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)
    affine[:3, :3] = axes @ turn @ np.diag(rng.uniform(0.6, 2.5, 3))
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    return image[None], label[None], affine


def monai_pipeline(pre: PreprocessingConfig, keys: list[str]) -> Compose:
    modes = ["bilinear", "nearest"][: len(keys)]
    steps = [Orientationd(keys, axcodes=pre.orientation, labels=None)]
    if pre.crop_foreground:
        steps.append(CropForegroundd(keys, source_key="image", select_fn=lambda x: x != 0, allow_smaller=True))
    if pre.spacing is not None:
        steps.append(Spacingd(keys, pixdim=pre.spacing, mode=modes, dtype=torch.float32))
    return Compose(steps)


SETTINGS = [
    dict(orientation="RAS", spacing=None, crop_foreground=True),
    dict(orientation="LPS", spacing=[1.0, 1.0, 1.0], crop_foreground=True),
    dict(orientation="RAS", spacing=[1.5, 0.8, 2.0], crop_foreground=False),
    dict(orientation="RAS", spacing=[2.0, 2.0, 2.0], crop_foreground=True),
]


@pytest.mark.parametrize("oblique", [False, True], ids=["axis-aligned", "oblique"])
@pytest.mark.parametrize("settings", range(len(SETTINGS)))
def test_matches_monai_forward_and_back(settings: int, oblique: bool) -> None:
    pre = PreprocessingConfig(intensity="none", **SETTINGS[settings])
    image, label, affine = random_case(10 * settings + oblique, oblique)
    ours = preprocess(image, affine, pre, label=label)
    meta = {"affine": torch.as_tensor(affine)}
    both = {"image": MetaTensor(torch.from_numpy(image), meta=meta), "label": MetaTensor(label, meta=meta)}
    reference_label = monai_pipeline(pre, ["image", "label"])(both)["label"]
    image_pipeline = monai_pipeline(pre, ["image"])  # the instance that inverts what it did
    reference = image_pipeline({"image": MetaTensor(torch.from_numpy(image), meta=meta)})["image"]
    assert ours.image.shape == reference.shape
    # intensities reach ~400: 1e-3 is float32 rounding of the interpolation weights, no more
    torch.testing.assert_close(ours.image, reference.as_tensor(), atol=1e-3, rtol=1e-5)
    assert torch.equal(ours.label, reference_label.as_tensor())  # nearest: the same voxels, ties included
    np.testing.assert_allclose(ours.affine, reference.affine.numpy(), atol=1e-9)

    probabilities = torch.rand((2, *ours.spatial_shape), generator=torch.Generator().manual_seed(settings))
    prediction = MetaTensor(probabilities, meta=reference.meta)
    prediction.applied_operations = reference.applied_operations
    back = image_pipeline.inverse({"image": prediction})["image"]
    ours_back = ours.to_input_grid(probabilities, mode="bilinear")
    assert ours_back.shape == (2, *image.shape[1:]) == back.shape
    torch.testing.assert_close(ours_back, back.as_tensor(), atol=1e-5, rtol=1e-5)


def test_normalisation_matches_monai_and_spares_the_input() -> None:
    image, _, affine = random_case(7, oblique=False)
    image = np.concatenate([image, image * 3 - 1 * (image != 0)])
    original = image.copy()
    pre = PreprocessingConfig(orientation="RAS", spacing=None, crop_foreground=False, intensity="mri")
    ours = preprocess(image, affine, pre).image
    reference = monai_pipeline(pre, ["image"])({"image": MetaTensor(torch.from_numpy(image.copy()), affine=affine)})
    reference = NormalizeIntensityd("image", nonzero=True, channel_wise=True)(reference)["image"].as_tensor()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(image, original)  # the caller's array is untouched
    inputs_already_ras = preprocess(image, np.eye(4), pre).image  # no spatial step: still a copy
    assert not np.shares_memory(inputs_already_ras.numpy(), image)


def test_steps_are_skipped_when_nothing_changes() -> None:
    image = np.zeros((1, 8, 9, 10), np.float32)
    image[0, 2:5, 3:6, 4:7] = 1.0
    pre = PreprocessingConfig(orientation="RAS", spacing=[1.0, 1.0, 1.0], crop_foreground=True, intensity="none")
    case = preprocess(image, np.eye(4), pre)
    assert [type(s) for s in case.steps] == [Crop]  # already RAS and 1 mm
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    case = preprocess(image, flipped, PreprocessingConfig(orientation="RAS", spacing=[2.0, 1.0, 1.0]))
    assert [type(s) for s in case.steps] == [Crop, Reorient, Resample]


def test_label_round_trip_on_an_exact_grid_keeps_integer_labels() -> None:
    image, label, affine = random_case(3, oblique=False)
    pre = PreprocessingConfig(orientation="LPI", spacing=None, crop_foreground=True, intensity="none")
    case = preprocess(image, affine, pre, label=label)
    back = case.to_input_grid(case.label[0].to(torch.uint8))
    assert back.dtype == torch.uint8
    np.testing.assert_array_equal(back.numpy(), label[0].astype(np.uint8))


def test_inference_item_and_errors(tmp_path) -> None:
    image, _, affine = random_case(4, oblique=True)
    volume = Volume(image[0], affine)
    prepare = inference_transforms(PreprocessingConfig(spacing=[1.0, 1.0, 1.0]))
    case = prepare({"image": [volume], "case_id": "c1"})
    assert case.case_id == "c1" and case.input_shape == image.shape[1:]
    with pytest.raises(ShapeError, match=r"does not match the preprocessed image"):
        invert_to_input(torch.zeros(1, 2, 2, 2), case)
    with pytest.raises(ShapeError, match="PreparedCase"):
        invert_to_input(torch.zeros(1, 2, 2, 2), {"image": image})
    with pytest.raises(ConfigError, match="mode='cubic' is not valid"):
        case.to_input_grid(torch.zeros(case.image.shape), mode="cubic")
    with pytest.raises(ConfigError, match="orientation='RAX'"):
        inference_transforms(PreprocessingConfig(orientation="RAX"))


@pytest.mark.parametrize("oblique", [False, True], ids=["axis-aligned", "oblique"])
def test_a_decision_on_the_exact_grid_equals_one_on_the_input_grid(oblique: bool) -> None:
    image, _, affine = random_case(21 + oblique, oblique)
    case = preprocess(image, affine, PreprocessingConfig(orientation="LPS", spacing=[1.2, 0.9, 1.4]))
    assert [type(s) for s in case.steps] == [Crop, Reorient, Resample]
    scores = torch.rand((3, *case.spatial_shape), generator=torch.Generator().manual_seed(5))
    on_input = case.to_input_grid(scores, mode="bilinear").argmax(0)  # zeros outside the crop -> class 0
    exact = case.to_exact_grid(scores, mode="bilinear")
    assert exact.shape[1:] == case.exact_shape and np.prod(case.exact_shape) < np.prod(image.shape[1:])
    placed = case.place_on_input(exact.argmax(0).to(torch.uint8))
    assert placed.dtype == torch.uint8 and placed.shape == image.shape[1:]
    assert torch.equal(placed.long(), on_input)


def test_ct_window_matches_monai_scale_intensity_range() -> None:
    from monai.transforms import ScaleIntensityRange

    hu = np.random.default_rng(8).uniform(-1200, 1500, (1, 9, 10, 11)).astype(np.float32)
    pre = PreprocessingConfig(
        spacing=None, crop_foreground=False, intensity="ct", clip=[-100.0, 300.0], mean=50.0, std=25.0
    )
    ours = preprocess(hu, np.eye(4), pre).image
    (low, high), mean, std = pre.clip, pre.mean, pre.std
    reference = ScaleIntensityRange(low, high, (low - mean) / std, (high - mean) / std, clip=True)(torch.from_numpy(hu))
    torch.testing.assert_close(ours, torch.as_tensor(reference), atol=1e-5, rtol=1e-6)


def test_results_never_share_the_callers_memory_and_any_input_layout_works() -> None:
    image, label, _ = random_case(9, oblique=False)
    pre = PreprocessingConfig(orientation="RAS", spacing=None, crop_foreground=True, intensity="none")
    case = preprocess(image, np.eye(4), pre, label=label)  # a crop alone: views, unless copied
    assert not np.shares_memory(case.image.numpy(), image) and not np.shares_memory(case.label.numpy(), label)
    swapped = image.astype(">f4")  # big-endian, as some files store it
    torch.testing.assert_close(preprocess(swapped, np.eye(4), pre).image, case.image)
    channels_last = Volume(image[0][..., None], np.eye(4))  # (X, Y, Z, 1)
    prepared = inference_transforms(pre)({"image": [channels_last]})
    torch.testing.assert_close(prepared.image, case.image)


def test_half_precision_maps_are_resampled_as_float32() -> None:
    image, _, affine = random_case(12, oblique=True)
    case = preprocess(image, affine, PreprocessingConfig(spacing=[1.3, 1.3, 1.3]))
    maps = torch.rand((2, *case.spatial_shape), generator=torch.Generator().manual_seed(1))
    half = case.to_exact_grid(maps.half(), mode="bilinear")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), case.to_exact_grid(maps, mode="bilinear"), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("image_shape", "label_shape", "message"),
    [((5, 6, 7), None, r"image \(C, X, Y, Z\).*got image \(5, 6, 7\)"), ((1, 5, 6, 7), (1, 5, 6, 8), "label")],
)
def test_arrays_of_the_wrong_shape_are_shape_errors(image_shape, label_shape, message) -> None:
    label = None if label_shape is None else np.zeros(label_shape, np.float32)
    with pytest.raises(ShapeError, match=message):
        preprocess(np.ones(image_shape, np.float32), np.eye(4), PreprocessingConfig(), label=label)


@pytest.mark.parametrize("spacing", [[2.0, 2.0], [1.0, 0.0, 1.0], [1.0, -1.0, 1.0]])
def test_a_spacing_that_cannot_work_is_a_config_error(spacing) -> None:
    with pytest.raises(ConfigError, match=r"preprocessing.spacing=.* is not valid; give 3 positive sizes"):
        inference_transforms(PreprocessingConfig(spacing=spacing))
