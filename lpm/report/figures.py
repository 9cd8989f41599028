"""What each figure shows, as data (bars, panels, captions), or why it is left out.

Each figure answers one question of Seyfarth et al. 2024 (arXiv:2407.14892) with the records'
projected budget numbers; `lpm.report.plot` draws them.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lpm.energy.window import Estimate
from lpm.report.study import (
    Study,
    canonical,
    fmt,
    millions,
    month_spread,
    provenance,
    scale_stamp,
    scaling,
    work,
    zone_name,
)
from lpm.report.sweep import (
    AXES,
    PHASES,
    PSNR_CEILING_DB,
    TRAINING,
    Job,
    dig,
    matched,
    off_baseline,
    pick,
    reference_sampler,
    sort_key,
)

KG = "kg CO2e (projected)"
TITLES = {
    "fig1_dims": "Training vs synthesis, 2D vs 3D",
    "fig2_size": "CO2e by model size, training and synthesis",
    "fig3_site": "Regional differences",
    "fig3_months": "Seasonal differences",
    "fig4_speedups": "Speed-up techniques against the baseline",
    "windows": "Per-window energy of the reference job",
    "fig5_pareto": "CO2e against quality",
    "fig6_efficiency": "Energy per unit of work",
}
# A figure's bar panels share one y axis, logarithmic once the values span more than two decades.
LOG_SPAN = 100.0
# Time ratios that differ from the CO2e ratios by more than this earn their own panel.
TIME_DIFFERS = 0.10


@dataclass(frozen=True)
class Bar:
    segments: tuple[tuple[str, float], ...]  # (phase, value), stacked bottom-up
    ci: tuple[float, float] | None = None  # 95% interval of the stacked total
    label: str = ""  # tick label; empty when the group label says it all
    note: str = ""  # printed above the bar
    noisy: tuple[str, ...] = ()  # phases whose verdict is noisy: drawn faded, outline dashed
    runs: int = 1  # repeats averaged (a pool's mean, its whisker the between-run interval)
    cluster: int = -1  # bars of one setting side by side share a number (and one tick label)


@dataclass(frozen=True)
class Panel:
    groups: tuple[tuple[str, tuple[Bar, ...]], ...]
    ylabel: str
    title: str = ""
    refs: tuple[tuple[float, str], ...] = ()  # labelled horizontal lines, in y units
    secondary: tuple[str, float] | None = None  # (label, factor): a right axis showing y × factor
    unity: bool = False  # a line at 1: the baseline of ratios


@dataclass(frozen=True)
class Heatmap:
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]
    label: str  # colour bar label
    title: str = ""


@dataclass(frozen=True)
class Windows:
    """One unit's measurement windows in order: the value per iteration of each, the robust
    estimate with its 95% interval (a band), and the windows it left out as outliers."""

    values: tuple[float, ...]
    outliers: tuple[int, ...]
    estimate: float
    ci: tuple[float, float]
    mean: float  # plain mean over all windows, outliers included
    title: str
    ylabel: str = "J per iteration"
    noisy: bool = False
    limit: float | None = None  # the widest stable interval, ± this fraction of the estimate


@dataclass(frozen=True)
class Point:
    """One job in a trade-off panel: its projected CO2e (x) against a quality metric (y)."""

    label: str
    kg: Estimate
    quality: Estimate | None  # None: the job's sampler is the reference (PSNR ∞)
    noisy: bool = False  # a phase behind its CO2e has a noisy verdict: drawn faded
    stochastic: bool = False  # its sampler adds noise: its fidelity to the reference reads low
    frontier: bool = False  # no job of its family has both less CO2e and better quality
    runs: int = 1
    family: str = ""  # the kind of image it makes ('3D 144×176×112 paper'): one frontier each


@dataclass(frozen=True)
class Scatter:
    """CO2e against one quality metric, job by job, the Pareto frontier marked on the points."""

    points: tuple[Point, ...]
    xlabel: str
    ylabel: str
    title: str = ""
    reference: float | None = None  # y at which jobs identical to the reference sit
    log: bool = False  # x spans more than two decades


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    panels: tuple[Panel | Heatmap | Windows | Scatter, ...]
    stacked: bool = False  # panels one above the other (shared categories), else side by side
    log: bool = False  # bar panels on a log axis: then no bar stacks phases (see `arranged`)
    stamp: str = ""  # the scale the numbers stand for, printed on the figure


@dataclass(frozen=True)
class Omission:
    name: str
    title: str
    reason: str


Measure = Callable[[tuple[str, ...]], Estimate]


def bar_values(figure: Figure) -> list[float]:
    """Every positive height the bar panels must show: each phase, each bar's top and upper
    whisker, each reference line."""
    out: list[float] = []
    for panel in figure.panels:
        if not isinstance(panel, Panel):
            continue
        for _, bars in panel.groups:
            for bar in bars:
                out += [v for _, v in bar.segments]
                out.append(sum(v for _, v in bar.segments))
                out += [bar.ci[1]] if bar.ci else []
        out += [y for y, _ in panel.refs]
    return [v for v in out if v > 0]


def log_axis(figure: Figure) -> bool:
    """Whether the figure's bars need a log axis: their heights span more than two decades."""
    values = bar_values(figure)
    return bool(values) and max(values) / min(values) > LOG_SPAN


def stacks(figure: Figure) -> bool:
    """Whether any bar stacks more than one phase."""
    return any(
        len(bar.segments) > 1
        for panel in figure.panels
        if isinstance(panel, Panel)
        for _, bars in panel.groups
        for bar in bars
    )


def arranged(build: Callable[[Study, bool], Figure | Omission], study: Study) -> Figure | Omission:
    """The one rule for every bar figure: phases stack on a linear axis; where the values need a
    log axis the phases stand side by side instead (stacked on a log axis, a segment's height
    misstates its share: synthesis at 69% of a total drawn as 20% of the bar)."""
    figure = build(study, True)
    if isinstance(figure, Figure) and log_axis(figure):
        figure = build(study, False)
        assert isinstance(figure, Figure)
        return replace(figure, log=True)
    return figure


def _note(value: float, suffix: str, runs: int, noisy: Sequence[str], absolute: str = "") -> str:
    note = fmt(value, 2 if suffix else 3) + suffix + (f"\n{absolute}" if absolute else "")
    note += f"\nn={runs}" if runs > 1 else ""
    return note + ("\nnoisy" if noisy else "")


def phase_bars(
    job: Job,
    phases: tuple[str, ...],
    stack: bool,
    *,
    measure: Measure | None = None,
    label: str = "",
    scale: float = 1.0,
    suffix: str = "",
    unit: str = "",
    split: bool = True,
) -> tuple[Bar, ...]:
    """`phases` of a job's projected CO2e (or `measure`) / `scale`: one bar stacking them, or
    (`stack` false) one bar per phase, or one bar of their total where not `split`. A ratio
    (`suffix` "×") notes the absolute value in `unit` too; notes say how many repeats a pooled
    bar averages and whether it is noisy."""
    measure = measure or job.co2e
    runs = len(job.pooled(phases)) if job.runs else 1
    bars = []
    for part in [phases] if stack or not split else [(p,) for p in phases]:
        total = measure(part)
        ratio = total.scaled(1 / scale)
        noisy = tuple(job.noisy(part))
        absolute = f"{fmt(total.value)} {unit}" if unit else ""
        segments = tuple((p, measure((p,)).value / scale) for p in part)
        if len(part) > 1 and not stack:
            segments, noisy = (("total", ratio.value),), ("total",) if noisy else ()
        bars.append(
            Bar(
                segments,
                (ratio.low, ratio.high),
                label,
                _note(ratio.value, suffix, runs, noisy, absolute),
                noisy,
                runs,
            )
        )
    return tuple(bars)


def total_bar(job: Job, label: str = "") -> Bar:
    """All phases of a job as one bar ("total"): where only the price differs, every phase
    scales alike and their shares say nothing new."""
    total = job.co2e(PHASES)
    runs = len(job.pooled(PHASES)) if job.runs else 1
    noisy = ("total",) if job.noisy(PHASES) else ()
    note = _note(total.value, "", runs, noisy)
    return Bar((("total", total.value),), (total.low, total.high), label, note, noisy, runs)


Entry = tuple[str, Sequence[tuple[str, Sequence[Bar]]]]  # (group, [(bar label, its bars)])


def regroup(entries: Sequence[Entry], stack: bool) -> tuple[tuple[str, tuple[Bar, ...]], ...]:
    """Groups of bars from (group label, [(bar label, bars)]): stacked, each labelled bar under
    its group; side by side, each labelled setting a cluster of its phase bars, the label under
    the cluster's middle bar."""
    out: list[tuple[str, tuple[Bar, ...]]] = []
    for group, items in entries:
        if stack or not any(label for label, _ in items):
            bars = tuple(replace(b, label=label) for label, bars in items for b in bars)
        else:
            bars = tuple(
                replace(b, label=label if j == len(cluster) // 2 else "", cluster=i)
                for i, (label, cluster) in enumerate(items)
                for j, b in enumerate(cluster)
            )
        out.append((group, bars))
    return tuple(out)


SIDE_BY_SIDE = (
    " Log axis: phases stand side by side (stacked on a log axis, a segment's height would "
    "misstate its share)."
)
TOTALS = (
    " Log axis: each setting's total, phases not stacked (on a log axis a segment's height "
    "would misstate its share)."
)


def _marks(study: Study, bars: Iterable[Bar], log: str = "") -> str:
    """What a caption must say about its bars: noisy ones, pooled ones, phases left out, and
    (`log`) how a log axis draws phases."""
    bars = list(bars)
    out = log
    if any(b.noisy for b in bars):
        out += (
            " Faded bars with a dashed outline (note 'noisy') are phases whose measurement the "
            "record calls noisy (reasons under Checks)."
        )
    if any(b.runs > 1 for b in bars):
        out += (
            " Bars noted n=k are the mean of k repeats (other seeds) with the between-run 95% "
            "t-interval."
        )
    if study.excluded():
        out += " Phases with incomplete meter coverage are left out (listed under Checks)."
    return out


def describe(job: Job) -> str:
    """'3D base model, ddpm 1000 steps'."""
    a = job.axes
    return f"{str(a['dims']).upper()} {a['model']} model, {a['sampler']} {a['steps']} steps"


def _deviations(study: Study, picked: list[Job], free: tuple[str, ...]) -> str:
    held = [a for a in study.varied if a not in free]
    off = off_baseline(picked, study.base, held)
    return f" Nearest available where the baseline job is missing: {'; '.join(off)}." if off else ""


def _training_and_synthesis(
    study: Study, free: tuple[str, ...], fixed: dict[str, Any], stack: bool
) -> tuple[list[tuple[tuple, list[tuple[str, tuple[Bar, ...]]]]], list[Job]]:
    """Per value of `free`: the training bars and the synthesis bar, each from the job nearest
    the baseline whose phases had all their meters (the two may differ); and the jobs drawn."""
    training = pick(study.usable(TRAINING), study.base, free, fixed)
    synthesis = pick(study.usable(("synthesis",)), study.base, free, fixed)
    keys = sorted(
        {*training, *synthesis},
        key=lambda k: [sort_key(a, v) for a, v in zip(free, k, strict=True)],
    )
    groups = [
        (
            key,
            [
                ("", phase_bars(picked[key], phases, stack))
                for picked, phases in ((training, TRAINING), (synthesis, ("synthesis",)))
                if key in picked
            ],
        )
        for key in keys
    ]
    return groups, list(dict.fromkeys([*training.values(), *synthesis.values()]))


def _bars_of(panels: Iterable[Panel | Heatmap | Windows | Scatter]) -> list[Bar]:
    return [b for p in panels if isinstance(p, Panel) for _, bars in p.groups for b in bars]


def fig1_dims(study: Study, stack: bool = True) -> Figure | Omission:
    name, title = "fig1_dims", TITLES["fig1_dims"]
    if "dims" not in study.varied:
        return Omission(name, title, f"the sweep did not vary dims (only {study.base['dims']})")
    entries, picked = _training_and_synthesis(study, ("dims",), {}, stack)
    if not entries:
        return Omission(name, title, "no job has complete meter coverage to compare")
    groups = regroup([(str(dims).upper(), items) for (dims,), items in entries], stack)
    car, flight = study.factor("car_g_per_km"), 1500 * study.factor("flight_g_per_pkm") / 1000
    budget = study.factor("budget_kg_per_year")
    panel = Panel(
        groups,
        KG,
        refs=(
            (flight, f"1,500 km flight ({fmt(flight)} kg)"),
            (budget, f"annual per-capita 1.5 °C budget ({fmt(budget)} kg)"),
        ),
        secondary=(f"car km equivalent ({car:g} g CO2/km)", 1000 / car),
    )
    training = "stacked" if stack else "side by side"
    caption = (
        f"Projected CO2e of training (autoencoder and diffusion, {training}) and of synthesis, "
        f"with 95% intervals, per image dimensionality. Held fixed: {study.held(('dims',))}."
        f"{_deviations(study, picked, ('dims',))} References: car "
        f"{car:g} g CO2/km, flight {study.factor('flight_g_per_pkm'):g} g/passenger-km, "
        f"per-capita budget {budget:g} kg/year "
        f"({study.factors['budget_kg_per_year']['source']})."
        f"{_marks(study, _bars_of([panel]), '' if stack else SIDE_BY_SIDE)} {provenance(picked)}"
    )
    return Figure(name, title, caption, (panel,), stamp=scale_stamp(picked))


def fig2_size(study: Study, stack: bool = True) -> Figure | Omission:
    name, title = "fig2_size", TITLES["fig2_size"]
    if "model" not in study.varied:
        return Omission(name, title, f"the sweep did not vary model (only {study.base['model']})")
    facets = sorted({j.axis("dims") for j in study.jobs}) if "dims" in study.varied else []
    panels, picked_all = [], []
    for dims in facets or [study.base["dims"]]:
        entries, picked = _training_and_synthesis(study, ("model",), {"dims": dims}, stack)
        picked_all += picked
        if not entries:
            continue
        params = {j.axis("model"): j.record["params"] for j in picked}
        labelled = [
            (
                f"{model}\n{millions(params[model]['autoencoder'])} + "
                f"{millions(params[model]['unet'])}",
                items,
            )
            for (model,), items in entries
        ]
        panels.append(Panel(regroup(labelled, stack), KG, title=str(dims).upper()))
    if not panels:
        return Omission(name, title, "no job has complete meter coverage to compare")
    free = ("model", "dims")
    training = "stacked" if stack else "side by side"
    caption = (
        f"Projected CO2e of training (autoencoder and diffusion, {training}) and synthesis per "
        "model size, with 95% intervals; tick labels give the parameters (autoencoder + UNet). "
        f"Held fixed: {study.held(free)}.{_deviations(study, picked_all, free)}"
        f"{_marks(study, _bars_of(panels), '' if stack else SIDE_BY_SIDE)} "
        f"{provenance(picked_all)}"
    )
    return Figure(name, title, caption, tuple(panels), stamp=scale_stamp(picked_all))


def _zone(zone: str) -> str:
    """'DEU\nGermany', or the code alone."""
    return "\n".join(filter(None, (zone, zone_name(zone))))


def _zone_tick(zone: str, g_per_kwh: float, recorded: bool) -> str:
    """'DEU\nGermany\n381 g/kWh\n(recorded)'."""
    lines = [zone, zone_name(zone), f"{fmt(g_per_kwh)} g/kWh", "(recorded)" if recorded else ""]
    return "\n".join(filter(None, lines))


def fig3_site(study: Study, stack: bool = True) -> Figure | Omission:
    name, title = "fig3_site", TITLES["fig3_site"]
    where = study.location()
    if study.reference is None:
        return Omission(name, title, "no job has complete meter coverage to re-price")
    if where is None:
        why = "; ".join(study.notes) or "fewer than two zones to compare"
        return Omission(name, title, why)
    job, (low, low_kg, high, high_kg) = study.reference, where
    recorded = canonical(job.axis("site"))
    bars = tuple(
        total_bar(
            study.priced[job.name][i.zone],
            _zone_tick(i.zone, i.g_per_kwh, canonical(i.zone) == recorded),
        )
        for i in study.zones
    )
    factor = high_kg / low_kg
    panels: list[Panel | Heatmap | Windows | Scatter] = [
        Panel((("", bars),), KG, f"{describe(job)}, re-priced at each zone")
    ]
    shown = [job]
    if "site" in study.varied:
        picked = pick(study.usable(PHASES), study.base, ("site",))
        shown += picked.values()
        site_bars = tuple(total_bar(j, _zone(str(site))) for (site,), j in picked.items())
        panels.append(Panel((("", site_bars),), KG, "measured at each site"))
    caption = (
        f"Projected CO2e of all three phases of {job.name} ({describe(job)}), one bar each: "
        f"re-priced at each zone's intensity with its recorded PUE "
        f"{job.record['carbon']['pue']:g}, every phase scales alike; 95% intervals. "
        f"Location changes emissions up to {fmt(factor, 2)}× ({low.zone} {fmt(low_kg)} kg to "
        f"{high.zone} {fmt(high_kg)} kg). Tick labels give each zone's intensity, the recorded "
        "zone at the intensity its record was priced with; sources are in the zones table."
        + (
            " The second panel shows the site axis as measured: each site is its own run, so "
            "run-to-run noise adds to the grid's difference."
            if "site" in study.varied
            else ""
        )
        + _marks(study, _bars_of(panels))
        + f" {provenance(shown)}"
    )
    return Figure(name, title, caption, tuple(panels), stamp=scale_stamp(shown))


def fig3_months(study: Study, stack: bool = True) -> Figure | Omission:
    name, title = "fig3_months", TITLES["fig3_months"]
    if study.csv is None:
        return Omission(name, title, "no --csv time series given, so no months to compare")
    if not study.months:
        return Omission(name, title, "the series has no zones")
    job = study.reference
    if job is None:
        return Omission(name, title, "no job has complete meter coverage to price")
    kwh = job.kwh(PHASES).value
    kg_per_g = kwh * job.record["carbon"]["pue"] / 1000
    cols = tuple(sorted({m for months in study.months.values() for m in months}))
    rows, values = [], []
    for zone, months in sorted(study.months.items()):
        spread = month_spread(months)
        label = f"{zone} {zone_name(zone)}".strip()
        rows.append(label + (f" ({fmt(100 * spread[0], 2)}% spread)" if spread else ""))
        values.append(tuple(months[m] * kg_per_g if m in months else None for m in cols))
    seasons = study.seasons()
    top = max(seasons, key=lambda z: seasons[z][0], default=None)
    headline = (
        f"up to {fmt(100 * seasons[top][0], 2)}% by month ({top})" if top else "one month per zone"
    )
    caption = (
        f"Projected total CO2e of {job.name} ({describe(job)}) per zone and month, priced with "
        f"the monthly mean intensity of {study.csv.name} and PUE "
        f"{job.record['carbon']['pue']:g}. Row labels give each zone's month-to-month spread, "
        "(max − min) / min."
        + (
            f" Noisy phases: {', '.join(job.noisy())} (reasons under Checks)."
            if job.noisy()
            else ""
        )
        + f" {provenance([job], priced=False)}"
    )
    heatmap = Heatmap(tuple(rows), cols, tuple(values), KG, f"Time of year: {headline}")
    return Figure(name, title, caption, (heatmap,), stamp=scale_stamp([job]))


# (label, axes compared together, phases whose CO2e the technique changes)
TECHNIQUES = (
    ("sampler", ("sampler", "steps"), ("synthesis",)),
    ("precision", ("precision",), PHASES),
    ("speed flags", ("speed",), PHASES),
    ("GPUs", ("gpus",), PHASES),
)


SPEEDUP_AXES = ("sampler", "steps", "precision", "speed", "gpus")


@dataclass(frozen=True)
class Technique:
    """A speed-up the sweep varied: its settings' jobs, each read against `base_job`."""

    label: str
    phases: tuple[str, ...]
    base_job: Job
    settings: dict[str, Job]  # setting label → job, the baseline's first
    keys: dict[str, tuple[Any, ...]]  # setting label → its axis values
    axes: tuple[str, ...] = ()  # the axes the settings differ in
    how: str = ""  # how the settings compare, where it needs saying (GPU scaling)

    def differs(self, job: Job) -> str:
        """'sampler=dpmpp, precision=bf16-mixed': the other axes `job` differs from the baseline
        job in (the figure picks the nearest job where the sweep has no exact match)."""
        return ", ".join(
            f"{a}={job.axis(a)}"
            for a in AXES
            if a not in (*self.axes, "site") and job.axis(a) != self.base_job.axis(a)
        )

    def measure(self, job: Job, quantity: str = "co2e") -> Measure:
        """`job`'s projected `quantity` ("co2e" or "hours") at the baseline's work."""
        return lambda phases: equal_work(job, self.base_job, phases, quantity)


def equal_work(job: Job, base_job: Job, phases: tuple[str, ...], quantity: str) -> Estimate:
    """`job`'s projected `quantity` of `phases` for the work of `base_job`: each phase scaled by
    the baseline's samples over the job's. Under weak scaling a 2-GPU job of 150,000 iterations
    sees twice the training samples of the 1-GPU baseline: per sample seen, it does half the
    baseline's iterations. Phases whose work a record does not give are taken as they are."""
    value = getattr(job, quantity)
    factors = []
    for phase in phases:
        mine, theirs = work(job, phase), work(base_job, phase)
        factors.append(theirs / mine if mine and theirs else 1.0)
    if all(f == 1.0 for f in factors):
        return value(phases)
    total = Estimate(0.0, 0.0, 0.0)
    for phase, factor in zip(phases, factors, strict=True):
        total = total + value((phase,)).scaled(factor)
    return total


def gpu_scaling(jobs: Iterable[Job]) -> str:
    """How GPU-count bars compare: 'weak scaling, per sample seen', or why not."""
    modes = {scaling(j) for j in jobs}
    if modes == {"weak"}:
        return "weak scaling: per sample seen"
    if modes == {"strong"}:
        return "strong scaling: same global batch"
    if None in modes:
        return "scaling not recorded: as recorded, each its own budget"
    return "weak and strong scaling mixed: per sample seen"


def speedups(study: Study, headline: bool = False) -> list[Technique]:
    """Per technique the sweep varied: its baseline job and settings, over the jobs a comparison
    (`headline`: a headline) may use."""
    out = []
    for label, axes, phases in TECHNIQUES:
        free = tuple(a for a in axes if a in study.varied)
        # A headline states a ratio: its jobs must differ in the technique only.
        choose = matched if headline else pick
        picked = choose(study.usable(phases, headline), study.base, free) if free else {}
        if not picked:
            continue
        key = tuple(study.base[a] for a in free)
        base_job = picked.get(key) or next(iter(picked.values()))
        # The baseline first, every other bar reading against it; then by setting, numbers
        # numerically (50 < 250 < 1000 steps).
        keys = sorted(picked, key=lambda k: (picked[k] is not base_job, *map(_order, k)))
        named = {_setting(free, k): picked[k] for k in keys}
        if free in (("sampler",), ("steps",)):
            label = free[0]
        how = gpu_scaling(named.values()) if label == "GPUs" else ""
        keyed = {_setting(free, k): k for k in keys}
        out.append(Technique(label, phases, base_job, named, keyed, free, how))
    return out


def _order(value: Any) -> tuple[int, float, str]:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def _setting(free: tuple[str, ...], key: tuple[Any, ...]) -> str:
    return " ".join(
        f"{v}" + (" steps" if a == "steps" else "") for a, v in zip(free, key, strict=True)
    )


def _contradicted(study: Study, found: list[Technique]) -> str:
    pairs = [
        f"{job.name} against {t.base_job.name}"
        for t in found
        for job in t.settings.values()
        if job is not t.base_job and study.contradicted(job, t.base_job)
    ]
    if not pairs:
        return ""
    return f" Contradicted by the consistency checks (see Checks): {'; '.join(pairs)}."


def _by_axis(t: Technique) -> list[tuple[str, list[tuple[str, str]]]]:
    """A technique's settings as groups of (setting, tick label), numbers ascending: with both
    sampler and steps varied, one group per sampler, its steps ascending."""
    what = "synthesis" if t.phases == ("synthesis",) else "all phases"
    what += f"; {t.how}" if t.how else ""
    ordered = sorted(t.settings, key=lambda s: tuple(sort_key("", v) for v in t.keys[s]))
    if len(t.keys[ordered[0]]) < 2:
        return [(f"{t.label} ({what})", [(s, s) for s in ordered])]
    samplers: dict[str, list[tuple[str, str]]] = {}
    for setting in ordered:
        sampler, steps = t.keys[setting]
        samplers.setdefault(str(sampler), []).append((setting, f"{steps} steps"))
    return [(f"{sampler} ({what})", items) for sampler, items in samplers.items()]


def _time_panel(jobs: Iterable[Job], co2e: list[Bar], hours: list[Bar]) -> str | None:
    """Why the time panel is left out (None: draw it): on CPU energy is power × time; elsewhere
    when the time ratios repeat the CO2e ratios."""
    if not any(str(dig(j.record, "hardware.accelerator")) in ("cuda", "gpu") for j in jobs):
        return (
            "No time panel: on CPU every component's energy is estimated as power × time, so "
            "the time ratios repeat the CO2e ratios (hours are in the jobs table)."
        )

    def total(bar: Bar) -> float:
        return sum(v for _, v in bar.segments)

    if all(
        abs(total(h) / total(c) - 1) <= TIME_DIFFERS
        for c, h in zip(co2e, hours, strict=True)
        if total(c) > 0
    ):
        return (
            f"No time panel: every time ratio is within {TIME_DIFFERS:.0%} of its CO2e ratio "
            "(hours are in the jobs table)."
        )
    return None


def fig4_speedups(study: Study, stack: bool = True) -> Figure | Omission:
    name, title = "fig4_speedups", TITLES["fig4_speedups"]
    found = speedups(study)
    if not found:
        if any(a in study.varied for a in SPEEDUP_AXES):
            return Omission(name, title, "no job has complete meter coverage to compare")
        why = f"the sweep varied none of {', '.join(SPEEDUP_AXES)}"
        return Omission(name, title, why)
    shown = list(dict.fromkeys(j for t in found for j in t.settings.values()))
    co2e_entries: list[Entry] = []
    time_entries: list[Entry] = []
    for t in found:
        ref_kg = t.base_job.co2e(t.phases).value
        ref_h = t.base_job.hours(t.phases).value
        for group, settings in _by_axis(t):
            co2e_items, time_items = [], []
            for setting, tick in settings:
                job = t.settings[setting]
                tick += "\n(baseline)" if job is t.base_job else ""
                if t.differs(job):  # wrapped: a tick is as narrow as its longest line
                    tick += "\n" + textwrap.fill(f"(+ {t.differs(job)})", 24)
                bars = phase_bars(
                    job, t.phases, stack, measure=t.measure(job), scale=ref_kg, suffix="×",
                    unit="kg", split=False,
                )  # fmt: skip
                if job is not t.base_job and study.contradicted(job, t.base_job):
                    bars = tuple(replace(b, note=b.note + "\ncheck failed") for b in bars)
                co2e_items.append((tick, bars))
                time_items.append(
                    (
                        tick,
                        phase_bars(
                            job, t.phases, stack, measure=t.measure(job, "hours"), scale=ref_h,
                            suffix="×", unit="h", split=False,
                        ),
                    )
                )  # fmt: skip
            co2e_entries.append((group, co2e_items))
            time_entries.append((group, time_items))
    co2e = Panel(regroup(co2e_entries, stack), "CO2e, × baseline", "CO2e (projected)", unity=True)
    hours = Panel(regroup(time_entries, stack), "time, × baseline", "time (projected)", unity=True)
    why_not = _time_panel(shown, _bars_of([co2e]), _bars_of([hours]))
    baseline = ", ".join(f"{a}={study.base[a]}" for a in SPEEDUP_AXES)
    gpus = next((t for t in found if t.label == "GPUs"), None)
    caption = (
        f"Projected {'CO2e' if why_not else 'CO2e and time'} of each setting divided by the "
        f"baseline's ({baseline}), the absolute value under each ratio; synthesis only for the "
        "sampler and step count (one group per sampler, steps ascending), all phases for "
        "precision and GPU count; whiskers: the setting's 95% interval over the baseline's "
        f"value; a tick names any other axis its job differs in. Held fixed: "
        f"{study.held(SPEEDUP_AXES)}."
        + (
            " GPU counts compare equal work: under weak scaling each GPU takes its own batch, so "
            "a 2-GPU job of the same iterations sees twice the training samples; its training is "
            "scaled to the baseline's samples seen (per sample seen). Scaling: "
            f"{gpu_scaling(gpus.settings.values())}."
            if gpus
            else ""
        )
        + (f" {why_not}" if why_not else "")
        + _marks(study, _bars_of([co2e]), "" if stack else TOTALS)
        + f"{_contradicted(study, found)} {provenance(shown)}"
    )
    panels = (co2e,) if why_not else (co2e, hours)
    return Figure(name, title, caption, panels, stacked=True, stamp=scale_stamp(shown))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "job"


def windows(study: Study, stack: bool = True) -> Figure | Omission:
    """The picture behind the reference job's verdicts: each unit's windows (J per iteration),
    the robust estimate with its interval, the outliers it left out."""
    name, title = "windows", TITLES["windows"]
    job = study.reference
    if job is None:
        return Omission(name, title, "no job has complete meter coverage")
    run = (job.pooled(PHASES) or [job])[0] if job.runs else job
    panels = []
    reasons = []
    limit = dig(run.record, "job.noise_rules.max_rel_half_width")
    for phase in PHASES:
        for unit, m in (dig(run.record, f"phases.{phase}.measured.units") or {}).items():
            rows, joules = m.get("per_window"), m.get("joules_per_iteration")
            if not rows or not isinstance(joules, dict) or "value" not in joules:
                continue
            verdict = (m.get("verdict") or {}).get("status", "unknown")
            value = joules["value"]
            low, high = joules.get("ci95") or (value, value)
            spread = f", ±{fmt(100 * (high - low) / 2 / value, 2)}%" if value else ""
            panels.append(
                Windows(
                    tuple(j / it for it, _, j in rows if it),
                    tuple(m.get("outliers") or ()),
                    value,
                    (low, high),
                    joules.get("mean", value),
                    f"{phase}: {unit} ({verdict}{spread})",
                    noisy=verdict == "noisy",
                    limit=limit,
                )
            )
            reasons += [f"{phase} {unit}: {r}" for r in (m.get("verdict") or {}).get("reasons", ())]
    if not panels:
        return Omission(name, title, f"{job.name}'s record has no per-window measurements")
    which = f"{run.name} (the first of its {len(job.runs)} repeats)" if job.runs else run.name
    caption = (
        f"Energy per iteration of each measurement window of {which} ({describe(job)}), in "
        "window order: dots are windows, crosses the outliers the estimate left out (kept in "
        "the record), the line the robust estimate with its 95% interval as a band, the dashed "
        "line the plain mean of all windows"
        + (
            f", dotted lines the widest interval a stable verdict allows (±{fmt(100 * limit)}%)"
            if limit
            else ""
        )
        + ". A band inside those lines, with no drift and few outliers, makes a stable verdict; "
        + (f"here: {'; '.join(reasons)}." if reasons else "here every unit is stable.")
        + f" {provenance([run])}"
    )
    return Figure(
        f"windows_{_slug(study.short(job.name))}",
        f"{title}: {describe(job)}",
        caption,
        tuple(panels),
        stamp=scale_stamp([job]),
    )


# --- quality against CO2e, energy per unit of work --------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A quality metric the Pareto figure sets against the CO2e of the phases that buy it."""

    title: str
    path: str  # dotted key of its `{"value", "ci95"}` entry in the record
    label: str  # the y axis
    phases: tuple[str, ...]
    what: str  # for the caption
    higher_better: bool = True
    sampler: bool = False  # sampler fidelity: reference jobs at ∞, stochastic samplers apart
    # Axes that change neither the metric nor its CO2e: one point per setting of the other axes.
    same_for: tuple[str, ...] = ()


QUALITY = (
    Metric(
        "sampler fidelity",
        "quality.sampler.psnr_db",
        "PSNR to the reference sampler, dB",
        ("synthesis",),
        "image-space PSNR between each job's samples and the reference sampler's from the same "
        "initial noise, against synthesis CO2e",
        sampler=True,
    ),
    Metric(
        "autoencoder reconstruction",
        "quality.autoencoder.psnr_db",
        "reconstruction PSNR, dB",
        TRAINING,
        "PSNR of the autoencoder's reconstructions of held-out images, against training CO2e "
        "(autoencoder and diffusion), one point per training setting (the job nearest the "
        "baseline sampler: sampler and steps change neither)",
        same_for=("sampler", "steps"),
    ),
    Metric(
        "FID",
        "quality.fid",
        "FID (lower is better)",
        ("synthesis",),
        "FID of the samples with the feature extractor the record names, against synthesis CO2e",
        higher_better=False,
    ),
)
UNIT_NAMES = {"unet": "UNet"}


def frontier(points: Sequence[tuple[float, float]], higher_better: bool = True) -> list[int]:
    """Indices of the (kg CO2e, quality) pairs no other pair dominates: none has no more CO2e and
    no worse quality while better in one of them (quality ∞: identical to the reference)."""
    sign = 1.0 if higher_better else -1.0
    ranked = [(kg, sign * q) for kg, q in points]
    return [
        i
        for i, (kg, q) in enumerate(ranked)
        if not any(k <= kg and r >= q and (k < kg or r > q) for k, r in ranked)
    ]


def _above(qualities: Sequence[Estimate]) -> float:
    """Where the '= reference' line sits: clear above every finite quality and its interval."""
    if not qualities:
        return 0.0
    top = max(q.high for q in qualities)
    span = top - min(q.low for q in qualities)
    return top + (0.15 * span if span > 0 else max(1.0, 0.1 * abs(top)))


def _compact(job: Job, axes: Sequence[str]) -> str:
    """'3D base ddim 50': a job's values on `axes`, steps with their sampler."""
    parts = []
    for axis in axes:
        if axis == "sampler":
            parts.append(f"{job.axis('sampler')} {job.axis('steps')}")
        elif axis == "steps" and "sampler" not in axes:
            parts.append(f"{job.axis('steps')} steps")
        elif axis == "dims":
            parts.append(str(job.axis("dims")).upper())
        elif axis != "steps":
            parts.append(str(job.axis(axis)))
    return " ".join(parts)


def point_labels(study: Study, jobs: Sequence[Job]) -> list[str]:
    """Each job's values on the axes `jobs` differ in ('3D base ddim 50'); its short label
    where that names no axis or reads like another job's."""
    # Dimensionality first: it moves CO2e the most.
    order = ("dims", *(a for a in AXES if a != "dims"))
    differ = [a for a in order if len({j.axis(a) for j in jobs}) > 1]
    labels = [_compact(j, differ) for j in jobs]
    counts = Counter(labels)
    return [
        label if label and counts[label] == 1 else study.short(job.name)
        for job, label in zip(jobs, labels, strict=True)
    ]


def _family(job: Job) -> str:
    """'3D 144×176×112 paper': the kind of image a job makes; quality compares within one."""
    size = "×".join(map(str, dig(job.record, "axes.image_size") or ()))
    return " ".join(
        filter(None, (str(job.axis("dims")).upper(), size, dig(job.record, "axes.scale")))
    )


def _counted(metric: Metric, quality: Estimate | None) -> float:
    """The quality the frontier compares: ∞ (None) for the reference itself; a PSNR no higher
    than :data:`PSNR_CEILING_DB`, beyond which images are the same in 8 bits."""
    value = math.inf if quality is None else quality.value
    return min(value, PSNR_CEILING_DB) if metric.path.endswith("psnr_db") else value


def _tradeoff(study: Study, metric: Metric) -> tuple[Scatter, list[Job]] | None:
    """The jobs with complete meter coverage of `metric`'s phases that recorded it (sampler
    fidelity: or whose sampler is the reference), as points, cheapest first; None when none
    did."""
    candidates = [
        job
        for job in study.usable(metric.phases)
        if job.metric(metric.path, metric.phases) is not None
        or (metric.sampler and job.flag("quality.sampler.identical"))
    ]
    if not candidates:
        return None
    if metric.same_for:
        free = tuple(a for a in AXES if a not in metric.same_for)
        candidates = list(pick(candidates, study.base, free).values())
    candidates.sort(key=lambda j: j.co2e(metric.phases).value)
    found = [(job, job.metric(metric.path, metric.phases)) for job in candidates]
    kg = [job.co2e(metric.phases) for job, _ in found]
    stochastic = [metric.sampler and job.flag("quality.sampler.stochastic") for job, _ in found]
    # One frontier per kind of image (2D and 3D images are not the same product).
    families = [_family(job) for job in candidates]
    best: set[int] = set()
    for family in dict.fromkeys(families):
        # A stochastic sampler's samples differ from the deterministic reference's by its own
        # noise: its fidelity reads low whatever its quality, so it marks no frontier.
        ranked = [i for i, f in enumerate(families) if f == family and not stochastic[i]]
        pairs = [(kg[i].value, _counted(metric, found[i][1])) for i in ranked]
        best |= {ranked[i] for i in frontier(pairs, metric.higher_better)}
    labels = point_labels(study, candidates)
    points = tuple(
        Point(
            labels[i],
            kg[i],
            quality,
            bool(job.noisy(metric.phases)),
            stochastic[i],
            i in best,
            len(job.pooled(metric.phases)) if job.runs else 1,
            families[i],
        )
        for i, (job, quality) in enumerate(found)
    )
    finite = [q for _, q in found if q is not None]
    spread = [v for e in kg for v in (e.low, e.value, e.high) if v > 0]
    reference = f" (reference: {reference_sampler(candidates)})" if metric.sampler else ""
    title = metric.title + reference
    panel = Scatter(
        points,
        f"kg CO2e of {' and '.join(metric.phases)} (projected)",
        metric.label,
        title,
        _above(finite) if len(finite) < len(found) else None,
        bool(spread) and max(spread) / min(spread) > LOG_SPAN,
    )
    return panel, candidates


def _has_quality(job: Job) -> bool:
    return isinstance(dig(job.record, "quality"), Mapping)


def fig5_pareto(study: Study, stack: bool = True) -> Figure | Omission:
    name, title = "fig5_pareto", TITLES["fig5_pareto"]
    if not any(_has_quality(j) for j in study.jobs):
        why = "no job recorded quality (records that predate it, or quality.enabled=false)"
        return Omission(name, title, why)
    built = [(m, t) for m in QUALITY if (t := _tradeoff(study, m))]
    if not built:
        return Omission(name, title, "no job with quality metrics has complete meter coverage")
    panels = tuple(panel for _, (panel, _) in built)
    shown = list(dict.fromkeys(j for _, (_, jobs) in built for j in jobs))
    points = [p for panel in panels for p in panel.points]
    lacking = [study.short(j.name) for j in study.jobs if not _has_quality(j)]
    caption = (
        "Projected CO2e (x) against quality (y) for every job that measured it, one panel per "
        "metric: "
        + "; ".join(f"{m.title}, {m.what}" for m, _ in built)
        + ". Points are labelled by the axes their jobs differ in. Whiskers: 95% intervals "
        "(CO2e projected; quality a t-interval over images"
        + ("; n=k: between k repeats" if any(p.runs > 1 for p in points) else "")
        + "). A line joins each Pareto frontier (filled points): the jobs no other job making "
        "the same kind of image (dims, size, scale) beats with less CO2e and better quality, so "
        "up and to the left is better"
        + (" (down and to the left for FID)" if any(not m.higher_better for m, _ in built) else "")
        + "."
        + (
            f" PSNRs above {PSNR_CEILING_DB:.1f} dB (8-bit rounding) count as equal on the "
            "frontier: the images are the same once stored in 8 bits."
            if any(m.path.endswith("psnr_db") for m, _ in built)
            else ""
        )
        + (
            " Jobs whose sampler is the reference itself sit on the dashed line '= reference' "
            "(PSNR ∞)."
            if any(p.reference is not None for p in panels)
            else ""
        )
        + (
            " Open triangles: stochastic samplers (DDPM, η > 0), compared with a deterministic "
            "reference, so their fidelity reads low; they mark no frontier."
            if any(p.stochastic for p in points)
            else ""
        )
        + (
            " Faded points: a phase behind their CO2e has a noisy verdict (reasons under Checks)."
            if any(p.noisy for p in points)
            else ""
        )
        + (
            " Phases with incomplete meter coverage are left out (listed under Checks)."
            if study.excluded()
            else ""
        )
        + (f" No quality recorded: {', '.join(lacking)}." if lacking else "")
        + f" {provenance(shown)}"
    )
    return Figure(name, title, caption, panels, stamp=scale_stamp(shown))


def _efficiency(job: Job, phase: str) -> Mapping[str, Any] | None:
    """A phase's `efficiency` block where it has joules per PFLOP; None in older records."""
    block = dig(job.record, f"phases.{phase}.efficiency")
    ok = isinstance(block, Mapping) and isinstance(block.get("joules_per_pflop"), Mapping)
    return block if ok else None


def _peak(block: Mapping[str, Any]) -> str | None:
    """'989 TFLOP/s (H100 SXM5 BF16 tensor, NVIDIA datasheet)', or None without a peak."""
    peak = block.get("peak_flop_per_s")
    if not isinstance(peak, (int, float)) or peak <= 0:
        return None
    return f"{fmt(peak / 1e12)} TFLOP/s ({block.get('peak_source') or 'source not recorded'})"


def _joules(largest: float) -> tuple[str, float]:
    """The prefix (and its factor) that keeps joules under 10,000: J on a GPU, MJ for a
    CPU-scale toy (no axis in powers of ten)."""
    for prefix, factor in (("", 1.0), ("k", 1e3), ("M", 1e6)):
        if largest < 1e4 * factor:
            return prefix, factor
    return "G", 1e9


def fig6_efficiency(study: Study, stack: bool = True) -> Figure | Omission:
    name, title = "fig6_efficiency", TITLES["fig6_efficiency"]
    if not any(_efficiency(j, p) for j in study.jobs for p in PHASES):
        why = "no job recorded FLOPs per iteration (records that predate them)"
        return Omission(name, title, why)
    found: list[tuple[Any, str, str, Estimate, str, tuple[str, ...], int]] = []
    shown: list[Job] = []
    peaks: dict[str, list[str]] = {}  # peak and source → where it applies
    without: list[str] = []  # where no peak is known
    methods: dict[str, None] = {}
    for phase in PHASES:
        eligible = [j for j in study.usable((phase,)) if _efficiency(j, phase)]
        for (dims,), job in pick(eligible, study.base, ("dims",)).items():
            block = _efficiency(job, phase)
            assert block is not None  # eligible
            shown.append(job)
            methods[str(block.get("method") or "method not recorded")] = None
            where = f"{str(dims).upper()} {phase}"
            peak = _peak(block)
            if peak:
                peaks.setdefault(peak, []).append(where)
            else:
                reason = block.get("peak_reason")
                without.append(f"{where} ({reason})" if reason else where)
            noisy = (phase,) if job.noisy((phase,)) else ()
            runs = len(job.pooled((phase,))) if job.runs else 1
            for unit in block["joules_per_pflop"]:
                key = f"phases.{phase}.efficiency"
                e = job.metric(f"{key}.joules_per_pflop.{unit}", (phase,))
                if e is None:
                    continue
                mfu = job.recorded(f"{key}.mfu.{unit}", phases=(phase,)) if peak else None
                mfu_text = f"MFU {fmt(100 * mfu.value, 2)}%" if mfu else ""
                label = f"{phase}\n{UNIT_NAMES.get(unit, unit)}"
                found.append((dims, phase, label, e, mfu_text, noisy, runs))
    if not found:
        return Omission(name, title, "no job with FLOPs per iteration has complete meter coverage")
    prefix, factor = _joules(max(e.high for *_, e, _, _, _ in found))
    groups: dict[Any, list[Bar]] = {}
    for dims, phase, label, e, mfu_text, noisy, runs in found:
        value = e.value / factor
        note = _note(value, "", runs, noisy, mfu_text)
        bar = Bar(((phase, value),), (e.low / factor, e.high / factor), label, note, noisy, runs)
        groups.setdefault(dims, []).append(bar)
    shown = list(dict.fromkeys(shown))
    ordered = sorted(groups, key=lambda d: sort_key("dims", d))
    ylabel = f"{prefix}J per PFLOP"
    panel = Panel(tuple((str(d).upper(), tuple(groups[d])) for d in ordered), ylabel)
    caption = (
        f"Energy per unit of work: measured {prefix}J per PFLOP (10¹⁵ floating-point "
        "operations) of each phase's unit (a training step of the autoencoder and of the "
        "diffusion model; one UNet evaluation and one decode in synthesis), with 95% "
        "intervals, for each dimensionality the job nearest the baseline. Held fixed: "
        f"{study.held(('dims',))}.{_deviations(study, shown, ('dims',))} J/PFLOP: the unit's "
        "energy per iteration over its FLOPs per iteration on all devices; FLOPs: "
        f"{'; '.join(methods)}. "
        + (
            "Notes give the model FLOP utilisation (MFU: achieved FLOP/s per device over the "
            "device's peak), the distance from the hardware's limit; peak: "
            + (
                next(iter(peaks))  # one peak for every unit drawn
                if len(peaks) == 1 and not without
                else "; ".join(f"{peak} for {', '.join(where)}" for peak, where in peaks.items())
            )
            + "."
            if peaks
            else ""
        )
        + (f" No MFU where no peak is recorded: {', '.join(without)}." if without else "")
        + _marks(study, _bars_of([panel]))
        + f" {provenance(shown, priced=False)}"
    )
    return Figure(name, title, caption, (panel,), stamp=scale_stamp(shown))


BUILDERS = (
    fig1_dims,
    fig2_size,
    fig3_site,
    fig3_months,
    fig4_speedups,
    fig5_pareto,
    fig6_efficiency,
    windows,
)


def figures(study: Study) -> list[Figure | Omission]:
    if not study.jobs:
        return [Omission(name, title, "no job finished ok") for name, title in TITLES.items()]
    return [arranged(build, study) for build in BUILDERS]
