"""What would cut a sweep's CO2e: the levers it measured, the zones and months it can be re-priced
at, and the best combination under a quality bound. One code path for `python -m lpm.advise` and
the report's "What would cut it" section.

Only `stable`, complete numbers enter (phase verdict stable, meter coverage complete, record ok);
with `Study.include_noisy` noisy ones too, marked. The rest is listed as excluded with its reason.
Standard library and the report's modules only: no torch, no matplotlib.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lpm.carbon.intensity import Intensity
from lpm.energy.window import Estimate
from lpm.price import priced_at
from lpm.report.figures import equal_work
from lpm.report.study import (
    Study,
    canonical,
    fmt,
    recorded_intensity,
    scale_stamp,
    work,
    zone_label,
)
from lpm.report.sweep import (
    PSNR_CEILING_DB,
    TRAINING,
    Job,
    dig,
    pick,
    reference_sampler,
    sort_key,
)

MAX_QUALITY_LOSS_DB = 1.0
GROUPS: dict[str, tuple[str, ...]] = {"training": TRAINING, "synthesis": ("synthesis",)}
# A lever: the axes it sets together.
LEVERS: dict[str, tuple[str, ...]] = {
    "sampler": ("sampler", "steps"),
    "precision": ("precision",),
    "model": ("model",),
    "gpus": ("gpus",),
    "speed": ("speed",),
}
# The sampler only changes synthesis; the others change how (or what) is trained and sampled.
GROUP_LEVERS = {"training": ("precision", "model", "gpus", "speed"), "synthesis": tuple(LEVERS)}
# The quality a lever can cost: sampler fidelity for the sampler, the trained autoencoder's
# reconstruction for everything that changes training.
METRIC = {lever: "sampler" if lever == "sampler" else "autoencoder" for lever in LEVERS}
# Recorded axes a comparison holds besides dims: the networks' scale and image shape.
HELD = ("dims", "scale", "image_size")

METHOD = (
    "All kg are PROJECTED to each record's target budget (its `projected` blocks), operational "
    "CO2e only (embodied, where recorded, on its own line).",
    "Levers: jobs that differ from a dims' baseline job in exactly one lever (sampler and steps; "
    "precision; model size; GPU count; speed flags), compared at the baseline's recorded price "
    "(each record keeps its PUE). The sampler changes synthesis only; precision, model size, "
    "GPUs and speed flags change training and synthesis, shown as one row each. GPU counts are "
    "compared at the baseline's work (per sample seen under weak scaling).",
    "Interval of a change between two jobs (independent measurements): for the difference, "
    "the two 95% half-widths in quadrature on each side (√(a² + b²)); for the ratio (the %), "
    "the relative half-widths in quadrature (first-order propagation).",
    "Zones and months: the same energy and PUE at another intensity; the change is exact (the "
    "intensity ratio) and only the energy interval carries over.",
    "Quality loss (dB) = the best PSNR measured in the sweep for the same dims − the job's "
    "PSNR: sampler fidelity (`quality.sampler.psnr_db`, image PSNR to the many-step "
    "deterministic reference) for sampler and steps, the autoencoder's reconstruction PSNR "
    "(`quality.autoencoder.psnr_db`) for model size, precision, GPUs and speed flags. A sampler "
    "identical to the reference counts as the best (loss 0). A stochastic sampler (DDPM, η > 0) "
    "is compared with a deterministic reference: its fidelity reads low, its loss overstates "
    f"what it costs. PSNRs above {PSNR_CEILING_DB:.1f} dB (8-bit rounding: the images are the "
    f"same once stored in 8 bits) count as {PSNR_CEILING_DB:.1f} dB. Zones and months cost no "
    "quality.",
    "Best combination, per dims and phase group: the cheapest job whose quality loss on every "
    "lever it changes is within the bound, at the cheapest zone/month, against the baseline job "
    "as recorded. A job whose quality was not measured enters only unchanged (zone or month).",
)


@dataclass(frozen=True)
class Quality:
    """A job's fidelity on one metric ("sampler" or "autoencoder") and its loss against the best
    the sweep measured for its dims.

    Attributes:
        psnr_db: mean over runs; None when not measured or identical to the reference (∞).
        loss_db: None when not measured.
        reference: the sampler reference, e.g. "1,000-step DDIM reference".
    """

    metric: str
    psnr_db: float | None
    loss_db: float | None
    identical: bool = False
    stochastic: bool = False
    reference: str = ""

    @property
    def measured(self) -> bool:
        return self.loss_db is not None

    def __str__(self) -> str:
        if not self.measured:
            return "quality not measured"
        if self.identical:
            return f"sampler identical to the {self.reference} (loss 0 dB)"
        what = (
            f"image PSNR to the {self.reference}"
            if self.metric == "sampler"
            else ("autoencoder PSNR")
        )
        psnr = self.psnr_db or 0.0
        # Beyond the 8-bit ceiling a PSNR is float agreement, not a better image.
        shown = (
            f"≥ {PSNR_CEILING_DB:.1f} dB (the same 8-bit images)"
            if psnr > PSNR_CEILING_DB
            else f"{fmt(psnr)} dB"
        )
        text = f"{what} {shown} (loss {fmt(self.loss_db or 0.0, 2)} dB)"
        if self.stochastic:
            text += "; stochastic sampler: reads low against the deterministic reference"
        return text


@dataclass(frozen=True)
class Change:
    """kg CO2e from `old` to `new`, with the change in kg and as a ratio, each with its 95%
    interval."""

    old: Estimate
    new: Estimate
    kg: Estimate
    ratio: Estimate
    exact: bool = False  # the ratio is exact: the same energy at another price
    percent: Estimate = field(init=False)  # 100 × (ratio − 1): −98 is a cut of 98%

    def __post_init__(self) -> None:
        r = self.ratio
        object.__setattr__(
            self, "percent", Estimate(*(100 * (x - 1) for x in (r.value, r.low, r.high)))
        )


def independent(old: Estimate, new: Estimate) -> Change:
    """`new` against `old` from two jobs: half-widths in quadrature for the difference, relative
    half-widths in quadrature for the ratio (first order; its low bound floored at 0)."""
    diff = new.value - old.value
    up = math.hypot(new.high - new.value, old.value - old.low)
    down = math.hypot(new.value - new.low, old.high - old.value)
    if old.value <= 0 or new.value <= 0:
        ratio = Estimate(math.inf, math.inf, math.inf) if old.value <= 0 else Estimate(0, 0, 0)
    else:
        r = new.value / old.value
        rel_up = math.hypot((new.high - new.value) / new.value, (old.value - old.low) / old.value)
        rel_down = math.hypot((new.value - new.low) / new.value, (old.high - old.value) / old.value)
        ratio = Estimate(r, max(0.0, r * (1 - rel_down)), r * (1 + rel_up))
    return Change(old, new, Estimate(diff, diff - down, diff + up), ratio)


def repriced(old: Estimate, new: Estimate) -> Change:
    """`new` against `old` for the same energy at another price: both bounds scale with the
    intensity, so the difference's bounds are the bounds' differences and the ratio is exact."""
    bounds = sorted((new.low - old.low, new.high - old.high))
    r = new.value / old.value if old.value > 0 else math.inf
    return Change(old, new, Estimate(new.value - old.value, *bounds), Estimate(r, r, r), True)


@dataclass(frozen=True)
class Lever:
    """One job that differs from its dims' baseline job in one lever, for one phase group."""

    dims: str
    group: str
    lever: str
    baseline: str  # job names
    job: str
    old_setting: str
    new_setting: str
    change: Change
    quality: Quality
    noisy: tuple[str, ...] = ()  # "job phase (reason)" of the noisy numbers it rests on


@dataclass(frozen=True)
class Repricing:
    """A dims' baseline job of one phase group at a zone/month against its recorded site."""

    dims: str
    group: str
    job: str
    change: Change
    noisy: tuple[str, ...] = ()


@dataclass(frozen=True)
class Place:
    """A zone (and month) the sweep is re-priced at, and what it changes."""

    intensity: Intensity
    recorded: bool
    changes: tuple[Repricing, ...]


@dataclass(frozen=True)
class Best:
    """The cheapest job within the quality bound at the cheapest zone/month, for one dims and
    phase group, against the baseline job as recorded."""

    dims: str
    group: str
    baseline: str
    job: str
    levers: tuple[str, ...]  # the levers the job changes; () when only the place
    settings: tuple[str, ...]  # their settings in the job ("ddim 50 steps")
    place: Intensity
    change: Change
    quality: tuple[Quality, ...]  # per metric of the levers it changes
    embodied_kg: tuple[float, float] | None  # (baseline, job) where the records hold it
    noisy: tuple[str, ...]
    sentence: str


@dataclass(frozen=True)
class Exclusion:
    job: str
    what: str  # "training", "synthesis", "record", or a comparison
    why: str


@dataclass(frozen=True)
class Advice:
    max_quality_loss_db: float
    include_noisy: bool
    levers: tuple[Lever, ...]
    places: tuple[Place, ...]
    best: tuple[Best, ...]
    excluded: tuple[Exclusion, ...]
    notes: tuple[str, ...]  # why a dims or group has no advice
    method: tuple[str, ...] = METHOD


# --- what may enter -------------------------------------------------------------------------------


def unusable(job: Job, phases: Iterable[str], include_noisy: bool = False) -> str | None:
    """Why `job`'s numbers for `phases` may not enter advice; None when they may."""
    why = []
    for phase in phases:
        runs = job.pooled((phase,)) if job.runs else [job]
        verdict = job.verdict(phase)
        if gap := job.gap(phase):
            why.append(f"{phase}: incomplete meter coverage ({gap})")
        elif any(not isinstance(dig(r.record, f"phases.{phase}.coverage"), Mapping) for r in runs):
            why.append(f"{phase}: meter coverage not recorded")
        elif verdict.status == "unknown":
            why.append(f"{phase}: no verdict recorded (stability unknown)")
        elif verdict.status == "noisy" and not include_noisy:
            reason = verdict.reasons[0] if verdict.reasons else "no reason recorded"
            why.append(f"{phase}: noisy ({reason})")
    return "; ".join(why) or None


def noisy_note(job: Job, phases: Iterable[str]) -> tuple[str, ...]:
    """'job autoencoder, diffusion (first reason)' when some of `phases` are noisy: the advice's
    and the report's headlines' caveat."""
    found = job.noisy(phases)
    if not found:
        return ()
    reasons = job.verdict(found[0]).reasons or ("no reason recorded",)
    return (f"{job.name} {', '.join(found)} ({reasons[0]})",)


def _held(job: Job) -> tuple[Any, ...]:
    return tuple(repr(dig(job.record, f"axes.{a}")) for a in HELD)


def differs(job: Job, base: Job) -> set[str] | None:
    """The levers `job` differs from `base` in; None when it differs in a held axis (dims, scale,
    image size): then it is no variant of `base`. The site is no lever: prices are re-set."""
    if _held(job) != _held(base):
        return None
    return {
        lever for lever, axes in LEVERS.items() if any(job.axis(a) != base.axis(a) for a in axes)
    }


def setting(job: Job, lever: str) -> str:
    """'ddim 50 steps', 'model small', 'bf16-mixed', '2 GPUs', 'speed flags compile'."""
    if lever == "sampler":
        return f"{job.axis('sampler')} {job.axis('steps'):,} steps"
    if lever in ("model", "speed"):
        return f"{'model' if lever == 'model' else 'speed flags'} {job.axis(lever)}"
    return str(job.axis(lever))


# --- quality --------------------------------------------------------------------------------------


def _psnr(job: Job, metric: str) -> float | None:
    """The job's PSNR on `metric` (a pool: the mean over its runs), at most
    :data:`PSNR_CEILING_DB`; None where not recorded."""
    psnr = job.metric(f"quality.{metric}.psnr_db")
    return min(psnr.value, PSNR_CEILING_DB) if psnr is not None else None


def best_psnr(jobs: Iterable[Job]) -> dict[tuple[str, str], float]:
    """(dims, metric) → the best finite PSNR measured in the sweep (any ok job)."""
    best: dict[tuple[str, str], float] = {}
    for job in jobs:
        for metric in ("sampler", "autoencoder"):
            psnr = _psnr(job, metric)
            key = (job.axis("dims"), metric)
            if psnr is not None and psnr > best.get(key, -math.inf):
                best[key] = psnr
    return best


def quality(job: Job, metric: str, best: Mapping[tuple[str, str], float]) -> Quality:
    """`job`'s fidelity on `metric` and its loss against `best` for its dims."""
    if not isinstance(dig(job.record, f"quality.{metric}"), Mapping):
        return Quality(metric, None, None)
    reference = f"{reference_sampler([job])} reference" if metric == "sampler" else ""
    stochastic = metric == "sampler" and job.flag("quality.sampler.stochastic")
    if metric == "sampler" and job.flag("quality.sampler.identical"):
        return Quality(metric, None, 0.0, identical=True, reference=reference)
    measured, top = job.metric(f"quality.{metric}.psnr_db"), best.get((job.axis("dims"), metric))
    if measured is None or top is None:
        return Quality(metric, None, None)
    loss = top - min(measured.value, PSNR_CEILING_DB)
    return Quality(metric, measured.value, loss, stochastic=stochastic, reference=reference)


# --- the advice -----------------------------------------------------------------------------------


class _Prices:
    """Jobs re-priced at intensities, each once (seeded with the study's own re-pricing)."""

    def __init__(self, study: Study) -> None:
        self._cache: dict[tuple[str, Intensity], Job] = {
            (name, i): at[i.zone] for name, at in study.priced.items() for i in study.zones
        }

    def at(self, job: Job, intensity: Intensity) -> Job:
        key = (job.name, intensity)
        if key not in self._cache:
            self._cache[key] = job.map_records(partial(priced_at, intensity=intensity))
        return self._cache[key]


def _embodied(job: Job, base: Job, phases: tuple[str, ...]) -> float | None:
    """Projected embodied kg of `phases` at `base`'s work (as `equal_work` scales operational
    CO2e); None when a record lacks it."""
    total = 0.0
    for phase in phases:
        kg = job.recorded(f"phases.{phase}.embodied_kg.projected", phases=(phase,))
        if kg is None:
            return None
        mine, theirs = work(job, phase), work(base, phase)
        total += kg.value * (theirs / mine if mine and theirs else 1.0)
    return total


def _place(i: Intensity) -> str:
    """'SWE (Sweden) in 2023', 'SE-SE3 in 2024-05'."""
    return f"{zone_label(i.zone)} in {i.period}"


def _what(dims: str, group: str, job: Job) -> str:
    if group == "synthesis":
        samples = dig(job.record, "phases.synthesis.target.samples")
        return f"{dims.upper()} synthesis" + (f" of {samples:,} samples" if samples else "")
    return f"{dims.upper()} training"


def _pct(e: Estimate) -> str:
    """'−98%'."""
    return _signed(e.value) + "%"


def _signed(x: float) -> str:
    return ("+" if x > 0 else "") + fmt(x).replace("-", "−")


def _ci(e: Estimate, unit: str = "", label: str = "95% CI ") -> str:
    """'95% CI −25 to −21'."""
    lo, hi = (fmt(x).replace("-", "−") for x in (e.low, e.high))
    return f"{label}{lo}{unit} to {hi}{unit}"


def _sentence(best: Best, base: Job, stamp: str) -> str:
    """Stated like the study's headlines: what, where, kg against the baseline as recorded with
    the change and its interval, the quality it costs, embodied on its own, noisy caveats."""
    c = best.change
    was = ", ".join(setting(base, lever) for lever in best.levers)
    how = f"with {', '.join(best.settings)} " if best.settings else "as run but "
    text = (
        f"{_what(best.dims, best.group, base)} {how}in {_place(best.place)}: "
        f"{fmt(c.new.value)} kg CO2e instead of {fmt(c.old.value)} kg"
        f"{' with ' + was if was else ''} in {_place(recorded_intensity(base.record))} as "
        f"recorded ({_pct(c.percent)}, {'exact' if c.exact else _ci(c.percent, '%')}; "
        f"{_signed(c.kg.value)} kg, "
        f"{_ci(c.kg)}; projected)"
    )
    if best.quality:
        text += ", " + "; ".join(map(str, best.quality))
    elif not best.settings:
        text += ", the same job: no quality cost"
    text += "."
    if best.embodied_kg is not None:
        old, new = best.embodied_kg
        text += (
            f" Embodied, on its own line (a zone does not change it): {fmt(new)} kg instead of "
            f"{fmt(old)} kg."
        )
    if best.noisy:
        text += f" Rests on noisy numbers: {'; '.join(best.noisy)}."
    return f"{text} [{stamp}]"


def _contradiction(study: Study, a: Job, b: Job) -> str | None:
    pair = frozenset((a.name, b.name))
    names = [c.name for c in study.checks if pair in c.contradictions]
    return f"contradicted by the check '{names[0]}' (see Checks)" if names else None


def _places(bases: Iterable[Job], places: Iterable[Intensity]) -> list[Intensity]:
    """Each baseline's recorded price and `places`, one per zone and period (a recorded zone at
    the intensity it was recorded with; a fallback apart, for it says what was asked), cleanest
    first."""
    found: dict[tuple[str, str, str | None], Intensity] = {}
    recorded = [(canonical(b.axis("site")), recorded_intensity(b.record)) for b in bases]
    for zone, i in [*recorded, *((canonical(i.zone), i) for i in places)]:
        found.setdefault((zone, i.period, i.fallback), i)
    return sorted(found.values(), key=lambda i: i.g_per_kwh)


# A variant of a baseline job: the job, the levers it changes, its quality on their metrics.
Option = tuple[Job, frozenset[str], tuple[Quality, ...]]


@dataclass
class _Advisor:
    study: Study
    where: list[Intensity]
    bound_db: float
    prices: _Prices
    best_q: dict[tuple[str, str], float]
    levers: list[Lever] = dataclasses.field(default_factory=list)
    excluded: list[Exclusion] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def usable(self, job: Job, phases: tuple[str, ...]) -> bool:
        return unusable(job, phases, self.study.include_noisy) is None

    def options(self, dims: str, base: Job, group: str) -> list[Option]:
        """`base` and its usable variants within `group`'s levers; a variant in one lever is also
        a lever row."""
        phases = GROUPS[group]
        old = base.co2e(phases)
        recorded = recorded_intensity(base.record)
        axes = [a for lever in LEVERS.values() for a in lever]  # settings in natural order
        out: list[Option] = [(base, frozenset(), ())]
        for job in sorted(self.study.jobs, key=lambda j: [sort_key(a, j.axis(a)) for a in axes]):
            changed = differs(job, base) if job is not base else None
            if not changed or not changed <= set(GROUP_LEVERS[group]):
                continue
            if not self.usable(job, phases):
                continue  # listed once per job and group
            if why := _contradiction(self.study, job, base):
                self.excluded.append(Exclusion(job.name, f"{group} against {base.name}", why))
                continue
            metrics = dict.fromkeys(METRIC[lever] for lever in LEVERS if lever in changed)
            qualities = tuple(quality(job, m, self.best_q) for m in metrics)
            out.append((job, frozenset(changed), qualities))
            if len(changed) == 1:
                (lever,) = changed
                new = equal_work(self.prices.at(job, recorded), base, phases, "co2e")
                self.levers.append(
                    Lever(
                        dims,
                        group,
                        lever,
                        base.name,
                        job.name,
                        setting(base, lever),
                        setting(job, lever),
                        independent(old, new),
                        qualities[0],
                        noisy_note(base, phases) + noisy_note(job, phases),
                    )
                )
        return out

    def best(self, dims: str, base: Job, group: str, options: list[Option]) -> Best:
        """The cheapest option within the quality bound at the cheapest place."""
        phases = GROUPS[group]
        admitted = [
            o for o in options if all(q.measured and q.loss_db <= self.bound_db for q in o[2])
        ]
        if shut := [o for o in options if o not in admitted]:
            self.notes.append(
                f"{dims.upper()} {group}: left out of the best combination (quality not "
                f"measured, or its loss over {fmt(self.bound_db)} dB): "
                + ", ".join(f"{job.name} ({'; '.join(map(str, qs))})" for job, _, qs in shut)
            )
        costs = [
            (equal_work(self.prices.at(job, i), base, phases, "co2e"), n, i)
            for n, (job, _, _) in enumerate(admitted)
            for i in self.where
        ]
        cost, n, place = min(costs, key=lambda c: (c[0].value, c[1], c[2].g_per_kwh))
        job, changed, qualities = admitted[n]
        old = base.co2e(phases)
        embodied = (_embodied(base, base, phases), _embodied(job, base, phases))
        levers = tuple(lever for lever in LEVERS if lever in changed)
        chosen = Best(
            dims,
            group,
            base.name,
            job.name,
            levers,
            tuple(setting(job, lever) for lever in levers),
            place,
            repriced(old, cost) if job is base else independent(old, cost),
            qualities,
            None if None in embodied else embodied,  # type: ignore[arg-type]
            noisy_note(base, phases) + (noisy_note(job, phases) if job is not base else ()),
            "",
        )
        return dataclasses.replace(chosen, sentence=_sentence(chosen, base, scale_stamp([base])))


def advise(
    study: Study,
    places: Iterable[Intensity] = (),
    max_quality_loss_db: float = MAX_QUALITY_LOSS_DB,
) -> Advice:
    """The advice for `study`'s jobs: levers at the recorded price, `places` (zones and months;
    each baseline's recorded site is always one), and the best combination per dims and phase
    group within `max_quality_loss_db`. Noisy numbers enter only with `study.include_noisy`."""
    bases = pick(study.jobs, study.base, ("dims",))  # per dims, the job nearest the baseline
    best_q = best_psnr(study.jobs)
    where = _places(bases.values(), places)
    advisor = _Advisor(study, where, max_quality_loss_db, _Prices(study), best_q)
    advisor.excluded += [
        Exclusion(j.name, "record", f"{j.status}: {j.error}" if j.error else j.status)
        for j in study.sweep.jobs
        if not j.ok
    ]
    for job in study.jobs:
        for group, phases in GROUPS.items():
            if why := unusable(job, phases, study.include_noisy):
                advisor.excluded.append(Exclusion(job.name, group, why))
    measured = any(quality(j, m, best_q).measured for j in study.jobs for m in METRIC.values())
    if study.jobs and not measured:
        advisor.notes.append(
            "no job recorded its quality (quality.enabled=true records it): only zone and month "
            "moves enter the best combination"
        )
    best: list[Best] = []
    repricings: dict[Intensity, list[Repricing]] = {i: [] for i in where}
    for (dims,), base in bases.items():
        for group, phases in GROUPS.items():
            if not advisor.usable(base, phases):
                advisor.notes.append(
                    f"{dims.upper()} {group}: no advice: its baseline job {base.name} is excluded"
                )
                continue
            old = base.co2e(phases)
            for i in where:
                change = repriced(old, advisor.prices.at(base, i).co2e(phases))
                repricings[i].append(
                    Repricing(dims, group, base.name, change, noisy_note(base, phases))
                )
            options = advisor.options(dims, base, group)
            best.append(advisor.best(dims, base, group, options if measured else options[:1]))
    recorded = {recorded_intensity(b.record) for b in bases.values()}
    return Advice(
        max_quality_loss_db,
        study.include_noisy,
        tuple(
            sorted(
                advisor.levers,
                key=lambda x: (sort_key("dims", x.dims), list(LEVERS).index(x.lever)),
            )
        ),
        tuple(Place(i, i in recorded, tuple(repricings[i])) for i in where),
        tuple(best),
        tuple(advisor.excluded),
        tuple(advisor.notes),
    )


# --- as text blocks (the report's; `python -m lpm.advise` prints them as plain text) -------------


def _range(c: Change, percent: bool = False) -> str:
    """'−22.9 (−25.2 to −20.6)' (the header says 95% CI)."""
    e = c.percent if percent else c.kg
    unit = "%" if percent else ""
    interval = "exact" if percent and c.exact else _ci(e, unit, label="")
    return f"{_signed(e.value)}{unit} ({interval})"


def _mark(text: str, noisy: tuple[str, ...]) -> str:
    return text + (" (noisy)" if noisy else "")


def _levers_table(advice: Advice) -> tuple[list[str], list[list[str]]]:
    header = ["dims", "phases", "lever", "from → to", "kg CO2e (projected)"]
    header += ["change kg (95% CI)", "change % (95% CI)", "quality cost"]
    rows = [
        [
            str(x.dims).upper(),
            x.group,
            x.lever,
            f"{x.old_setting} → {x.new_setting}",
            f"{fmt(x.change.old.value)} → {fmt(x.change.new.value)}",
            _mark(_range(x.change), x.noisy),
            _mark(_range(x.change, percent=True), x.noisy),
            str(x.quality),
        ]
        for x in advice.levers
    ]
    return header, rows


def _places_table(advice: Advice) -> tuple[list[str], list[list[str]]]:
    columns = list(dict.fromkeys((r.dims, r.group) for p in advice.places for r in p.changes))
    header = ["zone", "period", "g CO2e/kWh", "kind"]
    header += [f"{str(d).upper()} {g}: change kg (95% CI), %" for d, g in columns]
    rows = []
    for place in advice.places:
        i = place.intensity
        by = {(r.dims, r.group): r for r in place.changes}
        cells = []
        for key in columns:
            r = by[key]
            same = place.recorded and math.isclose(r.change.ratio.value, 1.0)
            text = f"{_range(r.change)}, {_pct(r.change.percent)}"
            cells.append("recorded site" if same else _mark(text, r.noisy))
        zone = zone_label(i.zone) + (" (recorded)" if place.recorded else "")
        kind = f"{i.kind}, fallback (below)" if i.fallback else i.kind
        rows.append([zone, i.period, fmt(i.g_per_kwh), kind, *cells])
    return header, rows


def blocks(advice: Advice) -> list[tuple[str, Any]]:
    """The section "What would cut it" as report blocks (h2, p, ul, table)."""
    bound = fmt(advice.max_quality_loss_db)
    noisy = (
        "noisy numbers let in and marked (--include-noisy)"
        if advice.include_noisy
        else "noisy ones listed as excluded (--include-noisy lets them in, marked)"
    )
    out: list[tuple[str, Any]] = [
        ("h2", "What would cut it"),
        (
            "p",
            f"Best combination per image dimensionality and phase group, within a quality loss of "
            f"{bound} dB; only stable, complete numbers of ok records, {noisy}.",
        ),
        ("ul", [b.sentence for b in advice.best] or ["None: no baseline job's numbers entered."]),
    ]
    if advice.notes:
        out.append(("ul", list(advice.notes)))
    out.append(("p", "Levers the sweep measured (each against its dims' baseline job):"))
    if advice.levers:
        out.append(("table", _levers_table(advice)))
    else:
        out.append(("p", "None: no usable job differs from a baseline job in exactly one lever."))
    if advice.places:
        out += [
            ("p", "Zones and months it can be re-priced at (each dims' baseline job; same "
             "energy and PUE, the change exact, only the energy interval carried over; the "
             "intensities' sources: the report's Zones table, or --json):"),
            ("table", _places_table(advice)),
        ]  # fmt: skip
        fallbacks = [p.intensity.fallback for p in advice.places if p.intensity.fallback]
        if fallbacks:
            out += [("p", "Fallbacks taken (--fallback):"), ("ul", fallbacks)]
    out.append(("p", "Excluded from the advice:"))
    if advice.excluded:
        # A phase's reason names the phase; the others say what they exclude.
        rows = [
            [x.job, x.why if x.what in GROUPS else f"{x.what}: {x.why}"] for x in advice.excluded
        ]
        out.append(("table", (["job", "why excluded"], rows)))
    else:
        out.append(
            ("p", "Nothing: every record ok, every phase with all its meters and a verdict.")
        )
    out += [("p", "How the advice is computed:"), ("ul", list(advice.method))]
    return out


def to_json(advice: Advice) -> dict[str, Any]:
    """The advice as JSON-ready data: non-finite numbers as null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(dataclasses.asdict(advice))
