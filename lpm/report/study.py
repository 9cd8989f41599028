"""The comparisons a report draws from a sweep: baseline, re-pricing over zones and months."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpm.carbon.equivalents import Factors
from lpm.carbon.intensity import (
    CountryTable,
    CsvSeries,
    Intensity,
    IntensitySource,
    UnknownZone,
    annual_tables,
    with_fallback,
)
from lpm.price import reprice
from lpm.report.sweep import PHASES, Job, Sweep, baseline, dig, pick, pool, varied

if TYPE_CHECKING:
    from lpm.report.checks import Check

# Grids the study's questions turn on: its site (DEU), nuclear (FRA), hydro (SWE, NOR), coal
# (POL, IND, CHN) and the US mean. Plus the country table's cleanest and dirtiest grids.
STUDY_ZONES = ("NOR", "SWE", "FRA", "USA", "DEU", "CHN", "POL", "IND")
METHOD_NAMES = {
    "nvml_counter": "NVML counter",
    "nvml_power": "NVML power sampling",
    "rapl": "RAPL",
    "estimate": "estimate",
}


def fmt(x: float, sig: int = 3) -> str:
    """At most `sig` significant digits, thousands separated: 12.3, 0.0041, 3,345, 0.05."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    text = f"{x:,.{max(0, sig - 1 - math.floor(math.log10(abs(x))))}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def count(n: int, noun: str) -> str:
    """'1 phase', '3 phases'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def millions(n: int) -> str:
    return f"{fmt(n / 1e6, 2)}M"


def methods(job: Job) -> str:
    """How energy was measured, over all phases: 'GPU: NVML counter; CPU, RAM: estimate'."""
    by_method: dict[str, list[str]] = {}
    for p in PHASES:
        for component, method in (dig(job.record, f"phases.{p}.measured.method") or {}).items():
            names = by_method.setdefault(METHOD_NAMES.get(method, method), [])
            if component.upper() not in names:
                names.append(component.upper())
    return "; ".join(f"{', '.join(c)}: {m}" for m, c in by_method.items()) or "no meter recorded"


def pricing(record: dict[str, Any]) -> str:
    """Where and when a record is priced: 'DEU 2023, 381 g CO2e/kWh (annual, …), PUE 1.58'."""
    c = record["carbon"]
    kind = ", ".join(k for k in (c.get("intensity_kind"), c.get("intensity_basis")) if k)
    return (
        f"{c['zone']} {c['period']}, {fmt(c['intensity_g_per_kwh'])} g CO2e/kWh "
        f"({kind + '; ' if kind else ''}{c['intensity_source']}), PUE {c['pue']:g}"
    )


def comparable(jobs: Iterable[Job], phases: Iterable[str], noisy: bool = True) -> list[Job]:
    """The jobs whose `phases` all had complete meter coverage (and, unless `noisy`, none of them
    a noisy verdict): what a comparison may use."""
    phases = tuple(phases)
    return [
        j for j in jobs if all(j.gap(p) is None for p in phases) and (noisy or not j.noisy(phases))
    ]


def month_spread(monthly: dict[str, float]) -> tuple[float, str, str] | None:
    """(max − min) / min over months, and the cleanest and dirtiest month; None under 2 months."""
    if len(monthly) < 2 or min(monthly.values()) <= 0:
        return None
    low, high = min(monthly, key=monthly.get), max(monthly, key=monthly.get)
    return (monthly[high] - monthly[low]) / monthly[low], low, high


@dataclass
class Study:
    """A sweep's ok jobs (repeats pooled) with their baseline, each job re-priced over a set of
    zones, and what the report checked."""

    sweep: Sweep
    jobs: list[Job]  # ok jobs, repeats pooled into one job each
    base: dict[str, Any]
    varied: list[str]
    reference: Job | None  # the baseline job (3D where the sweep has 3D): fig3 re-prices it
    zones: list[Intensity] = field(default_factory=list)  # cleanest first
    priced: dict[str, dict[str, Job]] = field(default_factory=dict)  # job → zone → re-priced job
    csv: Path | None = None
    months: dict[str, dict[str, float]] = field(default_factory=dict)  # zone → month → g/kWh
    notes: list[str] = field(default_factory=list)  # why a comparison could not be made
    include_noisy: bool = False  # headlines may rest on phases whose verdict is noisy
    checks: list[Check] = field(default_factory=list)

    def usable(self, phases: Iterable[str], headline: bool = False) -> list[Job]:
        """Jobs a comparison of `phases` may use: complete coverage; for a headline also no noisy
        verdict, unless `include_noisy`."""
        return comparable(self.jobs, phases, noisy=not headline or self.include_noisy)

    def contradicted(self, a: Job, b: Job) -> bool:
        """Whether a check found `a` against `b` contradicting itself (no headline of it)."""
        return any(frozenset((a.name, b.name)) in c.contradictions for c in self.checks)

    def excluded(self) -> list[tuple[str, str, str]]:
        """(run, phase, why) for every phase kept out of comparisons: incomplete meter coverage."""
        out = []
        for job in self.jobs:
            for run in job.runs or (job,):
                for phase in PHASES:
                    gap = run.gap(phase)
                    if gap and job.runs and job.gap(phase) is None:
                        gap += " (pooled without this run)"
                    if gap:
                        out.append((run.name, phase, gap))
        return out

    @property
    def factors(self) -> dict[str, dict[str, Any]]:
        """The equivalents' factors ({name: {value, source}}) the records were priced with."""
        recorded = dig(self.reference.record, "totals.factors") if self.reference else None
        return recorded or dataclasses.asdict(Factors())

    def factor(self, name: str) -> float:
        return float(self.factors[name]["value"])

    def held(self, free: Iterable[str]) -> str:
        """The varied axes a comparison holds at their baseline: 'model=base, sampler=ddpm'."""
        held = [a for a in self.varied if a not in free]
        return ", ".join(f"{a}={self.base[a]}" for a in held) or "nothing else varied"

    def location(self, job: Job | None = None) -> tuple[Intensity, float, Intensity, float] | None:
        """`job`'s (default: the reference's) cleanest and dirtiest zone with its total kg CO2e
        at each."""
        job = job or self.reference
        if job is None or len(self.zones) < 2:
            return None
        at = self.priced[job.name]
        low, high = self.zones[0], self.zones[-1]
        return low, at[low.zone].co2e().value, high, at[high.zone].co2e().value

    def seasons(self) -> dict[str, tuple[float, str, str]]:
        """Zone → month-to-month spread of its intensity (so of any job's CO2e there)."""
        spreads = {zone: month_spread(m) for zone, m in self.months.items()}
        return {zone: s for zone, s in spreads.items() if s is not None}


def _zones(
    source: IntensitySource,
    asked: list[str] | None,
    recorded: list[str],
    notes: list[str],
    series: CsvSeries | None = None,
) -> list[Intensity]:
    """The zones to re-price at, cleanest first; unknown recorded zones and fallbacks become
    notes. Default: the series' zones, else a spread of countries; plus the recorded zones."""
    if asked is None and series is not None:
        asked = [*series.zones(), *recorded]
    elif asked is None:
        low, high = CountryTable().spread()
        asked = [low.zone, *STUDY_ZONES, high.zone, *recorded]
    found: dict[str, Intensity] = {}
    for zone in asked:
        try:
            intensity = source.lookup(zone)
        except UnknownZone as exc:
            if zone not in recorded:  # asked for by name: a typo the user must hear about
                raise
            notes.append(f"recorded zone {zone} is not in the re-pricing source: {exc}")
            continue
        if intensity.g_per_kwh <= 0:  # a rounding artefact of small grids (CountryTable.spread)
            notes.append(f"zone {intensity.zone} skipped: its intensity reads 0 g/kWh")
            continue
        if intensity.fallback and intensity.zone not in found:
            notes.append(f"zone {zone}: {intensity.fallback}")
        found.setdefault(intensity.zone, intensity)
    return sorted(found.values(), key=lambda i: i.g_per_kwh)


def _recorded_fallbacks(jobs: Iterable[Job]) -> list[str]:
    """One note per fallback statement the records carry, with the jobs that carry it."""
    by_statement: dict[str, list[str]] = {}
    for job in jobs:
        if statement := dig(job.record, "carbon.fallback"):
            by_statement.setdefault(statement, []).append(job.name)
    return [
        f"recorded price of {', '.join(names)} is a fallback: {statement}"
        for statement, names in by_statement.items()
    ]


def build_study(
    sweep: Sweep,
    zones: list[str] | None = None,
    csv: Path | None = None,
    fallback: str | None = None,
) -> Study:
    """Baseline, reference job, and re-pricing over `zones` (default: the `csv` series' zones,
    else a spread of countries).

    Args:
        fallback: None: a zone in `zones` the `csv` series lacks is an error; "annual": it is
            priced from the annual tables, and a note says so.

    Raises:
        UnknownZone: for a zone in `zones` the intensity source does not have.
        SeriesError: `csv` cannot be read as an intensity series.
    """
    jobs = pool(sweep.ok)  # repeats (other seeds) become one job each
    base = baseline(jobs)
    reference = next(iter(pick(comparable(jobs, PHASES), base).values()), None)
    study = Study(sweep, jobs, base, varied(jobs), reference, csv=csv)
    study.notes += _recorded_fallbacks(sweep.ok)
    series = CsvSeries(csv) if csv else None
    try:
        source = with_fallback(series, fallback) if series else annual_tables()
        recorded = list(dict.fromkeys(j.axis("site") for j in jobs))
        study.zones = _zones(source, zones, recorded, study.notes, series) if jobs else []
    except ModuleNotFoundError as exc:  # the country tables ship with codecarbon
        study.notes.append(f"no re-pricing: {exc}")
        return study
    study.priced = {
        j.name: {
            i.zone: j.map_records(partial(reprice, source=source, zone=i.zone)) for i in study.zones
        }
        for j in jobs
    }
    if series:
        study.months = {z: series.monthly(z) for z in series.zones()}
    return study
