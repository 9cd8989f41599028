"""Checks the report runs on a sweep before it states anything: verdicts, meter coverage, repeats,
and two physical consistencies of synthesis. Each flag is a warning with its numbers."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lpm.energy.window import Estimate
from lpm.report.study import Study, comparable, count, fmt
from lpm.report.sweep import PHASES, SPREAD_FLAG, Job, between_runs, dig

# Two intervals "agree" when the gap between them is at most this fraction of the lower one's
# upper bound: the records' intervals come from a few windows and are themselves uncertain.
TOLERANCE = 0.10
UNET_J = "phases.synthesis.measured.units.unet.joules_per_iteration"
# Axes a sampler comparison may differ in; everything else recorded must match.
SAMPLING = ("sampler", "scheduler", "steps", "seed")


@dataclass(frozen=True)
class Check:
    """One check: what it ran on (or why it could not run) and what it flagged.

    Attributes:
        contradictions: pairs of job names (pools included) whose comparison the check found
            self-contradictory: no headline may rest on it.
    """

    name: str
    summary: str
    flags: tuple[str, ...] = ()
    contradictions: frozenset[frozenset[str]] = frozenset()


def _interval(e: Estimate, unit: str = "") -> str:
    return f"{fmt(e.value)}{unit} (95% {fmt(e.low)}–{fmt(e.high)})"


def _setting(job: Job) -> str:
    return f"{job.axis('sampler')} with {job.axis('steps'):,} steps"


def _held(job: Job) -> str:
    """The setup two sampler settings share: '3d base, 32-true, 1 GPU, scale paper'."""
    a = job.axes
    scale = dig(job.record, "axes.scale")
    return f"{a['dims']} {a['model']}, {a['precision']}, {a['gpus']}" + (
        f", scale {scale}" if scale else ""
    )


def _same_but_sampling(jobs: Iterable[Job]) -> list[list[Job]]:
    """Groups of jobs whose recorded axes and hardware match except sampler, steps and seed (the
    site may differ: it prices energy, it does not use it)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        axes = {k: v for k, v in (dig(job.record, "axes") or {}).items() if k not in SAMPLING}
        hardware = dig(job.record, "hardware.gpu_name") or dig(job.record, "hardware.cpu_model")
        key = repr([sorted(axes.items()), job.axis("gpus"), hardware])
        groups.setdefault(key, []).append(job)
    return [g for g in groups.values() if len(g) > 1]


def _pairs(groups: list[list[Job]], base: dict[str, Any]) -> list[tuple[Job, Job]]:
    """(job, reference) pairs with another sampler or step count; the reference is the one
    nearer the baseline (its sampler, then more steps)."""

    def rank(j: Job) -> tuple[bool, int]:
        return (j.axis("sampler") == base.get("sampler"), j.axis("steps") or 0)

    out = []
    for group in groups:
        for a, b in itertools.combinations(group, 2):
            if (a.axis("sampler"), a.axis("steps")) == (b.axis("sampler"), b.axis("steps")):
                continue
            out.append((a, b) if rank(a) <= rank(b) else (b, a))
    return out


def verdicts(study: Study) -> Check:
    noisy, unknown, phases = [], [], 0
    for job in study.jobs:
        for phase in PHASES:
            phases += 1
            verdict = job.verdict(phase)
            if verdict.status == "noisy":
                noisy.append(f"{job.name}: {phase} noisy: {'; '.join(verdict.reasons)}")
            elif verdict.status == "unknown":
                unknown.append(job.name)
    flags = list(noisy)
    if unknown:
        names = list(dict.fromkeys(unknown))
        flags.append(
            f"{len(names)} of {len(study.jobs)} jobs carry no verdict (records written before "
            f"lpm recorded one): their stability is unknown ({', '.join(names[:5])}"
            + (", …" if len(names) > 5 else "")
            + ")"
        )
    use = (
        "headlines may use them and say so (--include-noisy)"
        if study.include_noisy
        else "headlines leave them out (--include-noisy puts them back)"
    )
    summary = (
        f"{phases - len(noisy) - len(unknown)} of {phases} phases stable, {len(noisy)} noisy, "
        f"{len(unknown)} unknown; noisy numbers are marked in tables and figures, {use}"
    )
    return Check("Verdicts", summary, tuple(flags))


def coverage(study: Study) -> Check:
    excluded = study.excluded()
    flags = tuple(f"{run}: {phase}: {why}: kept out of comparisons" for run, phase, why in excluded)
    runs = [r for j in study.jobs for r in j.runs or (j,)]
    unrecorded = sum(
        all(dig(r.record, f"phases.{p}.coverage.complete") is None for p in PHASES) for r in runs
    )
    summary = (
        f"{count(len(excluded), 'phase')} with incomplete meter coverage, kept out of comparisons"
        if excluded
        else "every recorded phase had all its meters"
    )
    if unrecorded:
        summary += (
            f"; {unrecorded} of {count(len(runs), 'run')} recorded no coverage (older records)"
        )
    return Check("Meter coverage", summary, flags)


def repeats(study: Study) -> Check:
    pools = [j for j in study.jobs if j.runs]
    if not pools:
        return Check("Repeats", "no repeats (jobs that differ only in seed) to pool")
    flags = []
    for job in pools:
        for phase in PHASES:
            ratio = job.understated(phase)
            if ratio is None or ratio <= SPREAD_FLAG:
                continue
            runs = job.pooled((phase,))
            shown = ", ".join(_interval(r.kwh((phase,))) for r in runs)
            flags.append(
                f"{job.name}: {phase}: within-run intervals understate run-to-run variation "
                f"×{fmt(ratio, 2)} (projected kWh of each run: {shown}); quote the pooled "
                "between-run interval"
            )
    runs = sum(len(j.runs) for j in pools)
    summary = (
        f"{count(len(pools), 'job')} pooled from {runs} runs: mean over runs with a between-run "
        "95% t-interval, used in every comparison; between-run spread compared with the "
        f"within-run intervals (flagged beyond ×{SPREAD_FLAG:g})"
    )
    return Check("Repeats", summary, tuple(flags))


def _unet_joules(job: Job) -> Estimate | None:
    """J per UNet evaluation: the run's estimate, or a pool's mean with the between-run interval."""
    found = []
    for run in job.pooled(("synthesis",)) if job.runs else [job]:
        raw = dig(run.record, UNET_J)
        if not isinstance(raw, dict):
            continue
        value = raw.get("value", raw.get("mean"))
        if value is None:
            continue
        low, high = raw.get("ci95") or (value, value)
        found.append(Estimate(value, low, high))
    if not found:
        return None
    return found[0] if len(found) == 1 else between_runs([e.value for e in found])


def _apart(a: Estimate, b: Estimate) -> bool:
    """The intervals do not meet, even widened by `TOLERANCE`."""
    return max(a.low, b.low) > min(a.high, b.high) * (1 + TOLERANCE)


def unet_joules(study: Study) -> Check:
    """Same model, dims, scale, precision and GPUs: one UNet evaluation costs the same joules
    whatever the sampler and step count."""
    name = "J per UNet evaluation across samplers"
    jobs = comparable(study.jobs, ("synthesis",))
    costs = {j.name: e for j in jobs if (e := _unet_joules(j)) is not None}
    pairs = _pairs(_same_but_sampling(j for j in jobs if j.name in costs), study.base)
    if not pairs:
        why = (
            "no record has per-UNet-evaluation joules (older records)"
            if not costs
            else "no two jobs differ only in sampler or steps"
        )
        return Check(name, f"not run: {why}")
    flags, bad = [], set()
    for a, b in pairs:
        ea, eb = costs[a.name], costs[b.name]
        if _apart(ea, eb):
            bad.add(frozenset((a.name, b.name)))
            flags.append(
                f"{_held(a)}: {_setting(a)} ({a.name}) {_interval(ea, ' J')} vs {_setting(b)} "
                f"({b.name}) {_interval(eb, ' J')} per UNet evaluation: "
                f"×{fmt(ea.value / eb.value, 2)}, beyond the intervals (tolerance "
                f"{TOLERANCE:.0%}); the sampler cannot change what one evaluation costs"
            )
    summary = (
        f"{count(len(pairs), 'pair')} compared, {len(flags)} disagreeing beyond their intervals"
    )
    return Check(name, summary, tuple(flags), frozenset(bad))


def _ratio(a: Estimate, b: Estimate) -> Estimate:
    """a / b with the interval of the bounds' ratios."""

    def div(x: float, y: float) -> float:
        return x / y if y else math.inf

    return Estimate(div(a.value, b.value), div(a.low, b.high), div(a.high, b.low))


def step_ratios(study: Study) -> Check:
    """Synthesis costs `samples × (steps × UNet evaluation + decode)`: between two sampler
    settings of one setup its ratio lies between the step ratio (decoding free) and 1 (decoding
    all of it)."""
    name = "Synthesis cost ratio against the step ratio"
    jobs = comparable(study.jobs, ("synthesis",))
    pairs = _pairs(_same_but_sampling(jobs), study.base)
    if not pairs:
        return Check(name, "not run: no two jobs differ only in sampler or steps")
    flags, bad = [], set()
    for a, b in pairs:
        ratio = _ratio(a.kwh(("synthesis",)), b.kwh(("synthesis",)))
        steps = a.axis("steps") / b.axis("steps")
        low, high = min(steps, 1.0), max(steps, 1.0)
        if ratio.low > high * (1 + TOLERANCE) or ratio.high * (1 + TOLERANCE) < low:
            bad.add(frozenset((a.name, b.name)))
            allowed = (
                "1× (the same number of UNet evaluations)"
                if low == high
                else f"{fmt(low, 2)}–{fmt(high, 2)}× (the step ratio if decoding cost nothing, "
                "up to 1 if it cost everything)"
            )
            flags.append(
                f"{_held(a)}: {_setting(a)} costs {fmt(ratio.value, 2)}× {_setting(b)} in "
                f"synthesis (95% {fmt(ratio.low, 2)}–{fmt(ratio.high, 2)}; {a.name} vs "
                f"{b.name}), but {a.axis('steps'):,} against {b.axis('steps'):,} steps allows "
                f"{allowed}: not stated as a headline"
            )
    summary = f"{count(len(pairs), 'pair')} compared, {len(flags)} contradicting the step ratio"
    return Check(name, summary, tuple(flags), frozenset(bad))


def run_checks(study: Study) -> list[Check]:
    return [f(study) for f in (verdicts, coverage, repeats, unet_joules, step_ratios)]
