"""Projection of measured per-unit costs to the target budget (150k iterations, 10k samples)."""

from __future__ import annotations

from dataclasses import dataclass

from lpm.energy.window import Estimate, UnitMeasurement


@dataclass(frozen=True)
class Projection:
    """Cost of a whole phase budget, each with a 95% interval."""

    seconds: Estimate
    energy_j: Estimate | None  # None when nothing measured energy


def project_training(step: UnitMeasurement, iterations: int) -> Projection:
    """Per-iteration cost × target iterations."""
    joules = step.joules_per_iteration
    return Projection(
        step.seconds_per_iteration.scaled(iterations),
        joules.scaled(iterations) if joules else None,
    )


def _combine(unet: Estimate, decode: Estimate, chains: int, steps: int) -> Estimate:
    # Bounds are added, not convolved: conservative when the two units' errors are independent.
    def total(u: float, d: float) -> float:
        return chains * (steps * u + d)

    return Estimate(
        total(unet.mean, decode.mean), total(unet.low, decode.low), total(unet.high, decode.high)
    )


def project_synthesis(
    unet: UnitMeasurement, decode: UnitMeasurement, chains: int, steps: int
) -> Projection:
    """`chains × (steps × one UNet evaluation + one decode)`, chains = ceil(samples / batch)."""
    unet_j, decode_j = unet.joules_per_iteration, decode.joules_per_iteration
    return Projection(
        _combine(unet.seconds_per_iteration, decode.seconds_per_iteration, chains, steps),
        _combine(unet_j, decode_j, chains, steps) if unet_j and decode_j else None,
    )
