"""Measured windows and the per-iteration estimates drawn from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
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
    """A value with its 95% interval: the one interval type of lpm (records, projection, report).

    For a measurement `value` is a robust centre (see :func:`robust_rate`); for a sum of
    estimates it is the sum of the values, with the bounds added too.
    """

    value: float
    low: float
    high: float

    def scaled(self, factor: float) -> Estimate:
        return Estimate(self.value * factor, self.low * factor, self.high * factor)

    def __add__(self, other: Estimate | float) -> Estimate:
        """Bounds add too: conservative when the errors are independent."""
        if isinstance(other, Estimate):
            return Estimate(self.value + other.value, self.low + other.low, self.high + other.high)
        return Estimate(self.value + other, self.low + other, self.high + other)

    @property
    def rel_half_width(self) -> float:
        """Half the interval's width relative to the value (inf for a zero value)."""
        return (self.high - self.low) / 2 / abs(self.value) if self.value else math.inf


@dataclass(frozen=True)
class NoiseRules:
    """When a unit's windows are trusted. Defaults are checked by `python -m lpm.bench robustness`.

    Attributes:
        min_windows: fewer windows give no interval worth the name (and no outlier test).
        outlier_mads: a window whose rate lies this many scaled MADs from the median is an outlier.
        mad_floor: the scale never drops below this fraction of the median, so that nearly equal
            windows (MAD ≈ 0) do not turn ordinary jitter into outliers.
        max_rel_half_width: a wider 95% interval (relative half-width) makes the unit noisy.
        max_drift: a larger fitted change of the rate from first to last window, relative to the
            centre, makes the unit noisy (thermal throttling, load arriving mid-run).
        min_autocorrelation: consecutive windows are assumed correlated at least this much: the
            lag-1 autocorrelation of a handful of windows is too uncertain (and biased low) to
            trust, and the benchmark's correlated noise needs 0.6 for 90% coverage at 5 windows.
        estimate_autocorrelation_from: from this many windows on, the (bias-corrected) sample
            autocorrelation is used where it is larger than the floor.
        max_autocorrelation: the autocorrelation used to widen the interval is capped here.
    """

    min_windows: int = 3
    outlier_mads: float = 3.0
    mad_floor: float = 0.05
    max_rel_half_width: float = 0.10
    max_drift: float = 0.20
    min_autocorrelation: float = 0.6
    estimate_autocorrelation_from: int = 8
    max_autocorrelation: float = 0.8


RULES = NoiseRules()
MAD_SCALE = 1.4826  # makes the MAD estimate the standard deviation of normal data


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def outlier_windows(rates: Sequence[float], rules: NoiseRules = RULES) -> tuple[int, ...]:
    """Indices of the rates beyond `outlier_mads` scaled MADs of the median (none under
    `min_windows`, and never so many that fewer than half the windows stay)."""
    if len(rates) < rules.min_windows:
        return ()
    centre = _median(rates)
    scale = max(
        MAD_SCALE * _median([abs(r - centre) for r in rates]), rules.mad_floor * abs(centre)
    )
    if scale == 0:
        return ()
    out = tuple(i for i, r in enumerate(rates) if abs(r - centre) > rules.outlier_mads * scale)
    return out if len(rates) - len(out) >= math.ceil(len(rates) / 2) else ()


def t975(dof: int) -> float:
    """Two-sided 95% Student-t quantile for `dof` >= 1 degrees of freedom."""
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def mean_interval(
    xs: Sequence[float], within: tuple[float, float] = (-math.inf, math.inf)
) -> Estimate:
    """The mean of independent values with its 95% Student-t interval, cut to the range
    `within` the quantity can take; a single value is its own interval."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, mean, mean)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return Estimate(mean, max(mean - half, within[0]), min(mean + half, within[1]))


def lag1_autocorrelation(xs: Sequence[float]) -> float:
    """Sample lag-1 autocorrelation (0 for fewer than 3 values or no variance)."""
    n = len(xs)
    if n < 3:
        return 0.0
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((a - m) * (b - m) for a, b in pairwise(xs)) / var


def window_autocorrelation(rates: Sequence[float], rules: NoiseRules = RULES) -> float:
    """The lag-1 autocorrelation assumed between consecutive windows' rates.

    `min_autocorrelation` below `estimate_autocorrelation_from` windows; from there the sample
    value with its small-sample bias removed (E[r] ≈ ρ − (1 + 3ρ)/k, Marriott & Pope 1954) where
    that is larger; never above `max_autocorrelation`.
    """
    rho = rules.min_autocorrelation
    k = len(rates)
    if k >= rules.estimate_autocorrelation_from:
        r = lag1_autocorrelation(rates)
        rho = max(rho, r + (1 + 3 * r) / k)
    return min(rho, rules.max_autocorrelation)


@dataclass(frozen=True)
class RobustEstimate(Estimate):
    """A per-iteration estimate from windows: the centre over the windows kept, its interval,
    the plain mean over all windows, and which windows were left out.

    Attributes:
        mean: per-iteration mean over every window, outliers included (what lpm reported before).
        outliers: indices of the windows excluded from `value` and the interval.
        method: how the centre and the interval were made, in words (goes into the record).
    """

    mean: float = math.nan
    outliers: tuple[int, ...] = ()
    method: str = ""


def robust_rate(
    amounts: Sequence[float],
    iterations: Sequence[int],
    outliers: Sequence[int] = (),
    rules: NoiseRules = RULES,
) -> RobustEstimate:
    """Per-iteration rate of a quantity measured in consecutive windows.

    The centre is the ratio estimator over the windows kept (their total over their
    iterations). Consecutive windows are not independent (load, clocks and temperature persist),
    so the t-interval over the kept windows' rates is widened by the variance factor of an AR(1)
    series, sqrt((1 + ρ) / (1 − ρ)), with ρ from :func:`window_autocorrelation`.
    """
    n_all = sum(iterations)
    mean = sum(amounts) / n_all if n_all else math.nan
    drop = set(outliers)
    kept = [
        (a, n)
        for i, (a, n) in enumerate(zip(amounts, iterations, strict=True))
        if i not in drop and n > 0
    ]
    n_kept = sum(n for _, n in kept)
    value = sum(a for a, _ in kept) / n_kept if n_kept else math.nan
    rates = [a / n for a, n in kept]
    k = len(rates)
    excluded = f", {len(drop)} outlier window(s) excluded" if drop else ""
    if k < 2:
        method = f"{k} window{excluded}: no interval"
        return RobustEstimate(value, value, value, mean, tuple(sorted(drop)), method)
    sd = math.sqrt(sum((r - value) ** 2 for r in rates) / (k - 1))
    rho = window_autocorrelation(rates, rules)
    half = t975(k - 1) * sd / math.sqrt(k) * math.sqrt((1 + rho) / (1 - rho))
    method = (
        f"ratio over {k} of {len(amounts)} windows{excluded}; t-interval widened for "
        f"window autocorrelation {rho:.2f}"
    )
    return RobustEstimate(
        value, max(0.0, value - half), value + half, mean, tuple(sorted(drop)), method
    )


def drift(rates: Sequence[float]) -> float:
    """Least-squares change of `rates` from the first window to the last, relative to their mean."""
    k = len(rates)
    m = sum(rates) / k if k else 0.0
    if k < 3 or m == 0:
        return 0.0
    xs = [i - (k - 1) / 2 for i in range(k)]
    slope = sum(x * r for x, r in zip(xs, rates, strict=True)) / sum(x * x for x in xs)
    return slope * (k - 1) / m


@dataclass(frozen=True)
class Verdict:
    """`stable`, or `noisy` with the reasons a number should not be quoted without them."""

    status: str
    reasons: tuple[str, ...] = ()

    @classmethod
    def of(cls, reasons: Iterable[str]) -> Verdict:
        reasons = tuple(reasons)
        return cls("noisy" if reasons else "stable", reasons)

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Coverage:
    """How many meters of a component reported, against how many were expected (over ranks)."""

    metered: int
    expected: int

    @property
    def complete(self) -> bool:
        return self.metered >= self.expected


@dataclass(frozen=True)
class UnitMeasurement:
    """All measured windows of one unit (a training step, a UNet evaluation, a decode)."""

    unit: str
    windows: tuple[Window, ...]
    rules: NoiseRules = RULES

    @property
    def iterations(self) -> int:
        return sum(w.iterations for w in self.windows)

    @property
    def seconds(self) -> float:
        return sum(w.seconds for w in self.windows)

    @property
    def energy_j(self) -> dict[str, float]:
        return add_energy(w.energy_j for w in self.windows)

    @property
    def metered(self) -> bool:
        return any(w.energy_j for w in self.windows)

    def _rates(self, quantity: Callable[[Window], float]) -> list[float]:
        return [quantity(w) / w.iterations for w in self.windows if w.iterations]

    @property
    def outliers(self) -> tuple[int, ...]:
        """Windows whose time or energy rate is an outlier: excluded from both estimates, so that
        seconds and joules per iteration rest on the same windows."""
        quantities: list[Callable[[Window], float]] = [lambda w: w.seconds]
        if self.metered:
            quantities.append(lambda w: w.total_j)
        return tuple(
            sorted({i for q in quantities for i in outlier_windows(self._rates(q), self.rules)})
        )

    def per_iteration(self, quantity: Callable[[Window], float]) -> RobustEstimate:
        """`quantity` per iteration over the windows that are not outliers, with its interval."""
        return robust_rate(
            [quantity(w) for w in self.windows],
            [w.iterations for w in self.windows],
            self.outliers,
            self.rules,
        )

    @property
    def seconds_per_iteration(self) -> RobustEstimate:
        return self.per_iteration(lambda w: w.seconds)

    @property
    def joules_per_iteration(self) -> RobustEstimate | None:
        """None when no meter measured energy (time-only windows)."""
        return self.per_iteration(lambda w: w.total_j) if self.metered else None

    @property
    def verdict(self) -> Verdict:
        """Noisy when there are too few windows, outliers, a wide interval or a drift."""
        k, rules = len(self.windows), self.rules
        if k < rules.min_windows:
            return Verdict.of(
                [f"only {k} window(s): {rules.min_windows} are needed for an interval"]
            )
        reasons = []
        if self.outliers:
            reasons.append(
                f"{len(self.outliers)} of {k} windows excluded as outliers (beyond "
                f"{rules.outlier_mads:g} scaled MADs of the median)"
            )
        estimates = {"time": self.seconds_per_iteration, "energy": self.joules_per_iteration}
        for name, e in estimates.items():
            if e is not None and e.rel_half_width > rules.max_rel_half_width:
                reasons.append(
                    f"{name} per iteration ±{_percent(e.rel_half_width)} (95%; limit "
                    f"±{_percent(rules.max_rel_half_width)})"
                )
        kept = [w for i, w in enumerate(self.windows) if i not in set(self.outliers)]
        quantity = (lambda w: w.total_j) if self.metered else (lambda w: w.seconds)
        change = drift([quantity(w) / w.iterations for w in kept if w.iterations])
        if abs(change) > rules.max_drift:
            reasons.append(
                f"rate drifted {change:+.0%} from first to last window (limit "
                f"±{rules.max_drift:.0%})"
            )
        return Verdict.of(reasons)


def _percent(x: float) -> str:
    return "∞" if not math.isfinite(x) else f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


@dataclass(frozen=True)
class PhaseMeasurement:
    """What one phase measured: its units' windows and the method behind each component.

    Totals cover `units`, the steady state; `warmup` holds the warm-up windows per unit.

    Attributes:
        coverage: per component (gpu, cpu, ram), meters that reported over meters expected,
            summed over ranks. Incomplete coverage makes every energy total a lower bound.
        assumptions: what the meters' numbers rest on (estimated power models, forced powers).
        reason: why nothing was measured, when `units` is empty.
    """

    phase: str
    units: dict[str, UnitMeasurement]
    methods: dict[str, str] = field(default_factory=dict)
    warmup: dict[str, UnitMeasurement] = field(default_factory=dict)
    coverage: dict[str, Coverage] = field(default_factory=dict)
    assumptions: tuple[str, ...] = ()
    reason: str | None = None

    def judged_by(self, rules: NoiseRules) -> PhaseMeasurement:
        """The same windows, their estimates and verdicts drawn under `rules`."""
        return replace(self, units={n: replace(u, rules=rules) for n, u in self.units.items()})

    @property
    def complete(self) -> bool:
        """Every expected meter reported for the whole phase."""
        return all(c.complete for c in self.coverage.values())

    @property
    def verdict(self) -> Verdict:
        """Noisy when any unit is, each reason prefixed by its unit; noisy when nothing was
        measured."""
        if not self.units:
            return Verdict.of([self.reason or "nothing measured"])
        return Verdict.of(
            f"{name}: {reason}" for name, u in self.units.items() for reason in u.verdict.reasons
        )

    @property
    def iterations(self) -> int:
        return sum(u.iterations for u in self.units.values())

    @property
    def seconds(self) -> float:
        return sum(u.seconds for u in self.units.values())

    @property
    def energy_j(self) -> dict[str, float]:
        return add_energy(u.energy_j for u in self.units.values())
