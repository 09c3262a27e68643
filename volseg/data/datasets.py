"""Find the cases of a dataset on disk (folds are in :mod:`volseg.data.splits`).

:func:`find_cases` recognises five layouts by their file names alone (no voxel data is read):

- ``msd``: Medical Segmentation Decathlon, ``dataset.json`` with ``training`` entries;
- ``nnunet``: nnU-Net v2 raw data, ``dataset.json`` with ``channel_names``, ``imagesTr/<case>_<XXXX>``;
- ``brats2021``: a folder per case with ``<case>_{flair,t1,t1ce,t2,seg}`` (BraTS 2018-2021);
- ``brats2023``: a folder per case with ``<case>-{t2f,t1n,t1c,t2w,seg}`` (BraTS 2023 and later);
- ``folder``: ``images/`` + ``labels/`` (or ``imagesTr/`` + ``labelsTr/``) paired by file name.

Every problem found is collected and reported in one single-line :class:`InputFileError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volseg.errors import ConfigError, InputFileError, choice_error, closest_hint
from volseg.io.naming import CHANNEL_SUFFIX as _CHANNEL_SUFFIX
from volseg.io.naming import is_case_file, split_volume_name

logger = logging.getLogger(__name__)

LAYOUTS = ("msd", "nnunet", "brats2021", "brats2023", "folder")
BRATS2021_CHANNELS = ("flair", "t1", "t1ce", "t2")
#: BraTS 2023+ names, in the order of their 2018-2021 equivalents (flair, t1, t1ce, t2).
BRATS2023_CHANNELS = ("t2f", "t1n", "t1c", "t2w")
BRATS2023_TO_2021 = dict(zip(BRATS2023_CHANNELS, BRATS2021_CHANNELS))
BRATS2021_LABELS = {0: "background", 1: "necrotic/non-enhancing core", 2: "edema", 4: "enhancing tumour"}
BRATS2023_LABELS = {0: "background", 1: "necrotic core", 2: "edema", 3: "enhancing tumour"}

_BRATS_FILE = {
    "brats2021": re.compile(r"^(.+)_(flair|t1|t1ce|t2|seg)\.nii(\.gz)?$"),
    "brats2023": re.compile(r"^(.+)-(t2f|t1n|t1c|t2w|seg)\.nii(\.gz)?$"),
}
_BRATS_EXAMPLE = {"brats2021": "<case>/<case>_flair.nii.gz", "brats2023": "<case>/<case>-t2f.nii.gz"}
_LABEL_SUFFIX = re.compile(r"[-_. ](?:seg|segmentation|label|labels|mask|gt)(?=$|[-_. ])", re.IGNORECASE)
_FOLDER_PAIRS = (("imagesTr", "labelsTr"), ("images", "labels"))
_MRI_NAMES = {"MRI", "MR", "FLAIR", "ADC", "DWI", "PD", "SWI", "T1N", "T1C", "T2F"}
_NNUNET_SCHEMES = {"NONORM", "ZSCORE", "RESCALE_TO_0_1", "RGB_TO_0_1"}
MAX_LISTED = 10

#: (case id, what is wrong) pairs collected while scanning; ``_finish`` raises them as one error.
_Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class Case:
    """One case: its image files (one per channel, or one 4D file holding all) and its label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None


@dataclass
class Dataset:
    """The cases of one dataset and what its channels and labels mean.

    ``cases`` are the labelled cases, ``test_cases`` the unlabelled ones, both sorted by id.
    ``label_names`` maps label values to names (0 is background); the ``folder`` layout cannot know
    its values without reading the files and gives ``{0: "background"}`` only. ``file_ending`` is
    the most common ending of the image files.
    """

    root: Path
    layout: str
    cases: list[Case]
    test_cases: list[Case] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=lambda: {0: "background"})
    modality: str | None = None
    file_ending: str = ".nii.gz"
    #: nnU-Net region-based labels: region name -> the label values it covers.
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def case_ids(self) -> list[str]:
        """The ids of the labelled cases."""
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> Case:
        """The labelled or unlabelled case called ``case_id``."""
        everything = {c.case_id: c for c in (*self.cases, *self.test_cases)}
        if case_id not in everything:
            raise ConfigError(
                f"no case {case_id!r} in {self.root}{closest_hint(case_id, everything)}; it has {len(everything)} cases"
            )
        return everything[case_id]


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted, without hidden files (macOS ``._*`` included)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _volumes(folder: Path) -> list[tuple[str, Path]]:
    """``(stem, path)`` of every volume file in ``folder`` that is a case of its own (see
    :func:`volseg.io.naming.is_case_file`; none if the folder does not exist)."""
    return [(split_volume_name(p.name)[0], p) for p in _visible(folder) if p.is_file() and is_case_file(p.name)]


def _describe(root: Path) -> str:
    entries = _visible(root)
    n_dirs = sum(p.is_dir() for p in entries)
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:8]) + (", ..." if len(entries) > 8 else "")
    return f"{n_dirs} folder(s) and {len(entries) - n_dirs} file(s)" + (f": {names}" if entries else "")


def _not_layout(root: Path, layout: str, reason: str) -> InputFileError:
    return InputFileError(f"{root} is not a {layout} dataset: {reason}; found {_describe(root)}")


def _modality(names: Iterable[str]) -> str | None:
    """ "CT", "MRI", the one name all channels share, or None."""
    values = {str(n).strip() for n in names}
    upper = {v.upper() for v in values}
    if upper == {"CT"} or all(u in _MRI_NAMES or u[:2] in ("T1", "T2") for u in upper):
        return "CT" if upper == {"CT"} else "MRI"
    return values.pop() if len(values) == 1 and not upper & _NNUNET_SCHEMES else None


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read {what} {path}: {' '.join(str(exc).split())}") from None


def _dataset_json(root: Path, layout: str) -> dict[str, Any]:
    if not (root / "dataset.json").is_file():
        raise _not_layout(root, layout, "no dataset.json")
    meta = read_json(root / "dataset.json", "dataset file")
    if not isinstance(meta, dict):
        raise InputFileError(f"{root / 'dataset.json'} holds a JSON {type(meta).__name__}, not an object")
    return meta


def _indexed(meta: dict[str, Any], key: str, root: Path) -> list[str]:
    """The values of a ``{"0": name, "1": name}`` mapping in index order."""
    try:
        items = sorted((int(k), str(v)) for k, v in meta[key].items())
    except (AttributeError, KeyError, TypeError, ValueError):
        items = []
    if not items or [i for i, _ in items] != list(range(len(items))):
        raise InputFileError(
            f"{root / 'dataset.json'}: {key!r} must map indices 0, 1, ... to names; got {meta.get(key)!r}"
        )
    return [v for _, v in items]


def _finish(root: Path, layout: str, cases: list[Case], tests: list[Case], problems: _Problems, **info: Any) -> Dataset:
    """Check ids and emptiness, raise the collected problems, build the Dataset."""
    problems += [
        (cid, f"case id found {n} times") for cid, n in Counter(c.case_id for c in (*cases, *tests)).items() if n > 1
    ]
    if problems:
        shown = "; ".join(f"{cid}: {' '.join(msg.split())}" for cid, msg in problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        n_ids = len({cid for cid, _ in problems})
        raise InputFileError(f"{root}: {len(problems)} problem(s) in {n_ids} case(s): {shown}{more}")
    if not cases and not tests:
        raise InputFileError(f"{root}: no cases found in this {layout} dataset; found {_describe(root)}")
    if not cases:
        logger.warning("%s has no labelled cases, only %d unlabelled ones", root, len(tests))
    endings = Counter(parts[1] for c in (*cases, *tests) for p in c.images if (parts := split_volume_name(p.name)))
    info.setdefault("file_ending", endings.most_common(1)[0][0] if endings else ".nii.gz")
    logger.info("%s: %d labelled and %d unlabelled cases, layout %s", root, len(cases), len(tests), layout)
    by_id = lambda c: c.case_id  # noqa: E731
    return Dataset(root, layout, sorted(cases, key=by_id), sorted(tests, key=by_id), **info)


def _group_channels(
    items: list[tuple[str, Path]], n: int | None, where: str, problems: _Problems
) -> tuple[dict[str, tuple[Path, ...]], int]:
    """Group ``<case>_<XXXX>`` files into cases of ``n`` channels (None: as many as the most seen)."""
    groups: dict[str, dict[int, Path]] = defaultdict(dict)
    for stem, path in items:
        base, index = _CHANNEL_SUFFIX.match(stem).groups()  # type: ignore[union-attr]
        groups[base][int(index)] = path
    n = n or max((max(ch) + 1 for ch in groups.values()), default=1)
    for cid, channels in sorted(groups.items()):
        if missing := [f"{cid}_{i:04d}" for i in range(n) if i not in channels]:
            problems.append((cid, f"missing channel file(s) {', '.join(missing)} in {where}/ ({n} channels expected)"))
        if extra := [f"{cid}_{i:04d}" for i in sorted(channels) if i >= n]:
            problems.append((cid, f"channel file(s) {', '.join(extra)} in {where}/ beyond the {n} expected"))
    return {cid: tuple(ch[i] for i in sorted(ch)) for cid, ch in groups.items()}, n


def _find_msd(root: Path) -> Dataset:
    meta = _dataset_json(root, "msd")
    if not isinstance(meta.get("training"), list):
        raise _not_layout(root, "msd", f"dataset.json has no 'training' list (keys: {', '.join(meta)})")
    channels = _indexed(meta, "modality", root)
    try:
        label_names = {int(k): str(v) for k, v in meta.get("labels", {"0": "background"}).items()}
    except (AttributeError, TypeError, ValueError):
        raise InputFileError(
            f"{root / 'dataset.json'}: 'labels' must map values to names; got {meta.get('labels')!r}"
        ) from None
    problems: _Problems = []
    cases = _msd_entries(root, meta["training"], len(channels), problems, labelled=True)
    tests = _msd_entries(root, meta.get("test") or [], len(channels), problems, labelled=False)
    listed = {c.label for c in cases}
    for stem, label in _volumes(root / "labelsTr"):
        if label not in listed and not (root / "imagesTr" / label.name).is_file():
            problems.append((stem, f"label labelsTr/{label.name} has no image imagesTr/{label.name}"))
    return _finish(
        root,
        "msd",
        cases,
        tests,
        problems,
        channel_names=channels,
        label_names=dict(sorted(label_names.items())),
        modality=_modality(channels),
    )


def _msd_entries(root: Path, entries: Any, n: int, problems: _Problems, *, labelled: bool) -> list[Case]:
    """Cases from dataset.json's ``training`` entries or ``test`` paths (paths relative to ``root``)."""
    cases = []
    for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        image = entry.get("image") if isinstance(entry, dict) else entry
        images = [image] if isinstance(image, str) else image
        if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
            problems.append((f"entry {i}", f"no image path in dataset.json entry {entry!r}"))
            continue
        paths = tuple(root / p for p in images)
        case_id = (split_volume_name(paths[0].name) or (paths[0].name,))[0]
        problems += [
            (case_id, f"image {p} listed in dataset.json does not exist") for p in images if not (root / p).is_file()
        ]
        if len(paths) > 1 and len(paths) != n:
            problems.append((case_id, f"{len(paths)} image files listed for {n} channels"))
        label = entry.get("label") if isinstance(entry, dict) else None
        if labelled and not isinstance(label, str):
            problems.append((case_id, "training entry has no 'label'"))
        elif labelled and not (root / label).is_file():
            problems.append((case_id, f"label {label} listed in dataset.json does not exist"))
        cases.append(Case(case_id, paths, root / label if labelled and isinstance(label, str) else None))
    return cases


def _find_nnunet(root: Path) -> Dataset:
    meta = _dataset_json(root, "nnunet")
    if "channel_names" not in meta:
        raise _not_layout(root, "nnunet", f"dataset.json has no 'channel_names' (keys: {', '.join(meta)})")
    channels = _indexed(meta, "channel_names", root)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputFileError(f"{root / 'dataset.json'}: 'file_ending' must be like '.nii.gz'; got {ending!r}")
    label_names, regions = _nnunet_labels(meta.get("labels"), root)
    if not (root / "imagesTr").is_dir():
        raise _not_layout(root, "nnunet", "no imagesTr/ folder")
    problems: _Problems = []
    labels = {p.name[: -len(ending)]: p for p in _visible(root / "labelsTr") if p.name.endswith(ending)}
    cases = []
    for cid, images in _nnunet_images(root / "imagesTr", ending, len(channels), problems).items():
        if cid not in labels:
            problems.append((cid, f"no label labelsTr/{cid}{ending}"))
        cases.append(Case(cid, images, labels.pop(cid, None)))
    problems += [(cid, f"label labelsTr/{cid}{ending} has no image imagesTr/{cid}_0000{ending}") for cid in labels]
    tests = [Case(c, i) for c, i in _nnunet_images(root / "imagesTs", ending, len(channels), problems).items()]
    if isinstance(meta.get("numTraining"), int) and meta["numTraining"] != len(cases):
        logger.warning(
            "%s: dataset.json says numTraining=%d, imagesTr holds %d cases", root, meta["numTraining"], len(cases)
        )
    return _finish(
        root,
        "nnunet",
        cases,
        tests,
        problems,
        channel_names=channels,
        label_names=label_names,
        modality=_modality(channels),
        file_ending=ending,
        regions=regions,
    )


def _nnunet_labels(labels: Any, root: Path) -> tuple[dict[int, str], dict[str, tuple[int, ...]]]:
    """``{name: value}`` -> (value -> name for integer labels, name -> values for region labels)."""
    if not isinstance(labels, dict) or not labels:
        raise InputFileError(
            f"{root / 'dataset.json'}: 'labels' must map names to values like {{\"background\": 0}}; got {labels!r}"
        )
    names: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    for name, value in labels.items():
        try:
            if isinstance(value, (list, tuple)):
                regions[str(name)] = tuple(int(v) for v in value)
            else:
                names[int(value)] = str(name)
        except (TypeError, ValueError):
            raise InputFileError(
                f"{root / 'dataset.json'}: label {name!r} has value {value!r}, not an integer or a list of integers"
            ) from None
    return dict(sorted({0: "background", **names}.items())), regions


def _nnunet_images(folder: Path, ending: str, n: int, problems: _Problems) -> dict[str, tuple[Path, ...]]:
    items = [(p.name[: -len(ending)], p) for p in _visible(folder) if p.name.endswith(ending) and p.is_file()]
    problems += [
        (s, f"{folder.name}/{p.name} is not named <case>_<XXXX>{ending}")
        for s, p in items
        if not _CHANNEL_SUFFIX.match(s)
    ]
    return _group_channels([(s, p) for s, p in items if _CHANNEL_SUFFIX.match(s)], n, folder.name, problems)[0]


def brats_case_files(folder: Path) -> dict[str, list[tuple[str, Path]]]:
    """The BraTS files directly in ``folder``: naming convention -> ``(channel or "seg", path)``."""
    found = defaultdict(list)
    for p, (convention, pattern) in ((p, item) for p in _visible(folder) for item in _BRATS_FILE.items()):
        if (match := pattern.match(p.name)) and p.is_file():
            found[convention].append((match[2], p))
    return found


def _brats_folders(root: Path) -> dict[Path, dict[str, list[tuple[str, Path]]]]:
    """Case folder -> naming convention -> ``(channel or "seg", path)``, one or two levels down
    (two as in BraTS 2018's ``HGG/`` and ``LGG/``)."""
    folders = {}
    for sub in (p for p in _visible(root) if p.is_dir()):
        inner = [sub] if brats_case_files(sub) else [p for p in _visible(sub) if p.is_dir()]
        folders |= {f: found for f in inner if (found := brats_case_files(f))}
    return folders


def _find_brats(root: Path, layout: str) -> Dataset:
    folders = _brats_folders(root)
    users = {conv: [f.name for f, found in folders.items() if conv in found] for conv in _BRATS_FILE}
    if not users[layout]:
        raise _not_layout(root, layout, f"no case folders holding {_BRATS_EXAMPLE[layout]}")
    other = "brats2023" if layout == "brats2021" else "brats2021"
    problems: _Problems = [
        (
            cid,
            f"uses {other} file names ({_BRATS_EXAMPLE[other]}) while {len(users[layout])} "
            f"folder(s) use {layout} names; mixed conventions",
        )
        for cid in users[other]
    ]
    channels = BRATS2021_CHANNELS if layout == "brats2021" else BRATS2023_CHANNELS
    cases, tests = [], []
    for folder, found in sorted(folders.items()):
        files: dict[str, list[Path]] = defaultdict(list)
        for kind, path in found.get(layout, []):
            files[kind].append(path)
        problems += [
            (folder.name, f"{len(ps)} {kind} files: {', '.join(p.name for p in ps)}")
            for kind, ps in files.items()
            if len(ps) > 1
        ]
        if files and (missing := [kind for kind in channels if kind not in files]):
            problems.append((folder.name, f"missing channel file(s) {', '.join(missing)} in {folder}"))
        if files:
            images = tuple(files[k][0] for k in channels if k in files)
            (cases if "seg" in files else tests).append(Case(folder.name, images, (files.get("seg") or [None])[0]))
    if cases and tests:
        logger.warning(
            "%s: %d case folder(s) have no seg file and are unlabelled: %s",
            root,
            len(tests),
            ", ".join(c.case_id for c in tests[:MAX_LISTED]),
        )
    labels = BRATS2021_LABELS if layout == "brats2021" else BRATS2023_LABELS
    return _finish(
        root, layout, cases, tests, problems, channel_names=list(channels), label_names=dict(labels), modality="MRI"
    )


def _match_label(stem: str, ids: Iterable[str]) -> str | None:
    """The image id that label ``stem`` belongs to: the same stem, or the stem + a label suffix."""
    if stem in ids:
        return stem
    bases = (stem[: m.start()] for m in reversed(list(_LABEL_SUFFIX.finditer(stem))))
    return next((b for b in bases if b in ids), None)


def _image_groups(
    folder: Path, label_stems: list[str], problems: _Problems, grouped: bool | None = None, n: int | None = None
) -> tuple[dict[str, tuple[Path, ...]], bool, int | None]:
    """A plain folder's image cases; ``<case>_<XXXX>`` files are channels where the labels say so."""
    volumes = _volumes(folder)
    counts = Counter(s for s, _ in volumes)
    problems += [(s, f"{k} image files named {s}.* in {folder.name}/") for s, k in counts.items() if k > 1]
    single = {s: (p,) for s, p in volumes}
    if grouped is None:
        grouped = False
        if volumes and all(_CHANNEL_SUFFIX.match(s) for s in single):
            bases = {_CHANNEL_SUFFIX.match(s)[1] for s in single}  # type: ignore[index]
            by_base = sum(_match_label(s, bases) is not None for s in label_stems)
            by_stem = sum(_match_label(s, single) is not None for s in label_stems)
            grouped = by_base > by_stem or (
                not label_stems and len(bases) > 1 and all(f"{b}_0000" in single for b in bases)
            )
    if not grouped:
        return single, False, n
    groups, n = _group_channels(volumes, n, folder.name, problems)
    return groups, True, n


def _find_folder(root: Path) -> Dataset:
    pair = next(((root / images, root / labels) for images, labels in _FOLDER_PAIRS if (root / images).is_dir()), None)
    if pair is None:
        raise _not_layout(root, "folder", "no images/ or imagesTr/ folder")
    images_dir, labels_dir = pair
    problems: _Problems = []
    labels = _volumes(labels_dir)
    groups, grouped, n = _image_groups(images_dir, [s for s, _ in labels], problems)
    matched: dict[str, list[Path]] = defaultdict(list)
    for stem, path in labels:
        if (cid := _match_label(stem, groups)) is None:
            problems.append((stem, f"label {labels_dir.name}/{path.name} matches no image in {images_dir.name}/"))
        else:
            matched[cid].append(path)
    cases, tests = [], []
    for cid, images in groups.items():
        if len(found := matched.get(cid, [])) > 1:
            problems.append((cid, f"{len(found)} labels match it: {', '.join(p.name for p in found)}"))
        (cases if found else tests).append(Case(cid, images, found[0] if found else None))
    if images_dir.name == "imagesTr":
        more = _image_groups(root / "imagesTs", [], problems, grouped, n)[0]
        tests += [Case(cid, images) for cid, images in more.items()]
    return _finish(root, "folder", cases, tests, problems, channel_names=[f"channel_{i}" for i in range(n or 1)])


def _detect(root: Path) -> str:
    if (root / "dataset.json").is_file():
        meta = _dataset_json(root, "msd or nnunet")
        if "channel_names" in meta or "training" in meta or "modality" in meta:
            return "nnunet" if "channel_names" in meta else "msd"
        raise InputFileError(
            f"{root / 'dataset.json'} has neither 'channel_names' (nnunet) nor 'training' (msd); "
            f"keys: {', '.join(meta)}"
        )
    if any((root / images).is_dir() for images, _ in _FOLDER_PAIRS):
        return "folder"
    if conventions := Counter(c for found in _brats_folders(root).values() for c in found):
        return conventions.most_common(1)[0][0]  # the minority is reported as mixed conventions
    raise InputFileError(
        f"cannot tell the layout of {root}: looked for dataset.json (msd, nnunet), images/ or "
        f"imagesTr/ (folder) and case folders of BraTS files (brats2021, brats2023); "
        f"found {_describe(root)}"
    )


def find_cases(root: str | os.PathLike[str], *, layout: str = "auto") -> Dataset:
    """The cases of the dataset in ``root``; ``layout`` (see the module doc) is detected unless given."""
    if layout != "auto" and layout not in LAYOUTS:
        raise choice_error("dataset layout", layout, ("auto", *LAYOUTS))
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputFileError(f"dataset folder {root} {'is not a folder' if root.exists() else 'does not exist'}")
    if layout == "auto":
        layout = _detect(root)
        logger.info("%s: detected layout %s", root, layout)
    parsers = {"msd": _find_msd, "nnunet": _find_nnunet, "folder": _find_folder}
    return parsers[layout](root) if layout in parsers else _find_brats(root, layout)
