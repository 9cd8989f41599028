"""Price measured and projected energy: `co2e = energy_kWh × PUE × intensity(zone, time)`.

Works on the record's plain-dict phases so that finished records can be re-priced for any zone
and month without rerunning anything. Every assumption a price rests on is returned with it, one
line each, starting with "carbon: ", "equivalents: " or "embodied: " (`ASSUMPTION_PREFIXES`): a
re-pricing replaces those lines and keeps the record's others (measurement assumptions).

Embodied emissions (`lpm.carbon.embodied`) come out of the same call, beside the operational CO2e
and never in it: they depend on the hardware and the hours, not on zone or month, so re-pricing
reproduces them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lpm.carbon.embodied import Embodied
from lpm.carbon.equivalents import Factors, equivalents
from lpm.carbon.intensity import Intensity, co2e_kg
from lpm.energy.window import J_PER_KWH

ASSUMPTION_PREFIXES = ("carbon: ", "equivalents: ", "embodied: ")


def _kg(kwh: float | None, pue: float, intensity: Intensity) -> float | None:
    return None if kwh is None else co2e_kg(kwh, pue, intensity)


def price(
    phases: Mapping[str, Mapping[str, Any]],
    intensity: Intensity,
    pue: float,
    factors: Factors | None = None,
    embodied: Embodied | None = None,
) -> dict[str, Any]:
    """CO2e of every phase, measured and projected, and the job's projected totals.

    Args:
        phases: the record's `phases` mapping (each with `measured.energy_j.total` in joules
            and `projected.energy_kwh` with `energy_kwh_ci95`).
        intensity: grid carbon intensity to price at.
        pue: data-centre power usage effectiveness (facility / IT energy).
        factors: everyday-equivalent factors.
        embodied: the job's hardware and its embodied factors; None prices no embodied CO2e.

    Returns:
        `{"carbon": {...}, "co2e_kg": {phase: {measured, projected, projected_ci95}},
        "totals": {...}, "assumptions": [...]}`; energies without a measurement stay None.
        `carbon.fallback` is the intensity's fallback statement (None when the configured
        source answered); `assumptions` holds it and, when the totals have equivalents, the
        factors they use that are INFERRED. With `embodied`, also `"embodied_kg": {phase:
        {measured, projected, projected_ci95}}`, `carbon.embodied` (factors, sources, fleet),
        `totals.embodied_kg`, `embodied_kg_ci95` and `co2e_with_embodied_kg` (None unless every
        phase is projected) and an "embodied: " assumption.
    """
    co2e: dict[str, dict[str, Any]] = {}
    measured_kwh: list[float] = []
    projected_kwh: list[float] = []
    ci_low: list[float] = []
    ci_high: list[float] = []
    for name, phase in phases.items():
        joules = (phase.get("measured") or {}).get("energy_j", {}).get("total")
        m_kwh = None if joules is None else joules / J_PER_KWH
        projected = phase.get("projected") or {}
        p_kwh, ci = projected.get("energy_kwh"), projected.get("energy_kwh_ci95")
        co2e[name] = {
            "measured": _kg(m_kwh, pue, intensity),
            "projected": _kg(p_kwh, pue, intensity),
            "projected_ci95": [_kg(ci[0], pue, intensity), _kg(ci[1], pue, intensity)]
            if ci
            else None,
        }
        if m_kwh is not None:
            measured_kwh.append(m_kwh)
        if p_kwh is not None:
            projected_kwh.append(p_kwh)
            ci_low.append(ci[0] if ci else p_kwh)
            ci_high.append(ci[1] if ci else p_kwh)
    complete = len(projected_kwh) == len(phases) and bool(phases)
    total_kwh = sum(projected_kwh) if complete else None
    total_kg = _kg(total_kwh, pue, intensity)
    totals: dict[str, Any] = {
        "energy_kwh": total_kwh,
        "energy_kwh_ci95": [sum(ci_low), sum(ci_high)] if complete else None,
        "co2e_kg": total_kg,
        "measured_energy_kwh": sum(measured_kwh) if measured_kwh else None,
        "measured_co2e_kg": _kg(sum(measured_kwh), pue, intensity) if measured_kwh else None,
    }
    factors = factors or Factors()
    assumptions = [f"carbon: {intensity.fallback}"] if intensity.fallback else []
    if total_kg is not None:
        totals |= equivalents(total_kg, factors)
        assumptions += factors.assumptions()
    carbon = {
        "zone": intensity.zone,
        "period": intensity.period,
        "intensity_g_per_kwh": intensity.g_per_kwh,
        "intensity_source": intensity.source,
        "intensity_kind": intensity.kind,
        "intensity_basis": intensity.basis,
        "pue": pue,
        "fallback": intensity.fallback,
    }
    out = {"carbon": carbon, "co2e_kg": co2e, "totals": totals, "assumptions": assumptions}
    if embodied is not None:
        out["embodied_kg"] = {name: embodied.phase(phase) for name, phase in phases.items()}
        totals |= _embodied_totals(list(out["embodied_kg"].values()), total_kg)
        carbon["embodied"] = embodied.to_record()
        assumptions.append(embodied.assumption())
    return out


def _embodied_totals(phases: Sequence[Mapping[str, Any]], co2e_kg: float | None) -> dict[str, Any]:
    """The job's projected embodied kg, its interval (the phases' bounds added, as for energy)
    and its sum with the operational `co2e_kg`: None unless every phase is projected."""
    projected = [p["projected"] for p in phases]
    if not projected or None in projected:
        return {"embodied_kg": None, "embodied_kg_ci95": None, "co2e_with_embodied_kg": None}
    bounds = [p["projected_ci95"] or [p["projected"]] * 2 for p in phases]
    total = sum(projected)
    return {
        "embodied_kg": total,
        "embodied_kg_ci95": [sum(b[0] for b in bounds), sum(b[1] for b in bounds)],
        "co2e_with_embodied_kg": None if co2e_kg is None else co2e_kg + total,
    }
