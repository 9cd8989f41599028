"""Build a sweep's report directory: results.csv, figures (PNG, SVG), report.md, report.html.

Before anything is stated the report runs its checks (`lpm.report.checks`): every flag becomes a
warning, in the report and on the console."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpm.record.load import dig
from lpm.record.sinks import flatten
from lpm.report.checks import Check, run_checks
from lpm.report.document import document, headline_notes, headlines, markdown, to_html
from lpm.report.figures import Figure, figures
from lpm.report.plot import draw
from lpm.report.study import Study, build_study
from lpm.report.sweep import PHASES, Job, load_sweep


@dataclass
class Report:
    out: Path
    files: list[Path]
    headlines: list[str]
    notes: list[str]  # the headlines' provenance, once (footnotes)
    warnings: list[str]  # what a reader must know: unusable records, skipped comparisons, flags
    compared: int  # jobs that finished ok
    checks: list[Check]


def _judged(job: Job, pools: dict[str, str]) -> dict[str, Any]:
    """How the report took an ok job's phases: verdict (stable, noisy, unknown), coverage
    (complete, or what was missing: then left out of comparisons) and the pool it is part of."""
    out: dict[str, Any] = {f"verdict.{p}": job.verdict(p).status for p in PHASES}
    out |= {f"coverage.{p}": f"incomplete: {job.gap(p)}" if job.gap(p) else "ok" for p in PHASES}
    return out | {"pooled_as": pools.get(job.name, "")}


def _intervals(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with every 95% interval `[low, high]` as two fields, `<key>_lo` and `<key>_hi`
    (a spreadsheet then reads the bounds as numbers)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out[key] = _intervals(value)
        elif key.endswith("ci95") and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"{key}_lo"], out[f"{key}_hi"] = value
        else:
            out[key] = value
    return out


def _totals(job: Job) -> dict[str, Any]:
    """Projected totals of all phases with their 95% intervals: operational kg CO2e and hours,
    then embodied kg CO2e and operational plus embodied, each its own column (blank in records
    without embodied emissions: never folded into the operational total)."""
    co2e = job.co2e()
    embodied = job.embodied()
    named = {
        "co2e_kg_total": co2e,
        "hours_total": job.hours(),
        "embodied_kg_total": embodied,
        "co2e_with_embodied_kg_total": None if embodied is None else co2e + embodied,
    }
    out: dict[str, Any] = {}
    for name, e in named.items():
        values = (None, None, None) if e is None else (e.value, e.low, e.high)
        out |= dict(zip((name, f"{name}_lo", f"{name}_hi"), values, strict=True))
    return out


# (column, the record's `{value, ci95}` entry, whether it has an interval)
QUALITY_COLUMNS = (
    ("ae_psnr_db", "quality.autoencoder.psnr_db", True),
    ("ae_ssim", "quality.autoencoder.ssim", True),
    ("sampler_psnr_db", "quality.sampler.psnr_db", True),
    ("sampler_ssim", "quality.sampler.ssim", True),
    ("diversity_ms_ssim", "quality.diversity.ms_ssim", True),
    ("fid", "quality.fid", False),
)


def _entry(name: str, entry: Any, interval: bool = True) -> dict[str, Any]:
    """A `{value, ci95}` entry as `name` (and `name_lo`, `name_hi`); blank where not recorded."""
    entry = entry if isinstance(entry, Mapping) else {}
    low, high = entry.get("ci95") or (None, None)
    return {name: entry.get("value")} | (
        {f"{name}_lo": low, f"{name}_hi": high} if interval else {}
    )


def _quality(record: Mapping[str, Any]) -> dict[str, Any]:
    """The quality metrics under short names; `sampler_identical` where the sampler is the
    reference (its PSNR ∞, left blank), `sampler_stochastic` where its fidelity reads low."""
    out: dict[str, Any] = {}
    for name, path, interval in QUALITY_COLUMNS:
        out |= _entry(name, dig(record, path), interval)
    flags = ("identical", "stochastic")
    return out | {f"sampler_{f}": dig(record, f"quality.sampler.{f}") for f in flags}


def _efficiency(record: Mapping[str, Any]) -> dict[str, Any]:
    """Per phase and unit: joules per PFLOP with its interval, and MFU (blank without a peak)."""
    out: dict[str, Any] = {}
    for phase in PHASES:
        block = dig(record, f"phases.{phase}.efficiency") or {}
        for unit, entry in (block.get("joules_per_pflop") or {}).items():
            out |= _entry(f"j_per_pflop_{phase}_{unit}", entry)
            out[f"mfu_{phase}_{unit}"] = (block.get("mfu") or {}).get(unit)
    return out


def write_results(study: Study, path: Path) -> Path:
    """One row per job: the job dir, its one status (the record's, or why the report could not
    read it), site, projected totals with their intervals (operational, embodied, their sum),
    how the report took it (per phase its verdict and coverage, its pool of repeats), quality
    and energy per PFLOP under short names, then every record field, flat, intervals as
    `_lo`/`_hi` columns."""
    pools = {r.name: j.name for j in study.jobs for r in j.runs}
    rows: list[dict[str, Any]] = []
    for job in study.sweep.jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status, "error": job.error or ""}
        if job.ok:
            row |= {"site": job.axis("site")} | _totals(job) | _judged(job, pools)
            row |= _quality(job.record) | _efficiency(job.record)
        if job.record:
            fields = flatten(_intervals(job.record))
            row |= {k: v for k, v in fields.items() if k not in ("status", "error")}
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["job", "status"]
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
    fallback: str | None = None,
    *,
    include_noisy: bool = False,
) -> Report:
    """Read every record under `sweep_dir` and write the report to `out` (default: <sweep>/report).

    Headlines leave out phases whose verdict is noisy unless `include_noisy` (then they say so).

    Raises:
        UnknownZone: a zone in `zones` that the intensity source does not know.
        SeriesError: an unreadable `csv_series`.
    """
    sweep = load_sweep(sweep_dir)
    study = build_study(sweep, zones, Path(csv_series) if csv_series else None, fallback)
    study.include_noisy = include_noisy
    study.checks = run_checks(study)
    out = Path(out) if out else sweep.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = [write_results(study, out / "results.csv")]
    shown = figures(study)
    for figure in shown:
        if isinstance(figure, Figure):
            files += draw(figure, out)
    lines = headlines(study)
    blocks = document(study, shown, lines)
    for name, text in (("report.md", markdown(blocks)), ("report.html", to_html(blocks, out))):
        (out / name).write_text(text, encoding="utf-8")
        files.append(out / name)
    flags = [f"{c.name}: {flag}" for c in study.checks for flag in c.flags]
    notes = headline_notes(study) if lines else []
    warnings = sweep.warnings + study.notes + flags
    return Report(out, files, lines, notes, warnings, len(sweep.ok), study.checks)
