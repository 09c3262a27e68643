"""Tests of volseg.inference.postprocess on hand-made label maps with blobs of known sizes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from volseg.errors import ConfigError, OutputExistsError, ShapeError
from volseg.inference.postprocess import (
    STATISTICS_KEYS,
    connected_components,
    format_statistics,
    keep_largest_component,
    label_statistics,
    present_labels,
    read_statistics,
    remove_small_components,
    write_statistics,
)


def three_blobs(dtype=np.uint8) -> np.ndarray:
    """(20, 20, 10): label 1 blobs of 27 and 8 voxels, label 2 blobs of 12 and 4 voxels."""
    labels = np.zeros((20, 20, 10), dtype)
    labels[1:4, 1:4, 1:4] = 1  # 27
    labels[10:12, 10:12, 5:7] = 1  # 8
    labels[15:18, 2:4, 2:4] = 2  # 12
    labels[2:4, 15:17, 8] = 2  # 4
    return labels


def test_connected_components_sizes_sorted_descending():
    mask = np.zeros((12, 12, 12), bool)
    mask[0:2, 0:2, 0:2] = True  # 8
    mask[5:8, 5:8, 5:8] = True  # 27, the largest: instance 1
    mask[11, 11, 11] = True  # 1
    instances, sizes = connected_components(mask)
    assert sizes == [27, 8, 1]
    assert instances.shape == mask.shape and instances.dtype == np.int32
    assert set(np.unique(instances)) == {0, 1, 2, 3}
    assert (instances[5:8, 5:8, 5:8] == 1).all() and (instances[0:2, 0:2, 0:2] == 2).all()
    assert instances[11, 11, 11] == 3
    assert [int((instances == i).sum()) for i in (1, 2, 3)] == sizes


def test_connected_components_connectivity_and_values():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, 0, 0] = 1
    mask[1, 1, 1] = 5  # touches only by a corner; another non-zero value is still foreground
    assert connected_components(mask)[1] == [1, 1]
    assert connected_components(mask, fully_connected=True)[1] == [2]
    assert connected_components(np.zeros((3, 3), np.uint8))[1] == []


def test_keep_largest_component_per_label():
    labels = three_blobs()
    expected = labels.copy()
    expected[10:12, 10:12, 5:7] = 0  # label 1 keeps its 27-voxel blob
    expected[2:4, 15:17, 8] = 0  # label 2 keeps its 12 voxels (smaller than label 1's 2nd blob)
    np.testing.assert_array_equal(keep_largest_component(labels), expected)


def test_keep_largest_component_selected_labels_only():
    labels = three_blobs()
    result = keep_largest_component(labels, label_values=[2])
    assert (result[10:12, 10:12, 5:7] == 1).all()  # label 1 untouched
    assert (result[2:4, 15:17, 8] == 0).all()
    assert int((result == 2).sum()) == 12
    np.testing.assert_array_equal(keep_largest_component(labels, label_values=[7]), labels)
    with pytest.raises(ConfigError, match="0"):
        keep_largest_component(labels, label_values=[0, 1])


def test_other_labels_do_not_join_components():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:5, 0:5, 0:5] = 2  # a big blob of 2
    labels[5, 0:2, 0:2] = 1  # 4 voxels of 1 touching it
    labels[8:9, 7:10, 7:9] = 1  # 6 voxels of 1 elsewhere: the largest of label 1
    result = keep_largest_component(labels)
    assert int((result == 1).sum()) == 6 and (result[5, 0:2, 0:2] == 0).all()
    assert int((result == 2).sum()) == 125


def test_remove_small_components_by_voxels():
    labels = three_blobs()
    result = remove_small_components(labels, min_size_voxels=8)  # a blob of exactly 8 stays
    expected = labels.copy()
    expected[2:4, 15:17, 8] = 0
    np.testing.assert_array_equal(result, expected)
    result = remove_small_components(labels, min_size_voxels=13, label_values=[1])
    assert int((result == 1).sum()) == 27 and int((result == 2).sum()) == 16


def test_remove_small_components_by_ml_with_anisotropic_spacing():
    labels = np.zeros((10, 10, 10), np.int16)
    labels[0:10, 0, 0] = 3  # 10 voxels x 3 mm^3 = 0.03 mL
    labels[0:9, 5, 5] = 3  # 9 voxels = 0.027 mL
    labels[2:7, 8, 8] = 4  # 5 voxels = 0.015 mL
    spacing = (1.0, 1.0, 3.0)
    result = remove_small_components(labels, min_size_ml=0.03, spacing=spacing)
    assert result.dtype == np.int16
    assert int((result == 3).sum()) == 10 and (result[0:10, 0, 0] == 3).all()
    assert int((result == 4).sum()) == 0
    result = remove_small_components(labels, min_size_ml=0.031, spacing=spacing)
    assert not result.any()
    # the same threshold on 1 mm voxels: every blob is smaller than 0.015 mL
    assert not remove_small_components(labels, min_size_ml=0.015).any()


@pytest.mark.parametrize(
    "kwargs", [{}, {"min_size_voxels": 3, "min_size_ml": 0.1}, {"min_size_voxels": -1}, {"min_size_ml": float("nan")}]
)
def test_remove_small_components_bad_thresholds(kwargs):
    with pytest.raises(ConfigError):
        remove_small_components(three_blobs(), **kwargs)


def test_bad_inputs():
    with pytest.raises(ShapeError, match="spacing"):
        remove_small_components(three_blobs(), min_size_ml=1, spacing=(1, 1))
    with pytest.raises(ConfigError, match="positive"):
        label_statistics(three_blobs(), spacing=(1, 0, 1))
    with pytest.raises(ShapeError, match="2D or 3D"):
        keep_largest_component(np.zeros(5, np.uint8))
    with pytest.raises(ConfigError, match="whole numbers"):
        keep_largest_component(np.full((3, 3), 0.5))


def test_label_statistics_by_hand():
    labels = three_blobs()
    stats = label_statistics(
        labels, spacing=(1.0, 1.0, 3.0), label_names={0: "background", 1: "tumour", 4: "enhancing"}
    )
    assert [s["label"] for s in stats] == [1, 2, 4]  # 4 named but absent; 0 never reported
    one, two, four = stats
    assert one["name"] == "tumour" and two["name"] == "2" and four["name"] == "enhancing"
    assert one["voxels"] == 35 and one["components"] == 2
    assert one["volume_ml"] == pytest.approx(35 * 0.003)
    assert one["component_volumes_ml"] == pytest.approx([0.081, 0.024])
    assert one["largest_ml"] == pytest.approx(0.081)
    assert two["voxels"] == 16 and two["components"] == 2
    assert two["component_volumes_ml"] == pytest.approx([0.036, 0.012])
    assert four == {
        "label": 4,
        "name": "enhancing",
        "voxels": 0,
        "volume_ml": 0.0,
        "components": 0,
        "largest_ml": 0.0,
        "component_volumes_ml": [],
    }
    assert all(set(s) == set(STATISTICS_KEYS) for s in stats)


def test_two_dimensional_input():
    labels = np.zeros((8, 8), np.uint8)
    labels[0:3, 0:3] = 1  # 9
    labels[6:8, 6:8] = 1  # 4
    labels[0, 6] = 2  # 1
    assert connected_components(labels)[1] == [9, 4, 1]
    assert int((keep_largest_component(labels) == 1).sum()) == 9
    result = remove_small_components(labels, min_size_ml=0.002, spacing=(0.5, 1.0))  # 4 px = 0.002 mL
    assert int((result == 1).sum()) == 13 and int((result == 2).sum()) == 0
    stats = label_statistics(labels, spacing=(2.0, 2.0))
    assert [(s["label"], s["voxels"], s["components"]) for s in stats] == [(1, 13, 2), (2, 1, 1)]
    assert stats[0]["volume_ml"] == pytest.approx(13 * 4 / 1000)
    assert present_labels(labels) == [1, 2]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float32])
def test_dtype_and_shape_kept_input_unchanged(dtype):
    labels = three_blobs(dtype)
    before = labels.copy()
    for result in (keep_largest_component(labels), remove_small_components(labels, min_size_voxels=10)):
        assert result.dtype == labels.dtype and result.shape == labels.shape
        assert result is not labels
    label_statistics(labels, spacing=(1, 1, 1))
    np.testing.assert_array_equal(labels, before)


def test_bool_mask_and_non_contiguous_view():
    mask = three_blobs() > 0
    result = keep_largest_component(mask)
    assert result.dtype == bool and int(result.sum()) == 27  # one value: only its largest blob stays
    view = three_blobs().transpose(2, 0, 1)  # a non-contiguous view
    np.testing.assert_array_equal(
        keep_largest_component(view), keep_largest_component(three_blobs()).transpose(2, 0, 1)
    )


def test_format_statistics_table():
    stats = label_statistics(three_blobs(), spacing=(10.0, 10.0, 10.0), label_names={1: "necrotic core"})
    lines = format_statistics(stats).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["label", "name", "volume_ml", "components", "largest_ml"]
    assert lines[2].split() == ["1", "necrotic", "core", "35.00", "2", "27.00"]
    assert lines[3].split() == ["2", "2", "16.00", "2", "12.00"]
    # numbers are right-aligned under their headers
    assert lines[2].index("35.00") + 5 == lines[0].index("volume_ml") + len("volume_ml")
    assert "no labels" in format_statistics([])


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_write_statistics_round_trip(tmp_path, suffix):
    stats = label_statistics(three_blobs(), spacing=(0.7, 0.7, 3.3), label_names={1: "a, b", 5: "absent"})
    path = write_statistics(stats, tmp_path / f"sub/stats{suffix}")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == [path.name]  # no temporaries
    assert read_statistics(path) == stats  # floats exactly
    if suffix == ".csv":
        rows = list(csv.DictReader(path.open()))
        assert list(rows[0]) == list(STATISTICS_KEYS) and rows[0]["name"] == "a, b"
        assert rows[2]["component_volumes_ml"] == "" and rows[2]["voxels"] == "0"
    else:
        assert json.loads(path.read_text())[0]["components"] == 2
    with pytest.raises(OutputExistsError):
        write_statistics(stats, path)
    write_statistics(stats[:1], path, overwrite=True)
    assert len(read_statistics(path)) == 1


def test_write_statistics_bad_extension(tmp_path):
    with pytest.raises(ConfigError, match="allowed: .json, .csv"):
        write_statistics([], tmp_path / "stats.txt")


# ----------------------------------------------------------------------------- regions

BRATS = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}


def brats_map() -> np.ndarray:
    """(40, 40, 40) BraTS labels: oedema (2) around necrosis (1) with an ET (4) slab of 768
    voxels, a 64-voxel ET island in the necrosis and another in the oedema."""
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:35, 5:35, 5:35] = 2
    labels[10:26, 10:26, 10:26] = 1
    labels[10:26, 10:26, 10:13] = 4  # the main ET, 768 voxels
    labels[18:22, 18:22, 18:22] = 4  # an ET island inside the necrosis (TC)
    labels[28:32, 28:32, 28:32] = 4  # an ET island inside the oedema (WT only)
    return labels


def region_voxels(labels: np.ndarray) -> dict[str, int]:
    return {name: int(np.isin(labels, values).sum()) for name, values in BRATS.items()}


@pytest.mark.parametrize(
    "operation",
    [
        lambda labels, **kw: keep_largest_component(labels, **kw),
        lambda labels, **kw: remove_small_components(labels, min_size_voxels=100, **kw),
    ],
    ids=["largest", "min_size"],
)
def test_region_filters_never_punch_holes_in_enclosing_regions(operation):
    labels = brats_map()
    before = region_voxels(labels)
    per_label = operation(labels)  # the old behaviour: the islands become background
    assert before["WT"] - region_voxels(per_label)["WT"] == 128
    result = operation(labels, regions=BRATS)
    assert result.dtype == labels.dtype
    assert (result[18:22, 18:22, 18:22] == 1).all()  # ET island in TC -> TC's non-ET label
    assert (result[28:32, 28:32, 28:32] == 2).all()  # ET island in oedema -> WT's label
    after = region_voxels(result)
    assert after["WT"] == before["WT"]
    assert after["TC"] == before["TC"] - 64  # only the island outside the core left TC
    assert after["ET"] == 768
    changed = result != labels
    assert changed.sum() == 128 and not (labels[~changed] != result[~changed]).any()


def test_removing_a_whole_tumour_blob_removes_everything_inside_it():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:14, 2:14, 2:14] = 2  # the main tumour: 1728 voxels of oedema ...
    labels[7:9, 7:9, 7:9] = 4  # ... with 8 voxels of ET
    labels[20:23, 20:23, 20:23] = 4  # a separate 27-voxel blob, all ET: larger than the main TC and ET
    largest = keep_largest_component(labels, regions=BRATS)
    assert not largest[18:25, 18:25, 18:25].any()  # WT dropped it, so TC and ET go with it ...
    np.testing.assert_array_equal(largest[:15, :15, :15], labels[:15, :15, :15])  # ... and the main ET stays
    small = labels.copy()
    small[6:10, 6:10, 6:10] = 4  # the main ET: 64 voxels, over the minimum
    small[20:23, 20:23, 20] = 2  # a mixed blob: oedema, necrosis and ET
    small[20:23, 20:23, 21] = 1
    small[20:23, 20:23, 22] = 4
    result = remove_small_components(small, min_size_voxels=30, regions=BRATS)
    assert not result[18:25, 18:25, 18:25].any()
    np.testing.assert_array_equal(result[:15, :15, :15], small[:15, :15, :15])


def test_largest_component_per_region():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:20, 2:20, 2:20] = 2  # one WT component
    labels[4:10, 4:10, 4:10] = 1  # TC component of 216 voxels
    labels[12:15, 12:15, 12:15] = 1  # TC component of 27 voxels
    labels[4:6, 4:6, 4:6] = 4  # ET in the big core: 8 voxels
    labels[12:15, 12:15, 12] = 4  # ET in the small core: 9 voxels, the largest ET blob
    labels[8, 8, 8] = 4  # one more ET voxel in the big core
    result = keep_largest_component(labels, regions=BRATS)
    assert (result[12:15, 12:15, 12:15] == 2).all()  # the smaller TC, with its ET, becomes oedema
    assert (result[4:6, 4:6, 4:6] == 4).all()  # the largest ET is chosen inside the kept TC
    assert result[8, 8, 8] == 1  # the big core's smaller ET becomes necrosis
    assert region_voxels(result) == {"WT": 18**3, "TC": 216, "ET": 8}


def test_region_filters_keep_a_clean_map_and_other_values_unchanged():
    labels = brats_map()
    labels[18:22, 18:22, 18:22] = 1
    labels[28:32, 28:32, 28:32] = 2
    labels[0, 0, 0] = 3  # a value no region holds stays as it is
    np.testing.assert_array_equal(keep_largest_component(labels, regions=BRATS), labels)
    np.testing.assert_array_equal(remove_small_components(labels, min_size_voxels=1, regions=BRATS), labels)
    with pytest.raises(ConfigError, match="not both"):
        keep_largest_component(labels, label_values=[4], regions=BRATS)


def test_segment_postprocess_acts_per_region_on_region_models():
    from volseg.inference.predictor import Prediction
    from volseg.inference.segment import OutputOptions, postprocess
    from volseg.io import Volume

    labels = brats_map()
    prediction = Prediction("case", labels, Volume(np.zeros(labels.shape, np.float32), np.eye(4)))
    options = OutputOptions(largest_component=True, min_size_ml=0.1)
    assert region_voxels(postprocess(labels, prediction, options, BRATS))["WT"] == region_voxels(labels)["WT"]
    assert region_voxels(postprocess(labels, prediction, options))["WT"] < region_voxels(labels)["WT"]
