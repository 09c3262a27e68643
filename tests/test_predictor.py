"""Prediction lands on the input's exact grid, for every orientation and spacing; folder runs resume."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from volseg.checkpoint import build_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.errors import OutputExistsError, ShapeError
from volseg.inference.predictor import Predictor
from volseg.io import Volume, read_volume
from volseg.nn import SegmentationNetwork, create_model


class ThresholdNet(SegmentationNetwork):
    """Class 1 where channel 0 is positive: the right answer is known on any grid."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__(3, in_channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[:, :1], x[:, :1]], dim=1) * 10


def config_for(spacing=None, **sections):
    values = {
        "data": {"labels": {0: "background", 1: "positive"}, "channels": ["image"]},
        "preprocessing": {"orientation": "RAS", "spacing": spacing, "intensity": "none", "crop_foreground": True},
        "sampling": {"patch_size": [16, 16, 16]},
    }
    values.update(sections)
    return config_from_dict(values)


def rotation(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])


AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 1.0, 1.0]),
    "LAS": np.diag([-0.9, 1.1, 1.3, 1.0]),
    "anisotropic": np.diag([0.8, 0.8, 3.0, 1.0]),
    "oblique": np.block(
        [[rotation(20) @ np.diag([1.0, 1.2, 2.0]), np.array([[5.0], [-3.0], [7.0]])], [np.zeros((1, 3)), 1]]
    ),
    "permuted": np.array([[0, 0, 1.5, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),
}


def write_case(path, affine, shape=(23, 19, 13), seed=0, block=1):
    """Random +-1 in blocks of ``block`` voxels, a box of 2s, and a zero slab at z = 0."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice([-1.0, 1.0], size=tuple(-(-s // block) for s in shape))
    image = np.kron(coarse, np.ones((block,) * 3))[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    image[3:9, 4:10, 2:6] = 2.0
    image[:, :, 0] = 0.0  # a zero slab: the foreground crop has something to do
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return image


@pytest.mark.parametrize("name", list(AFFINES))
def test_labels_lie_on_the_input_grid_without_resampling(tmp_path, name):
    image = write_case(tmp_path / "in.nii.gz", AFFINES[name])
    output = Predictor(ThresholdNet(), config_for()).predict_file(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz")
    written, source = read_volume(output), read_volume(tmp_path / "in.nii.gz")
    assert written.array.shape == source.array.shape
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    assert np.array_equal(written.array, (image > 0).astype(np.uint8))  # nearest inversion is exact


@pytest.mark.parametrize("name", ["LPS", "anisotropic", "oblique"])
def test_labels_lie_on_the_input_grid_with_resampling(tmp_path, name):
    image = write_case(tmp_path / "in.nii.gz", AFFINES[name], block=6)  # structures larger than the new voxels
    output = Predictor(ThresholdNet(), config_for(spacing=[1.1, 0.9, 1.7])).predict_file(
        tmp_path / "in.nii.gz", tmp_path / "out.nii.gz"
    )
    written, source = read_volume(output), read_volume(tmp_path / "in.nii.gz")
    assert written.array.shape == source.array.shape
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    inside = image[:, :, 1:] != 0  # away from the cropped zero slab
    agreement = (written.array[:, :, 1:] == (image[:, :, 1:] > 0))[inside].mean()
    assert agreement > 0.9


def test_volume_thinner_than_the_window(tmp_path):
    write_case(tmp_path / "thin.nii.gz", AFFINES["LPS"], shape=(30, 25, 3))
    output = Predictor(ThresholdNet(), config_for()).predict_file(tmp_path / "thin.nii.gz", tmp_path / "o.nii.gz")
    assert read_volume(output).array.shape == (30, 25, 3)


def test_probabilities_and_uncertainty_on_the_input_grid(tmp_path):
    write_case(tmp_path / "in.nii.gz", AFFINES["LAS"])
    predictor = Predictor(ThresholdNet(), config_for())
    prediction = predictor.predict_volumes(
        [read_volume(tmp_path / "in.nii.gz")], probabilities=True, uncertainty="entropy"
    )
    assert prediction.probabilities.shape == (23, 19, 13, 2)
    assert np.allclose(prediction.probabilities.sum(-1)[:, :, 1:], 1.0, atol=1e-5)
    assert prediction.uncertainty.shape == (23, 19, 13) and prediction.uncertainty.max() <= 1.0
    variance = predictor.predict_volumes([read_volume(tmp_path / "in.nii.gz")], uncertainty="tta-variance")
    assert variance.uncertainty.shape == (23, 19, 13) and (variance.uncertainty >= 0).all()


def test_wrong_channel_count_is_a_clear_error(tmp_path):
    write_case(tmp_path / "in.nii.gz", AFFINES["RAS"])
    predictor = Predictor(ThresholdNet(in_channels=4), config_for())
    with pytest.raises(ShapeError, match="takes 4 channels"):
        predictor.predict_file(tmp_path / "in.nii.gz", tmp_path / "o.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists()


def test_array_input():
    image = np.where(np.arange(16 * 16 * 8).reshape(16, 16, 8) % 3 == 0, 1.0, -1.0).astype(np.float32)
    labels = Predictor(ThresholdNet(), config_for(data={"labels": {0: "bg", 1: "fg"}, "channels": []})).predict(image)
    assert np.array_equal(labels, (image > 0).astype(np.uint8))


def test_folder_runs_skip_finished_cases_and_refuse_overwrites(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for index in range(3):
        write_case(cases / f"case{index}.nii.gz", AFFINES["RAS"], seed=index)
    predictor = Predictor(ThresholdNet(), config_for())
    outputs = predictor.predict_folder(cases, tmp_path / "out")
    assert sorted(p.name for p in outputs) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    outputs[1].unlink()
    before = outputs[0].stat().st_mtime_ns
    from volseg.inference.segment import segment

    outcomes = segment(predictor, cases, tmp_path / "out")
    assert [o.skipped for o in outcomes] == [True, False, True] and outputs[0].stat().st_mtime_ns == before
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predictor.predict_file(cases / "case0.nii.gz", outputs[0])
    predictor.predict_file(cases / "case0.nii.gz", outputs[0], overwrite=True)


def test_cli_predict_writes_every_output(tmp_path, capsys):
    network = create_model("unet", 3, 1, 2, features=[4, 8])
    checkpoint = save_checkpoint(build_checkpoint(network, config_for()), tmp_path / "model.pt")
    write_case(tmp_path / "in.nii.gz", AFFINES["LPS"])
    out = tmp_path / "out" / "seg.nii.gz"
    argv = [
        "predict",
        "-m",
        str(checkpoint),
        "-i",
        str(tmp_path / "in.nii.gz"),
        "-o",
        str(out),
        "--stats",
        "--preview",
        "--save-probabilities",
        "--uncertainty",
        "--largest-component",
        "--batch",
        "auto",
        "--quiet",
    ]
    assert main(argv) == 0
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == [
        "seg.ctbl",  # label tables for 3D Slicer and ITK-SNAP
        "seg.nii.gz",
        "seg_labels.txt",
        "seg_preview.png",
        "seg_probabilities.nii.gz",
        "seg_stats.json",
        "seg_uncertainty.nii.gz",
    ]
    assert "positive" in capsys.readouterr().out
    assert main(argv) == 2  # exists without --overwrite
    assert main(["predict", "-m", "no-such-model", "-i", str(tmp_path / "in.nii.gz"), "-o", str(out)]) == 2


def test_an_interrupted_case_with_side_outputs_is_redone(tmp_path):
    """Side files written before an interruption (labels missing) do not block the rerun."""
    cases = tmp_path / "cases"
    cases.mkdir()
    write_case(cases / "a.nii.gz", AFFINES["RAS"])
    predictor = Predictor(ThresholdNet(), config_for())
    from volseg.inference.segment import OutputOptions, segment

    options = OutputOptions(stats=True, preview=True)
    first = segment(predictor, cases, tmp_path / "out", options)[0]
    first.labels_path.unlink()  # as if killed after the side outputs, before the labels
    again = segment(predictor, cases, tmp_path / "out", options)[0]
    assert not again.skipped and again.labels_path.exists()


def test_dicom_series_in_nifti_out_on_its_grid(tmp_path, write_dicom_series):
    rng = np.random.default_rng(1)
    slices = rng.choice([-100, 100], size=(6, 20, 18)).astype(np.int16)  # z, y, x
    write_dicom_series(tmp_path / "series", slices, "1.2.826.0.1.3680043.2.1125.9.1")
    output = Predictor(ThresholdNet(), config_for()).predict_file(tmp_path / "series", tmp_path / "seg.nii.gz")
    written, source = read_volume(output), read_volume(tmp_path / "series")
    assert written.array.shape == source.array.shape == (18, 20, 6)
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    assert np.array_equal(written.array, (source.array > 0).astype(np.uint8))


def test_brats_labels_and_their_names_follow_the_case_convention():
    older = Predictor(ThresholdNet(), config_for(data={"labels": {0: "bg", 1: "core", 2: "edema", 4: "enhancing"}}))
    labels = np.array([0, 1, 2, 4], np.uint8)
    assert older.label_space.to_convention(labels, "brats2023").tolist() == [0, 1, 2, 3]
    assert older.label_space.names_in("brats2023")[3] == "enhancing"
    newer = Predictor(ThresholdNet(), config_for(data={"labels": {0: "bg", 1: "core", 2: "edema", 3: "enhancing"}}))
    assert newer.label_space.to_convention(np.array([3], np.uint8), "brats2021").tolist() == [4]
    assert newer.label_space.names_in("brats2021")[4] == "enhancing"  # the direction the old code missed
    assert older.label_space.to_convention(labels, None).tolist() == [0, 1, 2, 4]


def test_read_channels_keeps_channel_order_and_names_a_bad_file(tmp_path):
    from volseg.errors import InputFileError
    from volseg.inference.inputs import PredictionInput
    from volseg.inference.segment import read_channels

    def read(paths):
        return read_channels(PredictionInput("case", tuple(paths)))[0]

    paths = []
    for index in range(4):  # read in parallel threads: the order must still be the files'
        path = tmp_path / f"channel_{index}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((4, 5, 6), index, dtype=np.int16), np.eye(4)), path)
        paths.append(path)
    assert [int(volume.array.max()) for volume in read(paths)] == [0, 1, 2, 3]
    assert read([]) == [] and int(read(paths[1:2])[0].array.max()) == 1
    paths[2].write_bytes(b"not a nifti")
    with pytest.raises(InputFileError, match="channel_2"):
        read(paths)


class EverywhereNet(SegmentationNetwork):
    """Foreground everywhere, the zero background too: every output channel but the first is
    certain (``regions``: every region is)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, regions: bool = False) -> None:
        super().__init__(3, in_channels, out_channels)
        self.regions = regions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], self.num_classes, *x.shape[2:]), 10.0)
        if not self.regions:
            logits[:, 0] = -10.0
        return logits


def mri_like(shape=(20, 18, 16)) -> tuple[np.ndarray, np.ndarray]:
    """A ball of non-zero intensities in a zero background, and a second channel that is
    non-zero only in a corner slab the ball does not reach."""
    grid = np.indices(shape) - (np.array(shape) - 1)[:, None, None, None] / 2
    ball = np.where((grid**2).sum(0) < 7.0**2, 100.0 + grid[0], 0.0).astype(np.float32)
    corner = np.zeros(shape, np.float32)
    corner[:2, :2, :] = 5.0
    return ball, corner


def mri_config(regions=False, mask=True, **inference):
    data = (
        {
            "labels": {0: "bg", 1: "core", 2: "edema", 4: "enhancing"},
            "channels": ["a", "b"],
            "regions": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]},
        }
        if regions
        else {"labels": {0: "bg", 1: "fg"}, "channels": ["a", "b"]}
    )
    return config_for(
        data=data,
        inference={"mask_nonzero": mask, **inference},
        preprocessing={"intensity": "mri", "crop_foreground": False},
    )


@pytest.mark.parametrize("regions", [False, True], ids=["classes", "regions"])
def test_nonzero_mask_makes_the_zero_background_background(regions):
    ball, corner = mri_like()
    inside = (ball != 0) | (corner != 0)
    channels = [Volume(ball, np.eye(4)), Volume(corner, np.eye(4))]
    network = EverywhereNet(2, 3 if regions else 2, regions)
    predictor = Predictor(network, mri_config(regions))
    result = predictor.predict_volumes(channels, probabilities=True, uncertainty="entropy")
    foreground = 4 if regions else 1
    assert (result.labels[inside] == foreground).all() and (result.labels[~inside] == 0).all()
    assert (~inside).sum() > 1000 and (corner != 0).sum() == 64  # the corner slab counts: a union of channels
    outside = result.probabilities[~inside]
    assert np.array_equal(outside, np.zeros_like(outside) if regions else np.tile([1.0, 0.0], (len(outside), 1)))
    assert (result.probabilities[inside][:, -1] > 0.99).all() and (result.uncertainty[~inside] == 0).all()
    unmasked = Predictor(network, mri_config(regions, mask=False)).predict_volumes(channels, probabilities=True)
    assert (unmasked.labels == foreground).all() and (unmasked.probabilities[..., -1] > 0.99).all()
    overridden = Predictor(network, mri_config(regions), mask_nonzero=False).predict_volumes(channels)
    assert (overridden.labels == foreground).all()


def test_nonzero_mask_is_off_for_checkpoints_that_predate_it(tmp_path):
    from volseg.checkpoint import checkpoint_config, load_checkpoint

    ball, _ = mri_like()
    nib.save(nib.Nifti1Image(ball, np.eye(4)), str(tmp_path / "in.nii.gz"))
    config = config_for(preprocessing={"intensity": "mri", "crop_foreground": False})
    old = build_checkpoint(create_model("unet", 3, 1, 2, features=[4, 8]), config)
    del old["config"]["inference"]["mask_nonzero"]  # as written before the setting existed
    path = save_checkpoint(old, tmp_path / "old.pt")
    assert checkpoint_config(load_checkpoint(path)).inference.mask_nonzero is False
    predictor = Predictor.from_checkpoint(path)
    predictor.network = EverywhereNet()
    assert not predictor.mask_nonzero and (predictor.predict(Volume(ball, np.eye(4))) == 1).all()
    assert Predictor.from_checkpoint("hippocampus").mask_nonzero is False  # predates it: labels as they were
    assert Predictor.from_checkpoint("brats").mask_nonzero is True  # trained with it on, and records it
    new = save_checkpoint(
        build_checkpoint(create_model("unet", 3, 1, 2, features=[4, 8]), mri_config(mask=True)), tmp_path / "new.pt"
    )
    assert checkpoint_config(load_checkpoint(new)).inference.mask_nonzero is True  # recorded in the checkpoint


def test_nonzero_mask_from_the_cli(tmp_path, monkeypatch):
    from volseg.errors import ConfigError

    monkeypatch.setattr("volseg.inference.predictor.model_from_checkpoint", lambda checkpoint: EverywhereNet())
    ball, _ = mri_like()
    nib.save(nib.Nifti1Image(ball, np.eye(4)), str(tmp_path / "in.nii.gz"))
    config = config_for(preprocessing={"intensity": "mri", "crop_foreground": False}, inference={"mask_nonzero": True})
    path = save_checkpoint(build_checkpoint(create_model("unet", 3, 1, 2, features=[4, 8]), config), tmp_path / "m.pt")
    for flag, expected in (([], True), (["--no-mask-nonzero"], False)):
        out = tmp_path / f"out{len(flag)}.nii.gz"
        argv = ["predict", "-m", str(path), "-i", str(tmp_path / "in.nii.gz"), "-o", str(out), "--quiet", *flag]
        assert main(argv) == 0
        labels = read_volume(out).array
        assert (labels[ball != 0] == 1).all() and (labels[ball == 0] == 0).all() == expected
    with pytest.raises(ConfigError, match="background"):
        Predictor(ThresholdNet(), config_for(data={"labels": {1: "a", 2: "b"}}), mask_nonzero=True)


@pytest.mark.parametrize("bf16,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_is_bf16_only_on_a_gpu_that_supports_it(monkeypatch, bf16, expected):
    from volseg.inference.predictor import default_autocast

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert default_autocast(torch.device("cuda")) == expected
    assert default_autocast(torch.device("cpu")) is None


@pytest.mark.parametrize("setting", [True, False, None])
def test_cudnn_benchmark_is_set_for_the_windows_only_and_restored(tmp_path, setting):
    write_case(tmp_path / "in.nii.gz", AFFINES["RAS"])
    network, seen = ThresholdNet(), []
    network.register_forward_hook(lambda *args: seen.append(torch.backends.cudnn.benchmark))
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True if setting is False else False  # the caller's value, to be kept
        caller = torch.backends.cudnn.benchmark
        predictor = Predictor(network, config_for(), cudnn_benchmark=setting)
        predictor.predict_volumes([read_volume(tmp_path / "in.nii.gz")])
        assert seen and set(seen) == {caller if setting is None else setting}
        assert torch.backends.cudnn.benchmark == caller
    finally:
        torch.backends.cudnn.benchmark = before


def test_cli_predict_asks_for_cudnn_benchmark(tmp_path, monkeypatch):
    write_case(tmp_path / "in.nii.gz", AFFINES["RAS"])
    options = {}

    def recording(cls, path, **kwargs):
        options.update(kwargs)
        return Predictor(ThresholdNet(), config_for(), **kwargs)

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(recording))
    argv = ["predict", "-m", "x.pt", "-i", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--quiet"]
    assert main(argv) == 0
    assert options["cudnn_benchmark"] is True
