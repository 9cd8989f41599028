"""Projection of measured per-unit costs to the target budget (150k iterations, 10k samples)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lpm.energy.window import Estimate, PhaseMeasurement


@dataclass(frozen=True)
class Projection:
    """Cost of a whole phase budget, each with a 95% interval (from the per-iteration ones)."""

    seconds: Estimate
    energy_j: Estimate | None  # None when nothing measured energy


def project(m: PhaseMeasurement, budget: Mapping[str, int]) -> Projection:
    """Measured warm-up once, plus per-iteration cost × the rest of each unit's budget.

    Args:
        m: the phase's measurement.
        budget: iterations per unit of work over the whole budget, e.g. `{"step": 150_000}`
            for training, `{"unet": chains * steps, "decode": chains}` for synthesis.

    Raises:
        KeyError: when a unit of the budget was not measured.
    """
    seconds = Estimate(0.0, 0.0, 0.0)
    joules: Estimate | None = Estimate(0.0, 0.0, 0.0)
    for unit, total in budget.items():
        steady, warm = m.units[unit], m.warmup.get(unit)
        rest = max(0, total - (warm.iterations if warm else 0))
        seconds = (
            seconds + steady.seconds_per_iteration.scaled(rest) + (warm.seconds if warm else 0.0)
        )
        per_j = steady.joules_per_iteration
        if joules is None or per_j is None:
            joules = None
            continue
        joules = joules + per_j.scaled(rest) + (sum(warm.energy_j.values()) if warm else 0.0)
    return Projection(seconds, joules)
