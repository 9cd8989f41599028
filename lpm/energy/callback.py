"""`EnergyCallback`: measured windows over the batches of any Lightning fit or predict loop.

callback = EnergyCallback(warmup=10, window=50)
trainer = Trainer(callbacks=[callback], max_steps=510)
trainer.fit(model, data); print(callback.measurement.units["step"].seconds_per_iteration)
"""

from __future__ import annotations

import logging
import multiprocessing.context
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from lpm.energy.window import Coverage, Meter, PhaseMeasurement, UnitMeasurement, Window

log = logging.getLogger("lpm.energy")

COMPONENTS = ("gpu", "cpu", "ram")
WARMUP = "warmup:"


def unit_of(batch: Any) -> str:
    """The unit of work a batch is: a dict batch may say (`{"unit": "decode"}`), else a step."""
    if isinstance(batch, Mapping) and isinstance(batch.get("unit"), str):
        return batch["unit"]
    return "step"


def provided(meters: Sequence[Meter]) -> dict[str, int]:
    """Meters per component that `meters` provide: what a plain list of meters expects."""
    counts: dict[str, int] = {}
    for meter in meters:
        for component in meter.methods:
            counts[component] = counts.get(component, 0) + 1
    return counts


@dataclass
class _Open:
    """The window being measured: finished segments summed, and the running one's start.

    A window pauses (validation, a checkpoint) and resumes at the next batch of its unit, so
    that it keeps its size in iterations while holding the workload only.
    """

    unit: str
    since: tuple[float, dict[str, float]] | None  # (seconds, joules) at the segment's start
    step: int  # batches seen before the window: where its metrics are logged
    iterations: int = 0
    seconds: float = 0.0
    energy_j: dict[str, float] = field(default_factory=dict)


class EnergyCallback(pl.Callback):
    """Times and meters a phase per unit of work, warm-up excluded, in sub-windows.

    A window opens at the start of a batch and closes at the start of the first batch that does
    not belong to it (another unit, a full window, the end of warm-up) or at the end of the loop,
    so that data loading between batches is part of the cost. Edges sync the accelerator first.
    Warm-up batches are measured in windows of their own (`measurement.warmup`), outside the
    per-iteration estimates.

    Only the workload is measured. Validation is not measured at all: the open window pauses
    when validation starts (`on_validation_start`) and resumes at the next training batch, so
    validation batches are never part of a `step` window (nor of any other unit); the sanity
    check runs before the first window opens. A checkpoint pauses the window too, when it is
    saved (`on_save_checkpoint`, before the file is written); what a strategy collects before
    that hook (sharded optimizer state) stays inside. Window metrics go to the trainer's loggers
    at the end of the loop, never from inside a window.

    Each `fit` or `predict` adds one measurement to `measurements` (a second `fit` with the same
    callback adds a second one); `measurement` is the latest. A loop that runs fewer batches
    than warm-up + one window gives an empty measurement (no units) whose `reason` says so.
    `coverage` counts, per component, the meters that reported over those expected, summed over
    ranks: a meter that could not be built, or whose read fails during the phase (logged, then
    dropped from the whole phase), leaves its component incomplete. `assumptions` lists what
    the meters' numbers rest on (their optional `assumptions` attribute).

    Args:
        phase: name the measurement is reported under.
        warmup: batches per unit that are run but not counted (an int applies to every unit).
        window: batches per sub-window, per unit; None keeps one window per contiguous run.
        meters: energy meters read at every window edge, or a function of the trainer that
            returns them (called once the process knows its device and rank). A function with
            an `expected` attribute (:class:`~lpm.energy.meters.NodeMeters`) says which meters
            it attempted; otherwise the meters given are the ones expected.

    Under DDP every rank measures its own windows (its GPU; CPU and RAM where its meters cover
    them); at the end of the loop the windows are summed over ranks (seconds: the slowest rank)
    so every rank holds the same, whole-job measurement. Use `strategy="ddp"`: `ddp_spawn` is
    refused (its workers' measurement never comes back, and built meters cannot be pickled),
    and under `ddp_fork` the measurement exists only in the forked workers.
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
        self.measurements: list[PhaseMeasurement] = []
        self._active = False
        self._live: list[Meter] = []  # meters whose reads have not failed in this loop
        self._expected: dict[str, int] = {}
        self._windows: list[Window] = []
        self._steps: list[int] = []  # per window: batches seen before it (for logging)
        self._seen: dict[str, int] = {}
        self._open: _Open | None = None
        self._device: torch.device | None = None
        self._trainer: pl.Trainer | None = None

    @property
    def measurement(self) -> PhaseMeasurement | None:
        """The latest loop's measurement."""
        return self.measurements[-1] if self.measurements else None

    def __getstate__(self) -> dict[str, Any]:
        if multiprocessing.context.get_spawning_popen() is not None:
            raise RuntimeError(
                "EnergyCallback does not support strategy='ddp_spawn': the fit runs in spawned "
                "worker processes, so the measurement never reaches this process (and built "
                "meters cannot be pickled). Use strategy='ddp'."
            )
        return self.__dict__

    @staticmethod
    def _per_unit(value: int | Mapping[str, int] | None, unit: str) -> int | None:
        return value.get(unit) if isinstance(value, Mapping) else value

    def _read(self) -> tuple[float, dict[str, float]]:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        energy: dict[str, float] = {}
        for meter in list(self._live):
            try:
                energy.update(meter.read_j())
            except Exception as exc:  # a failing meter costs its components, never the run
                self._live.remove(meter)
                log.warning(
                    "%s: %s read failed (%s: %s); %s left out of this phase",
                    self.phase,
                    type(meter).__name__,
                    type(exc).__name__,
                    exc,
                    "/".join(meter.methods),
                )
        return time.perf_counter(), energy

    def _pause(self, now: tuple[float, dict[str, float]] | None = None) -> None:
        """End the open window's running segment; the window resumes at its next batch."""
        o = self._open
        if o is None or o.since is None:
            return
        (t0, e0), (t1, e1) = o.since, now or self._read()
        o.seconds += t1 - t0
        for k in e1.keys() & e0.keys():
            o.energy_j[k] = o.energy_j.get(k, 0.0) + e1[k] - e0[k]
        o.since = None

    def _close(self, now: tuple[float, dict[str, float]] | None = None) -> None:
        if self._open is None:
            return
        self._pause(now)
        o, self._open = self._open, None
        if o.iterations:  # a batch that never ended (a crash) is no iteration's cost
            self._windows.append(Window(o.unit, o.iterations, o.seconds, o.energy_j))
            self._steps.append(o.step)

    def _start(self, trainer: pl.Trainer) -> None:
        self._device = trainer.strategy.root_device
        arg = self._meters_arg
        self.meters = list(arg(trainer) if callable(arg) else arg)
        expected = getattr(arg, "expected", None)
        self._expected = dict(expected) if expected is not None else provided(self.meters)
        self._live = list(self.meters)
        self._windows, self._steps, self._seen, self._open = [], [], {}, None
        self._trainer = trainer if trainer.is_global_zero else None
        self._active = True
        forked = getattr(trainer.strategy, "_start_method", None) == "fork"
        if forked and trainer.world_size > 1 and trainer.is_global_zero:
            log.warning(
                "%s: under a forked DDP launcher the measurement stays in the worker processes; "
                "use strategy='ddp' to have it in this one",
                self.phase,
            )

    def _batch_start(self, batch: Any) -> None:
        unit = unit_of(batch)
        if self._seen.get(unit, 0) < (self._per_unit(self.warmup, unit) or 0):
            # Warm-up is measured too, in its own window: a fixed cost the projection adds once.
            unit, size = WARMUP + unit, None
        else:
            size = self._per_unit(self.window, unit)
        o = self._open
        if o is not None and o.unit == unit and (size is None or o.iterations < size):
            if o.since is None:  # resume after a pause
                o.since = self._read()
            return
        now = self._read()
        self._close(now)
        self._open = _Open(unit, since=now, step=sum(self._seen.values()))

    def _batch_end(self, batch: Any) -> None:
        unit = unit_of(batch)
        self._seen[unit] = self._seen.get(unit, 0) + 1
        if self._open is not None:
            self._open.iterations += 1

    def _counts(self) -> list[float]:
        """Per component: meters that reported this loop, then meters expected."""
        metered = provided(self._live)
        return [float(metered.get(c, 0)) for c in COMPONENTS] + [
            float(self._expected.get(c, 0)) for c in COMPONENTS
        ]

    def _kept(self) -> list[Window]:
        """The windows, without the components of meters that failed during the loop: every
        window then covers the same components."""
        live = set(provided(self._live))
        return [
            Window(
                w.unit, w.iterations, w.seconds, {k: v for k, v in w.energy_j.items() if k in live}
            )
            for w in self._windows
        ]

    def _reduce(
        self, trainer: pl.Trainer, windows: list[Window]
    ) -> tuple[list[Window], list[float]]:
        """Sum each window's energy and the meter counts over ranks; a window's duration is the
        slowest rank's."""
        counts = self._counts()
        if trainer.world_size == 1:
            return windows, counts
        device = trainer.strategy.root_device

        def reduce(rows: list, op: str) -> torch.Tensor:
            return trainer.strategy.reduce(
                torch.tensor(rows, dtype=torch.float64, device=device), reduce_op=op
            ).cpu()

        counts = reduce(counts, "sum").tolist()
        if not windows:
            return windows, counts
        energy = reduce([[w.energy_j.get(c, 0.0) for c in COMPONENTS] for w in windows], "sum")
        present = reduce([[float(c in w.energy_j) for c in COMPONENTS] for w in windows], "sum")
        seconds = reduce([w.seconds for w in windows], "max")
        return [
            Window(
                w.unit,
                w.iterations,
                float(seconds[i]),
                {c: float(energy[i, j]) for j, c in enumerate(COMPONENTS) if present[i, j] > 0},
            )
            for i, w in enumerate(windows)
        ], counts

    def _described(self, trainer: pl.Trainer | None) -> tuple[dict[str, str], tuple[str, ...]]:
        """Methods and assumptions of every rank's meters: ranks may differ (one GPU without an
        energy counter, one node with RAPL)."""
        mine = (
            {c: m for meter in self.meters for c, m in meter.methods.items()},
            [a for meter in self.meters for a in getattr(meter, "assumptions", ())],
        )
        ranks = [mine]
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)
        methods: dict[str, list[str]] = {}
        for rank_methods, _ in ranks:
            for c, m in rank_methods.items():
                if m not in methods.setdefault(c, []):
                    methods[c].append(m)
        assumptions = dict.fromkeys(a for _, rank_assumptions in ranks for a in rank_assumptions)
        return {c: "+".join(ms) for c, ms in methods.items()}, tuple(assumptions)

    def _reason(self) -> str | None:
        """Why nothing can be measured: no unit ran warm-up plus one full window."""
        needed = {
            u: (self._per_unit(self.warmup, u) or 0) + (self._per_unit(self.window, u) or 1)
            for u in self._seen
        }
        if any(self._seen[u] >= n for u, n in needed.items()):
            return None
        if not self._seen:
            return f"{self.phase}: no batch ran, nothing measured"
        return f"{self.phase}: nothing measured: " + "; ".join(
            f"{u} ran {self._seen[u]} batches, fewer than warm-up "
            f"{self._per_unit(self.warmup, u) or 0} + one window of "
            f"{self._per_unit(self.window, u) or 1} = {n}"
            for u, n in needed.items()
        )

    def _finish(self, trainer: pl.Trainer | None) -> None:
        """Close the loop's measurement; `trainer` None: this rank alone (after a crash, when
        the other ranks may be gone)."""
        self._close()
        self._active = False
        windows = self._kept()
        if trainer is None:
            counts = self._counts()
        else:
            windows, counts = self._reduce(trainer, windows)
        methods, assumptions = self._described(trainer)
        k = len(COMPONENTS)
        coverage = {
            c: Coverage(round(counts[i]), round(counts[k + i]))
            for i, c in enumerate(COMPONENTS)
            if counts[i] or counts[k + i]
        }
        reason = self._reason()
        if reason is not None and (trainer is None or trainer.is_global_zero):
            log.warning("%s", reason)
        units: dict[str, list[Window]] = {}
        for w in windows:
            units.setdefault(w.unit, []).append(w)
        measured = {u: UnitMeasurement(u, tuple(ws)) for u, ws in units.items()}
        self.measurements.append(
            PhaseMeasurement(
                self.phase,
                {} if reason else {u: m for u, m in measured.items() if not u.startswith(WARMUP)},
                methods,
                {u.removeprefix(WARMUP): m for u, m in measured.items() if u.startswith(WARMUP)},
                coverage=coverage,
                assumptions=assumptions,
                reason=reason,
            )
        )
        if trainer is not None:
            self._log(windows)

    def _log(self, windows: list[Window]) -> None:
        """Each window's rates to the trainer's loggers, once no window is open."""
        if self._trainer is None or not self._trainer.loggers:
            return
        for w, step in zip(windows, self._steps, strict=True):
            if w.seconds <= 0:
                continue
            key = f"energy/{self.phase}/{w.unit}"
            metrics = {f"{key}/seconds_per_it": w.seconds / max(w.iterations, 1)}
            metrics |= {f"{key}/{c}_w": j / w.seconds for c, j in w.energy_j.items()}
            if w.energy_j:
                metrics[f"{key}/joules_per_it"] = w.total_j / max(w.iterations, 1)
            for logger in self._trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)  # before the sanity check, which never opens a window

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

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active and not trainer.sanity_checking:
            self._pause()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._active:
            self._pause()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._finish(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:  # the training loop was skipped: no batch to run
            self._finish(trainer)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._finish(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc: BaseException
    ) -> None:
        # Keep what was measured before the crash, unreduced: the other ranks may be gone.
        if self._active:
            self._finish(None)
