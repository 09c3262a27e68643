"""The run report of a folder run: ``report.json`` for programs, ``report.html`` for people.

``report.json`` records what produced the outputs: versions (volseg, torch, MONAI, the backend),
the model and its checksum, every option including those chosen automatically (device, backend,
mirroring, window batch), and per case its status, timings, label volumes, warnings and the
checksums of its output files. ``report.html`` (:mod:`.report_html`) is a QC page with one row per
case: its preview, label volumes, warnings, and a flag where a volume is an outlier for the folder.

Several processes of one run (``torchrun``, ``--shard``) each write their part
(``<report>.part-<rank>.json``); the last call of :func:`write_report` (rank 0 after the others,
or one process) merges every part into the report. A rerun keeps the rows of the cases it skips.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from volseg._version import __version__
from volseg.io.atomic import file_sha256, write_text

if TYPE_CHECKING:
    from volseg.inference.segment import CaseOutcome

logger = logging.getLogger(__name__)

REPORT_FORMAT = "volseg-run-report"
REPORT_VERSION = 1
#: A label volume is an outlier when its robust z-score (median and MAD over the folder's cases)
#: exceeds this; with fewer cases than :data:`MIN_CASES_FOR_OUTLIERS` nothing is flagged.
OUTLIER_Z = 3.5
MIN_CASES_FOR_OUTLIERS = 5
_PACKAGES = ("torch", "monai", "numpy", "nibabel", "SimpleITK", "openvino", "highdicom")


def report_paths(report: str | Path) -> dict[str, Path]:
    """``{"json", "html", "previews"}`` of a report whose JSON is ``report``."""
    report = Path(report)
    stem = report.name.removesuffix(".json")
    return {
        "json": report.with_name(f"{stem}.json"),
        "html": report.with_name(f"{stem}.html"),
        "previews": report.with_name(f"{stem}_previews"),
    }


def versions() -> dict[str, str | None]:
    """Versions of volseg, Python and the packages that shape the outputs (None: not installed)."""
    found: dict[str, str | None] = {"volseg": __version__, "python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def case_row(outcome: CaseOutcome, outputs: Iterable[Path], preview: Path | None) -> dict[str, Any]:
    """One case of the report: status, timings, volumes, warnings, outputs with checksums."""
    files = {str(p): file_sha256(p) for p in outputs if p.is_file()}
    return {
        "case_id": outcome.case_id,
        "status": outcome.status,
        "labels": str(outcome.labels_path),
        "error": outcome.error,
        "seconds": round(outcome.seconds, 3),
        "timings": {k: round(v, 3) for k, v in outcome.timings.items()},
        "volumes_ml": outcome.volumes_ml,
        "warnings": list(outcome.warnings),
        "outputs": files,
        "preview": str(preview) if preview is not None and preview.is_file() else None,
    }


def part_path(report: str | Path, rank: int) -> Path:
    """Where process ``rank`` writes its part of ``report``."""
    report_json = report_paths(report)["json"]
    return report_json.with_name(f"{report_json.stem}.part-{rank}.json")


def write_part(report: str | Path, rank: int, header: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write this process's part of the report (atomically); returns its path."""
    path = part_path(report, rank)
    write_text(path, json.dumps({"header": dict(header), "cases": list(rows)}, indent=1) + "\n")
    return path


def merge_parts(report: str | Path, header: Mapping[str, Any], parts: Sequence[Path] | None = None) -> dict[str, Any]:
    """The report from the rows of an earlier report and ``parts`` (default: every part beside
    ``report``; a part's row replaces the earlier one, except that a case skipped now keeps its
    earlier finished row); flags the volume outliers."""
    paths = report_paths(report)
    rows: dict[str, dict[str, Any]] = {}
    if paths["json"].is_file():
        try:
            rows = {row["case_id"]: row for row in json.loads(paths["json"].read_text())["cases"]}
        except (ValueError, KeyError, TypeError):
            rows = {}  # an unreadable earlier report is replaced
    if parts is None:
        parts = _parts(paths["json"])
    for part in parts:
        for row in json.loads(part.read_text())["cases"]:
            before = rows.get(row["case_id"])
            if row["status"] == "skipped" and before is not None and before["status"] in ("done", "done earlier"):
                row = {**before, "status": "done earlier"}
            rows[row["case_id"]] = row
    cases = [rows[k] for k in sorted(rows)]
    flag_outliers(cases)
    finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    statuses = ("done", "done earlier", "skipped", "failed")
    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        **dict(header),
        "finished": finished,
        "summary": {status: sum(row["status"] == status for row in cases) for status in statuses},
        "cases": cases,
    }


def flag_outliers(cases: list[dict[str, Any]]) -> None:
    """Add ``outliers`` (label names) to each row whose volume is far from the folder's: robust
    z-score ``|v - median| / (1.4826 MAD)`` above :data:`OUTLIER_Z`, or an empty label map where
    most cases have foreground."""
    measured = [row for row in cases if row.get("volumes_ml") is not None and row["status"] != "failed"]
    for row in cases:
        row["outliers"] = []
    if len(measured) < MIN_CASES_FOR_OUTLIERS:
        return
    names = sorted({name for row in measured for name in row["volumes_ml"]})
    for name in names:
        values = np.array([row["volumes_ml"].get(name, 0.0) for row in measured], dtype=float)
        median = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - median)))
        for row, value in zip(measured, values):
            z = abs(value - median) / spread if spread > 0 else (0.0 if value == median else np.inf)
            if z > OUTLIER_Z:
                row["outliers"].append(name)
    totals = [sum(row["volumes_ml"].values()) for row in measured]
    if sum(t > 0 for t in totals) > len(totals) / 2:
        for row, total in zip(measured, totals):
            if total == 0 and "empty" not in row["outliers"]:
                row["outliers"].append("empty")


def _parts(report_json: Path) -> list[Path]:
    return sorted(report_json.parent.glob(f"{report_json.stem}.part-*.json"))


def write_report(report: str | Path, header: Mapping[str, Any], ranks: int | None = None) -> list[Path]:
    """Merge the parts into ``report`` (JSON) and its HTML page, under a lock (shards of a job
    array may finish together); removes the merged parts. With ``ranks`` (rank 0 of a torchrun
    job, every rank done) exactly the parts of ranks 0..ranks-1 are merged and any other part,
    left by an earlier job, is removed. Returns both paths."""
    import fcntl

    from volseg.inference.report_html import render_html

    paths = report_paths(report)
    paths["previews"].mkdir(parents=True, exist_ok=True)
    # A regular file: POSIX record locks hold across NFS clients (flock on a folder would not).
    lock = os.open(paths["previews"] / ".report.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX)
        except OSError as error:  # a file system without locks (Lustre without -o flock, ...)
            logger.warning("cannot lock the run report (%s); shards finishing together may lose rows", error)
        parts = _parts(paths["json"])
        merged = merge_parts(report, header, None if ranks is None else [part_path(report, r) for r in range(ranks)])
        write_text(paths["json"], json.dumps(merged, indent=1) + "\n")
        write_text(paths["html"], render_html(merged, paths["html"].parent))
        for part in parts:
            part.unlink()
    finally:
        os.close(lock)  # releases the lock
    return [paths["json"], paths["html"]]


def torchrun_barrier(rank: int, world: int) -> None:
    """Mark this rank's part written; rank 0 then waits until every rank has marked it (through
    torchrun's store, under a key of this job and attempt: parts an earlier job left on disk do
    not count). torchrun stops every rank when one fails, so rank 0 does not wait forever."""
    from volseg.runtime import torchrun_store

    timeout = datetime.timedelta(days=7)  # the other ranks may still have hours of cases
    store = torchrun_store("predict-report", rank, world, timeout)
    store.set(f"part_{rank}", "written")
    if rank == 0:
        store.wait([f"part_{r}" for r in range(world)])


class RunReporter:
    """Collects a folder run's cases and writes its report when the run ends (also after a
    failure). ``rank``/``world``: this process's place among the run's processes; under
    torchrun (``wait=True``) rank 0 merges once every rank has written its part, otherwise each
    process merges its part as it finishes."""

    def __init__(self, report: str | Path, *, rank: int = 0, world: int = 1, wait: bool = False) -> None:
        self.paths = report_paths(report)
        self.rank, self.world, self.wait = rank, world, wait
        self.rows: list[dict[str, Any]] = []

    @property
    def previews(self) -> Path:
        """Where the report's previews go."""
        return self.paths["previews"]

    def add(self, outcome: CaseOutcome) -> None:
        from volseg.inference.segment import output_paths

        outputs = [outcome.labels_path, *output_paths(outcome.labels_path).values()]
        self.rows.append(case_row(outcome, outputs if outcome.status == "done" else [], outcome.report_preview))

    def finish(self, header: Mapping[str, Any]) -> list[Path]:
        """Write this process's part; merge the report unless another rank does. Returns what was
        written: nothing when a single process failed on its first case (an error writes nothing)."""
        if not self.wait and not any(row["status"] != "failed" for row in self.rows):
            return []
        part = write_part(self.paths["json"], self.rank, header, self.rows)
        if self.wait:
            torchrun_barrier(self.rank, self.world)
            if self.rank != 0:
                return [part]
            return write_report(self.paths["json"], header, ranks=self.world)
        return write_report(self.paths["json"], header)


def report_header(model: str, model_path: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the report that is the same for every case: when, versions, model, options."""
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "versions": versions(),
        "model": {"name": model, "path": str(model_path), "sha256": file_sha256(model_path)},
        "options": dict(options),
    }
