"""Tests of volseg.data.transforms and volseg.data.augment on tiny NIfTI volumes written in tmp_path."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import volseg.io
from volseg.config import Config, PreprocessingConfig, config_from_dict
from volseg.data import transforms as T
from volseg.data.augment import RandElastic2Dd
from volseg.data.label_space import LabelSpace
from volseg.errors import ConfigError, InputFileError, ShapeError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAPE = (20, 24, 16)
BRATS_LABELS = {0: "background", 1: "core", 2: "edema", 4: "enhancing"}
BRATS_REGIONS = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
ALL_AUGMENTATIONS = {
    **{
        name: {"prob": 1.0}
        for name in ("flip", "rotate90", "affine", "elastic", "noise", "blur", "brightness", "contrast")
    },
    "elastic": {"prob": 1.0, "sigma": [2.0, 3.0], "magnitude": [50.0, 100.0]},
    "gamma": {"prob": 1.0, "range": [0.7, 1.5]},
    "low_resolution": {"prob": 1.0, "range": [0.5, 1.0]},
}


def lps_affine(spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [30.0, 40.0, -10.0]
    return affine


def brats_like(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A brain-ish image (zero outside a box) and a nested BraTS label (2 around 1 and 4)."""
    image = np.zeros(SHAPE, np.float32)
    image[2:18, 3:21, 1:15] = rng.uniform(10, 110, (16, 18, 14))
    label = np.zeros(SHAPE, np.uint8)
    label[5:12, 6:14, 4:10] = 2
    label[7:10, 8:12, 5:8] = 1
    label[8:10, 9:11, 6:8] = 4
    return image, label


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


@pytest.fixture
def case(tmp_path: Path) -> dict:
    """Two channels and a BraTS label, LPS, 1 mm."""
    image, label = brats_like(np.random.default_rng(1))
    return {
        "case_id": "case1",
        "image": [
            save(tmp_path / "c_t1.nii.gz", image, lps_affine()),
            save(tmp_path / "c_t2.nii.gz", image * 3 + 5 * (image > 0), lps_affine()),
        ],
        "label": save(tmp_path / "c_seg.nii.gz", label, lps_affine()),
        "arrays": (image, label),
    }


def config(**sections: dict) -> Config:
    sections.setdefault("data", {"labels": BRATS_LABELS})
    sections.setdefault("augmentation", {name: {"prob": 0.0} for name in ALL_AUGMENTATIONS})
    return config_from_dict(sections)


def pre(**values) -> PreprocessingConfig:
    return PreprocessingConfig(**{"spacing": None, "crop_foreground": False, "intensity": "none", **values})


# ----------------------------------------------------------------------------- preprocessing


def test_orientation_flips_lps_to_ras_exactly(case: dict) -> None:
    out = T.preprocessing_transforms(pre(), with_label=True, label_space=LabelSpace(BRATS_LABELS))(case)
    image, label = case["arrays"]
    assert out["image"].shape == (2, *SHAPE)
    assert nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")
    np.testing.assert_array_equal(out["image"][0].numpy(), image[::-1, ::-1, :])
    assert np.array_equal(out["label"][0].numpy() > 0, label[::-1, ::-1, :] > 0)


def test_spacing_gives_ras_affine_with_target_spacing(tmp_path: Path) -> None:
    image, label = brats_like(np.random.default_rng(2))
    item = {
        "case_id": "s",
        "image": save(tmp_path / "a.nii.gz", image, lps_affine((1.0, 1.5, 2.0))),
        "label": save(tmp_path / "b.nii.gz", label, lps_affine((1.0, 1.5, 2.0))),
    }
    out = T.preprocessing_transforms(
        pre(spacing=[2.0, 1.0, 1.0]), with_label=True, label_space=LabelSpace(BRATS_LABELS)
    )(item)
    affine = out["image"].affine.numpy()
    np.testing.assert_allclose(affine[:3, :3], np.diag([2.0, 1.0, 1.0]), atol=1e-6)
    # MONAI keeps the span of the voxel centres: (n - 1) * s / t + 1 voxels, rounded
    assert out["image"].shape[1:] == (10, 36, 31) == out["label"].shape[1:]
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2, 3}  # nearest: no blended label values


def test_mri_zscore_over_nonzero_voxels_per_channel(case: dict) -> None:
    out = T.preprocessing_transforms(pre(intensity="mri"), with_label=False)(case)["image"].numpy()
    mask = case["arrays"][0][::-1, ::-1, :] > 0
    for channel in out:
        assert abs(channel[mask].mean()) < 1e-4
        assert abs(channel[mask].std() - 1.0) < 1e-4
        assert np.all(channel[~mask] == 0)
    raw = case["arrays"][0][::-1, ::-1, :][mask]
    np.testing.assert_allclose(out[0][mask], (raw - raw.mean()) / raw.std(), atol=1e-4)


def test_ct_clip_then_zscore_by_hand(tmp_path: Path) -> None:
    hu = np.random.default_rng(3).uniform(-1000, 1000, SHAPE).astype(np.float32)
    item = {"image": [save(tmp_path / "ct.nii.gz", hu, np.eye(4))]}
    out = T.inference_transforms(pre(intensity="ct", clip=[-100.0, 300.0], mean=50.0, std=25.0))(item)
    np.testing.assert_allclose(out.image[0].numpy(), (np.clip(hu, -100, 300) - 50) / 25, rtol=1e-5, atol=1e-4)


def test_crop_foreground_to_nonzero_box(tmp_path: Path) -> None:
    image = np.zeros(SHAPE, np.float32)
    image[3:15, 5:20, 2:12] = 1.0
    image[4, 6, 3] = 0.0  # a hole inside does not matter
    label = (image > 0).astype(np.uint8)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    item = {
        "case_id": "crop",
        "image": save(tmp_path / "i.nii.gz", image, affine),
        "label": save(tmp_path / "l.nii.gz", label, affine),
    }
    out = T.preprocessing_transforms(
        pre(crop_foreground=True), with_label=True, label_space=LabelSpace({0: "bg", 1: "fg"})
    )(item)
    assert out["image"].shape == (1, 12, 15, 10) == out["label"].shape
    np.testing.assert_allclose(out["image"].affine.numpy()[:3, 3], [3.0, 5.0, 2.0])
    assert int(out["label"].sum()) == int(label.sum())


def test_all_zero_image_is_kept_whole_and_inverts(tmp_path: Path) -> None:
    item = {"image": save(tmp_path / "zero.nii.gz", np.zeros(SHAPE, np.float32), lps_affine())}
    data = T.inference_transforms(pre(crop_foreground=True, intensity="mri"))(item)
    assert data.image.shape == (1, *SHAPE) and not data.image.any()
    assert T.invert_to_input(torch.ones(SHAPE, dtype=torch.uint8), data).shape == SHAPE


def test_brats_label_values_map_to_consecutive_classes(case: dict) -> None:
    out = T.preprocessing_transforms(pre(), with_label=True, label_space=LabelSpace(BRATS_LABELS))(case)
    expected = np.array([0, 1, 2, 0, 3])[case["arrays"][1][::-1, ::-1, :]]
    assert out["label"].dtype == torch.uint8
    np.testing.assert_array_equal(out["label"][0].numpy(), expected)
    back = T.class_indices_to_labels(out["label"][0].numpy(), BRATS_LABELS)
    np.testing.assert_array_equal(back, case["arrays"][1][::-1, ::-1, :])


def test_unknown_label_value_names_case_and_values(case: dict, tmp_path: Path) -> None:
    label = case["arrays"][1].copy()
    label[0, 0, 0] = 3
    case["label"] = save(tmp_path / "bad.nii.gz", label, lps_affine())
    with pytest.raises(InputFileError, match=r"case1.*values 3 .*allowed: 0, 1, 2, 4"):
        T.preprocessing_transforms(pre(), with_label=True, label_space=LabelSpace(BRATS_LABELS))(case)


def test_label_on_another_grid_is_a_shape_error(case: dict, tmp_path: Path) -> None:
    case["label"] = save(tmp_path / "small.nii.gz", np.zeros((20, 24, 15), np.uint8), lps_affine())
    with pytest.raises(ShapeError, match="different shapes"):
        T.preprocessing_transforms(pre(), with_label=True, label_space=LabelSpace(BRATS_LABELS))(case)


# ----------------------------------------------------------------------------- regions


@pytest.mark.parametrize("enhancing", [4, 3], ids=["brats2018", "brats2023"])
def test_regions_round_trip_is_exact(enhancing: int) -> None:
    regions = {"WT": [1, 2, enhancing], "TC": [1, enhancing], "ET": [enhancing]}
    labels = np.array([[0, 1, 2, enhancing], [2, 2, 1, 0]], dtype=np.uint8)[None]
    masks = T.LabelsToRegionsd("label", regions)({"label": torch.from_numpy(labels)})["label"].numpy()
    np.testing.assert_array_equal(masks[:, 0], [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]])  # WT, TC, ET
    from_floats = T.LabelsToRegionsd("label", regions)({"label": torch.from_numpy(labels).float()})["label"]
    np.testing.assert_array_equal(from_floats.numpy(), masks)
    np.testing.assert_array_equal(T.regions_to_labels(masks, regions), labels[0])
    np.testing.assert_array_equal(T.regions_to_labels(masks.astype(np.float32) * 0.9, regions), labels[0])
    from volseg.data.labels import labels_to_regions  # the numpy form, for label maps

    assert labels_to_regions(labels[0], regions).dtype == bool
    np.testing.assert_array_equal(labels_to_regions(labels[0], regions), masks.astype(bool))


def test_inconsistent_regions_resolve_to_the_smallest_region() -> None:
    masks = np.zeros((3, 4), bool)  # WT, TC, ET
    masks[2, 0] = True  # ET alone -> enhancing
    masks[1, 1] = True  # TC alone -> core
    masks[[0, 2], 2] = True  # WT and ET without TC -> enhancing
    np.testing.assert_array_equal(T.regions_to_labels(masks, BRATS_REGIONS), [4, 1, 4, 0])


def test_preprocessing_with_regions_gives_one_channel_each(case: dict) -> None:
    out = T.preprocessing_transforms(pre(), with_label=True, label_space=LabelSpace(BRATS_LABELS, BRATS_REGIONS))(case)
    raw = case["arrays"][1][::-1, ::-1, :]
    assert out["label"].shape == (3, *SHAPE)
    for channel, values in zip(out["label"].numpy(), BRATS_REGIONS.values()):
        np.testing.assert_array_equal(channel, np.isin(raw, values))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "dims, patch, regions, class_balanced",
    [
        (3, [8, 12, 6], None, False),
        (3, [8, 8, 8], BRATS_REGIONS, True),
        (2, [10, 12], None, True),
        (2, [8, 8], BRATS_REGIONS, False),
    ],
)
def test_training_patches_have_patch_shape(case: dict, dims, patch, regions, class_balanced) -> None:
    cfg = config(
        data={"labels": BRATS_LABELS, "regions": regions},
        network={"spatial_dims": dims},
        sampling={"patch_size": patch, "class_balanced": class_balanced},
        preprocessing={"spacing": [1.5, 1.5, 1.5]},
    )
    out = T.training_transforms(cfg)(case)
    assert type(out["image"]) is torch.Tensor and out["image"].dtype == torch.float32
    assert tuple(out["image"].shape) == (2, *patch)
    assert tuple(out["label"].shape) == (3 if regions else 1, *patch)
    assert out["label"].dtype == (torch.float32 if regions else torch.int64)


@pytest.mark.parametrize("class_balanced", [False, True])
def test_foreground_ratio_one_always_contains_foreground(tmp_path: Path, class_balanced: bool) -> None:
    image = np.ones(SHAPE, np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[17:19, 1:3, 13:15] = 1  # 8 voxels near a corner
    item = {
        "image": save(tmp_path / "i.nii.gz", image, np.eye(4)),
        "label": save(tmp_path / "l.nii.gz", label, np.eye(4)),
    }

    def patches(ratio: float) -> list[int]:
        cfg = config(
            data={"labels": {0: "bg", 1: "fg"}},
            preprocessing={"intensity": "none"},
            sampling={"patch_size": [5, 5, 5], "foreground_ratio": ratio, "class_balanced": class_balanced},
        )
        pipeline = T.training_transforms(cfg)
        pipeline.set_random_state(seed=0)
        return [int(pipeline(item)["label"].sum()) for _ in range(15)]

    assert min(patches(1.0)) > 0
    assert min(patches(0.0)) == 0  # the check above could fail: uniform patches miss the blob


@pytest.mark.parametrize("class_balanced", [False, True])
def test_case_without_foreground_still_gives_patches(tmp_path: Path, class_balanced: bool) -> None:
    empty = np.zeros(SHAPE, np.uint8)
    item = {
        "image": save(tmp_path / "i.nii.gz", np.ones(SHAPE, np.float32), np.eye(4)),
        "label": save(tmp_path / "l.nii.gz", empty, np.eye(4)),
    }
    cfg = config(sampling={"patch_size": [6, 6, 6], "foreground_ratio": 1.0, "class_balanced": class_balanced})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns that there is no foreground
        out = T.training_transforms(cfg)(item)
    assert out["label"].shape == (1, 6, 6, 6) and not out["label"].any()


@pytest.mark.parametrize("dims, patch", [(3, [8, 8, 8]), (2, [12, 12])])
def test_every_augmentation_runs_and_keeps_labels_integral(case: dict, dims: int, patch: list[int]) -> None:
    cfg = config(
        network={"spatial_dims": dims},
        sampling={"patch_size": patch, "foreground_ratio": 1.0},
        augmentation=ALL_AUGMENTATIONS,
        preprocessing={"intensity": "mri"},
    )
    pipeline = T.training_transforms(cfg)
    names = [type(t).__name__ for t in pipeline.transforms]
    expected = [
        "RandAffined",
        "Rand3DElasticd" if dims == 3 else "RandElastic2Dd",
        "RandRotate90d",
        "RandFlipd",
        "RandGaussianNoised",
        "RandGaussianSmoothd",
        "RandScaleIntensityd",
        "RandScaleIntensityFixedMeand",
        "RandSimulateLowResolutiond",
        "RandAdjustContrastd",
    ]
    assert all(name in names for name in expected) and names.count("RandFlipd") == dims
    plain = T.training_transforms(config(network={"spatial_dims": dims}, sampling={"patch_size": patch}))
    assert len(names) == len(plain.transforms) + len(expected) + dims - 1
    for _ in range(4):
        out = pipeline(case)
        assert tuple(out["image"].shape) == (2, *patch) and torch.isfinite(out["image"]).all()
        assert tuple(out["label"].shape) == (1, *patch)
        assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2, 3}


def test_elastic_2d_moves_image_and_label_together() -> None:
    label = torch.zeros(1, 32, 32)
    label[0, 8:24, 12:20] = 1
    elastic = RandElastic2Dd(["image", "label"], (3.0, 3.0), (400.0, 400.0), prob=1.0, mode=["bilinear", "nearest"])
    elastic.set_random_state(seed=0)
    out = elastic({"image": label.clone() * 5, "label": label.clone()})
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    assert not torch.equal(out["label"], label)  # it did deform
    assert torch.equal(out["image"] > 2.5, out["label"] > 0.5)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"preprocessing": {"intensity": "ct", "clip": [-100.0, 200.0]}}, "preprocessing.mean, preprocessing.std"),
        ({"preprocessing": {"orientation": "RAR"}}, "orientation"),
        (
            {"sampling": {"patch_size": [8, 8, 4]}, "augmentation": {"rotate90": {"prob": 0.5, "axes": [0, 2]}}},
            "equal patch sizes",
        ),
        ({"data": {"labels": BRATS_LABELS, "regions": {"ET": [5]}}}, r"regions\['ET'\].*values 5"),
    ],
)
def test_config_problems_are_config_errors(sections: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        T.training_transforms(config(**sections))


# ----------------------------------------------------------------------------- inversion


def test_inversion_returns_label_to_lps_file_grid_exactly(case: dict) -> None:
    settings = pre(orientation="RAS", spacing=[1.0, 1.0, 1.0], crop_foreground=True, intensity="mri")
    data = T.inference_transforms(settings)({"image": case["image"], "case_id": "case1"})
    assert data.image.shape == (2, 16, 18, 14)  # cropped
    # the "prediction": the label pushed through the same preprocessing, as indices and one-hot
    label = T.preprocessing_transforms(settings, with_label=True, label_space=LabelSpace(BRATS_LABELS))(case)[
        "label"
    ].as_tensor()
    assert label.shape[1:] == data.image.shape[1:]
    back = T.invert_to_input(label[0], data)
    original = nib.load(case["label"])
    assert back.shape == original.shape and back.dtype == torch.uint8
    np.testing.assert_allclose(data.input_affine, original.affine, atol=1e-5)
    np.testing.assert_array_equal(T.class_indices_to_labels(back.numpy(), BRATS_LABELS), case["arrays"][1])
    one_hot = torch.nn.functional.one_hot(label[0].long(), 4).permute(3, 0, 1, 2).float()
    back = T.invert_to_input(one_hot, data, mode="bilinear")
    assert back.shape == (4, *SHAPE)
    np.testing.assert_array_equal(back.argmax(0).numpy(), np.array([0, 1, 2, 0, 3])[case["arrays"][1]])


def test_inversion_of_oblique_anisotropic_volume(tmp_path: Path) -> None:
    image, _ = brats_like(np.random.default_rng(4))
    angle = math.radians(20)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, -1.2, 2.5])
    affine[:3, 3] = [5.0, -7.0, 12.0]
    path = save(tmp_path / "oblique.nii.gz", image, affine)
    data = T.inference_transforms(pre(spacing=[1.0, 1.0, 1.0], crop_foreground=True, intensity="mri"))({"image": path})
    assert not np.allclose(data.image.shape[1:], image.shape)  # resampled
    probabilities = torch.cat([data.image == 0, data.image != 0]).float()  # a (2, *S) "prediction"
    back = T.invert_to_input(probabilities, data, mode="bilinear")
    assert back.shape == (2, *image.shape)
    np.testing.assert_allclose(data.input_affine, nib.load(path).affine, atol=1e-5)
    inside = back[1].numpy() > 0.5
    dice = 2 * (inside & (image > 0)).sum() / (inside.sum() + (image > 0).sum())
    assert dice > 0.9


def test_inversion_rejects_a_prediction_of_another_shape(case: dict) -> None:
    data = T.inference_transforms(pre())({"image": case["image"]})
    with pytest.raises(ShapeError, match="does not match"):
        T.invert_to_input(torch.zeros(1, 5, 5, 5), data)


# ----------------------------------------------------------------------------- caching


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = volseg.io.read_volume

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(volseg.io, "read_volume", counting)
    return calls


def test_memory_cache_reads_each_file_once(case: dict, count_reads: list[str]) -> None:
    cfg = config(sampling={"patch_size": [8, 8, 8]})
    dataset = T.make_dataset([case], T.training_transforms(cfg), cache="memory")
    assert len(count_reads) == 3  # two channels and the label, read while filling the cache
    shapes = {tuple(dataset[0]["image"].shape) for _ in range(3)}
    assert shapes == {(2, 8, 8, 8)} and len(count_reads) == 3
    uncached = T.make_dataset([case], T.training_transforms(cfg), cache="none")
    uncached[0], uncached[0]
    assert len(count_reads) == 9  # the counter does see reads


def test_disk_cache_is_reused_by_a_new_dataset(case: dict, count_reads: list[str], tmp_path: Path) -> None:
    pipeline = T.validation_transforms(config())
    first = T.make_dataset([case], pipeline, cache="disk", cache_dir=tmp_path / "cache")[0]
    second = T.make_dataset([case], pipeline, cache="disk", cache_dir=tmp_path / "cache")[0]
    assert len(count_reads) == 3
    assert torch.equal(torch.as_tensor(first["label"]), torch.as_tensor(second["label"]))
    with pytest.raises(ConfigError, match="cache_dir"):
        T.make_dataset([case], pipeline, cache="disk")


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_brats_case_has_four_channels_and_nested_regions() -> None:
    root = SHARED_DATA / "brats2018"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (it lives in ../shared/data beside the checkout)")
    folder = sorted(p for p in root.iterdir() if p.is_dir())[0]
    name = folder.name
    item = {
        "case_id": name,
        "image": [str(folder / f"{name}_{c}.nii.gz") for c in ("flair", "t1", "t1ce", "t2")],
        "label": str(folder / f"{name}_seg.nii.gz"),
    }
    out = T.validation_transforms(config(data={"labels": BRATS_LABELS, "regions": BRATS_REGIONS}))(item)
    assert out["image"].shape[0] == 4 and out["label"].shape[0] == 3
    assert out["image"].shape[1:] == out["label"].shape[1:] and max(out["image"].shape[1:]) < 240  # cropped
    wt, tc, et = out["label"].bool()
    assert wt.any() and tc.any() and et.any()
    assert not (tc & ~wt).any() and not (et & ~tc).any()
