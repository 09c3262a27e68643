"""A corpus of broken and unusual inputs, each run through the command line.

Every row is (name, builder, argv, expectation). A builder writes its input into a fresh
folder ``d``; ``argv`` may name ``{d}`` (that folder), ``{ckpt}`` (a tiny 1-channel
checkpoint) and ``{ckpt4}`` (a tiny 4-channel BraTS-style one).

* ``Fails(substring)``: a user error. Exit code 2; stderr is exactly one line, starting
  with ``volseg: error: `` and containing ``substring``; no traceback; no file appears in
  ``d`` (no partial output, no ``.tmp-*`` leftover).
* ``Works(...)``: exit code 0; for ``predict`` the label map lies on the input's exact grid
  (same spatial shape, same affine as :func:`volseg.io.read_volume` gives for the input).

Which affine a NIfTI file means: nibabel's, i.e. the sform when ``sform_code > 0``, else the
qform when ``qform_code > 0``, else the pixdim-only fallback. Outputs store that affine in
both their sform and their qform (with the input's codes), so they are unambiguous.

The rows live beside this file, by topic, and run here in this order (docs/reliability.md numbers
them so): ``corpus_predict_inputs.py`` (files that are not volumes, shapes, voxel values, other
formats, geometry), ``corpus_predict_arguments.py`` (paths and outputs, models, folders, options),
``corpus_evaluate_plan_train.py`` and ``corpus_dicom.py`` (uneven series, localizers, multi-frame
files); ``corpus_support.py`` holds ``Fails``, ``Works``, ``Ctx`` and the shared builders.
test_header_fuzzing.py fuzzes NIfTI headers against ``read_volume``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_dicom import DICOM_INPUTS
from corpus_evaluate_plan_train import OTHER_COMMANDS
from corpus_predict_arguments import PREDICT_ARGUMENTS
from corpus_predict_inputs import PREDICT_INPUTS
from corpus_support import BRATS, SHAPE, Ctx, Fails

from volseg import io as vio
from volseg.checkpoint import build_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.inference.segment import output_paths
from volseg.nn import create_model

CASES: list = [*PREDICT_INPUTS, *PREDICT_ARGUMENTS, *OTHER_COMMANDS, *DICOM_INPUTS]


# ----------------------------------------------------------------------------- checkpoints


def _config(channels: list[str], labels: dict[int, str]):
    return config_from_dict(
        {
            "data": {"labels": labels, "channels": channels},
            "preprocessing": {"orientation": "RAS", "intensity": "mri", "crop_foreground": True},
            "network": {"options": {"features": [4, 8]}},
            "sampling": {"patch_size": [16, 16, 16]},
            "inference": {"sw_batch_size": 2},
        }
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    one = create_model("unet", 3, 1, 3, features=[4, 8])
    four = create_model("unet", 3, 4, 4, features=[4, 8])
    paths = {"ckpt": folder / "tiny.pt", "ckpt4": folder / "tiny4.pt"}
    save_checkpoint(build_checkpoint(one, _config(["image"], {0: "background", 1: "outer", 2: "inner"})), paths["ckpt"])
    save_checkpoint(
        build_checkpoint(four, _config(BRATS, {0: "background", 1: "core", 2: "edema", 4: "et"})), paths["ckpt4"]
    )
    return paths


# ----------------------------------------------------------------------------- the tests


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and os.access(p, os.R_OK)
    }


def _case_id(case) -> str:
    return case.values[0] if hasattr(case, "marks") else case[0]


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40
    names = [_case_id(case) for case in CASES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name,builder,argv,expected", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input(name, builder, argv, expected, tmp_path, checkpoints, capsys, monkeypatch, write_dicom_series):
    d = tmp_path / "case"
    d.mkdir()
    ctx = Ctx(d, checkpoints["ckpt"], checkpoints["ckpt4"], monkeypatch, write_dicom_series)
    monkeypatch.chdir(tmp_path)  # a default run folder (runs/...) would land here, not in the checkout
    builder(ctx)
    before = _files(d)
    args = [a.format(d=d, ckpt=ctx.ckpt, ckpt4=ctx.ckpt4) for a in argv]
    try:
        code = main(args)
    finally:
        for path in d.rglob("*"):  # let pytest clean up what a case made unreadable
            path.chmod(0o755)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    leftovers = [str(p) for p in d.rglob(".tmp-*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    if isinstance(expected, Fails):
        lines = captured.err.splitlines()
        assert code == 2, captured.err
        assert len(lines) == 1, f"expected one line on stderr, got {captured.err!r}"
        assert lines[0].startswith("volseg: error: ")
        assert expected.text in lines[0], lines[0]
        after = _files(d)
        for name in expected.kept:
            assert vio.read_volume(d / name).spatial_shape == SHAPE
            after.pop(name)
            for side in output_paths(d / name).values():  # its label tables
                after.pop(str(side.relative_to(d)), None)
        if expected.kept:  # the run report of a folder run that finished some cases lists them and the failure
            report = json.loads((d / Path(expected.kept[0]).parent / "report.json").read_text())
            assert [row["status"] for row in report["cases"]][-1] == "failed"
            for name in [n for n in after if Path(n).parent.name == "report_previews" or Path(n).stem == "report"]:
                after.pop(name)
        assert sorted(after) == sorted(before), f"new files after a failure: {set(after) - set(before)}"
        assert after == before, "a failure changed an existing file"
        return
    assert code == 0, captured.err
    output = d / expected.output
    if expected.stdout is not None:
        assert expected.stdout in captured.out, captured.out
    if expected.stderr is not None:
        assert expected.stderr in captured.err, captured.err
    if argv[0] == "train":
        from volseg.checkpoint import load_checkpoint

        assert load_checkpoint(output)["training"]["epoch"] == 0
    if expected.grid is not None:
        result, source = vio.read_volume(output), vio.read_volume(d / expected.grid, allow_nonfinite=True)
        assert result.array.ndim == 3 and result.array.dtype.kind in "ui"
        assert result.spatial_shape == source.spatial_shape
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-5)
        assert set(np.unique(result.array).tolist()) <= {0, 1, 2}
    if expected.check is not None:
        expected.check(output)


@pytest.mark.parametrize(
    "option,value", [("sw_batch_size", 0), ("sw_batch_size", -1), ("overlap", 1.5), ("overlap", float("nan"))]
)
def test_the_predictor_refuses_what_the_cli_options_refuse(checkpoints, option, value):
    """Behind ``--batch`` and ``--overlap``: ``sw_batch_size=0`` is not "use the default"."""
    from volseg.errors import ConfigError
    from volseg.inference.predictor import Predictor

    with pytest.raises(
        ConfigError,
        match=f"{option}={value!r} is not valid" if option == "sw_batch_size" else f"{option}={value} is not valid",
    ):
        Predictor.from_checkpoint(checkpoints["ckpt"], device="cpu", **{option: value})
