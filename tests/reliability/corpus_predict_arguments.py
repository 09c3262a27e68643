"""Corpus rows for ``volseg predict``'s arguments: paths and outputs, models, folders and options
(the contract: test_bad_inputs.py)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_support import PREDICT, Ctx, Fails, both, image, input_nifti, nifti, predict, raw_bytes

from volseg import io as vio

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_REASON = "runs as root: chmod does not stop root from reading or writing"


# ----------------------------------------------------------------------------- builders


def dicom_two_series(c: Ctx) -> None:
    arr = np.ascontiguousarray(image((16, 16, 4)).astype(np.int16).transpose(2, 1, 0))
    c.write_dicom_series(c.d / "dicom", arr, "1.2.826.0.1.3680043.2.1125.1")
    c.write_dicom_series(c.d / "dicom_b", arr, "1.2.826.0.1.3680043.2.1125.2")
    for path in (c.d / "dicom_b").iterdir():
        path.rename(c.d / "dicom" / f"b_{path.name}")
    (c.d / "dicom_b").rmdir()


def folder_of(files: dict[str, bytes | np.ndarray]) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        (c.d / "in").mkdir()
        for name, content in files.items():
            if isinstance(content, bytes):
                (c.d / "in" / name).write_bytes(content)
            elif name.endswith(".nrrd"):
                vio.write_volume(c.d / "in" / name, content, np.eye(4))
            else:
                nifti(c.d / "in" / name, content)

    return build


def full_disk(c: Ctx) -> None:
    """The input is fine; the NIfTI writer runs out of space halfway through its file."""
    nifti(c.d / "in.nii.gz", image())

    def write_then_fail(tmp, *args, **kwargs):
        Path(tmp).write_bytes(b"\0" * 1000)  # a partial file, as a real full disk leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import volseg.io.formats

    c.monkeypatch.setattr(volseg.io.formats, "_write_nifti", write_then_fail)


def unreadable_input(c: Ctx) -> None:
    path = nifti(c.d / "in.nii.gz", image())
    path.chmod(0)


def denied_input(c: Ctx) -> None:
    """What chmod 000 does for a user who is not root: ``access(R_OK)`` fails for the input."""
    nifti(c.d / "in.nii.gz", image())
    real = os.access
    c.monkeypatch.setattr(vio.os, "access", lambda p, mode, **kw: Path(p).name != "in.nii.gz" and real(p, mode, **kw))


def unwritable_folder(c: Ctx) -> None:
    nifti(c.d / "in.nii.gz", image())
    (c.d / "out").mkdir()
    (c.d / "out").chmod(0o555)


def checkpoint_variant(change: Callable[[dict], dict | bytes]) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        nifti(c.d / "in.nii.gz", image())
        checkpoint = torch.load(c.ckpt, weights_only=True)
        result = change(checkpoint)
        if isinstance(result, bytes):
            (c.d / "model.pt").write_bytes(result)
        else:
            torch.save(result, c.d / "model.pt")

    return build


def _truncated_checkpoint(checkpoint: dict) -> bytes:
    data = _bytes_of(checkpoint)
    return data[: len(data) // 2]


def _bytes_of(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _flipped_checkpoint(checkpoint: dict) -> bytes:
    data = bytearray(_bytes_of(checkpoint))
    for i in range(100, len(data), 97):
        data[i] ^= 0x5A
    return bytes(data)


def _existing_output(c: Ctx) -> None:
    (c.d / "out").mkdir()
    (c.d / "out" / "seg.nii.gz").write_bytes(b"an earlier result")


# ----------------------------------------------------------------------------- the rows


PREDICT_ARGUMENTS: list = [
    # --- paths and outputs
    pytest.param(
        "unreadable input (chmod 000)",
        unreadable_input,
        PREDICT,
        Fails("in.nii.gz': is not readable by this user (permission denied)"),
        marks=pytest.mark.skipif(IS_ROOT, reason=ROOT_REASON),
    ),
    (
        "unreadable input (access refused by the OS, simulated: runs as root too)",
        denied_input,
        PREDICT,
        Fails("in.nii.gz': is not readable by this user (permission denied)"),
    ),
    pytest.param(
        "unwritable output folder (chmod 555)",
        unwritable_folder,
        PREDICT,
        Fails("cannot write"),
        marks=pytest.mark.skipif(IS_ROOT, reason=ROOT_REASON),
    ),
    (
        "output folder's parent is a file",
        both(input_nifti(image()), raw_bytes("blocker", b"x")),
        predict(output="{d}/blocker/out/seg.nii.gz"),
        Fails("cannot write"),
    ),
    (
        "existing output without --overwrite",
        both(input_nifti(image()), lambda c: _existing_output(c)),
        PREDICT,
        Fails("exists; pass --overwrite to replace it"),
    ),
    ("full disk while writing", full_disk, PREDICT, Fails("No space left on device")),
    # --- models
    (
        "corrupted checkpoint (truncated)",
        checkpoint_variant(_truncated_checkpoint),
        predict(model="{d}/model.pt"),
        Fails("not a readable checkpoint"),
    ),
    (
        "corrupted checkpoint (bytes flipped)",
        checkpoint_variant(_flipped_checkpoint),
        predict(model="{d}/model.pt"),
        Fails("not a readable checkpoint"),
    ),
    (
        "checkpoint of a newer format version",
        checkpoint_variant(lambda k: {**k, "format_version": 99}),
        predict(model="{d}/model.pt"),
        Fails("format version 99"),
    ),
    (
        "checkpoint of format version 0",
        checkpoint_variant(lambda k: {**k, "format_version": 0}),
        predict(model="{d}/model.pt"),
        Fails("format version 0"),
    ),
    (
        "a torch file that is not a volseg checkpoint",
        checkpoint_variant(lambda k: {"weights": k["state_dict"]}),
        predict(model="{d}/model.pt"),
        Fails("not a volseg checkpoint"),
    ),
    (
        "checkpoint whose weights do not fit its network",
        checkpoint_variant(lambda k: {**k, "network": {**k["network"], "features": [8, 16]}}),
        predict(model="{d}/model.pt"),
        Fails("do not fit its network: Error(s) in loading state_dict for UNet: size mismatch for"),
    ),
    (
        "nonexistent bundled model name",
        input_nifti(image()),
        predict(model="hipocampus"),
        Fails("no such checkpoint file or bundled model"),
    ),
    # --- folders
    (
        "empty folder",
        lambda c: (c.d / "in").mkdir(),
        predict("in", output="{d}/out"),
        Fails("found no volumes to segment"),
    ),
    (
        "folder of non-image files",
        folder_of({"notes.txt": b"hello", "scan.jpg": b"\xff\xd8\xff", "x.csv": b"1,2"}),
        predict("in", output="{d}/out"),
        Fails("found no volumes to segment"),
    ),
    ("DICOM folder with two series", dicom_two_series, predict("dicom"), Fails("holds 2 DICOM series")),
    (
        "duplicate case ids in a folder (a.nii.gz and a.nrrd)",
        folder_of({"a.nii.gz": image(), "a.nrrd": image(seed=1), "b.nii.gz": image(seed=2)}),
        predict("in", output="{d}/out"),
        Fails("case a"),
    ),
    (
        "folder with one bad file among good ones",
        folder_of({"a.nii.gz": image(), "b.nii.gz": b"garbage"}),
        predict("in", output="{d}/out"),
        Fails("b.nii.gz", kept=("out/a.nii.gz",)),
    ),
    # --- options
    (
        "--overlap 1.5",
        input_nifti(image()),
        predict("in.nii.gz", "--overlap", "1.5"),
        Fails("--overlap 1.5 is not valid; allowed: 0 <= overlap < 1"),
    ),
    (
        "--overlap -0.1",
        input_nifti(image()),
        predict("in.nii.gz", "--overlap", "-0.1"),
        Fails("--overlap -0.1 is not valid"),
    ),
    ("--batch 0", input_nifti(image()), predict("in.nii.gz", "--batch", "0"), Fails("--batch 0 is not valid")),
    ("--batch -3", input_nifti(image()), predict("in.nii.gz", "--batch", "-3"), Fails("--batch -3 is not valid")),
    (
        "--batch many",
        input_nifti(image()),
        predict("in.nii.gz", "--batch", "many"),
        Fails("--batch many is not valid; allowed: auto, or 1 or more"),
    ),
    (
        "--min-size -1",
        input_nifti(image()),
        predict("in.nii.gz", "--min-size", "-1"),
        Fails("--min-size -1.0 is not valid"),
    ),
    (
        "--min-size nan",
        input_nifti(image()),
        predict("in.nii.gz", "--min-size", "nan"),
        Fails("--min-size nan is not valid"),
    ),
]
