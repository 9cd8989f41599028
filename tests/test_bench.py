"""The benchmarks' own arithmetic; the ratios themselves are measured by `make bench`, not here."""

from __future__ import annotations

import pytest

from lpm import bench


def test_within_run_projection_is_exact_on_a_steady_run() -> None:
    # Ten sub-windows of 10 iterations at 2 J and 0.1 s each, the first one slower (warm-up).
    windows = [[10, 0.5, 30.0]] + [[10, 0.1, 2.0]] * 9
    energy, seconds = bench._within_run({"per_window": windows}, 100)
    assert energy == pytest.approx(1.0) and seconds == pytest.approx(1.0)
    # A drifting run: the projection from the second window misses the drift, by a known amount.
    drifting = [[10, 0.1, 1.0 + k] for k in range(10)]
    energy, _ = bench._within_run({"per_window": drifting}, 100)
    assert energy == pytest.approx((1.0 + 2.0 * 9) / sum(1.0 + k for k in range(10)))


def test_bench_cli_rejects_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["nope"])
    assert exit_info.value.code == 2
    assert "BENCH: unknown nope; choose from overhead, projection, robustness" in (
        capsys.readouterr().err
    )
