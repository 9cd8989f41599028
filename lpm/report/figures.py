"""What each figure shows, as data (bars, panels, captions), or why it is left out.

Each figure answers one question of Seyfarth et al. 2024 (arXiv:2407.14892) with the records'
projected budget numbers; `lpm.report.plot` draws them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from lpm.report.study import Study, fmt, methods, millions, month_spread, pricing
from lpm.report.sweep import PHASES, TRAINING, Job, matched, off_baseline, pick, sort_key

KG = "kg CO2e (projected)"
TITLES = {
    "fig1_dims": "Training vs synthesis, 2D vs 3D",
    "fig2_size": "CO2e by model size, training and synthesis",
    "fig3_site": "Regional differences",
    "fig3_months": "Seasonal differences",
    "fig4_speedups": "Speed-up techniques: CO2e and time against the baseline",
}


@dataclass(frozen=True)
class Bar:
    segments: tuple[tuple[str, float], ...]  # (phase, value), stacked bottom-up
    ci: tuple[float, float] | None = None  # 95% interval of the stacked total
    label: str = ""  # tick label; empty when the group label says it all
    note: str = ""  # printed above the bar
    noisy: tuple[str, ...] = ()  # phases whose verdict is noisy: drawn faded, outline dashed
    runs: int = 1  # repeats averaged (a pool's mean, its whisker the between-run interval)


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
class Figure:
    name: str
    title: str
    caption: str
    panels: tuple[Panel | Heatmap, ...]
    stacked: bool = False  # panels one above the other (shared categories), else side by side


@dataclass(frozen=True)
class Omission:
    name: str
    title: str
    reason: str


def _phase_bar(
    job: Job,
    phases: tuple[str, ...],
    label: str = "",
    scale: float = 1.0,
    quantity: str = "co2e",
    suffix: str = "",
) -> Bar:
    """One bar stacking `phases` of a job's projected `quantity` (co2e or hours) / `scale`;
    the note says how many repeats a pooled bar averages, and whether it is noisy."""
    value = getattr(job, quantity)
    total = value(phases).scaled(1 / scale)
    segments = tuple((p, value((p,)).value / scale) for p in phases)
    noisy = tuple(job.noisy(phases))
    runs = len(job.pooled(phases)) if job.runs else 1
    note = fmt(total.value) + suffix + (f"\nn={runs}" if runs > 1 else "")
    note += "\nnoisy" if noisy else ""
    return Bar(segments, (total.low, total.high), label, note, noisy, runs)


def _marks(study: Study, bars: Iterable[Bar]) -> str:
    """What a caption must say about its bars: noisy ones, pooled ones, phases left out."""
    bars = list(bars)
    out = ""
    if any(b.noisy for b in bars):
        out += (
            " Faded segments with a dashed outline (bar note 'noisy') are phases whose "
            "measurement the record calls noisy (reasons under Checks)."
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


def _provenance(jobs: Iterable[Job]) -> str:
    """Energy methods and pricing of `jobs`, each distinct one once."""
    jobs = list(jobs)
    energy = "; ".join(dict.fromkeys(methods(j) for j in jobs))
    priced = "; ".join(dict.fromkeys(pricing(j.record) for j in jobs))
    return f"Energy: {energy}. Priced at {priced}."


def _deviations(study: Study, picked: list[Job], free: tuple[str, ...]) -> str:
    held = [a for a in study.varied if a not in free]
    off = off_baseline(picked, study.base, held)
    return f" Nearest available where the baseline job is missing: {'; '.join(off)}." if off else ""


def _training_and_synthesis(
    study: Study, free: tuple[str, ...], fixed: dict[str, Any]
) -> tuple[list[tuple[tuple, tuple[Bar, ...]]], list[Job]]:
    """Per value of `free`: a training bar and a synthesis bar, each from the job nearest the
    baseline whose phases had all their meters (the two may differ); and the jobs drawn."""
    training = pick(study.usable(TRAINING), study.base, free, fixed)
    synthesis = pick(study.usable(("synthesis",)), study.base, free, fixed)
    keys = sorted(
        {*training, *synthesis},
        key=lambda k: [sort_key(a, v) for a, v in zip(free, k, strict=True)],
    )
    groups = [
        (
            key,
            tuple(
                _phase_bar(picked[key], phases)
                for picked, phases in ((training, TRAINING), (synthesis, ("synthesis",)))
                if key in picked
            ),
        )
        for key in keys
    ]
    return groups, list(dict.fromkeys([*training.values(), *synthesis.values()]))


def fig1_dims(study: Study) -> Figure | Omission:
    name, title = "fig1_dims", TITLES["fig1_dims"]
    if "dims" not in study.varied:
        return Omission(name, title, f"the sweep did not vary dims (only {study.base['dims']})")
    groups, picked = _training_and_synthesis(study, ("dims",), {})
    if not groups:
        return Omission(name, title, "no job has complete meter coverage to compare")
    groups = tuple((str(dims).upper(), bars) for (dims,), bars in groups)
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
    caption = (
        "Projected CO2e of training (autoencoder + diffusion, stacked) and of synthesis, "
        f"with 95% intervals, per image dimensionality. Held fixed: {study.held(('dims',))}."
        f"{_deviations(study, picked, ('dims',))} References: car "
        f"{car:g} g CO2/km, flight {study.factor('flight_g_per_pkm'):g} g/passenger-km, "
        f"per-capita budget {budget:g} kg/year "
        f"({study.factors['budget_kg_per_year']['source']})."
        f"{_marks(study, (b for _, bars in groups for b in bars))} {_provenance(picked)}"
    )
    return Figure(name, title, caption, (panel,))


def fig2_size(study: Study) -> Figure | Omission:
    name, title = "fig2_size", TITLES["fig2_size"]
    if "model" not in study.varied:
        return Omission(name, title, f"the sweep did not vary model (only {study.base['model']})")
    facets = sorted({j.axis("dims") for j in study.jobs}) if "dims" in study.varied else []
    panels, picked_all = [], []
    for dims in facets or [study.base["dims"]]:
        groups, picked = _training_and_synthesis(study, ("model",), {"dims": dims})
        picked_all += picked
        if not groups:
            continue
        params = {j.axis("model"): j.record["params"] for j in picked}
        labelled = tuple(
            (
                f"{model}\n{millions(params[model]['autoencoder'])} + "
                f"{millions(params[model]['unet'])}",
                bars,
            )
            for (model,), bars in groups
        )
        panels.append(Panel(labelled, KG, title=str(dims).upper()))
    if not panels:
        return Omission(name, title, "no job has complete meter coverage to compare")
    free = ("model", "dims")
    caption = (
        "Projected CO2e of training (autoencoder + diffusion, stacked) and synthesis per model "
        "size, with 95% intervals; tick labels give the parameters (autoencoder + UNet). "
        f"Held fixed: {study.held(free)}.{_deviations(study, picked_all, free)}"
        f"{_marks(study, (b for p in panels for _, bars in p.groups for b in bars))} "
        f"{_provenance(picked_all)}"
    )
    return Figure(name, title, caption, tuple(panels))


def fig3_site(study: Study) -> Figure | Omission:
    name, title = "fig3_site", TITLES["fig3_site"]
    where = study.location()
    if study.reference is None:
        return Omission(name, title, "no job has complete meter coverage to re-price")
    if where is None:
        why = "; ".join(study.notes) or "fewer than two zones to compare"
        return Omission(name, title, why)
    job, (low, low_kg, high, high_kg) = study.reference, where
    recorded = job.axis("site")
    bars = tuple(
        _phase_bar(
            study.priced[job.name][i.zone],
            PHASES,
            f"{i.zone}\n{fmt(i.g_per_kwh)} g/kWh" + ("\n(recorded)" if i.zone == recorded else ""),
        )
        for i in study.zones
    )
    factor = high_kg / low_kg
    panels: list[Panel | Heatmap] = [
        Panel((("", bars),), KG, f"{describe(job)}, re-priced: up to {fmt(factor, 2)}× by location")
    ]
    if "site" in study.varied:
        picked = pick(study.usable(PHASES), study.base, ("site",))
        site_bars = tuple(_phase_bar(j, PHASES, str(site)) for (site,), j in picked.items())
        panels.append(Panel((("", site_bars),), KG, "measured at each site (site axis)"))
    caption = (
        f"Projected CO2e of all three phases of {job.name} ({describe(job)}) re-priced at each "
        f"zone's intensity with its recorded PUE {job.record['carbon']['pue']:g}; 95% intervals. "
        f"Location changes emissions up to {fmt(factor, 2)}× ({low.zone} {fmt(low_kg)} kg to "
        f"{high.zone} {fmt(high_kg)} kg). "
        "Tick labels give each zone's intensity; its source is in the zones table. "
        f"Energy: {methods(job)}."
        + (
            " The second panel shows the site axis as measured: each site is its own run, so "
            "run-to-run noise adds to the grid's difference."
            if "site" in study.varied
            else ""
        )
        + _marks(study, (b for p in panels for _, bars in p.groups for b in bars))
    )
    return Figure(name, title, caption, tuple(panels))


def fig3_months(study: Study) -> Figure | Omission:
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
        rows.append(zone + (f" ({fmt(100 * spread[0], 2)}% spread)" if spread else ""))
        values.append(tuple(months[m] * kg_per_g if m in months else None for m in cols))
    seasons = study.seasons()
    top = max(seasons, key=lambda z: seasons[z][0], default=None)
    headline = (
        f"up to {fmt(100 * seasons[top][0], 2)}% by month ({top})" if top else "one month per zone"
    )
    caption = (
        f"Projected total CO2e of {job.name} per zone and month, priced with the monthly mean "
        f"intensity of {study.csv.name} and PUE {job.record['carbon']['pue']:g}. Row labels give "
        "each zone's month-to-month spread, (max − min) / min. Energy: "
        f"{methods(job)}."
        + (
            f" Noisy phases: {', '.join(job.noisy())} (reasons under Checks)."
            if job.noisy()
            else ""
        )
    )
    heatmap = Heatmap(tuple(rows), cols, tuple(values), KG, f"Time of year: {headline}")
    return Figure(name, title, caption, (heatmap,))


# (label, axes compared together, phases whose CO2e the technique changes)
TECHNIQUES = (
    ("sampler", ("sampler", "steps"), ("synthesis",)),
    ("precision", ("precision",), PHASES),
    ("GPUs", ("gpus",), PHASES),
)


def speedups(
    study: Study, headline: bool = False
) -> list[tuple[str, tuple[str, ...], Job, dict[str, Job]]]:
    """Per technique the sweep varied: (label, phases, baseline job, setting label → job), over
    the jobs a comparison (`headline`: a headline) may use."""
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
        out.append((label, phases, base_job, named))
    return out


def _order(value: Any) -> tuple[int, float, str]:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def _setting(free: tuple[str, ...], key: tuple[Any, ...]) -> str:
    return " ".join(
        f"{v}" + (" steps" if a == "steps" else "") for a, v in zip(free, key, strict=True)
    )


def _contradicted(
    study: Study, found: list[tuple[str, tuple[str, ...], Job, dict[str, Job]]]
) -> str:
    pairs = [
        f"{job.name} against {base_job.name}"
        for _, _, base_job, named in found
        for job in named.values()
        if job is not base_job and study.contradicted(job, base_job)
    ]
    if not pairs:
        return ""
    return f" Contradicted by the consistency checks (see Checks): {'; '.join(pairs)}."


def fig4_speedups(study: Study) -> Figure | Omission:
    name, title = "fig4_speedups", TITLES["fig4_speedups"]
    found = speedups(study)
    if not found:
        if any(a in study.varied for a in ("sampler", "steps", "precision", "gpus")):
            return Omission(name, title, "no job has complete meter coverage to compare")
        return Omission(name, title, "the sweep varied none of sampler, steps, precision, gpus")
    shown = list(dict.fromkeys(j for *_, named in found for j in named.values()))
    co2e_groups, time_groups = [], []
    for label, phases, base_job, settings in found:
        what = "synthesis" if phases == ("synthesis",) else "all phases"
        ref_kg, ref_h = base_job.co2e(phases).value, base_job.hours(phases).value
        co2e_bars, time_bars = [], []
        for setting, job in settings.items():
            tick = setting + ("\n(baseline)" if job is base_job else "")
            bar = _phase_bar(job, phases, tick, ref_kg, "co2e", "×")
            if job is not base_job and study.contradicted(job, base_job):
                bar = replace(bar, note=bar.note + "\ncheck failed")
            co2e_bars.append(bar)
            time_bars.append(_phase_bar(job, phases, tick, ref_h, "hours", "×"))
        group = f"{label} ({what})"
        co2e_groups.append((group, tuple(co2e_bars)))
        time_groups.append((group, tuple(time_bars)))
    baseline = ", ".join(f"{a}={study.base[a]}" for a in ("sampler", "steps", "precision", "gpus"))
    panels = (
        Panel(tuple(co2e_groups), "CO2e, × baseline", "CO2e (projected)", unity=True),
        Panel(tuple(time_groups), "time, × baseline", "time (projected)", unity=True),
    )
    caption = (
        f"Projected CO2e and time of each setting divided by the baseline's ({baseline}); "
        "synthesis only for the sampler and step count, all phases for precision and GPU count; "
        "whiskers: the setting's 95% interval over the baseline's mean. Held fixed: "
        f"{study.held(('sampler', 'steps', 'precision', 'gpus'))}. Absolute values are in the "
        f"jobs table.{_marks(study, (b for _, bars in co2e_groups for b in bars))}"
        f"{_contradicted(study, found)} {_provenance(shown)}"
    )
    return Figure(name, title, caption, panels, stacked=True)


def figures(study: Study) -> list[Figure | Omission]:
    if not study.jobs:
        return [Omission(name, title, "no job finished ok") for name, title in TITLES.items()]
    return [f(study) for f in (fig1_dims, fig2_size, fig3_site, fig3_months, fig4_speedups)]
