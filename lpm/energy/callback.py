"""`EnergyCallback`: measured windows over the batches of any Lightning fit or predict loop.

callback = EnergyCallback(warmup=10, window=50)
trainer = Trainer(callbacks=[callback], max_steps=510)
trainer.fit(model, data); print(callback.measurement.units["step"].seconds_per_iteration)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from lpm.energy.window import Meter, PhaseMeasurement, UnitMeasurement, Window

COMPONENTS = ("gpu", "cpu", "ram")
WARMUP = "warmup:"


def unit_of(batch: Any) -> str:
    """The unit of work a batch is: a dict batch may say (`{"unit": "decode"}`), else a step."""
    if isinstance(batch, Mapping) and isinstance(batch.get("unit"), str):
        return batch["unit"]
    return "step"


class EnergyCallback(pl.Callback):
    """Times and meters a phase per unit of work, warm-up excluded, in sub-windows.

    A window opens at the start of a batch and closes at the start of the first batch that does
    not belong to it (another unit, a full window, the end of warm-up) or at the end of the loop,
    so that data loading between batches is part of the cost. Edges sync the accelerator first.
    Warm-up batches are measured in windows of their own (`measurement.warmup`), outside the
    per-iteration estimates.

    Args:
        phase: name the measurement is reported under.
        warmup: batches per unit that are run but not counted (an int applies to every unit).
        window: batches per sub-window, per unit; None keeps one window per contiguous run.
        meters: energy meters read at every window edge, or a function of the trainer that
            returns them (called once the process knows its device and rank).

    Under DDP every rank measures its own windows (its GPU; CPU and RAM where its meters cover
    them); at the end of the loop the windows are summed over ranks (seconds: the slowest rank)
    so every rank holds the same, whole-job measurement.
    """

    def __init__(
        self,
        phase: str = "fit",
        warmup: int | Mapping[str, int] = 0,
        window: int | Mapping[str, int] | None = None,
        meters: Sequence[Meter] | Callable[[pl.Trainer], Sequence[Meter]] = (),
    ) -> None:
        self.phase = phase
        self.warmup, self.window, self._meters_arg = warmup, window, meters
        self.meters: list[Meter] = []
        self.measurement: PhaseMeasurement | None = None
        self._windows: list[Window] = []
        self._seen: dict[str, int] = {}
        self._open: tuple[str, int, float, dict[str, float]] | None = None  # unit, n, t0, e0
        self._device: torch.device | None = None
        self._trainer: pl.Trainer | None = None

    @staticmethod
    def _per_unit(value: int | Mapping[str, int] | None, unit: str) -> int | None:
        return value.get(unit) if isinstance(value, Mapping) else value

    def _read(self) -> tuple[float, dict[str, float]]:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        energy: dict[str, float] = {}
        for meter in self.meters:
            energy.update(meter.read_j())
        return time.perf_counter(), energy

    def _close(self, now: tuple[float, dict[str, float]] | None = None) -> None:
        if self._open is None:
            return
        unit, n, t0, e0 = self._open
        t1, e1 = now or self._read()
        energy = {k: e1[k] - e0[k] for k in e1.keys() & e0.keys()}
        self._windows.append(Window(unit, n, t1 - t0, energy))
        self._open = None
        if self._trainer is not None and self._trainer.loggers and t1 > t0:
            metrics = {f"energy/{self.phase}/{unit}/seconds_per_it": (t1 - t0) / max(n, 1)}
            metrics |= {
                f"energy/{self.phase}/{unit}/{k}_w": v / (t1 - t0) for k, v in energy.items()
            }
            for logger in self._trainer.loggers:
                logger.log_metrics(metrics, step=sum(self._seen.values()))

    def _start(self, trainer: pl.Trainer) -> None:
        self._device = trainer.strategy.root_device
        arg = self._meters_arg
        self.meters = list(arg(trainer) if callable(arg) else arg)
        self._windows, self._seen, self._open, self.measurement = [], {}, None, None
        self._trainer = trainer if trainer.is_global_zero else None

    def _batch_start(self, batch: Any) -> None:
        unit = unit_of(batch)
        if self._seen.get(unit, 0) < (self._per_unit(self.warmup, unit) or 0):
            # Warm-up is measured too, in its own window: a fixed cost the projection adds once.
            unit, size = WARMUP + unit, None
        else:
            size = self._per_unit(self.window, unit)
        if self._open is not None:
            open_unit, n, _, _ = self._open
            if open_unit == unit and (size is None or n < size):
                return
        now = self._read()
        self._close(now)
        self._open = (unit, 0, *now)

    def _batch_end(self, batch: Any) -> None:
        unit = unit_of(batch)
        self._seen[unit] = self._seen.get(unit, 0) + 1
        if self._open is not None:
            u, n, t0, e0 = self._open
            self._open = (u, n + 1, t0, e0)

    def _reduce(self, trainer: pl.Trainer) -> list[Window]:
        """Sum each window's energy over ranks; its duration is the slowest rank's."""
        if trainer.world_size == 1 or not self._windows:
            return self._windows
        device = trainer.strategy.root_device
        rows = [[w.energy_j.get(c, 0.0) for c in COMPONENTS] for w in self._windows]
        present = [[float(c in w.energy_j) for c in COMPONENTS] for w in self._windows]
        energy = trainer.strategy.reduce(
            torch.tensor(rows, dtype=torch.float64, device=device), reduce_op="sum"
        )
        present = trainer.strategy.reduce(
            torch.tensor(present, dtype=torch.float64, device=device), reduce_op="sum"
        )
        seconds = torch.tensor(
            [w.seconds for w in self._windows], dtype=torch.float64, device=device
        )
        seconds = trainer.strategy.reduce(seconds, reduce_op="max")
        return [
            Window(
                w.unit,
                w.iterations,
                float(seconds[i]),
                {c: float(energy[i, j]) for j, c in enumerate(COMPONENTS) if present[i, j] > 0},
            )
            for i, w in enumerate(self._windows)
        ]

    def _finish(self, windows: list[Window]) -> None:
        units: dict[str, list[Window]] = {}
        for w in windows:
            units.setdefault(w.unit, []).append(w)
        measured = {u: UnitMeasurement(u, tuple(ws)) for u, ws in units.items()}
        methods: dict[str, str] = {}
        for meter in self.meters:
            methods.update(meter.methods)
        self.measurement = PhaseMeasurement(
            self.phase,
            {u: m for u, m in measured.items() if not u.startswith(WARMUP)},
            methods,
            {u.removeprefix(WARMUP): m for u, m in measured.items() if u.startswith(WARMUP)},
        )

    def _end(self, trainer: pl.Trainer) -> None:
        self._close()
        self._finish(self._reduce(trainer))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_end(batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(batch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc: BaseException
    ) -> None:
        # Keep what was measured before the crash, unreduced: the other ranks may be gone.
        self._close()
        self._finish(self._windows)
