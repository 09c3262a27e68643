"""File names of volumes: the one suffix table behind reading, folder discovery and evaluation.

Each :class:`Format` names its suffixes (matched case-insensitively, longest first), what reads
it, what writes it (``None``: not writable; ``--format same`` falls back to NIfTI) and its data
files that belong to a header file (``.img`` of ``.hdr``, ``.REC`` of ``.PAR``, ``.BRIK`` of
``.HEAD``): those, and single DICOM files (a folder of them is one series), are readable but are
not cases of their own in a folder. :data:`NOT_VOLUMES` names files that hold no volume, so that
refusals can say what the file is. Imports nothing heavy (no numpy, torch or MONAI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath


@dataclass(frozen=True)
class Format:
    """One volume format: ``reader``/``writer`` name the code path in :mod:`volseg.io.formats`."""

    name: str
    suffixes: tuple[str, ...]
    reader: str
    writer: str | None = None
    members: tuple[str, ...] = ()  # suffixes that are not cases on their own in a folder


FORMATS = (
    Format("NIfTI-1/NIfTI-2", (".nii.gz", ".nii"), "nifti", "nifti"),
    Format("NIfTI/Analyze 7.5 pair", (".hdr", ".img"), "nibabel", "pair", members=(".img",)),
    Format("FreeSurfer MGH/MGZ", (".mgz", ".mgh"), "nibabel", "mgh"),
    Format("MINC 1/2", (".mnc",), "minc", "itk"),
    Format("Philips PAR/REC", (".par", ".rec"), "nibabel", members=(".rec",)),
    Format("AFNI BRIK/HEAD", (".head", ".brik", ".brik.gz"), "nibabel", members=(".brik", ".brik.gz")),
    Format("ECAT 7", (".v",), "ecat"),
    Format("NRRD", (".seg.nrrd", ".nrrd", ".nhdr"), "itk", "itk"),  # .nhdr: a header + data file, not written
    Format("MetaImage", (".mha", ".mhd"), "itk", "itk"),  # .mhd: likewise
    Format("GIPL", (".gipl.gz", ".gipl"), "itk"),
    Format("VTK structured points", (".vtk",), "itk"),
    Format("DICOM file", (".dcm",), "dicom", members=(".dcm",)),
)
#: Suffixes whose writer cannot write atomically (header + data file pairs not handled).
_NOT_WRITTEN = (".nhdr", ".mhd", ".img")

#: Files that hold no volume: suffix -> what they are (for a one-line refusal).
NOT_VOLUMES = {
    **dict.fromkeys(
        (
            ".dconn.nii",
            ".dtseries.nii",
            ".dscalar.nii",
            ".dlabel.nii",
            ".pconn.nii",
            ".ptseries.nii",
            ".pscalar.nii",
            ".pdconn.nii",
            ".dpconn.nii",
            ".dfan.nii",
            ".fibertemp.nii",
        ),
        "a CIFTI-2 file (data on brain vertices and voxels, not a volume)",
    ),
    ".gii": "a GIFTI file (data on a surface mesh, not a volume)",
    **dict.fromkeys((".trk", ".tck", ".trx"), "a tractography streamlines file, not a volume"),
    **dict.fromkeys(
        (".pial", ".white", ".inflated", ".sphere", ".smoothwm", ".stl", ".obj", ".ply", ".vtp"),
        "a surface mesh, not a volume",
    ),
    **dict.fromkeys((".curv", ".thickness", ".annot", ".label"), "FreeSurfer surface data, not a volume"),
    **dict.fromkeys(
        (".dcm.gz", ".nrrd.gz", ".mha.gz"),
        "a gzip-compressed file of a format read uncompressed; decompress it first (gunzip)",
    ),
    **dict.fromkeys(
        (".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".md", ".rst", ".bval", ".bvec"), "a text file, not a volume"
    ),
}

BY_SUFFIX = {suffix: fmt for fmt in FORMATS for suffix in fmt.suffixes}
READ_SUFFIXES = tuple(BY_SUFFIX)
WRITE_SUFFIXES = tuple(s for s, fmt in BY_SUFFIX.items() if fmt.writer and s not in _NOT_WRITTEN)
_ALL = sorted((*BY_SUFFIX, *NOT_VOLUMES), key=len, reverse=True)  # longest first: .dconn.nii before .nii

#: ``<case>_0000``: nnU-Net channel files.
CHANNEL_SUFFIX = re.compile(r"^(.+)_(\d{4})$")
#: Side outputs of ``volseg predict`` beside ``<case><ext>``, and label files of a folder.
SIDE_OUTPUTS = {
    "probabilities": "_probabilities{ext}",
    "uncertainty": "_uncertainty{ext}",
    "stats": "_stats.json",
    "preview": "_preview.png",
    # the label map for viewers and archives (volseg.inference.label_outputs)
    "labels_itksnap": "_labels.txt",
    "colours_slicer": ".ctbl",
    "seg_nrrd": "_segmentation.seg.nrrd",  # not <case>.seg.nrrd: that would be a second file of the case
    "dicom_seg": ".dcm",
}
DERIVED = re.compile(r"_(seg|segmentation|label|labels|mask|probabilities|uncertainty|preview)$")
_REFERENCE_TAILS = ("_seg", "-seg")


def _match(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in _ALL if lower.endswith(s) and len(name) > len(s)), None)


def volume_suffix(name: str) -> str | None:
    """The readable-volume suffix of a file name (lower case), else None."""
    suffix = _match(name)
    return suffix if suffix in BY_SUFFIX else None


def split_volume_name(name: str) -> tuple[str, str] | None:
    """``("stem", ".nii.gz")`` (suffix as written) for a readable volume file name, else None."""
    suffix = volume_suffix(name)
    return (name[: -len(suffix)], name[-len(suffix) :]) if suffix else None


def format_of(name: str) -> Format | None:
    """The :class:`Format` that reads ``name``, else None."""
    suffix = volume_suffix(name)
    return BY_SUFFIX[suffix] if suffix else None


def is_case_file(name: str) -> bool:
    """Whether a file found in a folder is a case: a readable volume that is not hidden, not a
    data file of a header, not a single DICOM file (their folder is the series)."""
    suffix = volume_suffix(name)
    return bool(suffix) and not name.startswith(".") and suffix not in BY_SUFFIX[suffix].members


def not_a_volume(name: str) -> str | None:
    """What a known non-volume file is ("a GIFTI file (...)"), else None."""
    suffix = _match(name)
    return NOT_VOLUMES.get(suffix) if suffix else None


#: Stem endings of the side outputs that are volumes but not label maps (``_probabilities``, ...).
_SIDE_VOLUME_TAILS = tuple(
    SIDE_OUTPUTS[kind].split("{", 1)[0].split(".", 1)[0] for kind in ("probabilities", "uncertainty", "seg_nrrd")
)


def is_side_volume(name: str) -> bool:
    """Whether a volume file is a side output of ``volseg predict`` (probabilities, uncertainty,
    the Slicer segmentation), not a label map: ``"a_probabilities.nii.gz"`` -> True."""
    parts = split_volume_name(name)
    return parts is not None and parts[0].endswith(_SIDE_VOLUME_TAILS)


def is_derived(stem: str) -> bool:
    """Whether a file stem is a label map or side output (``_seg``, ``_probabilities``, ...)."""
    return bool(DERIVED.search(stem))


def side_output_names(stem: str, ext: str) -> dict[str, str]:
    """File names of the side outputs of the label file ``<stem><ext>``."""
    return {kind: stem + pattern.format(ext=ext) for kind, pattern in SIDE_OUTPUTS.items()}


def case_id(path: str | PurePath) -> str | None:
    """Case name of a volume file for pairing: ``"a/BraTS-GLI-0001-000-seg.nii.gz"`` ->
    ``"BraTS-GLI-0001-000"`` (suffix and a ``_seg``/``-seg`` ending removed); ``None`` for
    hidden files and files that are not cases (see :func:`is_case_file`)."""
    name = PurePath(path).name
    if not is_case_file(name):
        return None
    stem = split_volume_name(name)[0]  # type: ignore[index]
    tail = next((t for t in _REFERENCE_TAILS if stem.lower().endswith(t) and len(stem) > len(t)), "")
    return stem[: len(stem) - len(tail)]


def describe_formats() -> str:
    """``"NIfTI-1/NIfTI-2 (.nii.gz, .nii), ..."`` for error messages."""
    return "; ".join(f"{fmt.name} ({', '.join(fmt.suffixes)})" for fmt in FORMATS)
