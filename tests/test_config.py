"""The typed config: YAML round trip, --set overrides, and errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from volseg.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)
from volseg.errors import ConfigError, InputFileError


def test_commented_yaml_round_trip(tmp_path):
    config = config_from_dict({"network": {"spatial_dims": 2}, "sampling": {"patch_size": [64, 48]}})
    path = tmp_path / "run" / "config.yaml"
    text = dump_config(config, path, header="made by a test")
    assert text.startswith("# made by a test")
    assert "# training epochs" in text  # field help becomes the comment
    assert load_config(path) == config
    assert not [p for p in path.parent.iterdir() if p.name != "config.yaml"]  # no temporary left


def test_defaults_are_independent_copies():
    first, second = Config(), Config()
    first.data.labels[1] = "tumour"
    first.augmentation.flip.axes.append(5)
    assert second.data.labels == {0: "background"} and second.augmentation.flip.axes == [0, 1, 2]


def test_overrides_are_parsed_as_yaml():
    values = apply_overrides(
        {},
        [
            "training.epochs=7",
            "optimizer.lr=1e-3",
            "data.labels={0: bg, 1: a}",
            "network.options.features=[8, 16]",
            "data.root=/tmp/x=y",
        ],
    )
    config = config_from_dict(values)
    assert config.training.epochs == 7 and config.optimizer.lr == pytest.approx(1e-3)
    assert config.data.labels == {0: "bg", 1: "a"}
    assert config.network.options == {"features": [8, 16]}
    assert config.data.root == "/tmp/x=y"


def test_integers_widen_to_floats_but_not_the_reverse():
    assert config_from_dict({"optimizer": {"lr": 1}}).optimizer.lr == 1.0
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict({"training": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict({"training": {"epochs": True}})


@pytest.mark.parametrize(
    "override,message",
    [
        ("training.epcohs=3", "did you mean 'training.epochs'"),
        ("trainig.epochs=3", "did you mean 'training'"),
        ("training.epochs=ten", "training.epochs='ten' is not valid; expected an integer"),
        ("loss.name=dicefocal", "did you mean 'dice_focal'"),
        ("network.spatial_dims=4", "allowed: 2, 3"),
        ("sampling.patch_size=[64, 64]", "give 3 positive values"),
        ("data.fold=5", "allowed: -1 .. 4"),
        ("augmentation.flip.prob=1.5", "allowed: 0 .. 1"),
        ("inference.overlap=1", "0 <= overlap < 1"),
        ("data.labels={a: b}", "expected an integer"),
        ("training=3", "must be a mapping"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        config_from_dict(apply_overrides({}, [override]))


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["training.epochs"])


def test_unreadable_config_files(tmp_path):
    with pytest.raises(InputFileError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("training:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(broken)


def test_dict_view_is_plain_yaml():
    values = config_to_dict(Config())
    assert yaml.safe_load(yaml.safe_dump(values)) == values


def test_partial_sections_keep_their_own_defaults():
    overrides = ["augmentation.gamma.prob=0.5", "augmentation.low_resolution.prob=0"]
    config = config_from_dict(apply_overrides({}, overrides))
    assert config.augmentation.gamma.range == [0.7, 1.5] and config.augmentation.gamma.prob == 0.5
    assert config.augmentation.low_resolution.range == [0.5, 1.0]
    brightness_only = config_from_dict({"augmentation": {"brightness": {"range": [0.9, 1.1]}}})
    assert brightness_only.augmentation.brightness.prob == 0.15
