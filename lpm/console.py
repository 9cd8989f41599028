"""What a job and a sweep say when they end: one summary line per job, one table per sweep.

    ok in 41.2 s · projected: 12.4 (11.9–13.1) kWh, 4.72 (4.53–4.99) kg CO2e operational
    (≈ 43.9 car-km) + 0.386 (0.371–0.405) kg embodied · autoencoder stable, diffusion stable,
    synthesis noisy -> multirun/…/record.json

Standard library and lpm's record types only: `lpm.run` says these without loading torch.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lpm.energy.window import Estimate
from lpm.record.load import Loaded, dig

TOTAL = "total"


def number(x: float) -> str:
    """Three significant digits; whole numbers with thousands separators from 1,000 on."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def interval(e: Estimate) -> str:
    """`value (low–high)`."""
    return f"{number(e.value)} ({number(e.low)}–{number(e.high)})"


def _estimate(value: float | None, ci95: Sequence[float] | None) -> Estimate | None:
    if value is None:
        return None
    low, high = ci95 if ci95 and None not in ci95 else (value, value)
    return Estimate(value, low, high)


def projected(record: Mapping[str, Any]) -> dict[str, dict[str, Estimate]]:
    """Projected `energy_kwh` and `co2e_kg` per phase and, under `total`, for the job.

    Phases the record does not project are left out; `total` is there when the record has
    totals (every phase projected). The total CO2e interval adds the phases' bounds, as the
    record's total energy interval does.
    """
    out: dict[str, dict[str, Estimate]] = {}
    for name, phase in (record.get("phases") or {}).items():
        energy = _estimate(*(dig(phase, f"projected.energy_kwh{k}") for k in ("", "_ci95")))
        co2e = _estimate(*(dig(phase, f"co2e_kg.projected{k}") for k in ("", "_ci95")))
        if energy is not None and co2e is not None:
            out[name] = {"energy_kwh": energy, "co2e_kg": co2e}
    totals = record.get("totals") or {}
    energy = _estimate(totals.get("energy_kwh"), totals.get("energy_kwh_ci95"))
    if energy is not None and totals.get("co2e_kg") is not None and out:
        co2e = sum((p["co2e_kg"] for p in out.values()), Estimate(0.0, 0.0, 0.0))
        out[TOTAL] = {"energy_kwh": energy, "co2e_kg": co2e}
    return out


def embodied(record: Mapping[str, Any]) -> Estimate | None:
    """The job's projected embodied kg CO2e with its interval; None for a record without."""
    return _estimate(dig(record, "totals.embodied_kg"), dig(record, "totals.embodied_kg_ci95"))


def verdicts(record: Mapping[str, Any]) -> dict[str, str]:
    """`stable` or `noisy` per phase that has a verdict."""
    return {
        name: status
        for name, phase in (record.get("phases") or {}).items()
        if (status := dig(phase, "verdict.status"))
    }


def job_line(record: Mapping[str, Any], path: str | Path) -> str:
    """A job's summary: status and time, projected kWh and operational kg CO2e with their
    intervals and car-km, embodied kg CO2e beside them, each phase's verdict, the record's path."""
    seconds = dig(record, "job.seconds")
    parts = [f"{record.get('status')}" + (f" in {seconds:.1f} s" if seconds is not None else "")]
    total = projected(record).get(TOTAL)
    if total is not None:
        scale = ", CPU scale" if dig(record, "axes.scale") == "cpu" else ""
        car_km = dig(record, "totals.car_km")
        made = embodied(record)
        parts.append(
            f"projected{scale}: {interval(total['energy_kwh'])} kWh, "
            f"{interval(total['co2e_kg'])} kg CO2e operational"
            + (f" (≈ {number(car_km)} car-km)" if car_km is not None else "")
            + (f" + {interval(made)} kg embodied" if made is not None else "")
        )
    said = verdicts(record)
    if said:
        parts.append(", ".join(f"{phase} {status}" for phase, status in said.items()))
    return " · ".join(parts) + f" -> {path}"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _varying(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys with more than one scalar value between rows, in first-seen order. Lists and dicts
    (image size, batches) follow from scalar axes and would only widen the table; a job without
    a value (one that failed before it was known) does not make a key vary."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for k, v in row.items():
            if isinstance(v, (str, int, float)):
                values.setdefault(k, set()).add(_text(v))
    return [k for k, seen in values.items() if len(seen) > 1]


def _overrides(loaded: Loaded) -> dict[str, str]:
    items = dig(loaded.record, "job.overrides") or []
    return dict(item.split("=", 1) for item in items if "=" in item)


def sweep_table(loaded: Sequence[Loaded]) -> list[str]:
    """One row per job: the axes that vary between the jobs (the overrides that vary when no
    axis does, e.g. `site`), status, projected operational and embodied kg CO2e with their
    intervals, verdict (`stable`, or `noisy:` and the noisy phases)."""
    if not loaded:
        return []
    axes = [dig(job.record, "axes") or {} for job in loaded]
    columns = _varying(axes)
    if not columns:
        axes = [_overrides(job) for job in loaded]
        columns = _varying(axes)
    header = [*(columns or ["job"]), "status", "kg CO2e operational", "kg embodied", "verdict"]
    rows = []
    for job, values in zip(loaded, axes, strict=True):
        record = job.record or {}
        total = projected(record).get(TOTAL)
        said = verdicts(record)
        noisy = [phase for phase, status in said.items() if status != "stable"]
        verdict = ("noisy: " + ", ".join(noisy) if noisy else "stable") if said else "-"
        shown = [_text(values.get(c)) for c in columns] or [job.name]
        co2e = interval(total["co2e_kg"]) if total else "-"
        made = embodied(record)
        rows.append([*shown, job.status, co2e, "-" if made is None else interval(made), verdict])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]  # fmt: skip


def report_command(sweep: str | Path) -> str:
    """The command that reports on `sweep`, quoted for a POSIX shell."""
    return f"python -m lpm.report {shlex.quote(str(sweep))}"
