"""LabelSpace: what the network's outputs mean, built from the config and stored in the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volseg.bundled import bundled_models
from volseg.checkpoint import build_checkpoint, check_checkpoint, checkpoint_label_space, load_checkpoint
from volseg.config import config_from_dict
from volseg.data.label_space import BRATS_REGIONS_2021, BRATS_REGIONS_2023, LabelSpace
from volseg.errors import ConfigError, InputFileError
from volseg.nn import create_model

BRATS21 = {0: "background", 1: "core", 2: "edema", 4: "enhancing"}
BRATS23 = {0: "background", 1: "core", 2: "edema", 3: "enhancing"}


def _config(labels, regions=None):
    return config_from_dict(
        {"data": {"root": "/nonexistent", "labels": labels, "regions": regions, "channels": ["t1"]}}
    )


def test_softmax_labels_activation_outputs_and_names():
    space = LabelSpace({2: "b", 0: "background", 1: "a"})
    assert space.activation == "softmax" and space.num_outputs == 3
    assert space.values == [0, 1, 2] and space.foreground_values == [1, 2]
    assert space.output_names == ["background", "a", "b"]
    assert space.structures() == {"a": [1], "b": [2]}
    logits = torch.randn(3, 4, 5)
    assert torch.allclose(space.activate(logits), torch.softmax(logits, dim=0))


def test_sigmoid_regions_activation_outputs_and_structures():
    space = LabelSpace(BRATS21, BRATS_REGIONS_2021)
    assert space.activation == "sigmoid" and space.num_outputs == 3 and space.output_names == ["WT", "TC", "ET"]
    assert space.structures() == BRATS_REGIONS_2021
    assert space.class_regions == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}  # as class indices
    logits = torch.randn(3, 4, 5)
    assert torch.equal(space.activate(logits), torch.sigmoid(logits))


def test_labels_encode_decode_round_trip():
    space = LabelSpace({0: "bg", 3: "x", 7: "y"})
    label_map = np.array([[0, 3], [7, 7]], np.uint8)
    indices = space.encode(label_map)
    assert indices.tolist() == [[0, 1], [2, 2]]
    assert space.decode(indices).tolist() == label_map.tolist()  # class indices (*S)
    probabilities = np.eye(3, dtype=np.float32)[indices].transpose(2, 0, 1)  # (K, *S)
    assert space.decode(probabilities).tolist() == label_map.tolist()
    with pytest.raises(InputFileError, match="5"):
        space.encode(np.array([0, 5]))


@pytest.mark.parametrize("labels, regions", [(BRATS21, BRATS_REGIONS_2021), (BRATS23, BRATS_REGIONS_2023)])
def test_regions_encode_decode_round_trip(labels, regions):
    space = LabelSpace(labels, regions)
    label_map = np.array(sorted(labels) * 3).reshape(3, 4)
    masks = space.encode(label_map)
    assert masks.shape == (3, 3, 4) and masks.dtype == bool
    assert space.decode(masks).tolist() == label_map.tolist()
    assert space.decode(masks.astype(np.float32) * 0.9).tolist() == label_map.tolist()  # probabilities
    lookup = space.region_lookup()
    assert len(lookup) == 8 and lookup[0b111] == max(labels) and lookup[0b001] == 2


def test_brats_conventions_both_ways():
    old, new = LabelSpace(BRATS21, BRATS_REGIONS_2021), LabelSpace(BRATS23, BRATS_REGIONS_2023)
    labels21, labels23 = np.array([0, 1, 2, 4], np.uint8), np.array([0, 1, 2, 3], np.uint8)
    assert old.to_convention(labels21, "brats2023").tolist() == [0, 1, 2, 3]
    assert new.to_convention(labels23, "brats2021").tolist() == [0, 1, 2, 4]
    assert old.to_convention(labels21, "brats2021").tolist() == [0, 1, 2, 4]  # already in it
    assert old.to_convention(labels21, None).tolist() == [0, 1, 2, 4]
    assert old.to_convention(labels21, "brats2023").dtype == np.uint8
    assert old.names_in("brats2023") == {1: "core", 2: "edema", 3: "enhancing"}
    assert new.names_in("brats2021")[4] == "enhancing"
    assert LabelSpace({0: "bg", 3: "a", 4: "b"}).convention_map("brats2023") == {}  # both values: no mapping


def test_dict_round_trip_and_config():
    for space in (LabelSpace(BRATS21, BRATS_REGIONS_2021), LabelSpace({0: "bg", 1: "fg"})):
        stored = space.to_dict()
        assert all(isinstance(k, str) for k in stored["labels"])
        assert LabelSpace.from_dict(stored) == space
    assert LabelSpace.from_config(_config(BRATS21, BRATS_REGIONS_2021)) == LabelSpace(BRATS21, BRATS_REGIONS_2021)
    assert LabelSpace.from_config(_config({0: "bg", 1: "fg"})).regions is None


def test_check_refuses_regions_with_unknown_values():
    with pytest.raises(ConfigError, match="data.regions"):
        LabelSpace({0: "bg", 1: "a"}, {"X": [2]}).check()


def test_colours_are_the_preview_colours():
    from volseg.inference.preview import label_colour

    assert LabelSpace(BRATS21).colours() == {v: label_colour(v) for v in (1, 2, 4)}


def test_label_colours_are_okabe_ito_then_matplotlibs_tab20():
    colors = pytest.importorskip("matplotlib.colors", reason="matplotlib holds the reference palette")
    from matplotlib import colormaps

    from volseg.data.label_space import label_colour

    assert label_colour(1) == colors.to_rgb("#E69F00") and label_colour(7) == colors.to_rgb("#CC79A7")
    for value, expected in enumerate(colormaps["tab20"].colors, start=8):
        np.testing.assert_allclose(label_colour(value), expected[:3], atol=1e-12)
    assert label_colour(28) == label_colour(1)  # the cycle of 27 starts again


def test_checkpoint_stores_the_label_space_and_it_survives_a_round_trip(tmp_path):
    config = _config(BRATS21, BRATS_REGIONS_2021)
    model = create_model("unet", 3, 1, 3, features=[2, 4], strides=[1, 2])
    checkpoint = build_checkpoint(model, config)
    assert checkpoint["label_space"]["activation"] == "sigmoid"
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    assert checkpoint_label_space(load_checkpoint(path)) == LabelSpace(BRATS21, BRATS_REGIONS_2021)


@pytest.mark.parametrize("name", ["hippocampus", "brats"])
def test_bundled_checkpoints_label_space_is_stored_or_rebuilt_from_their_config(name):
    checkpoint = load_checkpoint(bundled_models()[name])
    assert ("label_space" in checkpoint) == (name == "brats")  # hippocampus predates the field
    old_style = {key: value for key, value in checkpoint.items() if key != "label_space"}
    space = checkpoint_label_space(old_style)
    assert space == LabelSpace(checkpoint["config"]["data"]["labels"], checkpoint["config"]["data"]["regions"])
    assert space == checkpoint_label_space(checkpoint)
    assert space.num_outputs == checkpoint["network"]["num_classes"]
    assert checkpoint_label_space(check_checkpoint({**old_style, "label_space": space.to_dict()})) == space
