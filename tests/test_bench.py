"""The benchmarks' own arithmetic and plumbing; the ratios themselves are measured by
`make bench`, not here (no timed tests)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fake_nvml import FakeNvml

from lpm import bench


def test_within_run_projection_is_exact_on_a_steady_run() -> None:
    # Ten windows of 10 steps at 2 J and 0.1 s each, the first one slower (warm-up).
    windows = [[10, 0.5, 30.0]] + [[10, 0.1, 2.0]] * 9
    energy, seconds = bench._within_run({"step": windows}, {"step": 3}, {"step": 30})
    assert energy == pytest.approx(1.0) and seconds == pytest.approx(1.0)


def test_within_run_projection_misses_drift_by_a_known_amount() -> None:
    # A run whose windows cost 1, 2, ..., 10 J: the projection takes window 0 as warm-up and
    # the robust centre of windows 1-3 (2, 3, 4 J: 3 J) for the 9 windows that follow.
    drifting = [[10, 0.1, 1.0 + k] for k in range(10)]
    energy, seconds = bench._within_run({"step": drifting}, {"step": 3}, {"step": 30})
    assert energy == pytest.approx((1.0 + 3.0 * 9) / sum(1.0 + k for k in range(10)))
    assert seconds == pytest.approx(1.0)


def test_within_run_projection_sums_the_units_of_a_phase() -> None:
    # Synthesis: UNet evaluations and decodes, each with its warm-up and sample.
    per_window = {"unet": [[20, 2.0, 20.0]] * 6, "decode": [[1, 0.5, 5.0]] * 8}
    warm, measured = {"unet": 3, "decode": 1}, {"unet": 30, "decode": 5}
    assert bench._within_run(per_window, warm, measured) == pytest.approx((1.0, 1.0))


def test_leading_windows_hold_the_iterations_and_enough_windows() -> None:
    windows = [bench.Window("step", n, 1.0) for n in (10, 10, 10, 10, 10)]
    assert bench._leading(windows, 3, 0) == 1
    assert bench._leading(windows, 30, 3) == 3
    assert bench._leading(windows, 5, 3) == 3  # the robust estimate needs three windows


def test_linear_fit() -> None:
    fit = bench._linear_fit(
        [10, 25, 50, 100, 200], [1.5 + 0.02 * s for s in (10, 25, 50, 100, 200)]
    )
    assert fit["slope"] == pytest.approx(0.02)
    assert fit["intercept"] == pytest.approx(1.5)
    assert fit["r2"] == pytest.approx(1.0)
    assert bench._linear_fit([1, 2, 3, 4], [1, 3, 1, 3])["r2"] < 0.5


def test_interleave_warms_every_arm_then_rotates_the_order() -> None:
    calls: list[str] = []

    def arm(name: str) -> Any:
        return lambda: calls.append(name) or bench.Sample(1.0, 1.0)

    runs = bench._interleave({"a": arm("a"), "b": arm("b"), "c": arm("c")}, repeats=3)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in runs.items()} == {"a": 3, "b": 3, "c": 3}


def test_ratios_pair_repeats_and_skip_unknown_energy() -> None:
    a = [bench.Sample(2.0, 1.0, {"cpu": 4.0}), bench.Sample(3.0, 1.0)]
    b = [bench.Sample(1.0, 1.0, {"cpu": 1.0, "ram": 1.0}), bench.Sample(1.5, 1.0)]
    assert bench._ratios(a, b, lambda s: s.seconds) == [2.0, 2.0]
    assert bench._ratios(a, b, lambda s: s.joules) == [2.0]
    assert bench._best_of(a, b) == 2.0


def test_time_hooks_counts_only_while_the_timer_runs() -> None:
    class Callback:
        def on_train_batch_start(self, *args: Any) -> str:
            return "started"

        def helper(self) -> str:
            return "not a hook"

    timer = type("Timer", (), {"active": False})()
    callback = Callback()
    spent = bench._time_hooks(callback, timer)
    assert callback.on_train_batch_start(1, 2) == "started"
    assert spent == [0.0]
    timer.active = True
    assert callback.on_train_batch_start() == "started"
    assert spent[0] > 0.0
    assert callback.helper() == "not a hook"


class ClockedNvml(FakeNvml):
    """A GPU whose energy counter follows its power over a clock the test moves."""

    def __init__(self, power_w: Any) -> None:
        self.now = 0.0
        super().__init__(1, clock=lambda: self.now)
        self.devices[0].power_mw = lambda t: power_w(t) * 1000.0
        self.power_w = power_w

    def run(self, seconds: float, dt: float = 0.01) -> None:
        """Advance the clock, the counter integrating the power (midpoint rule)."""
        for _ in range(round(seconds / dt)):
            self.advance(0, round(self.power_w(self.now + dt / 2) * dt * 1000))
            self.now += dt


def test_counter_against_sampled_power_with_a_fake_gpu() -> None:
    nvml = ClockedNvml(lambda t: 250.0)
    result = bench.counter(nvml, nvml.devices[0], lambda: nvml.run(4.0), clock=lambda: nvml.now)
    assert result["counter_j"] == pytest.approx(1000.0)
    assert result["sampled_j"] == pytest.approx(1000.0)
    (row,) = result["rows"]
    assert row["ok"] and row["value"] == pytest.approx(1.0)


def test_counter_sees_sampling_miss_a_power_spike() -> None:
    # 100 W with a 2 s burst at 400 W: sampled at the window edges only (the fake clock stands
    # still between the sampler's reads), trapezoids across the burst misjudge it.
    nvml = ClockedNvml(lambda t: 400.0 if 1.0 <= t < 3.0 else 100.0)
    work = lambda: nvml.run(4.0)  # noqa: E731
    result = bench.counter(nvml, nvml.devices[0], work, interval_s=60, clock=lambda: nvml.now)
    assert result["counter_j"] == pytest.approx(1000.0)
    assert result["rows"][0]["ok"] is False


def test_counter_without_a_gpu_says_so() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pytest.skip("a GPU is visible")
    except pynvml.NVMLError:
        pass
    (row,) = bench.counter()["rows"]
    assert row["value"] is None and row["ok"] is None and "no GPU here" in row["note"]


def test_power_only_makes_nvml_meters_sample() -> None:
    from lpm.energy.meters import NvmlMeter

    nvml = FakeNvml(1)
    meter = NvmlMeter(nvml.devices[0], bench._PowerOnly(nvml), interval_s=60)
    try:
        assert meter.methods == {"gpu": "nvml_power"}
    finally:
        meter.close()
    assert NvmlMeter(nvml.devices[0], nvml).methods == {"gpu": "nvml_counter"}


def test_table_marks_targets_ranges_and_notes() -> None:
    results = {
        "x": {
            "rows": [bench._row("a", 0.99, ">= 1.0", False, [0.97, 1.02], "fastest 1.01")],
            "section": {"rows": [bench._row("b", None, "reported", None, note="no GPU")]},
        }
    }
    lines = bench.table(results).splitlines()
    assert lines[2] == "| x: a | 0.99 (fastest 1.01) | 0.97–1.02 | >= 1.0 | NO |"
    assert lines[3] == "| x: b | – (no GPU) |  | reported | – |"


def test_bench_cli_rejects_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["nope"])
    assert exit_info.value.code == 2
    assert f"BENCH: unknown nope; choose from {', '.join(bench.BENCHMARKS)}" in (
        capsys.readouterr().err
    )


def test_bench_cli_writes_json_and_markdown_and_prints_the_table_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "counter", lambda: {"rows": [bench._row("c", 1.0, "t", True)]})
    assert bench.main(["counter", "--out", str(tmp_path), "--threads", "0"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "bench.json").is_file()
    markdown = (tmp_path / "bench.md").read_text()
    assert "| counter: c | 1 |  | t | yes |" in markdown
    assert out.rstrip().endswith(markdown.rstrip().splitlines()[-1])


def test_every_speedup_the_bench_runs_is_a_preset() -> None:
    presets = {p.stem for p in (bench.CONF / "speedup").glob("*.yaml")}
    assert set(bench.TECHNIQUES) | set(bench.SAMPLERS) <= presets


@pytest.mark.slow
def test_gpu_check_runs_its_code_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # scripts/gpu_check.sh's Python part, at a toy size on the CPU, the counter on a fake GPU
    # whose energy follows the clock: every row comes out, none skipped.
    nvml = ClockedNvml(lambda t: 300.0)
    real = bench.counter

    def counter_on_fake(nvml_: Any, handle: Any, work: Any) -> dict[str, Any]:
        return real(nvml, nvml.devices[0], lambda: (work(), nvml.run(2.0)), clock=lambda: nvml.now)

    monkeypatch.setattr(bench, "counter", counter_on_fake)
    result = bench.gpu(
        quick=True,
        device="cpu",
        scale="cpu",
        models=("small",),
        dims=("2d",),
        extra=("dims.image_size=[16,16]",),
    )
    rows = list(bench._rows(result))
    names = [r["name"] for r in rows]
    assert any(n.startswith("lpm vs plain loop, training small 2d") for n in names)
    assert any(n.startswith("NVML: sampled power") for n in names)
    assert any(n.startswith("speed-up sdpa") for n in names)
    assert any(n.startswith("sampler dpmpp") for n in names)
    skipped = [r for r in rows if "out of time" in r.get("note", "")]
    assert skipped == []
    assert all(
        isinstance(r["value"], float) for r in rows if not r.get("note", "").startswith("16")
    )


def test_median_interval_from_order_statistics() -> None:
    # n = 5: P(all five on one side) = 2/32 = 6.25%: the range is the tightest >= 93.75%.
    assert bench.median_ci([5.0, 1.0, 4.0, 2.0, 3.0]) == (1.0, 5.0)
    # n = 9: P(Binomial(9, 1/2) < 2) = 10/512 = 1.95% <= 2.5%: 2nd smallest to 2nd largest.
    assert bench.median_ci([float(v) for v in range(1, 10)]) == (2.0, 8.0)
    assert bench.median_ci([7.0]) == (7.0, 7.0)


def test_judged_tells_a_miss_from_noise() -> None:
    at_least_one = lambda v: v >= 1.0  # noqa: E731
    assert bench.judged([0.99, 1.01, 1.02, 1.05, 1.1], at_least_one, 1.0) is True
    # Median 0.97 misses, but the interval (0.9, 1.05) reaches 1.0: the machine cannot tell.
    assert bench.judged([0.9, 0.95, 0.97, 1.0, 1.05], at_least_one, 1.0) == bench.NOISE
    # Every repeat below: a real miss.
    assert bench.judged([0.8, 0.82, 0.85, 0.86, 0.9], at_least_one, 1.0) is False
    within = lambda v: abs(v - 1) <= 0.03  # noqa: E731
    # The interval (0.82, 1.06) straddles the band without an end or its midpoint in it: noise.
    assert bench.judged([0.82, 0.9, 0.92, 0.95, 1.06], within, 1.0) == bench.NOISE
    assert bench.judged([0.82, 0.85, 0.9, 0.92, 0.95], within, 1.0) is False
    at_most = lambda v: v <= 0.005  # noqa: E731
    assert bench.judged([-0.19, 0.1, 0.22, 0.25, 0.28], at_most, 0.0) == bench.NOISE


def test_table_marks_noise_and_shows_the_median_interval() -> None:
    row = bench._row("x", 0.97, ">= 1.0", bench.NOISE, [0.9, 0.95, 0.97, 1.0, 1.05])
    assert row["median_ci95"] == [0.9, 1.05]
    text = bench.table({"plain": {"rows": [row]}})
    assert "| plain: x | 0.97 | 0.9–1.05 | >= 1.0 | within noise |" in text


def test_profile_attributes_time_to_its_owner() -> None:
    assert bench._owner("~", "<built-in method torch.conv2d>") == "torch operators (C++)"
    assert bench._owner("~", "<built-in method builtins.isinstance>") == "Python built-ins"
    site = "/v/lib/python3.11/site-packages"
    assert bench._owner(f"{site}/lightning/pytorch/loops/loop.py", "run") == "lightning loop"
    assert bench._owner("/w/lpm/energy/callback.py", "on_train_batch_end").startswith("lpm ")
    assert bench._owner("/w/lpm/bench.py", "lpm_train") == "other Python"  # the harness


def test_shares_sum_to_one_by_owner() -> None:
    # pstats.Stats' `stats`: (file, line, function) -> (cc, nc, tottime, cumtime, callers)
    stats = SimpleNamespace(
        stats={
            ("~", 0, "<built-in method torch.conv2d>"): (1, 1, 3.0, 3.0, {}),
            ("/w/lpm/energy/callback.py", 1, "hook"): (1, 1, 0.5, 0.5, {}),
            ("/w/lpm/progress.py", 1, "bar"): (1, 1, 0.5, 0.5, {}),
        }
    )
    shares = bench._shares(stats)
    assert shares == {"torch operators (C++)": 0.75, "lpm (callbacks, modules, progress)": 0.25}


def test_loop_note_gives_the_null_workload_cost_as_a_share_of_the_plain_step() -> None:
    null = {"training_lpm_us": 700.0, "training_plain_us": 200.0,
            "synthesis_lpm_us": 150.0, "synthesis_plain_us": 50.0}  # fmt: skip
    assert bench._loop_note(null, "training", 0.050) == (
        "loop's own cost, null workload: 500 µs = 1.0% of a plain step, i.e. 0.990"
    )
    assert bench._loop_note(null, "synthesis", 0.010).endswith(
        "100 µs = 1.0% of a plain step, i.e. 0.990"
    )
