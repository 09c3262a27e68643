"""The QC page of a run report: one static HTML file, no script, images linked relatively.

A header with the model, versions and options, a summary, then one row per case: preview,
label volumes (outliers for the folder highlighted), warnings, status and time. Cases with an
outlier, a warning or a failure are listed first, so a reviewer sees them without scrolling.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.attention { background: #fff6e0; }
td.outlier { background: #f9d0c4; font-weight: bold; }
.failed { color: #b00020; font-weight: bold; }
.warning { color: #8a5300; }
img { max-width: 420px; display: block; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _attention(row: dict[str, Any]) -> bool:
    return bool(row.get("outliers") or row.get("warnings") or row["status"] == "failed")


def _preview_cell(row: dict[str, Any], folder: Path) -> str:
    if not row.get("preview"):
        return "<td>no preview</td>"
    source = Path(os.path.relpath(row["preview"], folder)).as_posix()
    return f'<td><img src="{_e(source)}" alt="preview of {_e(row["case_id"])}" loading="lazy"></td>'


def _row(row: dict[str, Any], names: list[str], folder: Path) -> str:
    status = row["status"]
    cells = [f"<td>{_e(row['case_id'])}</td>", _preview_cell(row, folder)]
    volumes = row.get("volumes_ml") or {}
    for name in names:
        value = volumes.get(name)
        outlier = " outlier" if name in row.get("outliers", []) else ""
        cells.append(f'<td class="num{outlier}">{"" if value is None else f"{value:.2f}"}</td>')
    notes = [f'<div class="warning">{_e(w)}</div>' for w in row.get("warnings", [])]
    if "empty" in row.get("outliers", []):
        notes.append('<div class="warning">no label at all, unlike most cases</div>')
    if row.get("error"):
        notes.append(f'<div class="failed">{_e(row["error"])}</div>')
    cells.append(f"<td>{''.join(notes)}</td>")
    status_class = ' class="failed"' if status == "failed" else ""
    cells.append(f"<td{status_class}>{_e(status)}</td>")
    cells.append(f'<td class="num">{row.get("seconds", 0.0):.1f}</td>')
    attention = ' class="attention"' if _attention(row) else ""
    return f'<tr{attention} id="case-{_e(row["case_id"])}">{"".join(cells)}</tr>'


def _definitions(items: dict[str, Any]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items.items()) + "</dl>"


def render_html(report: dict[str, Any], folder: Path) -> str:
    """The page of ``report`` (the merged report dict); image paths relative to ``folder``."""
    cases = sorted(report["cases"], key=lambda row: (not _attention(row), row["case_id"]))
    names = sorted({name for row in cases for name in (row.get("volumes_ml") or {})})
    head = "".join(f"<th>{_e(n)} (mL)</th>" for n in names)
    rows = "\n".join(_row(row, names, folder) for row in cases)
    model = report.get("model", {})
    flagged = sum(_attention(row) for row in cases)
    summary = ", ".join(f"{count} {status}" for status, count in report["summary"].items() if count)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>volseg run report: {_e(model.get("name", ""))}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>volseg run report</h1>
<p>{len(cases)} case(s): {_e(summary or "none")}; {flagged} need a look (highlighted, listed first).
Finished {_e(report.get("finished", ""))}.</p>
<h2>Model and settings</h2>
{_definitions({**{f"model {k}": v for k, v in model.items()}, **report.get("options", {})})}
<h2>Versions</h2>
{_definitions({k: v for k, v in report.get("versions", {}).items() if v is not None})}
<h2>Cases</h2>
<table>
<thead><tr><th>case</th><th>preview</th>{head}<th>warnings</th><th>status</th><th>seconds</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""
