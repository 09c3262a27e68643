"""What each label value of a label map is, for the formats that describe their segments.

A :class:`Segment` is one label value with its name, display colour and two coded concepts:
the segmented property category and type (SNOMED CT where known), as DICOM-SEG and 3D Slicer
use them. :func:`describe_segments` builds them from plain names and colours, taking the codes
from the config's ``data.label_codes`` (``{name: {category: CODE, type: CODE}}``, each code
written ``SCHEME:VALUE:MEANING``), else from :data:`KNOWN_CODES` (the bundled models' labels),
else the generic :data:`TISSUE`. Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from volseg.errors import ConfigError


class Code(NamedTuple):
    """A coded concept: ``Code("SCT", "108369006", "Neoplasm")``."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}:{self.meaning}"


# SNOMED CT codes as pydicom's code dictionary (pydicom.sr.codedict.codes.SCT) names them;
# tests/test_clinical_outputs.py checks each against it.
ANATOMICAL_STRUCTURE = Code("SCT", "91723000", "Anatomical Structure")
ABNORMAL_STRUCTURE = Code("SCT", "49755003", "Morphologically Abnormal Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
_HIPPOCAMPUS = (ANATOMICAL_STRUCTURE, Code("SCT", "5366008", "Hippocampus"))
_NECROSIS = (ABNORMAL_STRUCTURE, Code("SCT", "6574001", "Necrosis"))
_EDEMA = (ABNORMAL_STRUCTURE, Code("SCT", "79654002", "Edema"))
_NEOPLASM = (ABNORMAL_STRUCTURE, Code("SCT", "108369006", "Neoplasm"))

#: Label name (lower case) -> (category, type) for the labels of the bundled models and configs:
#: the MSD hippocampus' Anterior/Posterior and the BraTS labels of both conventions.
KNOWN_CODES: dict[str, tuple[Code, Code]] = {
    "anterior": _HIPPOCAMPUS,
    "posterior": _HIPPOCAMPUS,
    "hippocampus": _HIPPOCAMPUS,
    "necrotic/non-enhancing core": _NECROSIS,
    "necrotic core": _NECROSIS,
    "necrosis": _NECROSIS,
    "edema": _EDEMA,
    "oedema": _EDEMA,
    "enhancing tumour": _NEOPLASM,
    "enhancing tumor": _NEOPLASM,
    "tumour": _NEOPLASM,
    "tumor": _NEOPLASM,
    "spleen": (ANATOMICAL_STRUCTURE, Code("SCT", "78961009", "Spleen")),
}
_CODE_EXAMPLE = "SCT:79654002:Edema"


@dataclass(frozen=True)
class Segment:
    """One label value of a label map: name, RGB colour (0..1) and its coded category and type."""

    value: int
    name: str
    colour: tuple[float, float, float]
    category: Code = TISSUE
    type: Code = TISSUE

    def rgb255(self) -> tuple[int, int, int]:
        """The colour as 0..255 integers."""
        return tuple(int(round(min(max(c, 0.0), 1.0) * 255)) for c in self.colour)  # type: ignore[return-value]


def parse_code(text: str, where: str = "code") -> Code:
    """``"SCT:108369006:Neoplasm"`` -> :class:`Code` (the meaning may hold colons)."""
    scheme, value, meaning = ([part.strip() for part in str(text).split(":", 2)] + ["", ""])[:3]
    if not (scheme and value and meaning) or any(c.isspace() for c in scheme + value):
        raise ConfigError(f"{where}={text!r} is not valid; write SCHEME:VALUE:MEANING, e.g. {_CODE_EXAMPLE}")
    return Code(scheme, value, meaning)


def check_label_codes(label_codes: Mapping[str, Mapping[str, str]], label_names: Iterable[str]) -> None:
    """Raise :class:`ConfigError` for a ``data.label_codes`` entry that names no label, lacks
    ``category`` or ``type``, has another key, or holds a code that is not SCHEME:VALUE:MEANING."""
    names = sorted(set(label_names))
    for name, entry in label_codes.items():
        where = f"data.label_codes[{name!r}]"
        if name not in names:
            raise ConfigError(f"{where} names no label; allowed: {', '.join(names)} (the names in data.labels)")
        if set(entry) != {"category", "type"}:
            raise ConfigError(
                f"{where} has keys {sorted(entry)}; give exactly category and type, "
                f"e.g. {{category: SCT:49755003:Morphologically Abnormal Structure, type: {_CODE_EXAMPLE}}}"
            )
        for key in ("category", "type"):
            parse_code(entry[key], f"{where}.{key}")


def describe_segments(
    names: Mapping[int, str],
    colours: Mapping[int, tuple[float, float, float]],
    label_codes: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Segment]:
    """One :class:`Segment` per foreground label value of ``names`` (sorted by value); codes from
    ``label_codes`` (by name), else :data:`KNOWN_CODES` (by name, any case), else Tissue/Tissue."""
    segments = []
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        entry = (label_codes or {}).get(name)
        if entry is not None:
            codes = (parse_code(entry["category"]), parse_code(entry["type"]))
        else:
            codes = KNOWN_CODES.get(name.strip().lower(), (TISSUE, TISSUE))
        colour = tuple(float(c) for c in colours.get(value, (0.5, 0.5, 0.5)))
        segments.append(Segment(int(value), str(name), colour, *codes))  # type: ignore[arg-type]
    return segments
