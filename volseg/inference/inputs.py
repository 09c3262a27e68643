"""What ``volseg predict -i INPUT`` segments: find the cases in a file or folder.

INPUT may be
* a volume file (any format of :mod:`volseg.io.naming`): one case; several channels come from a 4D file;
  a single DICOM file reads its whole series when its folder holds the rest;
* a DICOM series folder: one case;
* a BraTS case folder (``<case>_{flair,t1,t1ce,t2}`` or ``<case>-{t2f,t1n,t1c,t2w}``): one case;
* a folder of BraTS case folders: one case each;
* a folder of volume files: one case per file, or nnU-Net channel groups
  ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... when the model takes several channels
  (or the names carry the suffix).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from volseg.data.datasets import BRATS2021_CHANNELS, BRATS2023_CHANNELS, BRATS2023_TO_2021, brats_case_files
from volseg.errors import InputFileError
from volseg.io.naming import CHANNEL_SUFFIX as _CHANNEL_SUFFIX
from volseg.io.naming import is_case_file, is_derived, split_volume_name
from volseg.lazy import sitk  # SimpleITK, imported on first use


@dataclass(frozen=True)
class PredictionInput:
    """One case to segment: its id, its channel files (or a DICOM folder) in channel order,
    and the BraTS label convention to write back (``None`` for other inputs)."""

    case_id: str
    images: tuple[Path, ...]
    brats_convention: str | None = None


def find_inputs(path: str | Path, *, channel_names: list[str] | None = None) -> list[PredictionInput]:
    """The cases under ``path`` (see the module docstring), sorted by id.

    ``channel_names`` are the model's input channels; they order BraTS modalities and decide
    whether a folder's files are channel groups.
    """
    path = Path(path)
    channel_names = list(channel_names or [])
    if not path.exists():
        raise InputFileError(f"{path}: no such file or folder")
    if path.is_file():
        parts = split_volume_name(path.name)
        return [PredictionInput(parts[0] if parts else path.stem, (path,))]
    brats = _brats_modalities(path)
    if brats:
        return [_brats_case(path, brats, channel_names)]
    subfolders = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    cases = [_brats_case(folder, found, channel_names) for folder in subfolders if (found := _brats_modalities(folder))]
    if cases:
        return cases
    files = [p for p in sorted(path.iterdir()) if p.is_file() and is_case_file(p.name)]
    files = [p for p in files if not is_derived(split_volume_name(p.name)[0])]
    if files:
        return _file_cases(files, len(channel_names))
    if _is_dicom_series(path):
        return [PredictionInput(path.name, (path,))]
    raise InputFileError(
        f"{path}: found no volumes to segment (looked for volume files, BraTS case folders and a DICOM series)"
    )


def _brats_modalities(folder: Path) -> dict[str, list[tuple[str, Path]]]:
    """BraTS files in ``folder`` when it holds at least one modality (a lone ``*_seg`` is not a case)."""
    found = brats_case_files(folder)
    return found if any(channel != "seg" for files in found.values() for channel, _ in files) else {}


def _brats_case(folder: Path, found: dict[str, list[tuple[str, Path]]], channel_names: list[str]) -> PredictionInput:
    convention = "brats2023" if "brats2023" in found else "brats2021"
    files = {channel: p for channel, p in found[convention] if channel != "seg"}
    names = BRATS2023_CHANNELS if convention == "brats2023" else BRATS2021_CHANNELS
    # A model trained on one convention reads the other: t2f is flair, t1n is t1, ...
    to_file = {n: n for n in names} | (
        {old: new for new, old in BRATS2023_TO_2021.items()} if convention == "brats2023" else dict(BRATS2023_TO_2021)
    )
    wanted = [to_file.get(name.lower(), name.lower()) for name in channel_names] or list(names)
    missing = [name for name in wanted if name not in files]
    if missing:
        raise InputFileError(
            f"BraTS case {folder.name}: missing {', '.join(missing)} (found {', '.join(sorted(files)) or 'nothing'}; "
            f"the model needs {', '.join(wanted)})"
        )
    return PredictionInput(folder.name, tuple(files[name] for name in wanted), convention)


def _file_cases(files: list[Path], num_channels: int) -> list[PredictionInput]:
    stems = {p: split_volume_name(p.name)[0] for p in files}
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p, stem in stems.items():
        by_stem[stem].append(p)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:  # both would be written to the same output file
        shown = "; ".join(
            f"case {stem}: {', '.join(p.name for p in paths)}" for stem, paths in sorted(clashes.items())[:5]
        )
        more = f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise InputFileError(
            f"{files[0].parent}: several files would give the same case (and output) name: "
            f"{shown}{more}; rename or move one of each"
        )
    grouped = all(_CHANNEL_SUFFIX.match(stem) for stem in stems.values()) and (
        num_channels > 1 or any(stem.endswith("_0000") for stem in stems.values())
    )
    if not grouped:
        return [PredictionInput(stems[p], (p,)) for p in files]
    groups: dict[str, dict[int, Path]] = defaultdict(dict)
    for p, stem in stems.items():
        match = _CHANNEL_SUFFIX.match(stem)
        groups[match[1]][int(match[2])] = p
    problems = []
    for case_id, channels in sorted(groups.items()):
        expected = list(range(max(num_channels, 1)))
        if sorted(channels) != expected:
            have = ", ".join(f"{i:04d}" for i in sorted(channels))
            problems.append(f"{case_id} has channels {have}; the model needs {', '.join(f'{i:04d}' for i in expected)}")
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise InputFileError("channel files do not match the model: " + "; ".join(problems[:5]) + more)
    return [PredictionInput(case_id, tuple(ch[i] for i in sorted(ch))) for case_id, ch in sorted(groups.items())]


def _is_dicom_series(folder: Path) -> bool:
    from volseg.io.formats import keep_locale, quiet_itk

    with quiet_itk(), keep_locale():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
