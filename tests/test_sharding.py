"""--shard I/N: every case of a folder in exactly one shard, shards balanced, outputs as one run's."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from volseg.cli import main
from volseg.errors import ConfigError
from volseg.inference.sharding import parse_shard, shard_of


@pytest.mark.parametrize(("text", "expected"), [("0/4", (0, 4)), ("3/4", (3, 4)), (" 0/1 ", (0, 1))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "1", "-1/3", "a/b", "1/0", "0/"])
def test_bad_shards_are_named(text):
    with pytest.raises(ConfigError, match="--shard .* is not valid"):
        parse_shard(text)


def test_each_case_in_one_shard_balanced_and_independent_of_order():
    rng = np.random.default_rng(0)
    ids = [f"case_{i:02d}" for i in range(23)]
    sizes = [int(s) for s in rng.integers(1, 100, size=len(ids))]
    assignment = shard_of(ids, sizes, 4)
    assert set(assignment) == set(ids) and set(assignment.values()) == {0, 1, 2, 3}
    loads = [sum(s for i, s in zip(ids, sizes) if assignment[i] == k) for k in range(4)]
    assert max(loads) - min(loads) <= max(sizes)  # greedy largest-first: within one case of even
    assert shard_of(ids[::-1], sizes[::-1], 4) == assignment


def _folder(tmp_path, count=8):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        shape = (20 + 2 * i, 24, 20)  # different sizes, so the balance has something to do
        nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), np.eye(4)), folder / f"c{i}.nii.gz")
    return folder


def test_shards_write_exactly_what_one_run_writes(tmp_path):
    folder = _folder(tmp_path)
    assert main(["predict", "-m", "hippocampus", "-i", str(folder), "-o", str(tmp_path / "one"), "--quiet"]) == 0
    for k in range(3):
        argv = ["predict", "-m", "hippocampus", "-i", str(folder), "-o", str(tmp_path / "sharded"), "--quiet"]
        assert main([*argv, "--shard", f"{k}/3"]) == 0
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == one
    assert len(one) == 3 * 8 + 3  # labels and their two tables; report.json, report.html, report_previews
    report = json.loads((tmp_path / "sharded" / "report.json").read_text())
    assert [row["case_id"] for row in report["cases"]] == [f"c{i}" for i in range(8)]
    assert {row["status"] for row in report["cases"]} == {"done"}
    for name in (n for n in one if n.endswith(".nii.gz")):
        a = np.asarray(nib.load(tmp_path / "one" / name).dataobj)
        b = np.asarray(nib.load(tmp_path / "sharded" / name).dataobj)
        assert np.array_equal(a, b)


def test_shard_of_a_single_case_is_refused(tmp_path, capsys):
    folder = _folder(tmp_path, count=1)
    argv = ["predict", "-m", "hippocampus", "-i", str(folder / "c0.nii.gz"), "-o", str(tmp_path / "o.nii.gz")]
    assert main([*argv, "--shard", "0/2"]) == 2
    assert "splits a folder of cases" in capsys.readouterr().err


def test_a_shard_of_one_case_is_skipped_on_a_rerun_not_refused(tmp_path, capsys):
    folder = _folder(tmp_path, count=2)
    argv = ["predict", "-m", "hippocampus", "-i", str(folder), "-o", str(tmp_path / "out"), "--shard", "0/2"]
    assert main([*argv, "--quiet"]) == 0
    assert main(argv) == 0  # a torchrun rank or job-array shard started again finishes, as the docs say
    assert "exists, skipped" in capsys.readouterr().out
