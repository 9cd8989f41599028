from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lpm.record.record as record_module
from lpm.carbon.projection import project
from lpm.energy.callback import EnergyCallback, unit_of
from lpm.energy.window import Estimate, PhaseMeasurement, UnitMeasurement, Window
from lpm.record.record import J_PER_KWH, SCHEMA, Record, projected_phase, read_status
from lpm.workload.ldm import synthesis_plan


class FakeMeter:
    """Cumulative joules that only move when the workload calls `advance`."""

    def __init__(self) -> None:
        self.methods = {"gpu": "fake"}
        self.joules = 0.0
        self.reads = 0

    def advance(self, joules: float) -> None:
        self.joules += joules

    def read_j(self) -> dict[str, float]:
        self.reads += 1
        return {"gpu": self.joules}


def cost(k: int) -> float:
    """Joules the k-th batch (0-based) adds: distinct, so a misplaced batch changes every sum."""
    return float(2**k)


def window_sums(first: int, count: int, size: int | None) -> list[float]:
    """Expected energy of each sub-window over batches first .. first+count-1."""
    size = size or count
    return [
        sum(cost(k) for k in range(start, min(start + size, first + count)))
        for start in range(first, first + count, size)
    ]


class Tiny(pl.LightningModule):
    def __init__(self, meter: FakeMeter) -> None:
        super().__init__()
        self.layer, self.meter, self.calls = torch.nn.Linear(4, 1), meter, 0

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.meter.advance(cost(self.calls))
        self.calls += 1
        return self.layer(batch[0]).pow(2).mean()

    def predict_step(self, item: dict[str, Any], batch_idx: int) -> None:
        self.meter.advance(cost(self.calls))
        self.calls += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(callback: EnergyCallback, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **kwargs,
    )


@pytest.mark.parametrize(("warmup", "iterations", "window"), [(2, 5, 2), (0, 4, 4), (3, 3, None)])
def test_fit_windows_count_only_measured_steps(warmup: int, iterations: int, window: int | None):
    meter = FakeMeter()
    callback = EnergyCallback("autoencoder", warmup=warmup, window=window, meters=[meter])
    model = Tiny(meter)
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)
    trainer(callback, max_steps=warmup + iterations).fit(model, data)
    assert model.calls == warmup + iterations

    m = callback.measurement
    assert m is not None and m.phase == "autoencoder"
    assert set(m.units) == {"step"}
    unit = m.units["step"]
    assert unit.iterations == m.iterations == iterations
    assert len(unit.windows) == math.ceil(iterations / (window or iterations))
    assert [w.iterations for w in unit.windows] == [
        min(window or iterations, iterations - i)
        for i in range(0, iterations, window or iterations)
    ]
    expected = window_sums(warmup, iterations, window)
    assert [w.energy_j for w in unit.windows] == [{"gpu": e} for e in expected]
    assert m.energy_j == {"gpu": sum(expected)}
    assert meter.joules == sum(cost(k) for k in range(warmup + iterations))
    assert m.methods == {"gpu": "fake"}
    assert all(w.seconds > 0 for w in unit.windows)
    assert m.seconds == pytest.approx(sum(w.seconds for w in unit.windows))
    for estimate in (unit.seconds_per_iteration, unit.joules_per_iteration):
        assert estimate is not None
        assert estimate.low <= estimate.mean <= estimate.high
    assert unit.joules_per_iteration.mean == pytest.approx(sum(expected) / iterations)


def test_fit_without_meters_measures_time_only():
    callback = EnergyCallback(warmup=1, window=2)
    trainer(callback, max_steps=4).fit(
        Tiny(FakeMeter()), DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=2)
    )
    unit = callback.measurement.units["step"]
    assert unit.iterations == 3 and len(unit.windows) == 2
    assert unit.energy_j == {} and unit.joules_per_iteration is None
    assert callback.measurement.methods == {}


def test_predict_measures_each_unit_separately():
    plan = synthesis_plan(steps=3, unet_evals=5, decodes=3)  # unet ×5, then decode ×3
    meter = FakeMeter()
    callback = EnergyCallback(
        "synthesis",
        warmup={"unet": 1, "decode": 1},
        window={"unet": 2, "decode": 1},
        meters=[meter],
    )
    model = Tiny(meter)
    trainer(callback).predict(model, DataLoader(plan, batch_size=None), return_predictions=False)
    assert model.calls == len(plan)

    m = callback.measurement
    assert set(m.units) == {"unet", "decode"}
    unet, decode = m.units["unet"], m.units["decode"]
    assert unet.iterations == 4 and [w.iterations for w in unet.windows] == [2, 2]
    assert decode.iterations == 2 and [w.iterations for w in decode.windows] == [1, 1]
    assert [w.energy_j["gpu"] for w in unet.windows] == window_sums(1, 4, 2)
    assert [w.energy_j["gpu"] for w in decode.windows] == window_sums(6, 2, 1)
    assert m.iterations == 6
    assert m.energy_j == {"gpu": sum(window_sums(1, 4, 2)) + sum(window_sums(6, 2, 1))}
    assert m.methods == {"gpu": "fake"}


def test_predict_with_one_window_per_contiguous_run():
    plan = synthesis_plan(steps=3, unet_evals=None, decodes=0, chains=3)  # (unet ×3, decode) ×3
    meter = FakeMeter()
    callback = EnergyCallback("synthesis", warmup=1, window=None, meters=[meter])
    trainer(callback).predict(Tiny(meter), DataLoader(plan, batch_size=None))
    unet, decode = callback.measurement.units["unet"], callback.measurement.units["decode"]
    # warm-up: the first unet and the first decode; then one window per uninterrupted run
    assert [w.iterations for w in unet.windows] == [2, 3, 3]
    assert [w.iterations for w in decode.windows] == [1, 1]
    assert [w.energy_j["gpu"] for w in unet.windows] == [
        cost(1) + cost(2),
        cost(4) + cost(5) + cost(6),
        cost(8) + cost(9) + cost(10),
    ]
    assert [w.energy_j["gpu"] for w in decode.windows] == [cost(7), cost(11)]


def test_callback_resets_between_loops():
    meter = FakeMeter()
    callback = EnergyCallback(warmup=1, window=1, meters=[meter])
    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=2)
    trainer(callback, max_steps=3).fit(Tiny(meter), data)
    trainer(callback, max_steps=2).fit(Tiny(meter), data)
    assert callback.measurement.units["step"].iterations == 1


def test_unit_of():
    assert unit_of({"unit": "decode"}) == "decode"
    assert unit_of({"unit": 3}) == "step"
    assert unit_of(torch.zeros(2)) == "step"
    assert unit_of([torch.zeros(2)]) == "step"


# --- per-iteration estimates and projections ------------------------------------------------


def unit(seconds: list[float], iterations: list[int], joules: list[float] | None = None):
    joules = joules or [0.0] * len(seconds)
    return UnitMeasurement(
        "step",
        tuple(
            Window("step", n, s, {"gpu": j} if j else {})
            for s, n, j in zip(seconds, iterations, joules, strict=True)
        ),
    )


def test_per_iteration_t_interval_by_hand():
    u = unit([1.0, 2.0, 3.0, 4.0, 5.0], [1] * 5)
    mean = 3.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in (1, 2, 3, 4, 5)) / 4)
    half = 2.776 * sd / math.sqrt(5)  # t(0.975, 4 dof)
    est = u.seconds_per_iteration
    assert est.mean == pytest.approx(mean)
    assert (est.low, est.high) == pytest.approx((mean - half, mean + half))
    assert u.iterations == 5 and u.seconds == pytest.approx(15.0)


def test_per_iteration_over_windows_of_several_iterations():
    u = unit([2.0, 2.2, 1.8, 2.0], [4] * 4, [40.0, 44.0, 36.0, 40.0])
    rates = [0.5, 0.55, 0.45, 0.5]
    sd = math.sqrt(sum((r - 0.5) ** 2 for r in rates) / 3)
    half = 3.182 * sd / 2  # t(0.975, 3 dof), sqrt(4) windows
    assert u.seconds_per_iteration.mean == pytest.approx(0.5)
    assert u.seconds_per_iteration.high == pytest.approx(0.5 + half)
    assert u.joules_per_iteration.mean == pytest.approx(10.0)
    assert u.joules_per_iteration.low == pytest.approx(10.0 - 20 * half)


def test_per_iteration_edge_cases():
    one = unit([3.0], [6]).seconds_per_iteration
    assert one == Estimate(0.5, 0.5, 0.5)
    wide = unit([0.1, 10.0], [1, 1]).seconds_per_iteration
    assert wide.low == 0.0  # clamped: a cost is never negative
    many = unit([1.0, 3.0] * 20, [1] * 40).seconds_per_iteration  # 39 dof: the normal's 1.96
    sd = math.sqrt(40 / 39)
    assert many.high == pytest.approx(2.0 + 1.96 * sd / math.sqrt(40))
    assert unit([1.0], [1]).joules_per_iteration is None


def phase(units: dict[str, UnitMeasurement], warmup: dict[str, UnitMeasurement] | None = None):
    return PhaseMeasurement("p", units, {}, warmup or {})


def test_project_training_by_hand():
    step = unit([1.0, 3.0], [2, 2], [10.0, 30.0])
    # per iteration: mean 1.0 s, rates 0.5 and 1.5: sd = sqrt(0.5), half = 12.706 · sd / sqrt(2)
    half = 12.706 * math.sqrt(0.5) / math.sqrt(2)
    p = project(phase({"step": step}), {"step": 1000})
    assert p.seconds.mean == pytest.approx(1000.0)
    assert p.seconds.low == 0.0
    assert p.seconds.high == pytest.approx(1000 * (1.0 + half))
    assert p.energy_j.mean == pytest.approx(10_000.0)
    assert p.energy_j.high == pytest.approx(1000 * (10.0 + 10 * half))
    assert project(phase({"step": unit([1.0, 3.0], [2, 2])}), {"step": 1000}).energy_j is None
    # Warm-up is a fixed cost: added once, and its iterations come off the budget.
    warm = unit([4.0], [2], [50.0])
    p = project(phase({"step": step}, {"step": warm}), {"step": 1000})
    assert p.seconds.mean == pytest.approx(4.0 + 998 * 1.0)
    assert p.energy_j.mean == pytest.approx(50.0 + 998 * 10.0)
    assert p.energy_j.low == pytest.approx(50.0 + 998 * max(0.0, 10.0 - 10 * half))
    with pytest.raises(KeyError):
        project(phase({"step": step}), {"unet": 10})


def test_project_synthesis_by_hand():
    unet = unit([0.2, 0.2], [10, 10], [20.0, 20.0])  # 0.02 s and 2 J per evaluation, no spread
    decode = unit([0.5, 0.7], [1, 1], [5.0, 7.0])
    d_half = 12.706 * math.sqrt(0.02) / math.sqrt(2)
    budget = {"unet": 625 * 1000, "decode": 625}
    p = project(phase({"unet": unet, "decode": decode}), budget)
    assert p.seconds.mean == pytest.approx(625 * (1000 * 0.02 + 0.6))
    assert p.seconds.low == pytest.approx(625 * (1000 * 0.02 + max(0.0, 0.6 - d_half)))
    assert p.seconds.high == pytest.approx(625 * (1000 * 0.02 + 0.6 + d_half))
    assert p.energy_j.mean == pytest.approx(625 * (1000 * 2.0 + 6.0))
    assert project(phase({"unet": unet, "decode": unit([0.5], [1])}), budget).energy_j is None

    record = projected_phase(p)
    assert record["seconds"] == pytest.approx(p.seconds.mean)
    assert record["seconds_ci95"] == pytest.approx([p.seconds.low, p.seconds.high])
    assert record["energy_kwh"] == pytest.approx(p.energy_j.mean / 3.6e6)
    assert J_PER_KWH == 3.6e6


# --- record.json ------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "record.json")


def test_record_write_is_atomic_and_readable(tmp_path: Path):
    path = tmp_path / "job" / "record.json"
    record = Record(axes={"model": "small"}, status="ok")
    assert record.write(path) == path
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA == "lpm.record/1"
    assert data["status"] == "ok" and data["axes"] == {"model": "small"}
    assert leftovers(path.parent) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_status(path) == "ok"

    record.status = "failed"
    record.write(path)
    assert read_status(path) == "failed"
    assert leftovers(path.parent) == []


def test_record_write_failure_keeps_the_old_record(tmp_path: Path, monkeypatch):
    path = tmp_path / "record.json"
    Record(axes={}, status="ok").write(path)
    before = path.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(record_module.json, "dump", broken)
    with pytest.raises(RuntimeError):
        Record(axes={}, status="failed").write(path)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_read_status(tmp_path: Path):
    assert read_status(tmp_path / "missing.json") is None
    for text in ("{half", "[]", '"ok"', "null", ""):
        (tmp_path / "r.json").write_text(text)
        assert read_status(tmp_path / "r.json") is None, text
    (tmp_path / "r.json").write_text('{"status": "running"}')
    assert read_status(tmp_path / "r.json") == "running"
    assert read_status(tmp_path) is None  # a directory


def test_warmup_is_measured_apart_with_its_exact_energy():
    meter = FakeMeter()
    callback = EnergyCallback(warmup=2, window=3, meters=[meter])
    trainer(callback, max_steps=8).fit(
        Tiny(meter), DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)
    )
    m = callback.measurement
    assert m.units["step"].iterations == 6 and m.iterations == 6
    assert m.warmup["step"].iterations == 2 and len(m.warmup["step"].windows) == 1
    assert m.warmup["step"].energy_j["gpu"] == pytest.approx(cost(0) + cost(1))
    assert m.energy_j["gpu"] == pytest.approx(sum(cost(k) for k in range(2, 8)))
