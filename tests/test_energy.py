"""Meters against fakes at their own boundary, the callback under DDP, CodeCarbon for real."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fake_nvml import FakeNvml

from lpm.energy.callback import EnergyCallback
from lpm.energy.meters import CodeCarbonMeter, NodeMeters, NvmlMeter, nvml_handle


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
    node.close()


def test_readme_snippet_measures_a_model_that_is_not_lpms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The callback in any Lightning project", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) == 3

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
    assert unit.joules_per_iteration.mean > 0
    assert set(energy.measurement.methods) == {"cpu", "ram"}
    assert (tmp_path / "energy").is_dir()
