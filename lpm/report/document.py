"""The report's text: headlines, tables, checks, and one list of blocks rendered as Markdown and
HTML."""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpm.carbon.intensity import Intensity
from lpm.energy.window import Estimate
from lpm.report.advice import advise, noisy_note
from lpm.report.advice import blocks as advice_blocks
from lpm.report.figures import Figure, Omission, describe, speedups
from lpm.report.study import (
    Study,
    assumptions,
    canonical,
    fmt,
    methods,
    pricing,
    provenance,
    scale_stamp,
    zone_label,
    zone_name,
)
from lpm.report.sweep import (
    AXES,
    NO_SPEED_FLAGS,
    PHASES,
    SPREAD_FLAG,
    TRAINING,
    Job,
    matched,
    pick,
    sort_key,
    values,
)

# A report is a list of blocks: ("h1" | "h2" | "p", text), ("ul", [text]),
# ("table", (header, rows)), ("figure", Figure | Omission). Text may hold `code` spans.
Block = tuple[str, Any]
SYNTHESIS = ("synthesis",)
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
AXIS_NAMES = {"gpus": "GPUs", "speed": "speed flags"}


@dataclass(frozen=True)
class Label:
    """A table cell naming a job: short on the page, its full directory on hover (Markdown,
    read as text, keeps the full name)."""

    short: str
    full: str

    def __str__(self) -> str:
        return self.full


def _setup(job: Job) -> str:
    a = job.axes
    setup = f"model {a['model']}, {a['sampler']} {a['steps']} steps, {a['precision']}, {a['gpus']}"
    if a["speed"] != NO_SPEED_FLAGS:
        setup += f", speed flags {a['speed']}"
    if job.runs:
        setup += f", mean of {len(job.runs)} repeats (seeds {', '.join(map(str, job.seeds))})"
    return setup


def _sources(study: Study) -> dict[str, int]:
    """Each distinct provenance (price, energy methods, assumptions) of the jobs, numbered."""
    found = dict.fromkeys(provenance([j]) for j in study.jobs)
    return {text: i for i, text in enumerate(found, start=1)}


def _context(study: Study, *jobs: Job) -> str:
    """What differs between headlines: the setup and the scale of the networks behind the
    numbers, and a footnote mark for their provenance where the jobs have more than one."""
    sources = _sources(study)
    marks = sorted({sources[provenance([j])] for j in jobs}) if len(sources) > 1 else []
    mark = ",".join(str(m) for m in marks).translate(SUPERSCRIPTS)
    return f"[{_setup(jobs[0])}; {scale_stamp(jobs)}]{mark}"


def headline_notes(study: Study) -> list[str]:
    """The headlines' provenance, once: one footnote per distinct price, energy methods and
    assumptions (numbered as the headlines' marks)."""
    sources = _sources(study)
    if len(sources) == 1:
        return [f"Every headline: {next(iter(sources))}"]
    return [f"{str(i).translate(SUPERSCRIPTS)} {text}" for text, i in sources.items()]


def _caveat(*parts: tuple[Job, tuple[str, ...]]) -> str:
    """' Rests on noisy numbers: …' for the noisy phases among `parts` (only with
    --include-noisy: otherwise a headline never uses them)."""
    noisy = [note for job, phases in parts for note in noisy_note(job, phases)]
    return f" Rests on noisy numbers: {'; '.join(dict.fromkeys(noisy))}." if noisy else ""


def _kg(e: Estimate, job: Job) -> str:
    between = " between runs" if job.runs else ""
    return f"≈ {fmt(e.value)} kg CO2e (projected; 95% CI{between} {fmt(e.low)}–{fmt(e.high)})"


def _iterations(job: Job) -> str:
    its = [job.record["phases"][p]["target"]["iterations"] for p in TRAINING]
    if len(set(its)) == 1:
        return f"{its[0]:,} iterations"
    return f"autoencoder {its[0]:,} + diffusion {its[1]:,} iterations"


def _zone(zone: str) -> str:
    """'Norway (NOR)', or the code alone."""
    name = zone_name(zone)
    return f"{name} ({zone})" if name else zone


def _where(i: Intensity) -> str:
    """'Norway (NOR, 30.1 g/kWh, 2023)'."""
    name = zone_name(i.zone)
    where = f"{i.zone}, {fmt(i.g_per_kwh)} g/kWh, {i.period}"
    return f"{name} ({where})" if name else f"{i.zone} ({fmt(i.g_per_kwh)} g/kWh, {i.period})"


def _dims_lines(study: Study) -> list[str]:
    """Training and synthesis per image dimensionality, as the study's car-km headlines; each
    from the job nearest the baseline whose phases may carry a headline."""
    out = []
    car, budget = study.factor("car_g_per_km"), study.factor("budget_kg_per_year")
    base = study.base
    trained = pick(study.usable(TRAINING, headline=True), base, ("dims",))
    sampled = pick(study.usable(SYNTHESIS, headline=True), base, ("dims",))
    both = pick(study.usable(PHASES, headline=True), base, ("dims",))
    for (dims,) in sorted({*trained, *sampled}, key=lambda k: sort_key("dims", k[0])):
        d = str(dims).upper()
        if job := trained.get((dims,)):
            train = job.co2e(TRAINING)
            out.append(
                f"Training a {d} LDM ({_iterations(job)}) emits {_kg(train, job)}, like driving "
                f"{fmt(train.value * 1000 / car)} km.{_caveat((job, TRAINING))} "
                f"{_context(study, job)}"
            )
        if job := sampled.get((dims,)):
            synth = job.co2e(SYNTHESIS)
            samples = job.record["phases"]["synthesis"]["target"]["samples"]
            out.append(
                f"Synthesizing {samples:,} {d} samples emits {_kg(synth, job)}, like driving "
                f"{fmt(synth.value * 1000 / car)} km ({fmt(100 * synth.value / budget, 2)}% of "
                f"one person's annual 1.5 °C budget).{_caveat((job, SYNTHESIS))} "
                f"{_context(study, job)}"
            )
        if job := both.get((dims,)):
            ratio = job.co2e(SYNTHESIS).value / job.co2e(TRAINING).value
            out.append(
                f"In {d}, synthesis emits {fmt(ratio, 2)}× the CO2e of training (projected)."
                f"{_caveat((job, PHASES))} {_context(study, job)}"
            )
    return out


def _size_line(study: Study) -> list[str]:
    if "model" not in study.varied:
        return []
    jobs = study.usable(PHASES, headline=True)
    sizes = list(matched(jobs, study.base, ("model",), {"dims": study.base["dims"]}).items())
    if len(sizes) < 2:
        return []
    ((small,), first), ((large,), last) = sizes[0], sizes[-1]
    return [
        f"A {large} {str(study.base['dims']).upper()} model emits "
        f"{fmt(last.co2e().value / first.co2e().value, 2)}× the CO2e of a {small} one "
        f"({fmt(last.co2e().value)} vs {fmt(first.co2e().value)} kg, all phases, projected)."
        f"{_caveat((last, PHASES), (first, PHASES))} {_context(study, last, first)}"
    ]


def _site_lines(study: Study) -> list[str]:
    out = []
    job = next(iter(pick(study.usable(PHASES, headline=True), study.base).values()), None)
    where = study.location(job) if job else None
    if where:
        low, low_kg, high, high_kg = where
        out.append(
            f"Location changes emissions up to {fmt(high_kg / low_kg, 2)}×: {describe(job)} "
            f"emits {fmt(low_kg)} kg CO2e in {_where(low)} and {fmt(high_kg)} kg in "
            f"{_where(high)} (projected, re-priced, PUE {job.record['carbon']['pue']:g})."
            f"{_caveat((job, PHASES))} {_context(study, job)}"
        )
    seasons = study.seasons()
    if seasons:
        zone = max(seasons, key=lambda z: seasons[z][0])
        spread, low_month, high_month = seasons[zone]
        out.append(
            f"Time of year changes emissions by up to {fmt(100 * spread, 2)}% ({_zone(zone)}: "
            f"cleanest month {low_month}, dirtiest {high_month}; monthly means of "
            f"{study.csv.name})."
        )
    return out


def _speedup_lines(study: Study) -> list[str]:
    """Per technique, the setting that saves the most CO2e against the baseline; never a
    comparison a consistency check contradicts."""
    out = []
    for t in speedups(study, headline=True):
        phases, base_job = t.phases, t.base_job
        what = "synthesis" if phases == SYNTHESIS else "total"
        base_name = next(s for s, j in t.settings.items() if j is base_job)
        others = {
            s: j
            for s, j in t.settings.items()
            if j is not base_job and not study.contradicted(j, base_job)
        }
        if not others:
            continue
        kg = {s: t.measure(j)(phases).value for s, j in others.items()}
        best = min(others, key=kg.__getitem__)
        job, ref = others[best], base_job.co2e(phases).value
        hours = t.measure(job, "hours")(phases).value
        how = f" ({t.how})" if t.how else ""
        out.append(
            f"{t.label[0].upper()}{t.label[1:]}: {best} instead of {base_name}{how}: "
            f"{fmt(kg[best] / ref, 2)}× the {what} CO2e ({fmt(kg[best])} vs {fmt(ref)} kg, "
            f"projected), {fmt(hours / base_job.hours(phases).value, 2)}× the time."
            f"{_caveat((job, phases), (base_job, phases))} {_context(study, job)}"
        )
    return out


def _embodied_lines(study: Study) -> list[str]:
    """Per dims, the embodied emissions of the job the headlines use, on a line of their own
    beside its operational CO2e and with the sum: never folded into the operational numbers."""
    out = []
    for (dims,), job in pick(study.usable(PHASES, headline=True), study.base, ("dims",)).items():
        if (embodied := job.embodied()) is None:
            continue
        operational = job.co2e()
        out.append(
            f"Embodied emissions (manufacturing the hardware, amortised over its service life by "
            f"the device-hours used) add {_kg(embodied, job)} to the {fmt(operational.value)} kg "
            f"operational CO2e of {str(dims).upper()} training and synthesis: "
            f"{fmt((operational + embodied).value)} kg in all.{_caveat((job, PHASES))} "
            f"{_context(study, job)}"
        )
    return out


def headlines(study: Study) -> list[str]:
    """The study's sentences, from this sweep's numbers: none from a phase with incomplete meter
    coverage, none from a noisy phase unless `study.include_noisy`, none a check contradicts."""
    return (
        _dims_lines(study)
        + _embodied_lines(study)
        + _size_line(study)
        + _site_lines(study)
        + _speedup_lines(study)
    )


# --- tables ---------------------------------------------------------------------------------------


def _ci(e: Estimate) -> str:
    """'1.2 (1.1–1.3)'."""
    return f"{fmt(e.value)} ({fmt(e.low)}–{fmt(e.high)})"


def _cell(job: Job, phases: tuple[str, ...], text: str) -> str:
    """`text` for `phases` of `job`, or 'incomplete'; marked '(noisy)' when a phase is noisy."""
    if any(job.gap(p) for p in phases):
        return "incomplete"
    return text + (" (noisy)" if job.noisy(phases) else "")


def _verdicts(job: Job) -> str:
    """'stable', or per status the phases: 'noisy: diffusion; incomplete: synthesis'."""
    by: dict[str, list[str]] = {}
    for phase in PHASES:
        status = "incomplete" if job.gap(phase) else job.verdict(phase).status
        by.setdefault(status, []).append(phase)
    if list(by) == ["stable"]:
        return "stable"
    if list(by) == ["unknown"]:
        return "unknown (no verdict recorded)"
    return "; ".join(f"{s}: {', '.join(ps)}" for s, ps in by.items() if s != "stable")


def _runs(job: Job) -> str:
    return f"{len(job.runs)} (seeds {', '.join(map(str, job.seeds))})" if job.runs else "1"


def _labeller(study: Study) -> Any:
    return lambda name: Label(study.short(name), name)


def _jobs_table(study: Study) -> tuple[list[str], list[list[str]]]:
    # Speed flags get a column once a job has any.
    shown = [
        a for a in AXES if a != "speed" or any(j.axis(a) != NO_SPEED_FLAGS for j in study.jobs)
    ]
    header = ["job", *(AXIS_NAMES.get(a, a) for a in shown), "runs"]
    # Embodied emissions, where recorded, get columns of their own beside the operational total.
    embodied = any(j.embodied() is not None for j in study.jobs)
    header += ["training kg", "synthesis kg"]
    header += (
        ["operational kg (95% CI)", "embodied kg (95% CI)", "operational + embodied kg (95% CI)"]
        if embodied
        else ["total kg (95% CI)"]
    )
    header += ["car km", "hours", "verdict"]
    car = study.factor("car_g_per_km")
    label = _labeller(study)
    rows = []
    for job in study.jobs:
        total = job.co2e()
        rows.append(
            [
                label(job.name),
                *(str(job.axis(a)) for a in shown),
                _runs(job),
                _cell(job, TRAINING, fmt(job.co2e(TRAINING).value)),
                _cell(job, SYNTHESIS, fmt(job.co2e(SYNTHESIS).value)),
                _cell(job, PHASES, _ci(total)),
                *(_embodied_cells(job) if embodied else ()),
                _cell(job, PHASES, fmt(total.value * 1000 / car)),
                _cell(job, PHASES, fmt(job.hours().value)),
                _verdicts(job),
            ]
        )
    return header, rows


def _embodied_cells(job: Job) -> list[str]:
    """Embodied kg CO2e and operational plus embodied, each with its 95% interval."""
    if (embodied := job.embodied()) is None:
        return ["not recorded", "not recorded"]
    return [_cell(job, PHASES, _ci(embodied)), _cell(job, PHASES, _ci(job.co2e() + embodied))]


def _repeats_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Per pooled job and phase: each run with its within-run interval, the pool's mean with the
    between-run interval, and how far the within-run intervals understate the spread."""
    header = ["job", "phase", "each run: kg CO2e (within-run 95% CI)"]
    header += ["pooled kg CO2e (between-run 95% CI)", "verdict", "spread / within-run"]
    rows = []
    label = _labeller(study)
    for job in (j for j in study.jobs if j.runs):
        for phase in PHASES:
            runs = job.pooled((phase,))
            each = "; ".join(
                f"{job.label(r)}: {_ci(e)}" for r, e in zip(runs, job.within((phase,)), strict=True)
            )
            pooled = f"{_ci(job.co2e((phase,)))}, n={len(runs)}"
            verdict = job.verdict(phase)
            ratio = job.understated(phase)
            spread = "" if ratio is None else f"×{fmt(ratio, 2)}"
            spread += " (flagged)" if ratio is not None and ratio > SPREAD_FLAG else ""
            rows.append(
                [
                    label(job.name),
                    phase,
                    each,
                    _cell(job, (phase,), pooled),
                    verdict.status + (f" ({verdict.reasons[0]})" if verdict.reasons else ""),
                    spread,
                ]
            )
    return header, rows


def _whatif_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Each job's total at its recorded site and at the cleanest, a middle and the dirtiest zone."""
    recorded = {canonical(j.axis("site")) for j in study.jobs}
    others = [i for i in study.zones if canonical(i.zone) not in recorded]
    contrast = list(dict.fromkeys(others[k] for k in (0, len(others) // 2, -1))) if others else []
    header = ["job", "recorded site"]
    header += [f"{zone_label(i.zone)}, {fmt(i.g_per_kwh)} g/kWh" for i in contrast]
    label = _labeller(study)
    rows = [
        [
            label(job.name),
            _cell(job, PHASES, f"{fmt(job.co2e().value)} ({job.axis('site')})"),
            *(
                _cell(job, PHASES, fmt(study.priced[job.name][i.zone].co2e().value))
                for i in contrast
            ),
        ]
        for job in study.jobs
    ]
    return header, rows


def _zones_table(study: Study) -> tuple[list[str], list[list[str]]]:
    job = study.reference
    header = ["zone", "name", "g CO2e/kWh", "period", "kind", "basis", "source"]
    header.append(f"kg CO2e of {study.short(job.name)}")
    at = study.priced[job.name]
    recorded = canonical(job.axis("site"))
    rows = [
        [
            i.zone + (" (recorded)" if canonical(i.zone) == recorded else ""),
            zone_name(i.zone),
            fmt(i.g_per_kwh),
            i.period,
            i.kind,
            i.basis,
            i.source,
            _cell(job, PHASES, fmt(at[i.zone].co2e().value)),
        ]
        for i in study.zones
    ]
    return header, rows


def _setup_list(study: Study) -> list[str]:
    jobs = study.jobs
    counts = Counter(j.status for j in study.sweep.jobs)
    items = [
        f"Sweep `{study.sweep.root}`: {len(study.sweep.jobs)} jobs "
        f"({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'}).",
    ]
    if not jobs:
        return items
    pools = [j for j in jobs if j.runs]
    unknown = [j.name for j in jobs if any(j.verdict(p).status == "unknown" for p in PHASES)]
    items += [
        "Varied: "
        + (
            "; ".join(f"{a} = {', '.join(map(str, values(jobs, a)))}" for a in study.varied)
            or "nothing"
        )
        + ".",
        "Baseline (held where an axis is not compared): "
        + ", ".join(f"{a}={v}" for a, v in study.base.items())
        + ".",
        "All numbers are PROJECTED to each job's target budget (training iterations, samples) "
        "from measured windows, not measured totals; 95% intervals from the windows' spread"
        + ("; for pooled repeats, between runs." if pools else "."),
        "Numbers marked (noisy) rest on a phase whose measurement its record calls noisy "
        "(reasons under Checks): "
        + (
            "headlines may use them, and then say so (--include-noisy)."
            if study.include_noisy
            else "headlines leave them out (--include-noisy puts them back, saying so)."
        )
        + " A phase some meter did not cover is 'incomplete' and left out of every comparison.",
        "Energy methods: " + "; ".join(dict.fromkeys(methods(j) for j in jobs)) + ".",
        "Priced at: " + "; ".join(dict.fromkeys(pricing(j.record) for j in jobs)) + ".",
        "Hardware: "
        + "; ".join(
            dict.fromkeys(
                f"{j.record['hardware'].get('gpu_name') or j.record['hardware'].get('cpu_model')}"
                f" ({j.axis('gpus')})"
                for j in jobs
                if j.record.get("hardware")
            )
        )
        + ".",
        f"{scale_stamp(jobs)}.",
        "Equivalents: "
        + "; ".join(f"{name} {f['value']:g} ({f['source']})" for name, f in study.factors.items())
        + ".",
        *study.notes,
    ]
    if pools:
        runs = sum(len(j.runs) for j in pools)
        items.append(
            f"Repeats: {len(pools)} jobs pooled from {runs} runs (same job, other seeds): the "
            "mean over runs with a between-run 95% t-interval stands in every comparison."
        )
    if unknown:
        items.append(
            f"Verdict unknown for {len(unknown)} of {len(jobs)} jobs (records written before lpm "
            "recorded verdicts and meter coverage): their numbers are used unmarked, their "
            "stability and coverage unchecked."
        )
    return items


def _checks_list(study: Study) -> list[str]:
    items = []
    for check in study.checks:
        items.append(f"{check.name}: {check.summary}.")
        items += [f"WARNING ({check.name}): {flag}." for flag in check.flags]
    return items


def document(study: Study, figures: list[Figure | Omission], lines: list[str]) -> list[Block]:
    noisy = sorted({p for j in study.jobs for p in j.noisy()}, key=PHASES.index)
    none = (
        "No job finished ok: no headline to state."
        if not study.jobs
        else "No headline: every comparison rests on noisy or incomplete numbers."
    )
    blocks: list[Block] = [("h1", f"lpm report: {study.sweep.root.name}")]
    blocks += [("h2", "Setup"), ("ul", _setup_list(study))]
    if found := assumptions(study.jobs):
        blocks += [("p", "Assumptions the numbers rest on:"), ("ul", found)]
    blocks += [("h2", "Headlines"), ("ul", lines or [none])]
    if lines:
        blocks += [("p", note) for note in headline_notes(study)]
    if noisy and not study.include_noisy:
        blocks.append(
            ("p", f"Left out of the headlines: noisy {', '.join(noisy)} numbers (marked in the "
             "tables and figures; --include-noisy puts them back, saying so).")
        )  # fmt: skip
    blocks += [("h2", "Checks"), ("ul", _checks_list(study) or ["No check ran."])]
    blocks += [("h2", "Figures"), *(("figure", f) for f in figures)]
    if study.jobs:
        blocks += [("h2", "Jobs compared"), ("table", _jobs_table(study))]
    if any(j.runs for j in study.jobs):
        blocks += [
            ("h2", "Repeats"),
            ("p", "Jobs that differ only in their seed, pooled: each run's projected CO2e with "
             "its within-run interval, and the mean over runs with the between-run 95% "
             "t-interval; the last column is the between-run standard deviation over the mean "
             f"within-run standard error (flagged beyond ×{SPREAD_FLAG:g})."),
            ("table", _repeats_table(study)),
        ]  # fmt: skip
    if study.priced and study.reference is not None:
        blocks += [
            ("h2", "What if it ran elsewhere"),
            ("p", "Total projected kg CO2e of each job re-priced at other zones (same energy, "
             "same PUE)."),
            ("table", _whatif_table(study)),
            ("h2", "Zones"),
            ("table", _zones_table(study)),
        ]  # fmt: skip
    if study.jobs:  # `python -m lpm.advise`, at the recorded sites and the zones above
        blocks += advice_blocks(advise(study, study.zones))
    label = _labeller(study)
    problems = [[label(j.name), j.status, j.error or ""] for j in study.sweep.jobs if not j.ok]
    problems += [
        [label(run), f"{phase} incomplete", f"{why}; kept out of comparisons"]
        for run, phase, why in study.excluded()
    ]
    blocks.append(("h2", "Jobs not compared"))
    if problems:
        blocks.append(("table", (["job", "status", "error"], problems)))
    else:
        blocks.append(("p", "None: every job finished ok, every phase with all its meters."))
    return blocks


# --- rendering ------------------------------------------------------------------------------------


def _md_cell(cell: str | Label) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def _caption(figure: Figure) -> str:
    return f"{figure.stamp}. {figure.caption}" if figure.stamp else figure.caption


def markdown(blocks: list[Block]) -> str:
    out = []
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {body}")
        elif kind == "p":
            out.append(body)
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in body))
        elif kind == "table":
            header, rows = body
            lines = [header, ["---"] * len(header), *rows]
            out.append("\n".join("| " + " | ".join(map(_md_cell, r)) + " |" for r in lines))
        elif isinstance(body, Omission):
            out.append(f"### {body.title}\n\n*{body.name} omitted: {body.reason}.*")
        else:
            image = f"![{body.title}]({body.name}.png)"
            out.append(f"### {body.title}\n\n{image}\n\n{_caption(body)}")
    return "\n\n".join(out) + "\n"


STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
.table{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top;
overflow-wrap:break-word;max-width:32em}
th{background:#f3f3f3} td span[title]{text-decoration:underline dotted;cursor:help}
figure{margin:1.5em 0} figure img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#444} .omitted{color:#666;font-style:italic}
.stamp{color:#9e1b1b;font-style:italic} code{font-size:90%;background:#f3f3f3;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans as <code> (no Markdown shows through)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_cell(cell: str | Label) -> str:
    if isinstance(cell, Label) and cell.short != cell.full:
        return f'<td><span title="{html.escape(cell.full)}">{_inline(cell.short)}</span></td>'
    return f"<td>{_inline(str(cell))}</td>"


def _html_figure(body: Figure | Omission, out: Path) -> str:
    e = html.escape
    if isinstance(body, Omission):
        return (
            f'<h3>{e(body.title)}</h3><p class="omitted" id="{body.name}">'
            f"{e(body.name)} omitted: {e(body.reason)}.</p>"
        )
    svg = base64.b64encode((out / f"{body.name}.svg").read_bytes()).decode("ascii")
    return (
        f'<h3>{e(body.title)}</h3><figure id="{body.name}">'
        f'<img alt="{e(body.title)}" src="data:image/svg+xml;base64,{svg}">'
        "<figcaption>"
        + (f'<span class="stamp">{e(body.stamp)}.</span> ' if body.stamp else "")
        + f"{_inline(body.caption)} Files: "
        f'<a href="{body.name}.png">{body.name}.png</a>, '
        f'<a href="{body.name}.svg">{body.name}.svg</a>.</figcaption></figure>'
    )


def to_html(blocks: list[Block], out: Path) -> str:
    """A self-contained page: figures embedded, no external CSS, scripts or fonts."""
    e = html.escape
    parts = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{_inline(body)}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in body) + "</ul>")
        elif kind == "table":
            header, rows = body
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(map(_html_cell, row)) + "</tr>" for row in rows)
            parts.append(
                f'<div class="table"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{cells}</tbody></table></div>"
            )
        else:
            parts.append(_html_figure(body, out))
    title = e(blocks[0][1])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
