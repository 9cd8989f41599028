"""The report's text: headlines, tables, and one list of blocks rendered as Markdown and HTML."""

from __future__ import annotations

import base64
import html
from collections import Counter
from pathlib import Path
from typing import Any

from lpm.report.figures import Figure, Omission, describe, speedups
from lpm.report.study import Study, fmt, methods, pricing
from lpm.report.sweep import TRAINING, Estimate, Job, pick, values

# A report is a list of blocks: ("h1" | "h2" | "p", text), ("ul", [text]),
# ("table", (header, rows)), ("figure", Figure | Omission).
Block = tuple[str, Any]


def _setup(job: Job) -> str:
    a = job.axes
    return f"model {a['model']}, {a['sampler']} {a['steps']} steps, {a['precision']}, {a['gpus']}"


def _context(job: Job) -> str:
    """What stands behind a headline's numbers: the job, its meters and its price."""
    return f"[{_setup(job)}; energy {methods(job)}; priced at {pricing(job.record)}]"


def _kg(e: Estimate) -> str:
    return f"≈ {fmt(e.mean)} kg CO2e (projected; 95% CI {fmt(e.low)}–{fmt(e.high)})"


def _iterations(job: Job) -> str:
    its = [job.record["phases"][p]["target"]["iterations"] for p in TRAINING]
    if len(set(its)) == 1:
        return f"{its[0]:,} iterations"
    return f"autoencoder {its[0]:,} + diffusion {its[1]:,} iterations"


def _dims_lines(study: Study) -> list[str]:
    """Training and synthesis per image dimensionality, as the study's car-km headlines."""
    out = []
    car, budget = study.factor("car_g_per_km"), study.factor("budget_kg_per_year")
    for (dims,), job in pick(study.jobs, study.base, ("dims",)).items():
        d, context = str(dims).upper(), _context(job)
        train, synth = job.co2e(TRAINING), job.co2e(("synthesis",))
        samples = job.record["phases"]["synthesis"]["target"]["samples"]
        out += [
            f"Training a {d} LDM ({_iterations(job)}) emits {_kg(train)}, like driving "
            f"{fmt(train.mean * 1000 / car)} km. {context}",
            f"Synthesizing {samples:,} {d} samples emits {_kg(synth)}, like driving "
            f"{fmt(synth.mean * 1000 / car)} km ({fmt(100 * synth.mean / budget, 2)}% of one "
            f"person's annual 1.5 °C budget). {context}",
            f"In {d}, synthesis emits {fmt(synth.mean / train.mean, 2)}× the CO2e of training "
            "(projected).",
        ]
    return out


def _size_line(study: Study) -> list[str]:
    if "model" not in study.varied:
        return []
    sizes = list(pick(study.jobs, study.base, ("model",), {"dims": study.base["dims"]}).items())
    ((small,), first), ((large,), last) = sizes[0], sizes[-1]
    return [
        f"A {large} {str(study.base['dims']).upper()} model emits "
        f"{fmt(last.co2e().mean / first.co2e().mean, 2)}× the CO2e of a {small} one "
        f"({fmt(last.co2e().mean)} vs {fmt(first.co2e().mean)} kg, all phases, projected). "
        f"{_context(last)}"
    ]


def _site_lines(study: Study) -> list[str]:
    out = []
    where = study.location()
    if where:
        (low, low_kg, high, high_kg), job = where, study.reference
        out.append(
            f"Location changes emissions up to {fmt(high_kg / low_kg, 2)}×: {describe(job)} "
            f"emits {fmt(low_kg)} kg CO2e in {low.zone} ({fmt(low.g_per_kwh)} g/kWh, "
            f"{low.period}) and {fmt(high_kg)} kg in {high.zone} ({fmt(high.g_per_kwh)} g/kWh, "
            f"{high.period}) (projected, re-priced, PUE {job.record['carbon']['pue']:g}). "
            f"[{_setup(job)}; energy {methods(job)}]"
        )
    seasons = study.seasons()
    if seasons:
        zone = max(seasons, key=lambda z: seasons[z][0])
        spread, low_month, high_month = seasons[zone]
        out.append(
            f"Time of year changes emissions by up to {fmt(100 * spread, 2)}% ({zone}: cleanest "
            f"month {low_month}, dirtiest {high_month}; monthly means of {study.csv.name})."
        )
    return out


def _speedup_lines(study: Study) -> list[str]:
    """Per technique, the setting that saves the most CO2e against the baseline."""
    out = []
    for label, phases, base_job, settings in speedups(study):
        what = "synthesis" if phases == ("synthesis",) else "total"
        base_name = next(s for s, j in settings.items() if j is base_job)
        others = {s: j for s, j in settings.items() if j is not base_job}
        if not others:
            continue
        best = min(others, key=lambda s: others[s].co2e(phases).mean)
        job, ref = others[best], base_job.co2e(phases).mean
        kg, hours = job.co2e(phases).mean, job.hours(phases).mean
        out.append(
            f"{label[0].upper()}{label[1:]}: {best} instead of {base_name}: "
            f"{fmt(kg / ref, 2)}× the {what} CO2e ({fmt(kg)} vs {fmt(ref)} kg, projected), "
            f"{fmt(hours / base_job.hours(phases).mean, 2)}× the time. {_context(job)}"
        )
    return out


def headlines(study: Study) -> list[str]:
    """The study's sentences, from this sweep's numbers."""
    return _dims_lines(study) + _size_line(study) + _site_lines(study) + _speedup_lines(study)


# --- tables ---------------------------------------------------------------------------------------


def _jobs_table(study: Study) -> tuple[list[str], list[list[str]]]:
    header = ["job", "model", "dims", "sampler", "steps", "precision", "GPUs", "site"]
    header += ["training kg", "synthesis kg", "total kg (95% CI)", "car km", "hours"]
    car = study.factor("car_g_per_km")
    rows = []
    for job in study.jobs:
        total = job.co2e()
        rows.append(
            [
                job.name,
                *(str(v) for v in job.axes.values()),
                fmt(job.co2e(TRAINING).mean),
                fmt(job.co2e(("synthesis",)).mean),
                f"{fmt(total.mean)} ({fmt(total.low)}–{fmt(total.high)})",
                fmt(total.mean * 1000 / car),
                fmt(job.hours().mean),
            ]
        )
    return header, rows


def _whatif_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Each job's total at its recorded site and at the cleanest, a middle and the dirtiest zone."""
    recorded = {j.axis("site") for j in study.jobs}
    others = [i for i in study.zones if i.zone not in recorded]
    contrast = list(dict.fromkeys(others[k] for k in (0, len(others) // 2, -1))) if others else []
    header = ["job", "recorded site", *(f"{i.zone} ({fmt(i.g_per_kwh)} g/kWh)" for i in contrast)]
    rows = [
        [
            job.name,
            f"{fmt(job.co2e().mean)} ({job.axis('site')})",
            *(fmt(study.priced[job.name][i.zone].co2e().mean) for i in contrast),
        ]
        for job in study.jobs
    ]
    return header, rows


def _zones_table(study: Study) -> tuple[list[str], list[list[str]]]:
    job = study.reference
    header = ["zone", "g CO2e/kWh", "period", "kind", "basis", "source", f"kg CO2e of {job.name}"]
    at = study.priced[job.name]
    rows = [
        [i.zone, fmt(i.g_per_kwh), i.period, i.kind, i.basis, i.source, fmt(at[i.zone].co2e().mean)]
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
        "from measured windows, not measured totals; 95% intervals from the windows' spread.",
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
        + f"; scale {', '.join(sorted({str(j.record['axes'].get('scale')) for j in jobs}))}.",
        "Equivalents: "
        + "; ".join(f"{name} {f['value']:g} ({f['source']})" for name, f in study.factors.items())
        + ".",
        *study.notes,
    ]
    return items


def document(study: Study, figures: list[Figure | Omission], lines: list[str]) -> list[Block]:
    blocks: list[Block] = [
        ("h1", f"lpm report: {study.sweep.root.name}"),
        ("ul", _setup_list(study)),
        ("h2", "Headlines"),
        ("ul", lines or ["No job finished ok: no headline to state."]),
        ("h2", "Figures"),
        *(("figure", f) for f in figures),
    ]
    if study.jobs:
        blocks += [("h2", "Jobs compared"), ("table", _jobs_table(study))]
    if study.priced:
        blocks += [
            ("h2", "What if it ran elsewhere"),
            ("p", "Total projected kg CO2e of each job re-priced at other zones (same energy, "
             "same PUE)."),
            ("table", _whatif_table(study)),
            ("h2", "Zones"),
            ("table", _zones_table(study)),
        ]  # fmt: skip
    problems = [j for j in study.sweep.jobs if not j.ok]
    blocks.append(("h2", "Jobs not compared"))
    if problems:
        rows = [[j.name, j.status, j.error or ""] for j in problems]
        blocks.append(("table", (["job", "status", "error"], rows)))
    else:
        blocks.append(("p", "None: every job finished ok."))
    return blocks


# --- rendering ------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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
            out.append(f"### {body.title}\n\n![{body.title}]({body.name}.png)\n\n{body.caption}")
    return "\n\n".join(out) + "\n"


STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3} figure{margin:1.5em 0} figure img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#444} .omitted{color:#666;font-style:italic}
"""


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
        f"<figcaption>{e(body.caption)} Files: "
        f'<a href="{body.name}.png">{body.name}.png</a>, '
        f'<a href="{body.name}.svg">{body.name}.svg</a>.</figcaption></figure>'
    )


def to_html(blocks: list[Block], out: Path) -> str:
    """A self-contained page: figures embedded, no external CSS, scripts or fonts."""
    e = html.escape
    parts = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{e(body)}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in body) + "</ul>")
        elif kind == "table":
            header, rows = body
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            cells = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        else:
            parts.append(_html_figure(body, out))
    title = e(blocks[0][1])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
