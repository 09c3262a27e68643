"""The command line: help, version, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from volseg import __version__
from volseg.cli import main
from volseg.errors import ConfigError
from volseg.nn import list_models


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"volseg {__version__}"


def test_models_lists_every_network(capsys):
    assert main(["models"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list_models()


def test_models_describes_one_network(capsys):
    assert main(["models", "unet-paper", "--dims", "2", "--classes", "2"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["parameters"] == 31_030_658


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["models", "unet-papr"], "did you mean 'unet-paper'"),
        (["models", "unet", "--dims", "4"], "spatial_dims=4"),
        (["models", "unet", "--classes", "0"], "num_classes=0"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(capsys, argv, expected):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volseg: error: ") and expected in lines[0]
    assert "Traceback" not in captured.err


def test_debug_shows_the_exception_before_or_after_the_command():
    with pytest.raises(ConfigError):
        main(["--debug", "models", "nope"])
    with pytest.raises(ConfigError):
        main(["models", "nope", "--debug"])


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: volseg" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "volseg", "models", "nope"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown network 'nope'" in result.stderr


def test_public_api_names_resolve():
    import volseg

    for name in volseg.__all__:
        assert getattr(volseg, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        volseg.nope  # noqa: B018
