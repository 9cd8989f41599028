"""Measured windows and the per-iteration estimates drawn from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

J_PER_KWH = 3.6e6

# Two-sided 97.5% Student-t quantiles by degrees of freedom; beyond 30 the normal's 1.96 is close.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def add_energy(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Sum joules component by component."""
    total: dict[str, float] = {}
    for part in parts:
        for component, joules in part.items():
            total[component] = total.get(component, 0.0) + joules
    return total


class Meter(Protocol):
    """Cumulative energy since the meter started, per component (gpu, cpu, ram), in joules."""

    methods: Mapping[str, str]  # component -> how it is measured (nvml_counter, rapl, estimate)

    def read_j(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Window:
    """One contiguous run of measured iterations of one unit of work."""

    unit: str
    iterations: int
    seconds: float
    energy_j: dict[str, float] = field(default_factory=dict)

    @property
    def total_j(self) -> float:
        return sum(self.energy_j.values())


@dataclass(frozen=True)
class Estimate:
    """A per-iteration mean with its 95% confidence interval (equal bounds if one window)."""

    mean: float
    low: float
    high: float

    def scaled(self, factor: float) -> Estimate:
        return Estimate(self.mean * factor, self.low * factor, self.high * factor)

    def __add__(self, other: Estimate | float) -> Estimate:
        """Bounds add too: conservative when the errors are independent."""
        if isinstance(other, Estimate):
            return Estimate(self.mean + other.mean, self.low + other.low, self.high + other.high)
        return Estimate(self.mean + other, self.low + other, self.high + other)


@dataclass(frozen=True)
class UnitMeasurement:
    """All measured windows of one unit (a training step, a UNet evaluation, a decode)."""

    unit: str
    windows: tuple[Window, ...]

    @property
    def iterations(self) -> int:
        return sum(w.iterations for w in self.windows)

    @property
    def seconds(self) -> float:
        return sum(w.seconds for w in self.windows)

    @property
    def energy_j(self) -> dict[str, float]:
        return add_energy(w.energy_j for w in self.windows)

    def per_iteration(self, quantity: Callable[[Window], float]) -> Estimate:
        """Mean of `quantity` per iteration, with a t-interval over the sub-window rates."""
        mean = sum(quantity(w) for w in self.windows) / self.iterations
        rates = [quantity(w) / w.iterations for w in self.windows]
        k = len(rates)
        if k < 2:
            return Estimate(mean, mean, mean)
        sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (k - 1))
        half = (_T975[k - 2] if k - 1 <= len(_T975) else 1.96) * sd / math.sqrt(k)
        return Estimate(mean, max(0.0, mean - half), mean + half)

    @property
    def seconds_per_iteration(self) -> Estimate:
        return self.per_iteration(lambda w: w.seconds)

    @property
    def joules_per_iteration(self) -> Estimate | None:
        """None when no meter measured energy (time-only windows)."""
        if not any(w.energy_j for w in self.windows):
            return None
        return self.per_iteration(lambda w: w.total_j)


@dataclass(frozen=True)
class PhaseMeasurement:
    """What one phase measured: its units' windows and the method behind each component.

    Totals cover `units`, the steady state; `warmup` holds the warm-up windows per unit.
    """

    phase: str
    units: dict[str, UnitMeasurement]
    methods: dict[str, str] = field(default_factory=dict)
    warmup: dict[str, UnitMeasurement] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return sum(u.iterations for u in self.units.values())

    @property
    def seconds(self) -> float:
        return sum(u.seconds for u in self.units.values())

    @property
    def energy_j(self) -> dict[str, float]:
        return add_energy(u.energy_j for u in self.units.values())
