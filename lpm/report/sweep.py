"""A sweep directory's records as jobs: which ones the report can compare, and why the rest not;
each job's verdict and meter coverage per phase, and repeats (other seeds) pooled into one job.

Only the standard library, `lpm.record` and `lpm.energy.window`: the report must start without
torch.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpm.energy.window import Estimate, Verdict, mean_interval
from lpm.record.load import dig, load_records
from lpm.record.record import SCHEMA

PHASES = ("autoencoder", "diffusion", "synthesis")  # the record's phases, in run order
TRAINING = ("autoencoder", "diffusion")
AXES = ("model", "dims", "sampler", "steps", "precision", "speed", "gpus", "site")
# What an `ok` record must hold for the report to compare it (dotted paths into the record).
REQUIRED = (
    *(f"axes.{a}" for a in ("model", "dims", "sampler", "steps", "precision")),
    "params.autoencoder",
    "params.unet",
    *(f"carbon.{k}" for k in ("zone", "period", "intensity_g_per_kwh", "intensity_source", "pue")),
    *(
        f"phases.{p}.{k}"
        for p in PHASES
        for k in ("projected.seconds", "projected.energy_kwh", "co2e_kg.projected")
    ),
    *(f"phases.{p}.target.iterations" for p in TRAINING),
    "phases.synthesis.target.samples",
)
ORDER = {"model": ("small", "base", "large"), "dims": ("2d", "3d")}
# Baseline values when present (the study's reference setting); otherwise the most common value.
# `axes.speed`: the speed flags a record ran with ("compile", "channels_last+sdpa"), or none;
# records from before lpm had them ran without any.
NO_SPEED_FLAGS = "baseline"
PREFERRED = {
    "model": "base",
    "dims": "3d",
    "sampler": "ddpm",
    "precision": "32-true",
    "speed": NO_SPEED_FLAGS,
}


def _gpus(record: Mapping[str, Any]) -> str:
    hw = record.get("hardware") or {}
    n = hw.get("world_size") or (hw.get("devices") or 1) * (hw.get("nodes") or 1)
    if hw.get("accelerator") in ("cuda", "gpu"):
        return f"{n} GPU" + ("s" if n > 1 else "")
    return "CPU" if n == 1 else f"CPU ×{n}"


# A between-run spread this many times the runs' own standard errors is flagged: the within-run
# intervals then understate how much a rerun moves the number.
SPREAD_FLAG = 2.0
COMPONENTS = {"gpu": "GPU", "cpu": "CPU", "ram": "RAM"}
NO_VERDICT = Verdict("unknown", ("the record has no verdict (written before lpm recorded one)",))


# PSNR of 8-bit rounding, 10·log10(255² × 12) dB: two images closer than this are the same image
# once stored in 8 bits, so a higher PSNR (a 25-step solver matching the reference to float
# precision reads 110+ dB) is no better: advice and the Pareto frontier count it as this.
PSNR_CEILING_DB = 10 * math.log10(255**2 * 12)


def reference_sampler(jobs: Iterable[Job]) -> str:
    """'1,000-step DDIM': the reference sampler(s) the jobs' fidelity is measured to (η named
    when it is not 0, the deterministic sampler)."""
    found = []
    for job in jobs:
        ref = dig(job.record, "quality.sampler.reference") or {}
        scheduler = str(ref.get("scheduler") or "unrecorded sampler").removesuffix("Scheduler")
        steps, eta = ref.get("steps"), ref.get("eta")
        found.append(
            (f"{steps:,}-step " if isinstance(steps, int) else "")
            + scheduler.upper()
            + (f" (η = {eta:g})" if isinstance(eta, (int, float)) and eta else "")
        )
    return "; ".join(dict.fromkeys(found))


def between_runs(values: Sequence[float]) -> Estimate:
    """Mean of independent runs with its 95% t-interval (low bound floored at 0: costs are
    positive)."""
    return mean_interval(values, within=(0.0, math.inf))


def _coverage_gap(coverage: Any) -> str | None:
    """'GPU meters 1 of 2' for a recorded `coverage` that is not complete; None otherwise."""
    if not isinstance(coverage, Mapping) or coverage.get("complete") is not False:
        return None
    short = [
        f"{COMPONENTS.get(c, c)} meters {v.get('metered')} of {v.get('expected')}"
        for c, v in coverage.items()
        if isinstance(v, Mapping) and (v.get("metered") or 0) < (v.get("expected") or 0)
    ]
    return ", ".join(short) or "meter coverage incomplete"


@dataclass(eq=False)  # identity: a job is its directory (and hashable, for sets of jobs)
class Job:
    """One job dir's record, or a pool of repeats (`runs`: the same job with other seeds)."""

    name: str  # the job directory, relative to the sweep (a pool: its runs' names)
    record: dict[str, Any] | None  # None when there is no readable record; a pool: its first run's
    status: str  # the record's, or: unreadable, unsupported, incomplete, no record
    error: str | None = None  # one line
    runs: tuple[Job, ...] = ()  # a pool's repeats (two or more); empty for a single run

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def axis(self, axis: str) -> Any:
        if axis == "site":
            return dig(self.record, "carbon.zone")
        if axis == "gpus":
            return _gpus(self.record or {})
        if axis == "speed":
            return dig(self.record, "axes.speed") or NO_SPEED_FLAGS
        return dig(self.record, f"axes.{axis}")

    @property
    def axes(self) -> dict[str, Any]:
        return {a: self.axis(a) for a in AXES}

    @property
    def seed(self) -> int | str:
        """The `seed=` override the job ran with (0, the config default, when none)."""
        for item in dig(self.record, "job.overrides") or ():
            key, _, value = str(item).partition("=")
            if key.lstrip("+~") == "seed":
                return int(value) if value.strip().lstrip("-").isdigit() else value
        return 0

    @property
    def seeds(self) -> list[int | str]:
        return sorted((r.seed for r in self.runs or (self,)), key=lambda s: sort_key("seed", s))

    def label(self, run: Job) -> str:
        """How a pool names one of its runs: 'seed 1', or its directory when seeds repeat."""
        unique = len({r.seed for r in self.runs}) == len(self.runs)
        return f"seed {run.seed}" if unique else run.name

    def gap(self, phase: str) -> str | None:
        """Why `phase` is incomplete ('GPU meters 1 of 2'); None when complete or unrecorded.

        A pool is incomplete only when every run is: incomplete runs are left out of its numbers.
        """
        if self.runs:
            gaps = [r.gap(phase) for r in self.runs]
            if None in gaps:
                return None
            return "; ".join(f"{self.label(r)}: {g}" for r, g in zip(self.runs, gaps, strict=True))
        return _coverage_gap(dig(self.record, f"phases.{phase}.coverage"))

    def pooled(self, phases: Iterable[str]) -> list[Job]:
        """The runs behind a pool's numbers for `phases`: those complete in all of them."""
        phases = tuple(phases)
        runs = [r for r in self.runs if all(r.gap(p) is None for p in phases)]
        return runs or list(self.runs)

    def verdict(self, phase: str) -> Verdict:
        """The record's verdict on `phase`; for a pool, noisy when any pooled run is, saying how
        many were."""
        if not self.runs:
            raw = dig(self.record, f"phases.{phase}.verdict")
            if isinstance(raw, Mapping) and raw.get("status") in ("stable", "noisy"):
                return Verdict(raw["status"], tuple(str(r) for r in raw.get("reasons") or ()))
            return NO_VERDICT
        runs = self.pooled((phase,))
        verdicts = {self.label(r): r.verdict(phase) for r in runs}
        noisy = {label: v for label, v in verdicts.items() if v.status == "noisy"}
        if noisy:
            reasons = [f"{len(noisy)} of {len(runs)} repeats noisy"]
            reasons += [f"{label}: {reason}" for label, v in noisy.items() for reason in v.reasons]
            return Verdict("noisy", tuple(reasons))
        unknown = sum(v.status == "unknown" for v in verdicts.values())
        if unknown:
            return Verdict("unknown", (f"{unknown} of {len(runs)} repeats have no verdict",))
        return Verdict("stable")

    def noisy(self, phases: Iterable[str] = PHASES) -> list[str]:
        return [p for p in phases if self.verdict(p).status == "noisy"]

    def co2e(self, phases: Iterable[str] = PHASES) -> Estimate:
        """Projected kg CO2e of `phases` with the 95% interval (bounds added, as pricing does;
        a pool: the runs' mean with the between-run t-interval)."""
        return self._estimate(phases, "co2e_kg.projected", "co2e_kg.projected_ci95")

    def hours(self, phases: Iterable[str] = PHASES) -> Estimate:
        return self._estimate(phases, "projected.seconds", "projected.seconds_ci95").scaled(
            1 / 3600
        )

    def kwh(self, phases: Iterable[str] = PHASES) -> Estimate:
        """Projected energy of `phases`, kWh, with the 95% interval."""
        return self._estimate(phases, "projected.energy_kwh", "projected.energy_kwh_ci95")

    def within(self, phases: Iterable[str] = PHASES) -> list[Estimate]:
        """Each pooled run's own projected kg CO2e with its within-run interval."""
        phases = tuple(phases)
        return [r.co2e(phases) for r in self.pooled(phases) or [self]]

    def understated(self, phase: str) -> float | None:
        """How many times the runs' spread exceeds their within-run intervals: the standard
        deviation between runs over the mean within-run standard error (95% half-width / 1.96),
        on projected energy; None for a single run."""
        runs = self.pooled((phase,)) if self.runs else []
        if len(runs) < 2:
            return None
        energies = [r.kwh((phase,)) for r in runs]
        mean = sum(e.value for e in energies) / len(energies)
        sd = math.sqrt(sum((e.value - mean) ** 2 for e in energies) / (len(energies) - 1))
        se = sum((e.high - e.low) / 2 / 1.96 for e in energies) / len(energies)
        if se == 0:
            return math.inf if sd else None
        return sd / se

    def recorded(
        self, value: str, ci: str | None = None, phases: Iterable[str] = PHASES
    ) -> Estimate | None:
        """The number at dotted `value` (a quality metric, J/PFLOP, embodied kg) with its 95%
        interval at `ci` (none recorded: the value alone); a pool: the mean over the runs its
        totals of `phases` pool (:meth:`pooled`), with the between-run interval. None where a
        run lacks the number (records that predate it)."""
        runs = self.pooled(phases) if self.runs else [self]
        found = [dig(r.record, value) for r in runs]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in found):
            return None
        if len(found) > 1:
            return between_runs([float(v) for v in found])
        centre = float(found[0])
        low, high = (dig(runs[0].record, ci) if ci else None) or (None, None)
        return Estimate(
            centre, centre if low is None else float(low), centre if high is None else float(high)
        )

    def flag(self, dotted: str) -> bool:
        """Every run records True at `dotted` (e.g. `quality.sampler.identical`)."""
        return all(dig(r.record, dotted) is True for r in self.runs or (self,))

    def embodied(self) -> Estimate | None:
        """Projected embodied kg CO2e of all phases (the hardware's manufacture, amortised over
        the job's device-hours), over the runs `co2e` pools: apart from it, which is
        operational only."""
        return self.recorded("totals.embodied_kg", "totals.embodied_kg_ci95")

    def metric(self, dotted: str, phases: Iterable[str] = PHASES) -> Estimate | None:
        """A `{"value", "ci95"}` entry of the record (quality metric, J/PFLOP) as an estimate,
        over the runs the totals of `phases` pool."""
        return self.recorded(f"{dotted}.value", f"{dotted}.ci95", phases)

    def _estimate(self, phases: Iterable[str], value: str, ci: str) -> Estimate:
        phases = tuple(phases)
        if not self.runs:
            return self._sum(phases, value, ci)
        runs = self.pooled(phases)
        if len(runs) == 1:
            return runs[0]._sum(phases, value, ci)
        return between_runs([r._sum(phases, value, ci).value for r in runs])

    def _sum(self, phases: Iterable[str], value: str, ci: str) -> Estimate:
        parts = []
        for p in phases:
            v = dig(self.record, f"phases.{p}.{value}")
            low, high = dig(self.record, f"phases.{p}.{ci}") or (v, v)
            parts.append((v, v if low is None else low, v if high is None else high))
        return Estimate(*(sum(column) for column in zip(*parts, strict=True)))

    def map_records(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Job:
        """This job (a pool: each run) with its record replaced by `change(record)`."""
        if self.runs:
            runs = tuple(r.map_records(change) for r in self.runs)
            return Job(self.name, runs[0].record, self.status, self.error, runs)
        return Job(self.name, change(self.record), self.status, self.error)


@dataclass
class Sweep:
    root: Path
    jobs: list[Job]
    warnings: list[str]

    @property
    def ok(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]


def load_sweep(root: str | Path) -> Sweep:
    """Every job under `root`: each `record.json`, and each Hydra job dir that has none."""
    root = Path(root)

    def name(job_dir: Path) -> str:
        return job_dir.relative_to(root).as_posix() if job_dir != root else root.name

    jobs = [Job(r.name, r.record, r.status, r.error) for r in load_records(root, REQUIRED)]
    # Hydra writes .hydra/ when a job starts; lpm writes the record after the first phase.
    for hydra_dir in sorted(root.glob("**/.hydra")):
        if not (hydra_dir.parent / "record.json").exists():
            error = "no record.json: the job stopped before its first phase ended"
            jobs.append(Job(name(hydra_dir.parent), None, "no record", error))
    jobs.sort(key=lambda j: j.name)

    warnings = [
        f"{j.name}: {j.status}" + (f": {j.error}" if j.error else "") for j in jobs if not j.ok
    ]
    schemas = Counter(j.record.get("schema") for j in jobs if isinstance(j.record, dict))
    if len(schemas) > 1:
        mix = ", ".join(f"{s} ({n})" for s, n in schemas.items())
        warnings.append(f"mixed schema versions: {mix}; only {SCHEMA} records are compared")
    if not jobs:
        warnings.append(f"no record.json under {root}: not a sweep directory, or nothing ran yet")
    elif not any(j.ok for j in jobs):
        warnings.append("no job finished ok: nothing to compare")
    return Sweep(root, jobs, warnings)


# --- axes and the baseline ------------------------------------------------------------------------


def sort_key(axis: str, value: Any) -> tuple:
    """Known orders first (small, base, large), then numbers, then natural order (2 < 10)."""
    order = ORDER.get(axis, ())
    if value in order:
        return (0, order.index(value))
    if isinstance(value, (int, float)):
        return (1, value)
    parts = re.split(r"(\d+)", str(value))
    return (2, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


def values(jobs: Iterable[Job], axis: str) -> list[Any]:
    return sorted({j.axis(axis) for j in jobs}, key=lambda v: sort_key(axis, v))


def varied(jobs: list[Job]) -> list[str]:
    return [a for a in AXES if len(values(jobs, a)) > 1]


def baseline(jobs: list[Job]) -> dict[str, Any]:
    """Per axis: the study's reference value where the sweep has it, else the most common one.

    Steps follow the baseline sampler: its most common step count, the largest on a tie (the
    unaccelerated setting is the one speed-ups are measured against).
    """
    base: dict[str, Any] = {}
    for axis in AXES:
        if axis == "steps":
            counts = Counter(j.axis("steps") for j in jobs if j.axis("sampler") == base["sampler"])
            base[axis] = max(counts, key=lambda s: (counts[s], s)) if counts else None
            continue
        counts = Counter(j.axis(axis) for j in jobs)
        ordered = values(jobs, axis)
        preferred = PREFERRED.get(axis)
        base[axis] = (
            preferred
            if preferred in counts
            else max(ordered, key=lambda v: (counts[v], -ordered.index(v)), default=None)
        )
    return base


def pick(
    jobs: list[Job],
    base: Mapping[str, Any],
    free: tuple[str, ...] = (),
    fixed: Mapping[str, Any] | None = None,
) -> dict[tuple, Job]:
    """For each combination of the `free` axes' values, the job nearest the baseline on the rest.

    Nearest: the most other axes at their baseline value (the first job on a tie). `fixed` axes
    must match exactly. Keys are sorted in axis order.
    """
    fixed = fixed or {}
    best: dict[tuple, tuple[int, Job]] = {}
    for job in jobs:
        if any(job.axis(a) != v for a, v in fixed.items()):
            continue
        key = tuple(job.axis(a) for a in free)
        score = sum(job.axis(a) == base[a] for a in AXES if a not in free and a not in fixed)
        if key not in best or score > best[key][0]:
            best[key] = (score, job)
    order = sorted(best, key=lambda k: [sort_key(a, v) for a, v in zip(free, k, strict=True)])
    return {k: best[k][1] for k in order}


def matched(
    jobs: list[Job],
    base: Mapping[str, Any],
    free: tuple[str, ...],
    fixed: Mapping[str, Any] | None = None,
) -> dict[tuple, Job]:
    """Like `pick`, but every job returned has the same values on all other axes: a ratio
    between them then changes `free` only. Among the settings of the other axes that hold two
    or more values of `free`, the one nearest the baseline; {} when there is none."""
    fixed = fixed or {}
    others = [a for a in AXES if a not in free]
    settings: dict[tuple, list[Job]] = {}
    for job in jobs:
        if all(job.axis(a) == v for a, v in fixed.items()):
            settings.setdefault(tuple(job.axis(a) for a in others), []).append(job)
    compared = [
        s
        for s, group in settings.items()
        if len({tuple(j.axis(a) for a in free) for j in group}) > 1
    ]
    if not compared:
        return {}
    nearest = max(compared, key=lambda s: sum(v == base[a] for a, v in zip(others, s, strict=True)))
    return pick(settings[nearest], base, free)


def off_baseline(picked: Iterable[Job], base: Mapping[str, Any], held: Iterable[str]) -> list[str]:
    """'job: axis=value' for each picked job that differs from the baseline on a held axis."""
    held = list(held)
    return [
        f"{j.name}: " + ", ".join(f"{a}={j.axis(a)}" for a in held if j.axis(a) != base[a])
        for j in picked
        if any(j.axis(a) != base[a] for a in held)
    ]


# --- repeats --------------------------------------------------------------------------------------


def _repeat_key(job: Job) -> str:
    """What repeats share: every recorded axis, the site, the GPUs, the overrides but the seed."""
    axes = {k: v for k, v in (dig(job.record, "axes") or {}).items() if k != "seed"}
    overrides = sorted(
        str(o)
        for o in dig(job.record, "job.overrides") or ()
        if str(o).partition("=")[0].lstrip("+~") != "seed"
    )
    return json.dumps([axes, job.axis("site"), job.axis("gpus"), overrides], sort_keys=True)


def _pool_name(runs: Sequence[Job]) -> str:
    """'model=small,seed=0,1,2' when the dirs differ only in their seed; else the first run's
    dir and how many repeats it has."""
    seeds = ",".join(str(r.seed) for r in runs)
    names = {re.sub(r"seed=[^,/]*", f"seed={seeds}", r.name) for r in runs}
    if len(names) == 1:
        return names.pop()
    return f"{runs[0].name} +{len(runs) - 1} repeat" + ("s" if len(runs) > 2 else "")


def pool(jobs: Iterable[Job]) -> list[Job]:
    """Jobs with repeats (the same job with another seed, or rerun) pooled into one `Job` each,
    runs ordered by seed; a job without repeats stays itself."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(_repeat_key(job), []).append(job)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        runs.sort(key=lambda r: (sort_key("seed", r.seed), r.name))
        out.append(Job(_pool_name(runs), runs[0].record, "ok", None, tuple(runs)))
    return out
