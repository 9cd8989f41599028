"""A phase's progress on the console: a bar on a terminal, a line every ~10 s everywhere else.

Logs, CI and Slurm capture output that is not a terminal: there a bar is noise (carriage
returns), and without it a job says nothing for minutes. The lines read

    diffusion: 1,210/3,033 it, 19.7 it/s, ETA 1:32

`LPM_PROGRESS_S` sets the seconds between lines (default 10; 0: one line per batch). It is an
environment variable, not a config field, so that it never changes a job's overrides, its
directory name or the check that skips a job already done.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar

log = logging.getLogger("lpm")

INTERVAL_ENV = "LPM_PROGRESS_S"
DEFAULT_INTERVAL_S = 10.0


def interval_s() -> float:
    """Seconds between progress lines, from `LPM_PROGRESS_S`.

    Raises:
        ValueError: the variable is not a number >= 0.
    """
    text = os.environ.get(INTERVAL_ENV)
    if text is None:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ValueError(f"{INTERVAL_ENV}={text!r}: must be a number of seconds >= 0")
    return value


def clock_text(seconds: float) -> str:
    """`M:SS`, or `H:MM:SS` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PhaseProgressBar(TQDMProgressBar):
    """Lightning's bar (it/s and ETA), named by the phase instead of `Epoch 0` (each phase runs
    one epoch) or `Predicting DataLoader 0`."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase

    @property
    def train_description(self) -> str:
        return self.phase

    @property
    def predict_description(self) -> str:
        return self.phase

    def on_train_epoch_start(self, *args: Any) -> None:
        super().on_train_epoch_start(*args)
        self.train_progress_bar.set_description(self.phase)

    def on_predict_batch_start(self, *args: Any) -> None:
        super().on_predict_batch_start(*args)
        # Every item, since Lightning renames the bar on its first one; without a refresh, which
        # would write to the terminal at each item.
        self.predict_progress_bar.set_description(self.phase, refresh=False)


class ProgressLines(pl.Callback):
    """One log line per `interval_s` of a fit or predict loop: phase, iterations done of
    `planned`, rate since the loop began, time left at that rate. Rank 0 only.

    Args:
        planned: iterations the loop runs (warm-up included): what the ETA counts down.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        phase: str,
        planned: int,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.phase, self.planned, self.interval_s, self.clock = phase, planned, interval_s, clock
        self.done = 0
        self._started = self._said = 0.0

    def _start(self) -> None:
        self.done = 0
        self._started = self._said = self.clock()

    def _batch_end(self, trainer: pl.Trainer) -> None:
        self.done += 1
        now = self.clock()
        if now - self._said < self.interval_s or not trainer.is_global_zero:
            return
        self._said = now
        log.info("  %s", self.line(now - self._started))

    def line(self, elapsed_s: float) -> str:
        """What is said `elapsed_s` after the loop began, `done` iterations in."""
        text = f"{self.phase}: {self.done:,}/{self.planned:,} it"
        if elapsed_s <= 0:
            return text
        rate = self.done / elapsed_s
        left = max(self.planned - self.done, 0) / rate
        return f"{text}, {rate:.3g} it/s, ETA {clock_text(left)}"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_end(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(trainer)


def phase_progress(phase: str, planned: int) -> pl.Callback:
    """A bar when stderr is a terminal (where Lightning draws it), else progress lines."""
    if sys.stderr.isatty():
        return PhaseProgressBar(phase)
    return ProgressLines(phase, planned, interval_s())
