"""The output formats ``volseg predict --format`` names, and the check of a ``--format`` value.

Light on purpose (no numpy, nibabel or torch): the CLI checks ``--format`` before it imports them.
Writing the formats is :mod:`volseg.inference.label_outputs`' part.
"""

from __future__ import annotations

from volseg.errors import ConfigError

__all__ = ["EXTRA_FORMATS", "FORMAT_NAMES", "LABEL_FILE_FORMATS", "check_formats", "parse_formats"]

#: ``--format`` names that choose the label file, with their ``OutputOptions.extension``.
LABEL_FILE_FORMATS = {"nifti": ".nii.gz", "same": "same"}
#: Further formats written beside the label file -> their key in ``segment.output_paths``.
EXTRA_FORMATS = {"dicom-seg": "dicom_seg", "seg-nrrd": "seg_nrrd"}
FORMAT_NAMES = (*LABEL_FILE_FORMATS, *EXTRA_FORMATS)


def parse_formats(text: str) -> tuple[str, tuple[str, ...]]:
    """``"nifti,dicom-seg"`` -> ``(".nii.gz", ("dicom-seg",))``: the label file's extension and the
    further formats. Raises :class:`ConfigError` naming a value that is not allowed."""
    names = [part.strip().lower() for part in str(text).split(",")]
    allowed = f"allowed: {', '.join(FORMAT_NAMES)}, one or several separated by commas (e.g. nifti,dicom-seg)"
    for name in names:
        if name not in FORMAT_NAMES:
            raise ConfigError(f"--format {text!r} is not valid: {name or 'an empty value'!r} is no format; {allowed}")
    chosen = [name for name in LABEL_FILE_FORMATS if name in names]
    if len(chosen) > 1:
        raise ConfigError(f"--format {text!r} is not valid: nifti and same both choose the label file; give one")
    extension = LABEL_FILE_FORMATS[chosen[0]] if chosen else ".nii.gz"
    return extension, tuple(name for name in EXTRA_FORMATS if name in names)


def check_formats(formats: tuple[str, ...] | list[str]) -> None:
    """Raise :class:`ConfigError` for a further format volseg does not write (or cannot, for lack
    of an extra)."""
    for name in formats:
        if name not in EXTRA_FORMATS:
            raise ConfigError(
                f"format {name!r} is not valid among the formats beside the label file; allowed: "
                f"{', '.join(EXTRA_FORMATS)} (the label file's own format is OutputOptions.extension)"
            )
    if "dicom-seg" in formats:
        from volseg.io.dicom_seg import require_highdicom

        require_highdicom()
