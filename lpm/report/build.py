"""Build a sweep's report directory: results.csv, figures (PNG, SVG), report.md, report.html."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpm.record.sinks import flatten
from lpm.report.document import document, headlines, markdown, to_html
from lpm.report.figures import Figure, figures
from lpm.report.plot import draw
from lpm.report.study import build_study
from lpm.report.sweep import Sweep, load_sweep


@dataclass
class Report:
    out: Path
    files: list[Path]
    headlines: list[str]
    warnings: list[str]  # what a reader must know: unusable records, skipped comparisons
    compared: int  # jobs that finished ok


def write_results(sweep: Sweep, path: Path) -> Path:
    """One row per job: the job dir, how the report took it, then every record field, flat."""
    rows: list[dict[str, Any]] = []
    for job in sweep.jobs:
        row = {"job": job.name, "report_status": job.status}
        rows.append(row | (flatten(job.record) if job.record else {"error": job.error}))
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["job", "report_status"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    zones: list[str] | None = None,
    csv_series: str | Path | None = None,
) -> Report:
    """Read every record under `sweep_dir` and write the report to `out` (default: <sweep>/report).

    Raises:
        UnknownZone: a zone in `zones` that the intensity source does not know.
        ValueError: an unreadable `csv_series`.
    """
    sweep = load_sweep(sweep_dir)
    study = build_study(sweep, zones, Path(csv_series) if csv_series else None)
    out = Path(out) if out else sweep.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = [write_results(sweep, out / "results.csv")]
    shown = figures(study)
    for figure in shown:
        if isinstance(figure, Figure):
            files += draw(figure, out)
    lines = headlines(study)
    blocks = document(study, shown, lines)
    for name, text in (("report.md", markdown(blocks)), ("report.html", to_html(blocks, out))):
        (out / name).write_text(text, encoding="utf-8")
        files.append(out / name)
    return Report(out, files, lines, sweep.warnings + study.notes, len(study.jobs))
