"""What a job and a sweep print: progress per phase, one summary line per job, a table per sweep,
and none of Lightning's or W&B's noise."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import pytest
import torch
from conftest import SHORT_DIRNAMES, SIZE_2D, TINY, lpm_run, read_record
from torch.utils.data import DataLoader, TensorDataset

from lpm.console import job_line, report_command, sweep_table
from lpm.progress import (
    INTERVAL_ENV,
    PhaseProgressBar,
    ProgressLines,
    clock_text,
    interval_s,
    phase_progress,
)
from lpm.record.load import load_records

# --- progress lines ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Ticking(pl.LightningModule):
    """Every batch takes `seconds_per_batch` on the fake clock."""

    def __init__(self, clock: FakeClock, seconds_per_batch: float) -> None:
        super().__init__()
        self.clock, self.seconds_per_batch = clock, seconds_per_batch
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.clock.now += self.seconds_per_batch
        return self.layer(batch[0]).sum()

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        self.clock.now += self.seconds_per_batch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(callback: pl.Callback, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lpm"]


def test_a_line_every_interval_with_done_planned_rate_and_eta(caplog) -> None:
    clock = FakeClock()
    lines = ProgressLines("autoencoder", planned=7, interval_s=10, clock=clock)
    data = DataLoader(TensorDataset(torch.zeros(7, 2)), batch_size=1)
    with caplog.at_level(logging.INFO, logger="lpm"):
        trainer(lines, max_steps=7).fit(Ticking(clock, 4.0), data)
    # 4 s a batch, a line once 10 s have passed since the last: after batches 3 and 6.
    assert said(caplog) == [
        "  autoencoder: 3/7 it, 0.25 it/s, ETA 0:16",
        "  autoencoder: 6/7 it, 0.25 it/s, ETA 0:04",
    ]


def test_predict_loops_get_lines_too_and_a_second_loop_starts_afresh(caplog) -> None:
    clock = FakeClock()
    lines = ProgressLines("synthesis", planned=3, interval_s=0, clock=clock)
    items = DataLoader(TensorDataset(torch.zeros(3, 2)), batch_size=1)
    with caplog.at_level(logging.INFO, logger="lpm"):
        trainer(lines).predict(Ticking(clock, 2.0), items, return_predictions=False)
        trainer(lines).predict(Ticking(clock, 1.0), items, return_predictions=False)
    assert said(caplog) == [
        "  synthesis: 1/3 it, 0.5 it/s, ETA 0:04",
        "  synthesis: 2/3 it, 0.5 it/s, ETA 0:02",
        "  synthesis: 3/3 it, 0.5 it/s, ETA 0:00",
        "  synthesis: 1/3 it, 1 it/s, ETA 0:02",
        "  synthesis: 2/3 it, 1 it/s, ETA 0:01",
        "  synthesis: 3/3 it, 1 it/s, ETA 0:00",
    ]


def test_long_etas_read_as_hours_and_big_counts_have_separators() -> None:
    lines = ProgressLines("diffusion", planned=150_000)
    lines.done = 1_500
    assert lines.line(100.0) == "diffusion: 1,500/150,000 it, 15 it/s, ETA 2:45:00"
    assert clock_text(59.6) == "1:00"


@pytest.mark.parametrize("text", ["soon", "-1", "nan"])
def test_a_bad_interval_names_the_variable(text: str, monkeypatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, text)
    with pytest.raises(ValueError, match=f"{INTERVAL_ENV}='{text}'.*>= 0"):
        interval_s()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_named_by_the_phase_and_a_log_gets_lines(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = phase_progress("diffusion", 33)
    assert isinstance(bar, PhaseProgressBar)
    assert bar.train_description == bar.predict_description == "diffusion"
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv(INTERVAL_ENV, "3")
    lines = phase_progress("diffusion", 33)
    assert isinstance(lines, ProgressLines)
    assert (lines.phase, lines.planned, lines.interval_s) == ("diffusion", 33, 3.0)


def test_the_interval_defaults_to_ten_seconds(monkeypatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert interval_s() == 10.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert interval_s() == 2.5


# --- summary line and sweep table -------------------------------------------------------------


def phase(kwh: float, kg: float, status: str) -> dict[str, Any]:
    return {
        "projected": {"energy_kwh": kwh, "energy_kwh_ci95": [kwh * 0.9, kwh * 1.2]},
        "co2e_kg": {"projected": kg, "projected_ci95": [kg * 0.9, kg * 1.2]},
        "verdict": {"status": status, "reasons": []},
    }


def record(model: str, status: str = "ok", **axes: Any) -> dict[str, Any]:
    """A job's record; a failed one failed on its config: no image size or batch known."""
    phases = {"autoencoder": phase(10, 4, "stable"), "synthesis": phase(1500, 600, "noisy")}
    size = {"image_size": [64, 64, 64], "batch_size": {"autoencoder": 2}} if status == "ok" else {}
    return {
        "status": status,
        "axes": {"model": model, "dims": "3d", "scale": "paper", "image_size": None,
                 "batch_size": None, **size, **axes},
        "phases": phases if status == "ok" else {},
        "totals": {"energy_kwh": 1510, "energy_kwh_ci95": [1359, 1812], "co2e_kg": 604,
                   "car_km": 5618.6, "embodied_kg": 0.5, "embodied_kg_ci95": [0.45, 0.6]}
        if status == "ok" else {},
        "job": {"seconds": 83.21, "overrides": [f"model={model}", "dims=3d"]},
    }  # fmt: skip


def test_the_job_line_has_totals_with_intervals_car_km_verdicts_and_path() -> None:
    line = job_line(record("base"), "multirun/x/model=base/record.json")
    assert line == (
        "ok in 83.2 s · projected: 1,510 (1,359–1,812) kWh, 604 (544–725) kg CO2e operational "
        "(≈ 5,619 car-km) + 0.5 (0.45–0.6) kg embodied · autoencoder stable, synthesis noisy "
        "-> multirun/x/model=base/record.json"
    )
    # A record from before embodied CO2e: the operational figure alone.
    old = record("base")
    del old["totals"]["embodied_kg"], old["totals"]["embodied_kg_ci95"]
    assert "kg CO2e operational (≈ 5,619 car-km) · autoencoder" in job_line(old, "r.json")


def test_the_job_line_marks_cpu_scale_and_says_less_when_nothing_was_projected() -> None:
    assert "projected, CPU scale: 1,510" in job_line(record("small", scale="cpu"), "r.json")
    failed = record("small", status="failed")
    assert job_line(failed, "r.json") == "failed in 83.2 s -> r.json"


def loaded(tmp_path: Path, records: dict[str, dict[str, Any]]) -> list:
    for name, data in records.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(json.dumps({"schema": "lpm.record/1", **data}))
    return load_records(tmp_path)


def test_the_sweep_table_shows_the_axes_that_vary_status_co2e_and_verdict(tmp_path) -> None:
    # image_size and batch_size differ too (unknown to the failed job): no columns of their own.
    found = loaded(tmp_path, {"a": record("base"), "b": record("small", status="failed")})
    assert sweep_table(found) == [
        "model  status  kg CO2e operational  kg embodied     verdict",
        "base   ok      604 (544–725)        0.5 (0.45–0.6)  noisy: synthesis",
        "small  failed  -                    -               -",
    ]


def test_a_sweep_over_no_axis_shows_the_overrides_that_vary(tmp_path) -> None:
    same = [record("base"), record("base")]
    same[0]["job"]["overrides"].append("site=de")
    same[1]["job"]["overrides"].append("site=fr")
    table = sweep_table(loaded(tmp_path, {"de": same[0], "fr": same[1]}))
    assert [row.split()[0] for row in table] == ["site", "de", "fr"]


def test_the_report_command_is_quoted_for_the_shell() -> None:
    assert report_command("multirun/a b") == "python -m lpm.report 'multirun/a b'"


# --- a real sweep's console -------------------------------------------------------------------


class Sweep(NamedTuple):
    out: Path
    proc: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Two tiny jobs, a progress line per batch, an `srun` on PATH as on a Slurm login node."""
    tmp = tmp_path_factory.mktemp("console")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    out = tmp / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(INTERVAL_ENV, "0")
        mp.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        for key in [k for k in os.environ if k.startswith("SLURM_")]:
            mp.delenv(key)
        proc = lpm_run(*TINY, *SIZE_2D, "model=small,base", SHORT_DIRNAMES, out=out, multirun=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return Sweep(out, proc)


PLANNED = {"autoencoder": 4, "diffusion": 4, "synthesis": 7}  # TINY: warm-up + measured batches


def test_each_phase_reports_progress_in_lines(sweep: Sweep) -> None:
    for name, planned in PLANNED.items():
        done = re.findall(rf"^  {name}: (\d+)/{planned} it, [\d.e+-]+ it/s, ETA \d+:\d\d$",
                          sweep.proc.stdout, re.MULTILINE)  # fmt: skip
        assert [int(d) for d in done] == list(range(1, planned + 1)) * 2, name


def test_each_job_ends_with_its_summary_line(sweep: Sweep) -> None:
    for path in sorted(sweep.out.glob("*/record.json")):
        line = "  " + job_line(read_record(path.parent), path)
        assert line in sweep.proc.stdout.splitlines()
        assert " kg CO2e " in line and "car-km" in line and "autoencoder " in line


def test_no_srun_hint_tip_or_anonymous_warning(sweep: Sweep) -> None:
    output = sweep.proc.stdout + sweep.proc.stderr
    for noise in ("srun", "Tip", "litlogger", "anonymous", "fontManager"):
        assert noise not in output, noise


def test_the_sweep_ends_with_its_table_and_the_report_command(sweep: Sweep) -> None:
    end = sweep.proc.stdout.splitlines()[-5:]
    found = {r.record["axes"]["model"]: r.record for r in load_records(sweep.out)}
    assert end[0] == f"sweep {sweep.out}: 2 ok"
    assert end[1].split() == ["model", "status", "kg", "CO2e", "operational", "kg", "embodied",
                              "verdict"]  # fmt: skip
    assert sorted(row.split()[0] for row in end[2:4]) == sorted(found)
    for row in end[2:4]:
        model, status, co2e, _, made = row.split()[:5]
        assert status == "ok"
        assert float(co2e) == pytest.approx(found[model]["totals"]["co2e_kg"], rel=1e-2)
        assert float(made) == pytest.approx(found[model]["totals"]["embodied_kg"], rel=1e-2)
    assert sweep.proc.stdout.rstrip().endswith(f"next: python -m lpm.report {sweep.out}")
