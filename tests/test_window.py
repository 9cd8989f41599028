"""Robust per-iteration estimates, their intervals and the verdicts drawn from windows."""

from __future__ import annotations

import math

import pytest

from lpm import bench
from lpm.energy.window import (
    Coverage,
    Estimate,
    NoiseRules,
    PhaseMeasurement,
    UnitMeasurement,
    Window,
    drift,
    lag1_autocorrelation,
    mean_interval,
    outlier_windows,
    robust_rate,
    window_autocorrelation,
)
from lpm.record.record import coverage, measured_phase


def unit(joules: list[float], per_window: int = 4, seconds: list[float] | None = None):
    seconds = seconds or [0.1 * per_window] * len(joules)
    windows = [
        Window("step", per_window, s, {"cpu": j}) for j, s in zip(joules, seconds, strict=True)
    ]
    return UnitMeasurement("step", tuple(windows))


def test_estimate_arithmetic_keeps_bounds() -> None:
    e = Estimate(2.0, 1.0, 4.0)
    assert e.scaled(3) == Estimate(6.0, 3.0, 12.0)
    assert e + Estimate(1.0, 0.5, 2.0) == Estimate(3.0, 1.5, 6.0)
    assert e + 1.0 == Estimate(3.0, 2.0, 5.0)
    assert e.rel_half_width == pytest.approx(0.75)


def test_a_slow_window_is_excluded_and_kept_in_the_record() -> None:
    # Four windows at 2 J/iteration, one 10x slower: the plain mean is 2.8x the truth.
    u = unit([8.0, 8.0, 80.0, 8.0, 8.0], seconds=[0.4, 0.4, 4.0, 0.4, 0.4])
    assert u.outliers == (2,)
    j = u.joules_per_iteration
    assert j.value == pytest.approx(2.0)
    assert j.mean == pytest.approx(112.0 / 20)
    assert j.low == pytest.approx(2.0) and j.high == pytest.approx(2.0)  # the kept are equal
    assert u.seconds_per_iteration.value == pytest.approx(0.1)
    assert u.verdict.status == "noisy"
    assert "1 of 5 windows excluded as outliers" in u.verdict.reasons[0]
    m = measured_phase(PhaseMeasurement("diffusion", {"step": u}, {"cpu": "estimate"}))
    record = m["units"]["step"]
    assert record["outliers"] == [2]
    assert record["per_window"][2] == [4, 4.0, 80.0]
    assert record["joules_per_iteration"]["value"] == pytest.approx(2.0)
    assert record["joules_per_iteration"]["mean"] == pytest.approx(5.6)
    assert "1 outlier window(s) excluded" in record["joules_per_iteration"]["method"]
    assert record["verdict"]["status"] == "noisy"


def test_ordinary_jitter_is_not_an_outlier() -> None:
    # Nearly equal windows have a MAD near 0: the relative floor keeps 4% jitter inside.
    assert outlier_windows([1.0, 1.0, 1.0, 1.04, 1.0]) == ()
    assert outlier_windows([1.0, 1.01, 0.99, 1.3, 1.0]) == (3,)
    # The majority defines the workload: never more than half the windows are thrown out.
    assert outlier_windows([1.0, 1.0, 10.0, 10.0, 10.0]) == (0, 1)
    assert outlier_windows([1.0, 1.0, 1.0, 10.0, 10.0, 10.0]) == ()
    assert outlier_windows([1.0, 50.0]) == ()  # too few windows to call one an outlier


def test_interval_is_a_t_interval_widened_for_correlated_windows() -> None:
    rates = [1.0, 1.1, 0.9, 1.05, 0.95]
    e = robust_rate(rates, [1] * 5)
    sd = math.sqrt(sum((r - 1.0) ** 2 for r in rates) / 4)
    independent = 2.776 * sd / math.sqrt(5)
    rho = NoiseRules().min_autocorrelation  # 5 windows: the floor, not the sample value
    assert e.value == pytest.approx(1.0)
    assert e.high - e.value == pytest.approx(independent * math.sqrt((1 + rho) / (1 - rho)))
    assert "window autocorrelation 0.60" in e.method


def test_autocorrelation_is_estimated_from_enough_windows_never_below_the_floor() -> None:
    trending = [float(i) for i in range(10)]
    r = lag1_autocorrelation(trending)
    assert r == pytest.approx(0.7)
    assert window_autocorrelation(trending) == pytest.approx(0.8)  # capped
    alternating = [1.0, -1.0] * 5
    assert window_autocorrelation(alternating) == pytest.approx(0.6)  # floored
    assert window_autocorrelation([1.0, 2.0, 3.0]) == pytest.approx(0.6)  # too few to estimate


def test_verdicts_name_each_reason() -> None:
    assert unit([8.0] * 5).verdict.status == "stable"
    few = unit([8.0, 8.0]).verdict
    assert few.status == "noisy" and "only 2 window(s)" in few.reasons[0]
    wide = unit([4.0, 12.0, 5.0, 11.0, 8.0]).verdict
    assert any("energy per iteration ±" in r for r in wide.reasons)
    ramp = unit([6.0, 7.0, 8.0, 9.0, 10.0]).verdict
    assert any("rate drifted +" in r for r in ramp.reasons)
    assert drift([6.0, 7.0, 8.0, 9.0, 10.0]) == pytest.approx(0.5)


def test_rules_from_config_judge_the_same_windows() -> None:
    wide = PhaseMeasurement("diffusion", {"step": unit([4.0, 12.0, 5.0, 11.0, 8.0])})
    assert wide.verdict.status == "noisy"
    loose = wide.judged_by(NoiseRules(max_rel_half_width=2.0, max_drift=2.0))
    assert loose.verdict.status == "stable"
    assert loose.units["step"].windows == wide.units["step"].windows


def test_phase_verdict_and_coverage() -> None:
    noisy = unit([8.0, 8.0, 80.0, 8.0, 8.0])
    phase = PhaseMeasurement(
        "synthesis",
        {"unet": noisy, "decode": unit([8.0] * 3)},
        coverage={"gpu": Coverage(1, 2), "cpu": Coverage(1, 1), "ram": Coverage(0, 0)},
    )
    assert phase.verdict.status == "noisy"
    assert phase.verdict.reasons[0].startswith("unet: 1 of 5 windows")
    assert not phase.complete
    assert coverage(phase) == {
        "gpu": {"metered": 1, "expected": 2},
        "cpu": {"metered": 1, "expected": 1},
        "complete": False,
    }
    empty = PhaseMeasurement("diffusion", {}, reason="ran 2 steps; warm-up is 3")
    assert empty.verdict.reasons == ("ran 2 steps; warm-up is 3",)


def test_robustness_benchmark_meets_its_targets() -> None:
    # A simulation against a known truth through the production estimate and project(): no
    # timing involved, so it is a test as well as a benchmark row.
    result = bench.robustness(runs=200, contention=False)
    rows = {r["name"]: r for r in result["simulation"]["rows"]}
    assert all(r["ok"] for r in rows.values()), rows
    assert rows["plain mean error, slow windows (median)"]["value"] > 0.5


def test_mean_interval_by_hand_and_cut_to_the_range() -> None:
    # Mean 44, sd 4, n = 3, t(0.975, 2) = 4.303: 44 ± 4.303 × 4 / √3 = 44 ± 9.937.
    e = mean_interval([40.0, 44.0, 48.0])
    assert (e.value, e.low, e.high) == pytest.approx((44.0, 34.063, 53.937), abs=1e-3)
    assert mean_interval([0.1, 0.9], within=(0.0, 1.0)).low == 0.0  # 0.5 ± 5.08 cut to [0, 1]
    assert mean_interval([0.1, 0.9], within=(0.0, 1.0)).high == 1.0
    assert mean_interval([7.0]) == Estimate(7.0, 7.0, 7.0)
