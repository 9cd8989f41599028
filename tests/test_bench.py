"""Benchmarks that double as slow checks: `make test-full` runs them, `make bench` reports them."""

from __future__ import annotations

import pytest

from lpm import bench


@pytest.mark.slow
def test_projection_agrees_with_a_fully_measured_run() -> None:
    result = bench.projection(samples=40, iterations=100, repeats=3)
    for phase, unit in (("autoencoder", "step"), ("diffusion", "step"), ("synthesis", "unet")):
        ratio = result[phase][f"within_run_energy_{unit}"]["median"]
        assert 0.95 <= ratio <= 1.05, (phase, ratio)


def test_within_run_projection_is_exact_on_a_steady_run() -> None:
    # Ten sub-windows of 10 iterations at 2 J and 0.1 s each, the first one slower (warm-up).
    windows = [[10, 0.5, 30.0]] + [[10, 0.1, 2.0]] * 9
    energy, seconds = bench._within_run({"per_window": windows}, 100)
    assert energy == pytest.approx(1.0) and seconds == pytest.approx(1.0)
    # A drifting run: the projection from the second window misses the drift, by a known amount.
    drifting = [[10, 0.1, 1.0 + k] for k in range(10)]
    energy, _ = bench._within_run({"per_window": drifting}, 100)
    assert energy == pytest.approx((1.0 + 2.0 * 9) / sum(1.0 + k for k in range(10)))
