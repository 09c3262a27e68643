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

A ``hypothesis`` test fuzzes NIfTI header fields against ``read_volume``: it reads the file
or raises :class:`InputFileError`, never anything else.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volseg import io as vio
from volseg.checkpoint import build_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.errors import InputFileError
from volseg.nn import create_model

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_REASON = "runs as root: chmod does not stop root from reading or writing"
SHAPE = (20, 18, 12)
BRATS = ["flair", "t1", "t1ce", "t2"]


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


# ----------------------------------------------------------------------------- builders


@dataclass
class Ctx:
    """What a builder may use: its folder, the checkpoints and pytest's monkeypatch."""

    d: Path
    ckpt: Path
    ckpt4: Path
    monkeypatch: pytest.MonkeyPatch


def image(shape=SHAPE, dtype=np.float32, seed=0) -> np.ndarray:
    """A body of random values with a bright box inside, zero at the borders."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, dtype=np.float64)
    inner = tuple(slice(1, max(n - 1, 1)) for n in shape[:3])
    arr[inner] = rng.normal(50, 5, size=arr[inner].shape)
    arr[tuple(slice(n // 4, max(n // 2, n // 4 + 1)) for n in shape[:3])] = 100
    return arr.astype(dtype)


def nifti(path: Path, arr: np.ndarray, affine=None, **codes) -> Path:
    img = nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine)
    for kind in ("sform", "qform"):
        if kind in codes:
            matrix, code = codes[kind]
            getattr(img, f"set_{kind}")(matrix, code=code)
    nib.save(img, str(path))
    return path


def label_map(shape=SHAPE, values=(1, 2)) -> np.ndarray:
    arr = np.zeros(shape, np.uint8)
    arr[4:9, 4:9, 3:7] = values[0]
    if len(values) > 1:
        arr[5:7, 5:7, 4:5] = values[1]
    return arr


def rotation(degrees: float, axis: int = 2) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def affine_of(linear: np.ndarray, origin=(3.0, -7.0, 11.0)) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, origin
    return out


def input_nifti(arr: np.ndarray, affine=None, **codes) -> Callable[[Ctx], None]:
    return lambda c: nifti(c.d / "in.nii.gz", arr, affine, **codes)


def raw_bytes(name: str, data: bytes) -> Callable[[Ctx], None]:
    return lambda c: (c.d / name).write_bytes(data)


def truncated(suffix: str, fraction: float = 0.5) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        path = nifti(c.d / f"full{suffix}", image())
        data = path.read_bytes()
        path.unlink()
        (c.d / f"in{suffix}").write_bytes(data[: int(len(data) * fraction)])

    return build


def gzip_flipped_byte(c: Ctx) -> None:
    """A .nii.gz whose compressed stream has one byte flipped near its end (CRC or inflate error)."""
    path = nifti(c.d / "full.nii.gz", image())
    data = bytearray(path.read_bytes())
    path.unlink()
    data[-12] ^= 0xFF
    (c.d / "in.nii.gz").write_bytes(bytes(data))


def wrong_magic(c: Ctx) -> None:
    path = nifti(c.d / "full.nii", image())
    data = bytearray(path.read_bytes())
    path.unlink()
    data[344:348] = b"xyz\0"
    (c.d / "in.nii").write_bytes(bytes(data))


def raw_nifti(path: Path, arr: np.ndarray, edit: Callable[[nib.Nifti1Header], None]) -> Path:
    """Write a NIfTI byte by byte, with header fields nibabel's writer would refuse (``edit``)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(arr.dtype)
    header.set_data_shape(arr.shape)
    header["vox_offset"] = 352
    header.set_sform(np.eye(4), code=1)
    edit(header)
    data = header.binaryblock + b"\0" * 4 + np.asfortranarray(arr).tobytes(order="F")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def raw_input(arr: np.ndarray, edit: Callable[[nib.Nifti1Header], None]) -> Callable[[Ctx], None]:
    return lambda c: raw_nifti(c.d / "in.nii.gz", arr, edit)


def _set(**fields) -> Callable[[nib.Nifti1Header], None]:
    def edit(header: nib.Nifti1Header) -> None:
        for key, value in fields.items():
            header[key] = value

    return edit


def header_claims(shape: tuple[int, ...], datatype=np.float32) -> Callable[[Ctx], None]:
    """A NIfTI whose header says ``shape`` but which holds a few bytes of data only."""

    def build(c: Ctx) -> None:
        header = nib.Nifti1Header()
        header.set_data_dtype(datatype)
        header["dim"][0] = len(shape)
        header["dim"][1 : len(shape) + 1] = shape
        header["pixdim"][1:4] = 1.0
        header["vox_offset"] = 352
        header.set_sform(np.eye(4), code=1)
        (c.d / "in.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 64)

    return build


def with_nonfinite(value: float) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        arr = image()
        arr[5, 5, 5] = value
        arr[6, 6, 6] = value
        nifti(c.d / "in.nii.gz", arr)

    return build


def extremes(dtype) -> Callable[[Ctx], None]:
    """Integer data reaching both ends of its type, with an ordinary body between."""

    def build(c: Ctx) -> None:
        info = np.iinfo(dtype)
        arr = np.clip(image(), info.min, info.max).astype(dtype)
        arr[2:5, 2:5, 2:5] = info.max
        arr[10:13, 10:13, 6:9] = info.min if info.min < 0 else 0
        arr[0, 0, 0] = info.min
        nifti(c.d / "in.nii.gz", arr)

    return build


def mha_with_direction(direction: np.ndarray) -> Callable[[Ctx], None]:
    """An MHA file with a non-orthonormal direction matrix written into its text header."""

    def build(c: Ctx) -> None:
        data = np.ascontiguousarray(image().transpose(2, 1, 0))  # (z, y, x) for ITK
        matrix = " ".join(f"{v:.6f}" for v in direction.T.ravel())  # MetaIO lists columns
        header = (
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = False\nTransformMatrix = {matrix}\nOffset = 1 2 3\n"
            "ElementSpacing = 1 1 1\nDimSize = 20 18 12\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
        )
        (c.d / "in.mha").write_bytes(header.encode() + data.astype("<f4").tobytes())

    return build


def brats_case(missing: str | None) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        folder = c.d / "BraTS-001"
        folder.mkdir()
        for i, channel in enumerate(BRATS):
            if channel != missing:
                nifti(folder / f"BraTS-001_{channel}.nii.gz", image(seed=i))

    return build


def dicom_two_series(write_series) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        arr = image((16, 16, 4)).astype(np.int16).transpose(2, 1, 0)
        write_series(c.d / "dicom", np.ascontiguousarray(arr), "1.2.826.0.1.3680043.2.1125.1")
        write_series(c.d / "dicom_b", np.ascontiguousarray(arr), "1.2.826.0.1.3680043.2.1125.2")
        for path in (c.d / "dicom_b").iterdir():
            path.rename(c.d / "dicom" / f"b_{path.name}")
        (c.d / "dicom_b").rmdir()

    return build


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


def both(*builders: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        for b in builders:
            b(c)

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


# --- evaluate


def eval_pair(pred: np.ndarray, ref: np.ndarray, pred_affine=None, ref_affine=None) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        nifti(c.d / "pred.nii.gz", pred, pred_affine)
        nifti(c.d / "ref.nii.gz", ref, ref_affine)

    return build


# --- plan / train datasets


def msd(c: Ctx, cases: int = 4, change: Callable[[Path, int], None] | None = None, shape=SHAPE) -> Path:
    """A tiny MSD dataset in ``d/data``; ``change(root, index)`` may spoil case ``index`` after writing."""
    root = c.d / "data"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(cases):
        name = f"case_{i:03d}.nii.gz"
        nifti(root / "imagesTr" / name, image(shape, seed=i))
        nifti(root / "labelsTr" / name, label_map(shape))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        if change is not None:
            change(root, i)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "tiny",
                "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "outer", "2": "inner"},
                "numTraining": cases,
                "training": training,
                "test": [],
            }
        )
    )
    return root


def train_config(root: Path, **sections) -> dict:
    values = {
        "data": {
            "root": str(root),
            "channels": ["MRI"],
            "labels": {0: "background", 1: "outer", 2: "inner"},
            "num_folds": 2,
            "num_workers": 0,
            "cache": "memory",
        },
        "network": {"options": {"features": [4, 8]}},
        "sampling": {"patch_size": [16, 16, 16], "batch_size": 1},
        "augmentation": {
            name: {"prob": 0.0}
            for name in (
                "flip",
                "affine",
                "elastic",
                "noise",
                "blur",
                "brightness",
                "contrast",
                "gamma",
                "low_resolution",
            )
        },
        "loss": {"deep_supervision": False},
        "training": {"epochs": 1, "iterations_per_epoch": 1, "device": "cpu"},
        "inference": {"sw_batch_size": 2},
    }
    for section, options in sections.items():
        values[section] = {**values.get(section, {}), **options}
    return values


def dataset_and_config(change=None, config_change: Callable[[dict], dict] | None = None, **msd_options):
    def build(c: Ctx) -> None:
        root = msd(c, change=change, **msd_options)
        values = train_config(root)
        if config_change is not None:
            values = config_change(values)
        (c.d / "cfg.yaml").write_text(yaml.safe_dump(values))

    return build


def spoil_label(index: int, arr_fn: Callable[[], np.ndarray], affine=None):
    def change(root: Path, i: int) -> None:
        if i == index:
            nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", arr_fn(), affine)

    return change


def spoil_image(index: int, arr_fn: Callable[[], np.ndarray] | None):
    """Replace the image of case ``index`` by ``arr_fn()``, or cut its file in half (None)."""

    def change(root: Path, i: int) -> None:
        path = root / "imagesTr" / f"case_{i:03d}.nii.gz"
        if i == index and arr_fn is None:
            path.write_bytes(path.read_bytes()[:200])
        elif i == index:
            nifti(path, arr_fn())

    return change


def all_labels_empty(root: Path, i: int) -> None:
    nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", np.zeros(SHAPE, np.uint8))


def edit_dataset_json(edit: Callable[[dict], None]) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        root = msd(c)
        meta = json.loads((root / "dataset.json").read_text())
        edit(meta)
        (root / "dataset.json").write_text(json.dumps(meta))

    return build


def write_config(values: dict | str) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        root = msd(c, cases=2)
        text = values if isinstance(values, str) else yaml.safe_dump(values)
        (c.d / "cfg.yaml").write_text(text.replace("ROOT", str(root)))

    return build


# ----------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Fails:
    """A user error whose one-line message contains ``text``; ``kept``: finished outputs that
    stay (a folder run stops at a bad case and keeps the cases done before it)."""

    text: str
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class Works:
    """Exit 0. ``grid``: the predict output lies on the grid of this input (relative to ``d``)."""

    grid: str | None = None
    output: str = "out/seg.nii.gz"
    stdout: str | None = None
    stderr: str | None = None
    check: Callable[[Path], None] | None = field(default=None, compare=False)


PREDICT = ["predict", "-m", "{ckpt}", "-i", "{d}/in.nii.gz", "-o", "{d}/out/seg.nii.gz", "--quiet"]
PREDICT4 = ["predict", "-m", "{ckpt4}", "-i", "{d}/in.nii.gz", "-o", "{d}/out/seg.nii.gz", "--quiet"]
EVALUATE = ["evaluate", "{d}/pred.nii.gz", "{d}/ref.nii.gz", "--quiet"]
TRAIN = ["train", "{d}/cfg.yaml", "-o", "{d}/run", "--quiet"]
PLAN = ["plan", "{d}/data", "-o", "{d}/plan.yaml", "--device", "cpu", "--workers", "1", "--quiet"]


def predict(input_name: str = "in.nii.gz", *extra: str, model: str = "{ckpt}", output: str = "{d}/out/seg.nii.gz"):
    return ["predict", "-m", model, "-i", f"{{d}}/{input_name}", "-o", output, "--quiet", *extra]


def _mgz_input(c: Ctx) -> None:
    nib.save(nib.MGHImage(image(), OBLIQUE), str(c.d / "in.mgz"))


def _gifti_input(c: Ctx) -> None:
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.zeros(4, np.float32))]), str(c.d / "in.gii"))


def _nibabel_file(name: str) -> Callable[[Ctx], None]:
    """A copy of a file of nibabel's installed test data."""

    def build(c: Ctx) -> None:
        (c.d / name).write_bytes((Path(nib.__file__).parent / "tests" / "data" / name).read_bytes())

    return build


def check_qform_equals_sform(c_affine: np.ndarray) -> Callable[[Path], None]:
    def check(output: Path) -> None:
        img = nib.load(str(output))
        np.testing.assert_allclose(img.get_sform(), c_affine, atol=1e-5)
        np.testing.assert_allclose(img.get_qform(), c_affine, atol=1e-4)
        assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0

    return check


OBLIQUE = affine_of(rotation(25, 2) @ rotation(-10, 0) @ np.diag([0.9, 1.1, 2.0]))
SHEARED = affine_of(np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 1.5]]))
QFORM = affine_of(rotation(15, 2) @ np.diag([1.0, 1.0, 1.5]), origin=(-5.0, 2.0, 1.0))
SFORM = affine_of(np.diag([0.8, 0.9, 2.0]), origin=(10.0, 20.0, -30.0))
NON_ORTHONORMAL = np.array([[1.0, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.3, 1.0]])


def _labels_only(values: set[int]) -> Callable[[Path], None]:
    def check(output: Path) -> None:
        assert set(np.unique(vio.read_volume(output).array).tolist()) <= values

    return check


def _rgb(alpha: bool = False) -> np.ndarray:
    grey = np.clip(image(), 0, 255).astype(np.uint8)
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")] + ([("A", "u1")] if alpha else []))
    rgb["R"], rgb["G"], rgb["B"] = grey, grey // 2, grey // 3
    if alpha:
        rgb["A"] = 255
    return rgb


def _sheared_kept(output: Path) -> None:
    """The sform keeps the shear exactly; the qform (rigid by definition) holds the nearest rigid affine."""
    img = nib.load(str(output))
    np.testing.assert_allclose(img.get_sform(), SHEARED, atol=1e-5)
    linear = img.get_qform()[:3, :3]
    rotation_part = linear / np.linalg.norm(linear, axis=0)
    np.testing.assert_allclose(rotation_part.T @ rotation_part, np.eye(3), atol=1e-5)
    assert not np.allclose(img.get_qform(), SHEARED, atol=1e-3)


def _fix_pixdim(header: nib.Nifti1Header) -> None:
    header["pixdim"][2] = 0.0


CASES: list = [
    # --- files that are not volumes
    ("truncated .nii.gz", truncated(".nii.gz"), PREDICT, Fails("truncated or corrupt image data")),
    ("truncated .nii (data cut)", truncated(".nii", 0.6), predict("in.nii"), Fails("truncated or corrupt image data")),
    ("header-only .nii.gz (cut at 200 bytes)", truncated(".nii.gz", 0.05), PREDICT, Fails("in.nii.gz")),
    ("gzip stream with a flipped byte", gzip_flipped_byte, PREDICT, Fails("truncated or corrupt image data")),
    (
        "text file named .nii.gz",
        raw_bytes("in.nii.gz", b"patient: 12\nno image here\n"),
        PREDICT,
        Fails("not a valid NIfTI file"),
    ),
    ("empty file named .nii.gz", raw_bytes("in.nii.gz", b""), PREDICT, Fails("in.nii.gz")),
    ("wrong magic bytes", wrong_magic, predict("in.nii"), Fails("not a valid NIfTI file")),
    ("vox_offset = inf", raw_input(image(), _set(vox_offset=np.inf)), PREDICT, Fails("not a valid NIfTI file")),
    (
        "vox_offset past the end of the file",
        raw_input(image(), _set(vox_offset=1e6)),
        PREDICT,
        Fails("truncated or corrupt image data"),
    ),
    (
        "unknown datatype code",
        raw_input(image(), _set(datatype=77)),
        PREDICT,
        Fails("not a valid NIfTI file (data code 77 not recognized)"),
    ),
    (
        "pixdim 0 (nibabel sets it to 1; a warning says so)",
        raw_input(image(), _fix_pixdim),
        PREDICT,
        Works(grid="in.nii.gz", stderr="nibabel corrected its header: pixdim[1,2,3] should be non-zero"),
    ),
    (
        "pixdim 0 and NaN voxels, --strict: the error alone",
        raw_input(np.where(image() > 90, np.nan, image()), _fix_pixdim),
        [*PREDICT, "--strict"],
        Fails("NaN or infinite"),
    ),
    (
        "gzip of text named .nii.gz",
        raw_bytes("in.nii.gz", gzip.compress(b"hello " * 100)),
        PREDICT,
        Fails("not a valid NIfTI file"),
    ),
    (
        "text file named .nrrd",
        raw_bytes("in.nrrd", b"NRRD0004\ntype: float\nnonsense\n"),
        predict("in.nrrd"),
        Fails("not a readable image"),
    ),
    (
        "unknown extension (.png)",
        raw_bytes("in.png", b"\x89PNG\r\n\x1a\n"),
        predict("in.png"),
        Fails("unknown file extension"),
    ),
    ("missing input file", lambda c: None, PREDICT, Fails("no such file or folder")),
    ("a folder named in.nii.gz", lambda c: (c.d / "in.nii.gz").mkdir(), PREDICT, Fails("found no volumes to segment")),
    (
        "input path through a file",
        raw_bytes("blocker", b"x"),
        predict("blocker/in.nii.gz"),
        Fails("no such file or folder"),
    ),
    # --- shapes volseg cannot segment
    ("2D image for a 3D model", input_nifti(image((20, 18))), PREDICT, Fails("is 2D; volseg pipelines need 3D")),
    (
        "4D (3 channels) for a 1-channel model",
        input_nifti(image((20, 18, 12, 3))),
        PREDICT,
        Fails("the model takes 1 channels (image); the input has 3"),
    ),
    ("5D image", input_nifti(image((10, 10, 8, 2, 3))), PREDICT, Fails("non-singleton dimensions")),
    (
        "1D image",
        raw_input(np.arange(50, dtype=np.float32), lambda h: None),
        PREDICT,
        Fails("has 1 dimension(s) (shape (50,)); volseg reads 2D and 3D volumes"),
    ),
    (
        "RGB image for a 1-channel model",
        input_nifti(_rgb()),
        PREDICT,
        Fails("the model takes 1 channels (image); the input has 3"),
    ),
    (
        "RGBA image for a 1-channel model",
        input_nifti(_rgb(alpha=True)),
        PREDICT,
        Fails("the model takes 1 channels (image); the input has 4"),
    ),
    (
        "complex-valued image",
        input_nifti(image().astype(np.complex64)),
        PREDICT,
        Fails("has complex64 voxels; volseg reads integer or float data"),
    ),
    ("zero-sized dimension", header_claims((20, 0, 12)), predict("in.nii"), Fails("zero-sized dimension")),
    (
        "header claiming terabytes",
        header_claims((20000, 20000, 20000)),
        predict("in.nii"),
        Fails("over the 8.0 GiB limit"),
    ),
    (
        "header claiming more data than the file holds",
        header_claims((64, 64, 64)),
        predict("in.nii"),
        Fails("truncated or corrupt image data"),
    ),
    (
        "1-channel image for a 4-channel model",
        input_nifti(image()),
        PREDICT4,
        Fails("the model takes 4 channels (flair, t1, t1ce, t2); the input has 1"),
    ),
    (
        "BraTS case folder missing t2",
        brats_case("t2"),
        predict("BraTS-001", model="{ckpt4}"),
        Fails("BraTS case BraTS-001: missing t2"),
    ),
    # --- voxel values
    (
        "NaN voxels (replaced by 0, one warning)",
        with_nonfinite(np.nan),
        PREDICT,
        Works(grid="in.nii.gz", stderr="2 NaN/Inf voxel(s) replaced by 0"),
    ),
    (
        "Inf voxels (replaced by 0, one warning)",
        with_nonfinite(np.inf),
        PREDICT,
        Works(grid="in.nii.gz", stderr="2 NaN/Inf voxel(s) replaced by 0"),
    ),
    ("-Inf voxels (replaced by 0, one warning)", with_nonfinite(-np.inf), PREDICT, Works(grid="in.nii.gz")),
    (
        "NaN voxels with --strict",
        with_nonfinite(np.nan),
        [*PREDICT, "--strict"],
        Fails("2 of 4320 voxels are NaN or infinite; refused by --strict"),
    ),
    ("Inf voxels with --strict", with_nonfinite(np.inf), [*PREDICT, "--strict"], Fails("refused by --strict")),
    # --- other formats (tests/test_formats.py has each one's geometry)
    ("FreeSurfer .mgz input", _mgz_input, predict("in.mgz"), Works(grid="in.mgz")),
    (
        "FreeSurfer .mgz input, --format same",
        _mgz_input,
        predict("in.mgz", "--format", "same", output="{d}/out"),
        Works(grid="in.mgz", output="out/in.mgz"),
    ),
    (
        "a CIFTI-2 file",
        _nibabel_file("row_major.dconn.nii"),
        predict("row_major.dconn.nii"),
        Fails("is a CIFTI-2 file"),
    ),
    ("a GIFTI surface", _gifti_input, predict("in.gii"), Fails("in.gii': is a GIFTI file")),
    (
        "a PAR header without its REC",
        _nibabel_file("T1.PAR"),
        predict("T1.PAR"),
        Fails("without its data file (T1.REC is missing)"),
    ),
    ("a streamlines file", _nibabel_file("simple.trk"), predict("simple.trk"), Fails("streamlines file")),
    (
        "scl_slope = inf (ignored, as nibabel does)",
        raw_input(image().astype(np.int16), _set(scl_slope=np.inf)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    (
        "scl_slope = NaN (no scaling)",
        raw_input(image().astype(np.int16), _set(scl_slope=np.nan)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    (
        "scl_inter = inf",
        raw_input(image().astype(np.int16), _set(scl_slope=2.0, scl_inter=np.inf)),
        PREDICT,
        Fails("Valid slope but invalid intercept inf"),
    ),
    (
        "scl_slope = 1e38 (scaled values overflow float32)",
        raw_input(image().astype(np.int16), _set(scl_slope=1e38, scl_inter=0.0)),
        PREDICT,
        Fails("has values beyond the float32 range"),
    ),
    (
        "scl_slope = 0 (no scaling, by the NIfTI standard)",
        raw_input(image().astype(np.int16), _set(scl_slope=0.0)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    ("int16 extremes", extremes(np.int16), PREDICT, Works(grid="in.nii.gz")),
    ("uint16 max", extremes(np.uint16), PREDICT, Works(grid="in.nii.gz")),
    ("int32 extremes", extremes(np.int32), PREDICT, Works(grid="in.nii.gz")),
    (
        "uint8 image of zeros only",
        input_nifti(np.zeros(SHAPE, np.uint8)),
        PREDICT,
        Works(grid="in.nii.gz", check=_labels_only({0, 1, 2})),
    ),
    ("int8 image", input_nifti(np.clip(image(), -128, 127).astype(np.int8)), PREDICT, Works(grid="in.nii.gz")),
    ("float64 image", input_nifti(image(dtype=np.float64)), PREDICT, Works(grid="in.nii.gz")),
    # --- geometry
    ("oblique affine", input_nifti(image(), OBLIQUE), PREDICT, Works(grid="in.nii.gz")),
    ("sheared affine (sform)", input_nifti(image(), SHEARED), PREDICT, Works(grid="in.nii.gz", check=_sheared_kept)),
    (
        "qform and sform disagree (sform wins)",
        input_nifti(image(), None, qform=(QFORM, 1), sform=(SFORM, 2)),
        PREDICT,
        Works(grid="in.nii.gz", check=check_qform_equals_sform(SFORM)),
    ),
    (
        "qform only (sform_code 0)",
        input_nifti(image(), None, sform=(SFORM, 0), qform=(QFORM, 1)),
        PREDICT,
        Works(
            grid="in.nii.gz",
            check=lambda out: np.testing.assert_allclose(vio.read_volume(out).affine, QFORM, atol=1e-5),
        ),
    ),
    (
        "no qform or sform (codes 0)",
        input_nifti(image(), None, sform=(SFORM, 0), qform=(QFORM, 0)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    ("non-orthonormal direction (MHA)", mha_with_direction(NON_ORTHONORMAL), predict("in.mha"), Works(grid="in.mha")),
    (
        "singular affine (sform with a zero column)",
        raw_input(image(), lambda h: (h.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1), _set(qform_code=0)(h))),
        PREDICT,
        Fails("non-invertible voxel-to-world affine"),
    ),
    ("1-slice volume", input_nifti(image((20, 18, 1))), PREDICT, Works(grid="in.nii.gz")),
    ("volume thinner than the window (20x18x3)", input_nifti(image((20, 18, 3))), PREDICT, Works(grid="in.nii.gz")),
    ("tiny volume (2x2x2)", input_nifti(image((2, 2, 2))), PREDICT, Works(grid="in.nii.gz")),
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
    ("DICOM folder with two series", None, predict("dicom"), Fails("holds 2 DICOM series")),
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
    # --- evaluate
    (
        "evaluate: grids of different shapes",
        eval_pair(label_map(), label_map((20, 18, 11))),
        EVALUATE,
        Fails("are on different grids"),
    ),
    (
        "evaluate: same shape, different affines",
        eval_pair(label_map(), label_map(), np.eye(4), OBLIQUE),
        EVALUATE,
        Fails("affines differ by up to"),
    ),
    (
        "evaluate: both label maps empty",
        eval_pair(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)),
        [*EVALUATE, "--labels", "1"],
        Works(stdout="1.0000 ± 0.0000"),
    ),
    (
        "evaluate: empty prediction, labelled reference",
        eval_pair(np.zeros(SHAPE, np.uint8), label_map()),
        EVALUATE,
        Works(stdout="0.0000 ± 0.0000"),
    ),
    (
        "evaluate: probabilities given as labels",
        eval_pair(np.full(SHAPE, 0.3, np.float32), label_map()),
        EVALUATE,
        Fails("is not a label map: it holds non-integer values"),
    ),
    (
        "evaluate: NaN in the reference",
        eval_pair(label_map(), np.where(label_map() > 0, np.nan, 0).astype(np.float32)),
        EVALUATE,
        Fails("NaN or infinite"),
    ),
    (
        "evaluate: 4D prediction",
        eval_pair(np.stack([label_map()] * 2, -1), label_map()),
        EVALUATE,
        Fails("has channels"),
    ),
    (
        "evaluate: existing report without --overwrite",
        both(eval_pair(label_map(), label_map()), raw_bytes("report.csv", b"old")),
        [*EVALUATE, "-o", "{d}/report.csv"],
        Fails("exists; pass --overwrite"),
    ),
    (
        "evaluate: folders of non-image files",
        both(
            lambda c: (c.d / "p").mkdir(),
            lambda c: (c.d / "r").mkdir(),
            raw_bytes("p/a.txt", b"x"),
            raw_bytes("r/a.txt", b"x"),
        ),
        ["evaluate", "{d}/p", "{d}/r", "--quiet"],
        Fails("no case to evaluate"),
    ),
    (
        "evaluate: --labels a,b",
        eval_pair(label_map(), label_map()),
        [*EVALUATE, "--labels", "a,b"],
        Fails("--labels 'a,b' is not valid"),
    ),
    # --- plan
    ("plan: empty folder", lambda c: (c.d / "data").mkdir(), PLAN, Fails("cannot tell the layout")),
    (
        "plan: folder of non-image files",
        both(lambda c: (c.d / "data").mkdir(), raw_bytes("data/readme.txt", b"x")),
        PLAN,
        Fails("cannot tell the layout"),
    ),
    (
        "plan: dataset.json entry pointing nowhere",
        edit_dataset_json(
            lambda m: m["training"].append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
        ),
        PLAN,
        Fails("image ./imagesTr/gone.nii.gz listed in dataset.json does not exist"),
    ),
    (
        "plan: duplicate case ids in dataset.json",
        edit_dataset_json(lambda m: m["training"].append(m["training"][0])),
        PLAN,
        Fails("case_000: case id found 2 times"),
    ),
    (
        "plan: dataset.json not JSON",
        both(lambda c: msd(c), raw_bytes("data/dataset.json", b"{not json")),
        PLAN,
        Fails("cannot read dataset file"),
    ),
    (
        "plan: existing output without --overwrite",
        both(lambda c: msd(c), raw_bytes("plan.yaml", b"x: 1")),
        PLAN,
        Fails("plan.yaml exists; pass --overwrite"),
    ),
    (
        "plan: a truncated image in the dataset",
        dataset_and_config(change=spoil_image(1, None)),
        PLAN,
        Fails("case_001.nii.gz"),
    ),
    # --- train
    (
        "train: config with an unknown key",
        write_config({"data": {"root": "ROOT"}, "trainig": {"epochs": 1}}),
        TRAIN,
        Fails("unknown config key 'trainig' (did you mean 'training'?)"),
    ),
    (
        "train: config value of the wrong type",
        write_config({"data": {"root": "ROOT"}, "training": {"epochs": "ten"}}),
        TRAIN,
        Fails("training.epochs='ten' is not valid; expected an integer"),
    ),
    ("train: config that is not YAML", write_config("data: [root: {\n"), TRAIN, Fails("not valid YAML")),
    ("train: config that is a list", write_config("- 1\n- 2\n"), TRAIN, Fails("the config must be a mapping")),
    ("train: missing config file", lambda c: None, TRAIN, Fails("no such config file")),
    (
        "train: data.root does not exist",
        write_config({"data": {"root": "ROOT/nowhere", "labels": {0: "background", 1: "a"}}}),
        TRAIN,
        Fails("does not exist"),
    ),
    (
        "train: image and label grids disagree (shape)",
        dataset_and_config(change=spoil_label(1, lambda: label_map((20, 18, 10)))),
        TRAIN,
        Fails("have different shapes: (20, 18, 12) vs (20, 18, 10)"),
    ),
    (
        "train: image and label grids disagree (affine)",
        dataset_and_config(change=spoil_label(1, label_map, OBLIQUE)),
        TRAIN,
        Fails("have different affines"),
    ),
    (
        "train: label values the config does not know",
        dataset_and_config(change=spoil_label(0, lambda: label_map(values=(1, 7)))),
        TRAIN,
        Fails("label values 7 are not in data.labels (allowed: 0, 1, 2)"),
    ),
    (
        "train: NaN voxels in an image",
        dataset_and_config(change=spoil_image(0, lambda: np.full(SHAPE, np.nan, np.float32))),
        TRAIN,
        Fails("NaN or infinite"),
    ),
    (
        "train: empty label map in one case",
        dataset_and_config(change=spoil_label(0, lambda: np.zeros(SHAPE, np.uint8))),
        TRAIN,
        Works(output="run/last.pt"),
    ),
    ("train: every label map empty", dataset_and_config(change=all_labels_empty), TRAIN, Works(output="run/last.pt")),
    ("train: volumes smaller than the patch", dataset_and_config(shape=(9, 8, 6)), TRAIN, Works(output="run/last.pt")),
    (
        "train: no foreground label",
        write_config({"data": {"root": "ROOT"}}),
        TRAIN,
        Fails("data.labels={0: 'background'} has no foreground label"),
    ),
    (
        "train: --resume of a folder that is no run",
        lambda c: (c.d / "run").mkdir(),
        ["train", "--resume", "{d}/run", "--quiet"],
        Fails("is not a volseg run folder"),
    ),
    (
        "train: --set without =",
        dataset_and_config(),
        [*TRAIN, "--set", "training.epochs"],
        Fails("--set 'training.epochs' is not valid"),
    ),
]


def _existing_output(c: Ctx) -> None:
    (c.d / "out").mkdir()
    (c.d / "out" / "seg.nii.gz").write_bytes(b"an earlier result")


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
    ctx = Ctx(d, checkpoints["ckpt"], checkpoints["ckpt4"], monkeypatch)
    monkeypatch.chdir(tmp_path)  # a default run folder (runs/...) would land here, not in the checkout
    (builder or dicom_two_series(write_dicom_series))(ctx)
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


# ----------------------------------------------------------------------------- header fuzzing

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.int64]
#: NIfTI datatype codes: the usual ones, RGB (128), complex (32, 1792), RGBA (2304), float128 (1536),
#: complex256 (2048), and codes that mean nothing.
DATATYPES = [2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 32, 128, 1792, 2304, 0, 1, 1536, 2048, 77, -3, 30000]
HOSTILE = st.sampled_from([0.0, -1.0, 1e-30, 1e30, 3e38, float("nan"), float("inf"), float("-inf")])
FLOATS = st.one_of(HOSTILE, st.floats(-1e4, 1e4, allow_nan=False))
FIELDS = (
    "dim",
    "dim0",
    "pixdim",
    "datatype",
    "bitpix",
    "vox_offset",
    "scl_slope",
    "scl_inter",
    "sform_code",
    "qform_code",
    "srow",
    "quatern",
    "magic",
    "sizeof_hdr",
    "extension",
    "payload",
)


@st.composite
def nifti_files(draw):
    """A valid small NIfTI-1 file with one to three header fields (or its data) made hostile."""
    shape = draw(st.lists(st.integers(1, 4), min_size=2, max_size=5))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    size = int(np.prod(shape)) * dtype.itemsize
    payload = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else bytes(size)
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_zooms([draw(st.sampled_from([0.5, 1.0, 2.5])) for _ in shape])
    header["vox_offset"] = 352
    header.set_sform(affine_of(np.diag([1.0, 1.0, 2.0])), code=1)
    header.set_qform(affine_of(rotation(10) @ np.diag([1.0, 1.0, 2.0])), code=1)
    extension = b"\0\0\0\0"
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        if name == "dim":
            header["dim"][draw(st.integers(1, 7))] = draw(st.sampled_from([0, 1, 2, 5, -1, 255, 32767, -32768]))
        elif name == "dim0":
            header["dim"][0] = draw(st.sampled_from([-1, 0, 1, 6, 7, 8, 300]))
        elif name == "pixdim":
            header["pixdim"][draw(st.integers(0, 7))] = draw(HOSTILE)
        elif name == "datatype":
            header["datatype"] = draw(st.sampled_from(DATATYPES))
        elif name == "bitpix":
            header["bitpix"] = draw(st.sampled_from([0, 1, 7, 8, 16, 64, 128, -8]))
        elif name == "vox_offset":
            header["vox_offset"] = draw(
                st.sampled_from([0.0, 348.0, 351.0, 353.0, 368.0, 1e9, -352.0, float("nan"), float("inf")])
            )
        elif name in ("scl_slope", "scl_inter"):
            header[name] = draw(FLOATS)
        elif name in ("sform_code", "qform_code"):
            header[name] = draw(st.sampled_from([0, 2, 3, 4, 5, -1, 255]))
        elif name == "srow":
            header[draw(st.sampled_from(["srow_x", "srow_y", "srow_z"]))][draw(st.integers(0, 3))] = draw(FLOATS)
        elif name == "quatern":
            header[draw(st.sampled_from(["quatern_b", "quatern_c", "quatern_d", "qoffset_x"]))] = draw(FLOATS)
        elif name == "magic":
            header["magic"] = draw(st.sampled_from([b"ni1", b"n+2", b"xyz", b""]))
        elif name == "sizeof_hdr":
            header["sizeof_hdr"] = draw(st.sampled_from([0, 540, 347, -348, 1 << 24]))
        elif name == "extension":
            extension = draw(
                st.sampled_from(
                    [
                        b"",
                        b"\1\0\0\0",
                        b"\1\0\0\0" + struct.pack("<ii", 16, 6) + bytes(8),
                        b"\1\0\0\0" + struct.pack("<ii", 1 << 30, 6),
                    ]
                )
            )
        else:
            cut = draw(st.integers(0, len(payload)))
            payload = payload[:cut] if draw(st.booleans()) else payload + bytes(draw(st.integers(1, 64)))
    compressed = draw(st.booleans())
    return header.binaryblock + extension + payload, compressed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(nifti_files())
def test_fuzzed_nifti_headers_read_or_raise_input_file_error(example):
    data, compressed = example
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("fuzz.nii.gz" if compressed else "fuzz.nii")
        path.write_bytes(gzip.compress(data) if compressed else data)
        try:
            volume = vio.read_volume(path, max_bytes=16 * 1024**2)
        except InputFileError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            return
    assert volume.spatial_dims in (2, 3) and min(volume.array.shape) >= 1
    assert volume.array.ndim in (volume.spatial_dims, volume.spatial_dims + 1)
    assert np.all(np.isfinite(volume.affine)) and abs(np.linalg.det(volume.affine[:3, :3])) > 0
    assert volume.array.dtype.kind in "uif"
    if volume.array.dtype.kind == "f":
        assert np.all(np.isfinite(volume.array))
    assert volume.channels_first().dtype == np.float32  # what the pipelines take


def test_struct_sizes_of_the_fuzzed_header():
    """The fuzz writes a real NIfTI-1 header: 348 bytes, magic n+1 at 344."""
    block = nib.Nifti1Header().binaryblock
    assert len(block) == 348 and struct.unpack("<i", block[:4])[0] == 348 and block[344:348] == b"n+1\0"
