"""A sweep directory's records as jobs: which ones the report can compare, and why the rest not.

Only the standard library and `lpm.record`: the report must start without torch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lpm.record.record import SCHEMA, STATUSES

PHASES = ("autoencoder", "diffusion", "synthesis")  # the record's phases, in run order
TRAINING = ("autoencoder", "diffusion")
AXES = ("model", "dims", "sampler", "steps", "precision", "gpus", "site")
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
PREFERRED = {"model": "base", "dims": "3d", "sampler": "ddpm", "precision": "32-true"}


class Estimate(NamedTuple):
    mean: float
    low: float
    high: float

    def scaled(self, factor: float) -> Estimate:
        return Estimate(self.mean * factor, self.low * factor, self.high * factor)


def dig(data: Any, dotted: str) -> Any:
    """`data["a"]["b"]` for "a.b"; None where a level is missing."""
    for key in dotted.split("."):
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _gpus(record: Mapping[str, Any]) -> str:
    hw = record.get("hardware") or {}
    n = hw.get("world_size") or (hw.get("devices") or 1) * (hw.get("nodes") or 1)
    if hw.get("accelerator") in ("cuda", "gpu"):
        return f"{n} GPU" + ("s" if n > 1 else "")
    return "CPU" if n == 1 else f"CPU ×{n}"


@dataclass
class Job:
    name: str  # the job directory, relative to the sweep
    record: dict[str, Any] | None  # None when there is no readable record
    status: str  # the record's, or: unreadable, unsupported, incomplete, no record
    error: str | None = None  # one line

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def axis(self, axis: str) -> Any:
        if axis == "site":
            return dig(self.record, "carbon.zone")
        if axis == "gpus":
            return _gpus(self.record or {})
        return dig(self.record, f"axes.{axis}")

    @property
    def axes(self) -> dict[str, Any]:
        return {a: self.axis(a) for a in AXES}

    def co2e(self, phases: Iterable[str] = PHASES) -> Estimate:
        """Projected kg CO2e of `phases` with the 95% interval (bounds added, as pricing does)."""
        return self._sum(phases, "co2e_kg.projected", "co2e_kg.projected_ci95")

    def hours(self, phases: Iterable[str] = PHASES) -> Estimate:
        return self._sum(phases, "projected.seconds", "projected.seconds_ci95").scaled(1 / 3600)

    def _sum(self, phases: Iterable[str], mean: str, ci: str) -> Estimate:
        parts = []
        for p in phases:
            m = dig(self.record, f"phases.{p}.{mean}")
            low, high = dig(self.record, f"phases.{p}.{ci}") or (m, m)
            parts.append((m, m if low is None else low, m if high is None else high))
        return Estimate(*(sum(column) for column in zip(*parts, strict=True)))


@dataclass
class Sweep:
    root: Path
    jobs: list[Job]
    warnings: list[str]

    @property
    def ok(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]


def _check(record: Any) -> tuple[str, str | None]:
    """The status a record is reported under, and its error line."""
    if not isinstance(record, dict):
        return "unreadable", f"not a JSON object but {type(record).__name__}"
    schema = record.get("schema")
    if schema != SCHEMA:
        return "unsupported", f"schema {schema!r}; this report reads {SCHEMA}"
    status = record.get("status")
    if status not in STATUSES:
        return "incomplete", f"unknown status {status!r}"
    if status == "running":  # the job writes its final status last
        return status, record.get("error") or "no final status: the job was killed mid-run"
    if status != "ok":
        return status, record.get("error") or None
    missing = [key for key in REQUIRED if dig(record, key) is None]
    if missing:
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        return "incomplete", f"status ok but missing {shown}"
    return "ok", None


def load_sweep(root: str | Path) -> Sweep:
    """Every job under `root`: each `record.json`, and each Hydra job dir that has none."""
    root = Path(root)

    def name(job_dir: Path) -> str:
        return job_dir.relative_to(root).as_posix() if job_dir != root else root.name

    jobs = []
    for path in sorted(root.glob("**/record.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            jobs.append(Job(name(path.parent), None, "unreadable", " ".join(str(exc).split())))
            continue
        status, error = _check(record)
        jobs.append(
            Job(name(path.parent), record if status != "unreadable" else None, status, error)
        )
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


def off_baseline(picked: Iterable[Job], base: Mapping[str, Any], held: Iterable[str]) -> list[str]:
    """'job: axis=value' for each picked job that differs from the baseline on a held axis."""
    held = list(held)
    return [
        f"{j.name}: " + ", ".join(f"{a}={j.axis(a)}" for a in held if j.axis(a) != base[a])
        for j in picked
        if any(j.axis(a) != base[a] for a in held)
    ]
