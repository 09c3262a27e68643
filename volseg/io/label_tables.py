"""Label descriptions beside a label map, for viewers that show names and colours.

* ITK-SNAP's label description file (Segmentation > Import Label Descriptions): one line per
  label, ``IDX R G B A VIS MSH "LABEL"`` (colour 0-255, opacity 0-1, label and mesh visibility
  0/1), label 0 the clear label.
* 3D Slicer's colour table (``.ctbl``, loaded with Add Data, then chosen as the label map's
  colour table): ``index name R G B A`` (0-255), spaces in names written as underscores.

Both are written atomically from :class:`~volseg.io.segments.Segment` lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from volseg.errors import OutputExistsError
from volseg.io.atomic import write_text
from volseg.io.segments import Segment


def itksnap_text(segments: Sequence[Segment]) -> str:
    """The ITK-SNAP label description file of ``segments``."""
    lines = [
        "# ITK-SNAP label description file written by volseg",
        "# IDX    R    G    B      A  VIS MSH  LABEL",
        f'{0:5d} {0:4d} {0:4d} {0:4d} {0:6g} {0:4d} {0:3d}  "Clear Label"',
    ]
    for segment in segments:
        r, g, b = segment.rgb255()
        name = segment.name.replace('"', "'")
        lines.append(f'{segment.value:5d} {r:4d} {g:4d} {b:4d} {1:6g} {1:4d} {1:3d}  "{name}"')
    return "\n".join(lines) + "\n"


def slicer_colour_table_text(segments: Sequence[Segment], title: str = "volseg labels") -> str:
    """The 3D Slicer colour table (``.ctbl``) of ``segments``."""
    lines = [f"# Color table file {title}", f"# {len(segments) + 1} values", "0 background 0 0 0 0"]
    for segment in segments:
        r, g, b = segment.rgb255()
        lines.append(f"{segment.value} {'_'.join(segment.name.split()) or 'unnamed'} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def write_label_tables(
    itksnap_path: str | os.PathLike,
    slicer_path: str | os.PathLike,
    segments: Sequence[Segment],
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write the ITK-SNAP and 3D Slicer label tables of ``segments`` atomically; returns their paths."""
    paths = [Path(itksnap_path), Path(slicer_path)]
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"'{path}' exists; pass overwrite=True (--overwrite) to replace it")
    write_text(paths[0], itksnap_text(segments))
    write_text(paths[1], slicer_colour_table_text(segments, title=paths[1].name))
    return paths
