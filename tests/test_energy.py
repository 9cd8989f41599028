"""Meters against fakes at their own boundary, the callback under DDP, CodeCarbon for real."""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fake_nvml import FakeNvml

from lpm.energy.callback import EnergyCallback
from lpm.energy.meters import CodeCarbonMeter, NodeMeters, NvmlMeter, nvml_handle
from lpm.energy.window import Coverage


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_counter_meter_reads_exact_joules_since_start() -> None:
    nvml = FakeNvml(n=1)
    nvml.advance(0, 5_000)  # energy before the meter started is not ours
    meter = NvmlMeter(nvml.devices[0], nvml)
    assert meter.methods == {"gpu": "nvml_counter"}
    nvml.advance(0, 1_500)
    assert meter.read_j() == {"gpu": 1.5}
    nvml.advance(0, 2_250)
    assert meter.read_j() == {"gpu": 3.75}


def test_power_sampling_integrates_an_analytic_curve() -> None:
    clock = ManualClock()
    nvml = FakeNvml(n=1, counter=False, clock=clock)
    # 100 W rising by 50 W/s: the trapezoid rule is exact on a line.
    nvml.devices[0].power_mw = lambda t: 100_000.0 + 50_000.0 * t
    meter = NvmlMeter(nvml.devices[0], nvml, interval_s=3600, clock=clock)
    try:
        assert meter.methods == {"gpu": "nvml_power"}
        for t in (0.5, 1.25, 2.0):
            clock.t = t
            expected = 100.0 * t + 25.0 * t**2  # ∫ (100 + 50 t) dt from 0
            assert meter.read_j()["gpu"] == pytest.approx(expected, rel=1e-12)
    finally:
        meter.close()


def test_power_sampling_thread_keeps_sampling_between_reads() -> None:
    nvml = FakeNvml(n=1, counter=False)
    start = nvml.clock()
    nvml.devices[0].power_mw = lambda t: 200_000.0  # constant 200 W
    meter = NvmlMeter(nvml.devices[0], nvml, interval_s=0.005)
    try:
        t0 = nvml.clock()
        import time

        time.sleep(0.05)
        joules = meter.read_j()["gpu"]
        t1 = nvml.clock()
        assert 200.0 * (t1 - t0) * 0.99 <= joules <= 200.0 * (t1 - start) * 1.01
    finally:
        meter.close()


def test_cuda_index_maps_to_nvml_device_under_reordered_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = FakeNvml(n=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert nvml_handle(nvml, 0) is nvml.devices[2]
    assert nvml_handle(nvml, 1) is nvml.devices[0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{nvml.devices[3].uuid},{nvml.devices[1].uuid}")
    assert nvml_handle(nvml, 0) is nvml.devices[3]
    # What torch reports wins over the environment: UUID (with or without GPU-), then PCI bus id.
    assert nvml_handle(nvml, 0, uuid="00000001-fake") is nvml.devices[1]
    assert nvml_handle(nvml, 0, pci_bus_id="00000000:12:00.0") is nvml.devices[2]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_handle(nvml, 3) is nvml.devices[3]
    # A UUID this driver does not know falls through to the PCI bus id, then to the index.
    assert nvml_handle(nvml, 0, uuid="ffffffff", pci_bus_id="00000000:13:00.0") is nvml.devices[3]
    assert nvml_handle(nvml, 1, uuid="ffffffff") is nvml.devices[1]


class Steps(pl.LightningModule):
    """Each training step advances this rank's fake GPU counter by (rank + 1) joules."""

    def __init__(self, nvml: FakeNvml) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nvml = nvml

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.nvml.advance(self.global_rank, 1_000 * (self.global_rank + 1))
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FakeCpu:
    """A node-level meter: +2 J per read, so its total depends on how often it is read."""

    def __init__(self) -> None:
        self.methods = {"cpu": "estimate"}
        self.j = 0.0

    def read_j(self) -> dict[str, float]:
        self.j += 2.0
        return {"cpu": self.j}


class Dump(EnergyCallback):
    """Writes the (reduced) measurement from global rank 0: ddp_fork ranks are child processes."""

    def __init__(self, out: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.is_global_zero:
            unit = self.measurement.units["step"]
            self.out.write_text(
                json.dumps(
                    {
                        "energy": self.measurement.energy_j,
                        "iterations": unit.iterations,
                        "windows": [w.energy_j for w in unit.windows],
                        "methods": self.measurement.methods,
                        "coverage": {
                            c: [v.metered, v.expected] for c, v in self.measurement.coverage.items()
                        },
                        "complete": self.measurement.complete,
                        "assumptions": self.measurement.assumptions,
                    }
                )
            )


def _loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=2)


@pytest.mark.parametrize("devices", [1, 2])
def test_ddp_ranks_sum_their_own_gpu_and_count_the_node_once(tmp_path: Path, devices: int) -> None:
    nvml = FakeNvml(n=2)

    def meters(trainer: pl.Trainer) -> list:
        own = [NvmlMeter(nvml_handle(nvml, trainer.local_rank), nvml)]
        return own + ([FakeCpu()] if trainer.local_rank == 0 else [])

    warmup, iterations = 2, 6
    out = tmp_path / "measurement.json"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        max_steps=warmup + iterations,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Dump(out, warmup=warmup, window=3, meters=meters)],
    )
    trainer.fit(Steps(nvml), _loader())
    result = json.loads(out.read_text())
    assert result["iterations"] == iterations
    # Rank r adds r + 1 joules a step: the reduced GPU energy is each rank's own, summed once.
    assert result["energy"]["gpu"] == pytest.approx(iterations * sum(r + 1 for r in range(devices)))
    # Two windows of three steps, each window read at its two edges by local rank 0 only.
    assert len(result["windows"]) == math.ceil(iterations / 3)
    assert [w["cpu"] for w in result["windows"]] == [2.0, 2.0]
    assert result["methods"] == {"gpu": "nvml_counter", "cpu": "estimate"}


def test_codecarbon_runs_offline_and_measures_cpu_and_ram(tmp_path: Path) -> None:
    out = tmp_path / "cc"
    meter = CodeCarbonMeter(out, "DEU")
    try:
        first = meter.read_j()
        x = torch.randn(256, 256)
        for _ in range(200):
            x = torch.tanh(x @ x)
        second = meter.read_j()
    finally:
        meter.close()
    assert second["cpu"] > first["cpu"] >= 0
    assert second["ram"] > first["ram"] >= 0
    assert meter.methods["ram"] == "estimate"
    assert meter.methods["cpu"] in ("rapl", "estimate")
    assert (out / "emissions.csv").is_file()


def test_node_meters_never_crash_a_run_without_nvml(tmp_path: Path, monkeypatch) -> None:
    # A CUDA device whose NVML cannot be loaded: the GPU goes unmeasured, the reason is kept.
    import lpm.energy.meters as meters_module

    def no_nvml(self: NodeMeters, index: int) -> NvmlMeter:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(meters_module.NodeMeters, "_nvml", no_nvml)
    node = NodeMeters(tmp_path, "DEU")
    meters = node.for_device(torch.device("cuda", 0), local_rank=1)
    assert meters == []
    assert "NVML" in node.missing["gpu"]
    assert node.expected == {"gpu": 1}  # attempted, so the GPU shows as not metered
    node.close()


def test_readme_snippet_measures_a_model_that_is_not_lpms_and_releases_its_meters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The callback in any Lightning project", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "with NodeMeters(" in snippet

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def trainer(**kwargs: object) -> pl.Trainer:
        quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        return pl.Trainer(
            accelerator="cpu", max_steps=140, enable_model_summary=False, **quiet, **kwargs
        )

    monkeypatch.chdir(tmp_path)
    namespace = {"Trainer": trainer, "model": Regression(), "datamodule": _loader()}
    namespace["datamodule"] = torch.utils.data.DataLoader(torch.randn(512, 4), batch_size=2)
    exec(snippet, namespace)
    energy = namespace["energy"]
    unit = energy.measurement.units["step"]
    assert unit.iterations == 120 and len(unit.windows) == 2  # 20 warm-up steps not counted
    assert unit.joules_per_iteration.value > 0
    assert set(energy.measurement.methods) == {"cpu", "ram"}
    assert energy.measurement.coverage == {"cpu": Coverage(1, 1), "ram": Coverage(1, 1)}
    # Released: CodeCarbon writes its CSV when it stops, and lpm's background timer is gone.
    assert (tmp_path / "energy" / "emissions.csv").is_file()
    assert not any(t.name == "lpm-codecarbon" for t in threading.enumerate())


# --- coverage under DDP ----------------------------------------------------------------------


class FakeCodeCarbon:
    """Stands in for CodeCarbonMeter in forked ranks: CPU and RAM, +1 J per read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.methods = {"cpu": "estimate", "ram": "estimate"}
        self.assumptions = ("RAM power: fake",)
        self.j = 0.0

    def read_j(self) -> dict[str, float]:
        self.j += 1.0
        return {"cpu": self.j, "ram": self.j}

    def close(self) -> None:
        pass


def test_ddp_coverage_counts_the_gpu_whose_nvml_failed_on_one_of_two_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lpm.energy.meters as meters_module

    nvml = FakeNvml(n=2)

    class GpuRanks(NodeMeters):
        """NodeMeters on two pretend CUDA ranks whose second NVML cannot be loaded."""

        def __call__(self, trainer: pl.Trainer) -> list:
            cuda = torch.device("cuda", trainer.local_rank)
            return self.for_device(cuda, trainer.local_rank)

        def _nvml(self, index: int) -> NvmlMeter:
            if index == 1:
                raise RuntimeError("NVML Shared Library Not Found")
            return NvmlMeter(nvml_handle(nvml, index), nvml)

    monkeypatch.setattr(meters_module, "CodeCarbonMeter", FakeCodeCarbon)
    out = tmp_path / "measurement.json"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Dump(out, warmup=2, window=3, meters=GpuRanks(tmp_path, "DEU"))],
    )
    trainer.fit(Steps(nvml), _loader())
    result = json.loads(out.read_text())
    assert result["coverage"] == {"gpu": [1, 2], "cpu": [1, 1], "ram": [1, 1]}
    assert result["complete"] is False
    assert result["energy"]["gpu"] == pytest.approx(6.0)  # rank 0's 1 J a step; rank 1 unmetered
    assert result["assumptions"] == ["RAM power: fake"]


# --- CodeCarbon: no race with its scheduler, tracking mode, assumptions --------------------------


def test_codecarbon_reads_never_race_its_timer(tmp_path: Path) -> None:
    # A background update every 20 ms whose hardware reads take 3 ms (slow sensors), windows of
    # ~10 ms: a window-edge read that runs during an unserialised update starts from the same
    # stale timestamp and counts that interval twice: RAM above its forced 20 W (without the
    # lock a third of these windows read 25-70 W).
    meter = CodeCarbonMeter(tmp_path, "DEU", force_ram_power_w=20, backstop_s=0.02)

    def slow(measure: Callable) -> Callable:
        def measured(*args: object, **kwargs: object) -> object:
            out = measure(*args, **kwargs)
            if threading.current_thread().name == "lpm-codecarbon":
                time.sleep(0.003)
            return out

        return measured

    try:
        assert meter.tracker._scheduler._stopped  # CodeCarbon's own timer is off
        for hardware in meter.tracker._hardware:
            hardware.measure_power_and_energy = slow(hardware.measure_power_and_energy)
        x = torch.randn(128, 128)
        e0 = meter.read_j()
        t0 = (
            time.perf_counter()
        )  # after the read, as the callback's edges: it may wait for the lock
        watts = []
        for _ in range(60):
            end = time.perf_counter() + 0.01
            while time.perf_counter() < end:
                x = torch.tanh(x @ x)
            e1 = meter.read_j()
            t1 = time.perf_counter()
            watts.append((e1["ram"] - e0["ram"]) / (t1 - t0))
            t0, e0 = t1, e1
    finally:
        meter.close()
    assert max(watts) <= 20.0 * 1.02, watts
    # CodeCarbon drops the time its own update takes (3 ms here): below 20 W, never above.
    assert statistics.median(watts) >= 10.0, watts


def test_tracking_mode_is_checked_recorded_and_passed_to_codecarbon(tmp_path: Path) -> None:
    for build in (
        lambda: NodeMeters(tmp_path, "DEU", tracking_mode="node"),
        lambda: CodeCarbonMeter(tmp_path, "DEU", tracking_mode="node"),
    ):
        with pytest.raises(
            ValueError, match=r"measure\.tracking_mode='node': use one of machine, process"
        ):
            build()
    node = NodeMeters(tmp_path, "DEU", tracking_mode="process")
    assert node.tracking_mode == "process"
    with node:
        (meter,) = node.for_device(torch.device("cpu"), local_rank=0)
        assert meter.tracker._tracking_mode == "process"
        assert "tracking_mode process: CPU and RAM of this process and its children only" in (
            meter.assumptions
        )
        assert node.expected == {"cpu": 1, "ram": 1}


def test_codecarbon_lists_the_assumptions_its_numbers_rest_on(tmp_path: Path) -> None:
    meter = CodeCarbonMeter(tmp_path, "DEU")
    forced = CodeCarbonMeter(tmp_path, "DEU", force_cpu_power_w=10, force_ram_power_w=20)
    meter.close()
    forced.close()
    assert "tracking_mode machine: the whole node's CPU and RAM are charged to this job" in (
        meter.assumptions
    )
    ram = [a for a in meter.assumptions if a.startswith("RAM power")]
    assert len(ram) == 1 and ram[0].startswith(
        "RAM power: CodeCarbon model, 5 W per estimated DIMM"
    )
    assert "RAM power forced to 20 W (measure.force_ram_power_w)" in forced.assumptions
    if meter.methods["cpu"] == "estimate":  # no RAPL here
        cpu = [a for a in forced.assumptions if a.startswith("CPU power")]
        assert cpu == [
            "CPU power: CodeCarbon estimate, TDP 10 W × (0.1 + 0.9 × machine load³) "
            "(TDP set by measure.force_cpu_power_w); no RAPL"
        ]


def test_nvml_power_sampling_says_it_is_an_integral() -> None:
    nvml = FakeNvml(n=1, counter=False)
    meter = NvmlMeter(nvml.devices[0], nvml, interval_s=0.1)
    meter.close()
    assert meter.assumptions == (
        "GPU energy integrated from power sampled every 0.1 s (no NVML energy counter on this GPU)",
    )
    assert NvmlMeter(FakeNvml(n=1).devices[0], FakeNvml(n=1)).assumptions == ()


def test_node_meters_is_a_context_manager_that_closes_its_meters(tmp_path: Path) -> None:
    with NodeMeters(tmp_path, "DEU") as node:
        node.for_device(torch.device("cpu"), local_rank=0)
        assert not (tmp_path / "emissions.csv").exists()
    assert (tmp_path / "emissions.csv").is_file()
    assert not any(t.name == "lpm-codecarbon" for t in threading.enumerate())
    node.close()  # twice is harmless
