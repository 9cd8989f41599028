from __future__ import annotations

import json
import logging
import math
import stat
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lpm.record.record as record_module
from lpm.carbon.projection import project
from lpm.energy.callback import EnergyCallback, unit_of
from lpm.energy.window import Coverage, Estimate, PhaseMeasurement, UnitMeasurement, Window
from lpm.record.record import J_PER_KWH, SCHEMA, Record, projected_phase, read_status
from lpm.workload.data import ImageDataModule
from lpm.workload.ldm import synthesis_plan


class FakeMeter:
    """Cumulative joules that only move when the workload calls `advance`."""

    def __init__(self, component: str = "gpu") -> None:
        self.methods = {component: "fake"}
        self.joules = 0.0
        self.reads = 0

    def advance(self, joules: float) -> None:
        self.joules += joules

    def read_j(self) -> dict[str, float]:
        self.reads += 1
        return {c: self.joules for c in self.methods}


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
        assert estimate.low <= estimate.value <= estimate.high
    assert unit.joules_per_iteration.mean == pytest.approx(sum(expected) / iterations)
    assert m.coverage == {"gpu": Coverage(1, 1)} and m.complete  # a list expects what it gives
    assert m.reason is None and m.assumptions == ()


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


def test_a_second_fit_adds_a_measurement():
    meter = FakeMeter()
    callback = EnergyCallback(warmup=1, window=1, meters=[meter])
    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=2)
    trainer(callback, max_steps=3).fit(Tiny(meter), data)
    first = callback.measurement
    trainer(callback, max_steps=2).fit(Tiny(meter), data)
    assert callback.measurements == [first, callback.measurement]
    assert first.units["step"].iterations == 2
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


def phase(units: dict[str, UnitMeasurement], warmup: dict[str, UnitMeasurement] | None = None):
    return PhaseMeasurement("p", units, {}, warmup or {})


def test_project_training_adds_warmup_once_and_scales_the_rest():
    step = unit([1.0, 3.0, 2.0], [2, 2, 2], [10.0, 30.0, 20.0])
    per_s, per_j = step.seconds_per_iteration, step.joules_per_iteration
    p = project(phase({"step": step}), {"step": 1000})
    assert (p.seconds.value, p.seconds.low, p.seconds.high) == pytest.approx(
        (1000 * per_s.value, 1000 * per_s.low, 1000 * per_s.high)
    )
    assert p.energy_j.value == pytest.approx(1000 * per_j.value)
    assert p.energy_j.high == pytest.approx(1000 * per_j.high)
    assert project(phase({"step": unit([1.0, 3.0], [2, 2])}), {"step": 1000}).energy_j is None
    # Warm-up is a fixed cost: added once, and its iterations come off the budget.
    warm = unit([4.0], [2], [50.0])
    p = project(phase({"step": step}, {"step": warm}), {"step": 1000})
    assert p.seconds.value == pytest.approx(4.0 + 998 * per_s.value)
    assert p.energy_j.value == pytest.approx(50.0 + 998 * per_j.value)
    assert p.energy_j.low == pytest.approx(50.0 + 998 * per_j.low)
    with pytest.raises(KeyError):
        project(phase({"step": step}), {"unet": 10})


def test_project_synthesis_by_hand():
    unet = unit([0.2] * 3, [10] * 3, [20.0] * 3)  # 0.02 s and 2 J per evaluation, no spread
    decode = unit([0.6] * 3, [1] * 3, [6.0] * 3)
    budget = {"unet": 625 * 1000, "decode": 625}
    p = project(phase({"unet": unet, "decode": decode}), budget)
    assert p.seconds == Estimate(*[pytest.approx(625 * (1000 * 0.02 + 0.6))] * 3)
    assert p.energy_j.value == pytest.approx(625 * (1000 * 2.0 + 6.0))
    assert project(phase({"unet": unet, "decode": unit([0.5], [1])}), budget).energy_j is None

    record = projected_phase(p)
    assert record["seconds"] == pytest.approx(p.seconds.value)
    assert record["seconds_ci95"] == pytest.approx([p.seconds.low, p.seconds.high])
    assert record["energy_kwh"] == pytest.approx(p.energy_j.value / 3.6e6)
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


# --- only the workload inside the windows ----------------------------------------------------

# Joules each kind of work adds to the fake meter: powers of two, so any misplaced piece of
# work shows in a window's energy as a bit that is not the training step's.
TRAIN_J, VALIDATION_J, SANITY_J, CHECKPOINT_J, LOG_J, DATA_J = 1.0, 2.0, 4.0, 8.0, 16.0, 32.0


class Validated(pl.LightningModule):
    """Training, validation and the sanity check each cost their own joules."""

    def __init__(self, meter: FakeMeter) -> None:
        super().__init__()
        self.layer, self.meter = torch.nn.Linear(4, 1), meter
        self.validations = self.sanity = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.meter.advance(TRAIN_J)
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        if self.trainer.sanity_checking:
            self.sanity += 1
            self.meter.advance(SANITY_J)
        else:
            self.validations += 1
            self.meter.advance(VALIDATION_J)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class CostlyCheckpointIO(TorchCheckpointIO):
    """Writing a checkpoint file costs CHECKPOINT_J."""

    def __init__(self, meter: FakeMeter) -> None:
        self.meter, self.saves = meter, 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options=None) -> None:
        self.saves += 1
        self.meter.advance(CHECKPOINT_J)
        super().save_checkpoint(checkpoint, path, storage_options)


class CostlyLogger(Logger):
    """Records the callback's metrics; each call that carries them costs LOG_J."""

    def __init__(self, meter: FakeMeter) -> None:
        super().__init__()
        self.meter, self.logged = meter, []

    name, version = "costly", 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if any(k.startswith("energy/") for k in metrics):
            self.logged.append((step, metrics))
            self.meter.advance(LOG_J)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def test_validation_checkpoints_sanity_check_and_logging_stay_out_of_step_windows(tmp_path):
    meter = FakeMeter()
    io = CostlyCheckpointIO(meter)
    logger = CostlyLogger(meter)
    callback = EnergyCallback(warmup=2, window=4, meters=[meter])
    model = Validated(meter)
    loader = DataLoader(torch.randn(64, 4), batch_size=2)
    pl.Trainer(
        accelerator="cpu",
        max_steps=14,
        val_check_interval=3,  # validation after every 3rd step: inside windows of 4
        limit_val_batches=2,
        num_sanity_val_steps=2,
        callbacks=[callback, ModelCheckpoint(tmp_path, every_n_train_steps=3, save_top_k=-1)],
        plugins=[io],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, loader, loader)
    # Everything that must stay outside did run, in the middle of windows.
    assert model.sanity == 2 and model.validations == 2 * 4 and io.saves == 4
    m = callback.measurement
    step = m.units["step"]
    # Windows keep their size: a pause is not the end of a window.
    assert [w.iterations for w in step.windows] == [4, 4, 4]
    assert [w.energy_j for w in step.windows] == [{"gpu": 4 * TRAIN_J}] * 3
    assert step.joules_per_iteration.value == TRAIN_J
    assert m.warmup["step"].energy_j == {"gpu": 2 * TRAIN_J}
    # The callback's metrics reached the logger, one call per window, after the loop.
    assert len(logger.logged) == 4
    assert {s for s, _ in logger.logged} == {0, 2, 6, 10}  # batches seen before each window
    _, metrics = logger.logged[1]
    assert metrics["energy/fit/step/gpu_w"] == pytest.approx(4 * TRAIN_J / step.windows[0].seconds)
    assert (
        meter.joules
        == 14 * TRAIN_J + 8 * VALIDATION_J + 2 * SANITY_J + 4 * CHECKPOINT_J + 4 * LOG_J
    )


class CostlyImages(Dataset):
    """Making an image costs DATA_J and 30 ms, like a phantom generated on the fly."""

    def __init__(self, meter: FakeMeter, length: int) -> None:
        self.meter, self.length, self.made = meter, length, 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        self.made += 1
        self.meter.advance(DATA_J)
        time.sleep(0.03)
        return torch.full((4,), float(index))


class Linear(pl.LightningModule):
    def __init__(self, meter: FakeMeter) -> None:
        super().__init__()
        self.layer, self.meter = torch.nn.Linear(4, 1), meter

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.meter.advance(TRAIN_J)
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("pool", [6, None])
def test_training_data_is_made_before_the_windows_open(pool: int | None):
    meter = FakeMeter()
    images = CostlyImages(meter, length=40)
    callback = EnergyCallback(warmup=1, window=4, meters=[meter])
    trainer(callback, max_steps=9).fit(Linear(meter), ImageDataModule(images, 2, pool=pool))
    step = callback.measurement.units["step"]
    per_step_s = [w.seconds / w.iterations for w in step.windows]
    if pool is None:  # made per batch (and one batch ahead), inside the windows: the pool's fix
        assert all(w.energy_j["gpu"] >= 4 * (TRAIN_J + DATA_J) for w in step.windows)
        assert min(per_step_s) > 0.03
    else:  # made once, in setup; a phase longer than the pool cycles through it
        assert images.made == pool
        assert [w.energy_j for w in step.windows] == [{"gpu": 4 * TRAIN_J}] * 2
        assert max(per_step_s) < 0.03  # a step of this model takes ~1 ms


# --- edge cases other projects hit -----------------------------------------------------------


def test_fewer_steps_than_warmup_and_a_window_measure_nothing_and_say_why(caplog):
    meter = FakeMeter()
    callback = EnergyCallback("autoencoder", warmup=3, window=5, meters=[meter])
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=2)
    with caplog.at_level(logging.WARNING, logger="lpm.energy"):
        trainer(callback, max_steps=7).fit(Tiny(meter), data)
    m = callback.measurement
    assert m.units == {} and m.iterations == 0
    assert m.reason == (
        "autoencoder: nothing measured: step ran 7 batches, fewer than warm-up 3 + one window "
        "of 5 = 8"
    )
    assert m.reason in caplog.text
    assert m.verdict.status == "noisy" and m.verdict.reasons == (m.reason,)
    assert m.warmup["step"].iterations == 3  # what ran is still kept
    # One more step gives the full window.
    trainer(callback, max_steps=8).fit(Tiny(meter), data)
    assert callback.measurement.reason is None
    assert callback.measurement.units["step"].iterations == 5
    # A fit whose loop has nothing to run still adds its (empty) measurement.
    trainer(callback, max_steps=8, limit_train_batches=0).fit(Tiny(meter), data)
    assert len(callback.measurements) == 3
    assert callback.measurement.reason == "autoencoder: no batch ran, nothing measured"


class Crash(Tiny):
    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.calls == 5:
            raise RuntimeError("out of memory")
        return super().training_step(batch, batch_idx)


def test_a_crash_keeps_the_windows_measured_before_it():
    meter = FakeMeter()
    callback = EnergyCallback(warmup=1, window=2, meters=[meter])
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer(callback, max_steps=20).fit(
            Crash(meter), DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=2)
        )
    (m,) = callback.measurements
    step = m.units["step"]
    # The crashed batch never ended: its window holds no iteration and is left out.
    assert [w.iterations for w in step.windows] == [2, 2]
    assert [w.energy_j["gpu"] for w in step.windows] == window_sums(1, 4, 2)


class BrokenMeter:
    """Reads `good` times, then raises: a meter that dies mid-phase."""

    def __init__(self, good: int) -> None:
        self.methods, self.good = {"gpu": "fake"}, good

    def read_j(self) -> dict[str, float]:
        if self.good == 0:
            raise OSError("device lost")
        self.good -= 1
        return {"gpu": 1.0}


class NodeLike:
    """A meters function that says what it attempted, like NodeMeters."""

    def __init__(self, meters: list, expected: dict[str, int]) -> None:
        self.meters, self.expected = meters, expected

    def __call__(self, trainer: pl.Trainer) -> list:
        return self.meters


def test_a_meter_that_fails_mid_phase_is_dropped_and_not_counted(caplog):
    cpu = FakeMeter("cpu")
    meters = NodeLike([BrokenMeter(good=3), cpu], {"gpu": 1, "cpu": 1, "ram": 1})
    callback = EnergyCallback(warmup=0, window=2, meters=meters)
    model = Tiny(cpu)
    with caplog.at_level(logging.WARNING, logger="lpm.energy"):
        trainer(callback, max_steps=8).fit(model, DataLoader(torch.randn(64, 4)[:, None], 2))
    m = callback.measurement
    assert model.calls == 8  # the run went on
    # GPU left out of every window, not only the later ones: all windows cover the same parts.
    assert all(set(w.energy_j) == {"cpu"} for w in m.units["step"].windows)
    assert m.coverage == {"gpu": Coverage(0, 1), "cpu": Coverage(1, 1), "ram": Coverage(0, 1)}
    assert not m.complete
    assert caplog.text.count("BrokenMeter read failed (OSError: device lost)") == 1


def test_assumptions_are_collected_from_the_meters():
    cpu, gpu = FakeMeter("cpu"), FakeMeter("gpu")
    cpu.assumptions = ("CPU power: a model", "tracking_mode machine")
    gpu.assumptions = ("GPU sampled", "tracking_mode machine")
    callback = EnergyCallback(warmup=0, window=1, meters=[cpu, gpu])
    trainer(callback, max_steps=1).fit(Tiny(cpu), DataLoader(TensorDataset(torch.randn(4, 4))))
    assert callback.measurement.assumptions == (
        "CPU power: a model",
        "tracking_mode machine",
        "GPU sampled",
    )


def test_ddp_spawn_is_refused_with_what_to_use_instead():
    callback = EnergyCallback(warmup=0, window=1, meters=[FakeMeter()])
    spawning = trainer(callback, max_steps=1, devices=2, strategy="ddp_spawn")
    with pytest.raises(RuntimeError, match=r"strategy='ddp_spawn'.*Use strategy='ddp'"):
        spawning.fit(Tiny(FakeMeter()), DataLoader(TensorDataset(torch.randn(8, 4))))
    assert callback.measurements == []
