"""The comparisons a report draws from a sweep: baseline, re-pricing over zones and months."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpm.carbon.equivalents import Factors
from lpm.carbon.intensity import (
    CountryTable,
    CsvSeries,
    Intensity,
    IntensitySource,
    UnknownZone,
    source_from_config,
)
from lpm.price import reprice
from lpm.report.sweep import PHASES, Job, Sweep, baseline, dig, pick, varied

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


def month_spread(monthly: dict[str, float]) -> tuple[float, str, str] | None:
    """(max − min) / min over months, and the cleanest and dirtiest month; None under 2 months."""
    if len(monthly) < 2 or min(monthly.values()) <= 0:
        return None
    low, high = min(monthly, key=monthly.get), max(monthly, key=monthly.get)
    return (monthly[high] - monthly[low]) / monthly[low], low, high


@dataclass
class Study:
    """A sweep's ok jobs with their baseline, and each job re-priced over a set of zones."""

    sweep: Sweep
    jobs: list[Job]
    base: dict[str, Any]
    varied: list[str]
    reference: Job | None  # the baseline job (3D where the sweep has 3D): fig3 re-prices it
    zones: list[Intensity] = field(default_factory=list)  # cleanest first
    priced: dict[str, dict[str, Job]] = field(default_factory=dict)  # job → zone → re-priced job
    csv: Path | None = None
    months: dict[str, dict[str, float]] = field(default_factory=dict)  # zone → month → g/kWh
    notes: list[str] = field(default_factory=list)  # why a comparison could not be made

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

    def location(self) -> tuple[Intensity, float, Intensity, float] | None:
        """The reference job's cleanest and dirtiest zone with its total kg CO2e at each."""
        if self.reference is None or len(self.zones) < 2:
            return None
        at = self.priced[self.reference.name]
        low, high = self.zones[0], self.zones[-1]
        return low, at[low.zone].co2e().mean, high, at[high.zone].co2e().mean

    def seasons(self) -> dict[str, tuple[float, str, str]]:
        """Zone → month-to-month spread of its intensity (so of any job's CO2e there)."""
        spreads = {zone: month_spread(m) for zone, m in self.months.items()}
        return {zone: s for zone, s in spreads.items() if s is not None}


def _zones(
    source: IntensitySource, asked: list[str] | None, recorded: list[str], notes: list[str]
) -> list[Intensity]:
    """The zones to re-price at, cleanest first; unknown recorded zones become notes."""
    if asked is None:
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
        found.setdefault(intensity.zone, intensity)
    return sorted(found.values(), key=lambda i: i.g_per_kwh)


def build_study(sweep: Sweep, zones: list[str] | None = None, csv: Path | None = None) -> Study:
    """Baseline, reference job, and re-pricing over `zones` (default: a spread of countries).

    Raises:
        UnknownZone: for a zone in `zones` the intensity source does not have.
    """
    jobs = sweep.ok
    base = baseline(jobs)
    reference = next(iter(pick(jobs, base).values()), None)
    study = Study(sweep, jobs, base, varied(jobs), reference, csv=csv)
    config = {"source": "csv", "csv": str(csv)} if csv else {"source": "codecarbon"}
    try:
        source = source_from_config(config)
        recorded = list(dict.fromkeys(j.axis("site") for j in jobs))
        study.zones = _zones(source, zones, recorded, study.notes) if jobs else []
    except ModuleNotFoundError as exc:  # the country tables ship with codecarbon
        study.notes.append(f"no re-pricing: {exc}")
        return study
    study.priced = {
        j.name: {i.zone: Job(j.name, reprice(j.record, source, i.zone), "ok") for i in study.zones}
        for j in jobs
    }
    if csv:
        series = CsvSeries(csv)
        study.months = {z: series.monthly(z) for z in series.zones()}
    return study
