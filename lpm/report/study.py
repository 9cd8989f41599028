"""The comparisons a report draws from a sweep: baseline, re-pricing over zones and months."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpm.carbon.equivalents import Factors
from lpm.carbon.intensity import (
    ISO2_TO_ISO3,
    CountryTable,
    CsvSeries,
    Intensity,
    IntensitySource,
    UnknownZone,
    annual_tables,
    with_fallback,
)
from lpm.price import priced_at
from lpm.report.sweep import PHASES, TRAINING, Job, Sweep, baseline, dig, pick, pool, varied

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


def canonical(zone: str) -> str:
    """One name per grid: a country's ISO-2 code (DE) as its ISO-3 (DEU), as the sources do."""
    key = zone.strip().upper()
    return ISO2_TO_ISO3.get(key, key)


@functools.cache
def zone_name(zone: str) -> str:
    """'Germany' for DEU or DE; '' for a zone the country table does not name (US-CA, SE3)."""
    try:
        return CountryTable().name(zone) or ""
    except ModuleNotFoundError:  # the table ships with codecarbon
        return ""


def zone_label(zone: str) -> str:
    """'DEU (Germany)', or the code alone."""
    name = zone_name(zone)
    return f"{zone} ({name})" if name else zone


def recorded_intensity(record: dict[str, Any]) -> Intensity:
    """The intensity a record was priced with."""
    c = record["carbon"]
    return Intensity(
        float(c["intensity_g_per_kwh"]),
        c["zone"],
        str(c["period"]),
        c["intensity_source"],
        c.get("intensity_kind") or "annual",
        c.get("intensity_basis") or "unknown",
        c.get("fallback"),
    )


def _size(image_size: Any) -> str:
    """'32³', '256²', '144×176×112'."""
    if not isinstance(image_size, (list, tuple)) or not image_size:
        return "?"
    if len(set(image_size)) == 1 and len(image_size) in (2, 3):
        return f"{image_size[0]}{'²' if len(image_size) == 2 else '³'}"
    return "×".join(map(str, image_size))


def scale_stamp(jobs: Iterable[Job]) -> str:
    """What networks stand behind `jobs`' numbers: 'CPU scale: 32³ images, 0.48 M parameters —
    not the study's networks' (CPU-scale toys must not be quoted as the cost of a 3D LDM)."""
    jobs = list(jobs)
    scales = sorted({str(dig(j.record, "axes.scale") or "unrecorded") for j in jobs})
    shapes = {tuple(dig(j.record, "axes.image_size") or ()) for j in jobs}
    sizes = [_size(list(s)) for s in sorted(shapes, key=lambda s: (len(s), s))]
    params = sorted({_params(j) for j in jobs})
    shown = [fmt(p / 1e6, 2) for p in params]
    counts = " and ".join(shown) if len(shown) < 3 else f"{shown[0]}–{shown[-1]}"
    what = f"{' and '.join(sizes)} images, {counts} M parameters"
    if scales == ["cpu"]:
        return f"CPU scale: {what} — not the study's networks"
    if scales == ["paper"]:
        return f"paper scale: {what}"
    cpu = " — CPU-scale numbers are not the study's networks" if "cpu" in scales else ""
    return f"scale {', '.join(scales)}: {what}{cpu}"


def _params(job: Job) -> int:
    """Autoencoder plus UNet parameters."""
    return sum(int(v) for v in (dig(job.record, "params") or {}).values())


def assumptions(jobs: Iterable[Job]) -> list[str]:
    """Every distinct assumption the records' numbers rest on, in order of first mention."""
    found: dict[str, None] = {}
    for job in jobs:
        for run in job.runs or (job,):
            found |= dict.fromkeys(str(a) for a in dig(run.record, "assumptions") or ())
    return list(found)


def provenance(jobs: Iterable[Job], priced: bool = True) -> str:
    """Where the numbers of `jobs` come from, each distinct one once: the price (zone, period,
    intensity, source, PUE; unless not `priced`), the energy methods and how many assumptions
    they rest on."""
    jobs = list(jobs)
    price = "; ".join(dict.fromkeys(pricing(j.record) for j in jobs))
    energy = "; ".join(dict.fromkeys(methods(j) for j in jobs))
    n = len(assumptions(jobs))
    rests = f" Rests on {count(n, 'assumption')} (listed under Setup)." if n else ""
    return (f"Priced at {price}. " if priced else "") + f"Energy: {energy}.{rests}"


def scaling(job: Job) -> str | None:
    """'weak' or 'strong' as recorded (`axes.scaling`); None in records that predate it."""
    return dig(job.record, "axes.scaling")


def work(job: Job, phase: str) -> float | None:
    """Samples a phase processes: training samples seen (iterations × global batch; weak scaling
    gives each device its own batch, strong splits one), or samples generated; None when the
    record does not say (older records)."""
    if phase not in TRAINING:
        return dig(job.record, "phases.synthesis.target.samples")
    iterations = dig(job.record, f"phases.{phase}.target.iterations")
    batch = dig(job.record, f"axes.batch_size.{phase}")
    mode = scaling(job)
    if iterations is None or batch is None or mode not in ("weak", "strong"):
        return None
    world = dig(job.record, "hardware.world_size") or 1
    return iterations * batch * (world if mode == "weak" else 1)


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


def short_labels(names: Iterable[str]) -> dict[str, str]:
    """Job directory → a short label: its Hydra overrides (`key=value,...`) less those every
    job shares, comma-spaced so that a table cell can wrap; the name itself otherwise."""
    names = list(dict.fromkeys(names))
    parts = {n: re.split(r",(?=[^,=/]+=)", n) for n in names}
    hydra = [p for p in parts.values() if all("=" in x for x in p)]
    shared = set.intersection(*map(set, hydra)) if len(hydra) > 1 else set()
    out = {}
    for name, items in parts.items():
        kept = [x for x in items if x not in shared] if all("=" in x for x in items) else items
        out[name] = ", ".join(kept) or name
    return out


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

    def short(self, name: str) -> str:
        """A job's short label: its overrides less those all jobs share (see `short_labels`)."""
        labels = short_labels(j.name for j in [*self.sweep.jobs, *self.jobs])
        return labels.get(name, name)

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
    recorded: dict[str, Intensity],
    notes: list[str],
    series: CsvSeries | None = None,
) -> list[Intensity]:
    """The zones to re-price at, cleanest first. Default: the series' zones, else a spread of
    countries; plus the recorded zones, each at the intensity its records were priced with (one
    number for a zone in figure, tables and headlines): where the source has another value for
    it, or none, a note says so."""
    if asked is None and series is not None:
        asked = series.zones()
    elif asked is None:
        low, high = CountryTable().spread()
        asked = [low.zone, *STUDY_ZONES, high.zone]
    asked = [*asked, *recorded]  # where the jobs ran is always one of the places compared
    found: dict[str, Intensity] = {}
    for zone in asked:
        key = canonical(zone)
        if key in found:
            continue
        try:
            intensity = source.lookup(zone)
        except UnknownZone as exc:
            if key not in recorded:  # asked for by name: a typo the user must hear about
                raise
            notes.append(
                f"recorded zone {zone} is not in the re-pricing source: {exc}; shown at its "
                f"recorded {fmt(recorded[key].g_per_kwh)} g/kWh"
            )
            found[key] = recorded[key]
            continue
        if key in recorded:
            mine = recorded[key]
            if fmt(intensity.g_per_kwh) != fmt(mine.g_per_kwh):
                notes.append(
                    f"recorded zone {mine.zone} is shown at its recorded {fmt(mine.g_per_kwh)} "
                    f"g/kWh ({mine.period}, {mine.source}); the re-pricing source has "
                    f"{fmt(intensity.g_per_kwh)} g/kWh for it ({intensity.period}, "
                    f"{intensity.source})"
                )
            found[key] = mine
            continue
        if intensity.g_per_kwh <= 0:  # a rounding artefact of small grids (CountryTable.spread)
            notes.append(f"zone {intensity.zone} skipped: its intensity reads 0 g/kWh")
            continue
        if intensity.fallback:
            notes.append(f"zone {zone}: {intensity.fallback}")
        found[key] = intensity
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
    # The reference job's price first: a zone is shown at the intensity it was recorded with.
    recorded: dict[str, Intensity] = {}
    for job in ([reference] if reference else []) + jobs:
        recorded.setdefault(canonical(job.axis("site")), recorded_intensity(job.record))
    try:
        source = with_fallback(series, fallback) if series else annual_tables()
        study.zones = _zones(source, zones, recorded, study.notes, series) if jobs else []
    except ModuleNotFoundError as exc:  # the country tables ship with codecarbon
        study.notes.append(f"no re-pricing: {exc}")
        return study
    study.priced = {
        j.name: {i.zone: j.map_records(partial(priced_at, intensity=i)) for i in study.zones}
        for j in jobs
    }
    if series:
        study.months = {z: series.monthly(z) for z in series.zones()}
    return study
