"""Tests of volseg.inference.preview: slice choice, aspect ratios and the PNG itself."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from matplotlib.image import imread

from volseg.errors import ConfigError, OutputExistsError, ShapeError
from volseg.inference.preview import label_colour, preview_aspects, preview_slices, render_preview

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def blobs() -> tuple[np.ndarray, np.ndarray]:
    """(40, 30, 20) image and labels: a 5x7x3 blob of 2 (largest) and a 3x3x3 blob of 1."""
    labels = np.zeros((40, 30, 20), np.uint8)
    labels[10:15, 20:27, 5:8] = 2
    labels[30:33, 2:5, 14:17] = 1
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 10.0, labels.shape).astype(np.float32) + 50.0 * labels
    return image, labels


def check_png(path, min_width: int = 200) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= 200
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    return pixels


def test_preview_slices_centre_of_largest_blob():
    _, labels = blobs()
    assert preview_slices(labels) == (12, 23, 6)


def test_preview_slices_joins_touching_labels():
    labels = np.zeros((30, 30, 30), np.int16)
    labels[0:9, 0:9, 0:9] = 1  # 729 voxels alone: the largest single label
    labels[20:25, 10:30, 10:15] = 2  # 500 voxels ...
    labels[25:29, 10:30, 10:15] = 3  # ... + 400 touching: 900, the largest structure
    assert preview_slices(labels) == (24, 20, 12)  # centre 24 (20..28), 19.5 -> 20, 12


def test_preview_slices_empty_and_2d():
    assert preview_slices(np.zeros((9, 10, 11), np.uint8)) == (4, 5, 5)
    labels = np.zeros((16, 12), np.uint8)
    labels[1:4, 2:9] = 3
    labels[10, 10] = 1
    assert preview_slices(labels) == (2, 5)
    assert preview_slices(np.zeros((7, 8), bool)) == (3, 4)


def test_preview_aspects():
    assert preview_aspects((1.0, 1.0, 1.0)) == (1.0, 1.0, 1.0)
    # axial: axis 1 over axis 0; coronal: axis 2 over axis 0; sagittal: axis 2 over axis 1
    assert preview_aspects((0.5, 1.0, 3.0)) == pytest.approx((2.0, 6.0, 3.0))
    assert preview_aspects((0.8, 1.6)) == pytest.approx((2.0,))
    with pytest.raises(ConfigError):
        preview_aspects((1.0, -1.0, 1.0))


def test_render_preview_3d(tmp_path):
    image, labels = blobs()
    before = image.copy(), labels.copy()
    path = render_preview(
        image,
        labels,
        spacing=(1.0, 1.0, 2.5),
        path=tmp_path / "case.png",
        label_names={1: "core", 2: "edema"},
        title="case 1",
    )
    pixels = check_png(path, min_width=600)
    assert pixels.shape[1] > 2 * pixels.shape[0]  # three panels side by side
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])
    if "matplotlib.pyplot" in sys.modules:  # nothing left open in pyplot's global state
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_render_preview_overlay_colour(tmp_path):
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:25, 5:25, 5:25] = 1
    path = render_preview(np.zeros(labels.shape, np.float32), labels, spacing=(1, 1, 1), path=tmp_path / "o.png")
    pixels = imread(path)[..., :3].reshape(-1, 3)
    # label 1 over a black image: its colour at the overlay's opacity
    expected = 0.45 * np.asarray(label_colour(1))
    assert (np.abs(pixels - expected).max(axis=1) < 0.02).sum() > 1000


def test_render_preview_channels_empty_labels_anisotropic(tmp_path):
    image, labels = blobs()
    channels = np.stack([image, -image])  # (C, *S): channel 0 is shown
    check_png(render_preview(channels, np.zeros_like(labels), spacing=(0.5, 0.5, 4.0), path=tmp_path / "e.png"))


def test_render_preview_2d(tmp_path):
    image, labels = blobs()
    path = render_preview(
        image[:, :, 6], labels[:, :, 6], spacing=(0.7, 2.1), path=tmp_path / "a" / "2d.png", label_names={2: "lesion"}
    )
    pixels = check_png(path, min_width=100)
    assert pixels.shape[1] < 2 * pixels.shape[0]  # one panel


def test_render_preview_errors(tmp_path):
    image, labels = blobs()
    with pytest.raises(ShapeError, match="does not match"):
        render_preview(image[:-1], labels, spacing=(1, 1, 1), path=tmp_path / "x.png")
    with pytest.raises(ShapeError, match="spacing"):
        render_preview(image, labels, spacing=(1, 1), path=tmp_path / "x.png")
    with pytest.raises(ConfigError, match=".png"):
        render_preview(image, labels, spacing=(1, 1, 1), path=tmp_path / "x.jpg")
    path = tmp_path / "x.png"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        render_preview(image, labels, spacing=(1, 1, 1), path=path)
    render_preview(image, labels, spacing=(1, 1, 1), path=path, overwrite=True)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
