"""Energy meters: NVML for a GPU, CodeCarbon for CPU and RAM. Each reads cumulative joules.

Every meter degrades instead of failing: a missing NVML, an unsupported energy counter or a
CodeCarbon that cannot start is recorded as the method (or its absence), never a crash.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lpm.energy.window import J_PER_KWH

log = logging.getLogger("lpm.energy")


def nvml_handle(
    nvml: Any, cuda_index: int, uuid: str | None = None, pci_bus_id: str | None = None
) -> Any:
    """The NVML handle of the GPU that CUDA calls `cuda_index`.

    CUDA numbers the visible devices (CUDA_VISIBLE_DEVICES, fastest first); NVML numbers all of
    them in PCI order. The UUID or PCI bus id from CUDA is unambiguous and tried first; without
    either, the CUDA_VISIBLE_DEVICES entry at `cuda_index` names the NVML device.
    """
    lookups = []
    if uuid:
        gpu_uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        lookups.append(lambda: nvml.nvmlDeviceGetHandleByUUID(gpu_uuid))
    if pci_bus_id:
        lookups.append(lambda: nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id))
    visible = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    entry = visible[cuda_index] if cuda_index < len(visible) else str(cuda_index)
    if entry.startswith(("GPU-", "MIG-")):
        lookups.append(lambda: nvml.nvmlDeviceGetHandleByUUID(entry))
    else:
        lookups.append(lambda: nvml.nvmlDeviceGetHandleByIndex(int(entry)))
    for lookup in lookups[:-1]:
        try:
            return lookup()
        except nvml.NVMLError:  # e.g. a UUID format this driver does not know: try the next
            continue
    return lookups[-1]()


def cuda_identity(index: int) -> tuple[str | None, str | None]:
    """(UUID, PCI bus id) of a CUDA device as torch reports them."""
    import torch

    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "") or "") or None
    bus = getattr(props, "pci_bus_id", None)
    if bus is None:
        return uuid, None
    domain, device = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
    return uuid, f"{domain:08X}:{bus:02X}:{device:02X}.0"


class NvmlMeter:
    """One GPU: the total-energy counter (mJ, Volta+), else power sampled and integrated.

    The power path samples in a background thread and integrates with the trapezoid rule; each
    read takes a fresh sample so a window ends exactly at its edge.
    """

    def __init__(
        self,
        handle: Any,
        nvml: Any,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.nvml, self.handle, self.clock = nvml, handle, clock
        try:
            self._start_mj = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self.methods = {"gpu": "nvml_counter"}
            self._thread = None
        except nvml.NVMLError:
            self.methods = {"gpu": "nvml_power"}
            self._lock = threading.Lock()
            self._energy_j = 0.0
            self._t, self._p_w = clock(), self._power_w()
            self._stop = threading.Event()
            self._interval_s = interval_s
            self._thread = threading.Thread(target=self._loop, name="lpm-nvml-power", daemon=True)
            self._thread.start()

    def _power_w(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def _sample(self) -> None:
        with self._lock:
            t, p = self.clock(), self._power_w()
            self._energy_j += 0.5 * (self._p_w + p) * (t - self._t)
            self._t, self._p_w = t, p

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def read_j(self) -> dict[str, float]:
        if self._thread is None:
            mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            return {"gpu": (mj - self._start_mj) / 1000.0}
        self._sample()
        return {"gpu": self._energy_j}

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


class CodeCarbonMeter:
    """CPU and RAM of this node through CodeCarbon, offline (no network, no geolocation).

    One per node: CodeCarbon measures the whole machine. RAPL is used where readable; otherwise
    CPU power is CodeCarbon's load-based estimate and RAM its per-DIMM constant.
    """

    def __init__(
        self,
        output_dir: str | Path,
        country_iso3: str = "USA",
        force_cpu_power_w: float | None = None,
        force_ram_power_w: float | None = None,
    ) -> None:
        os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        # CodeCarbon swallows a missing output dir and returns None from stop(): create it first.
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        extra = {}
        if force_cpu_power_w is not None:
            extra["force_cpu_power"] = force_cpu_power_w
        if force_ram_power_w is not None:
            extra["force_ram_power"] = force_ram_power_w
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso3,
            output_dir=str(output_dir),
            measure_power_secs=15,  # lpm reads at every window edge; the scheduler is a backstop
            tracking_mode="machine",
            log_level="error",
            allow_multiple_runs=True,
            pue=1.0,  # lpm applies the PUE itself, after measurement
            **extra,
        )
        self.tracker.start()
        # CodeCarbon's CPU modes that read a hardware counter; the rest model power from load/TDP.
        measured = {
            "intel_rapl": "rapl",
            "intel_power_gadget": "power_gadget",
            "windows_emi": "emi",
        }
        modes = [getattr(h, "_mode", None) for h in self.tracker._hardware]
        cpu = next((measured[m] for m in modes if m in measured), "estimate")
        self.methods = {
            "cpu": "estimate" if force_cpu_power_w is not None else cpu,
            "ram": "estimate",
        }

    def read_j(self) -> dict[str, float]:
        # CodeCarbon keeps private running totals; measuring now makes them end at this edge.
        self.tracker._measure_power_and_energy()
        return {
            "cpu": self.tracker._total_cpu_energy.kWh * J_PER_KWH,
            "ram": self.tracker._total_ram_energy.kWh * J_PER_KWH,
        }

    def close(self) -> None:
        self.tracker.stop()  # writes emissions.csv beside the record


class NodeMeters:
    """The meters of one process, built once it knows its device and local rank.

    Each rank meters its own GPU; local rank 0 also meters the node's CPU and RAM, so that
    summing over ranks counts every GPU once and every node once.
    """

    def __init__(
        self,
        output_dir: str | Path = "energy",
        country_iso3: str = "USA",
        codecarbon: dict | None = None,
    ) -> None:
        self.output_dir, self.country_iso3 = Path(output_dir), country_iso3
        self.codecarbon = codecarbon or {}
        self.meters: list[Any] | None = None
        self.missing: dict[str, str] = {}

    def __call__(self, trainer: Any) -> list[Any]:
        """Meters for a trainer's process: pass a NodeMeters as `EnergyCallback(meters=...)`."""
        return self.for_device(trainer.strategy.root_device, trainer.local_rank)

    def for_device(self, device: Any, local_rank: int) -> list[Any]:
        if self.meters is not None:
            return self.meters
        self.meters = []
        if getattr(device, "type", None) == "cuda":
            self._add(lambda: self._nvml(device.index or 0), "gpu")
        if local_rank == 0:
            self._add(
                lambda: CodeCarbonMeter(self.output_dir, self.country_iso3, **self.codecarbon),
                "cpu/ram",
            )
        return self.meters

    def _nvml(self, index: int) -> NvmlMeter:
        import pynvml

        pynvml.nvmlInit()
        return NvmlMeter(nvml_handle(pynvml, index, *cuda_identity(index)), pynvml)

    def _add(self, build: Callable[[], Any], what: str) -> None:
        try:
            self.meters.append(build())
        except Exception as exc:  # a missing meter costs a measurement, never the run
            self.missing[what] = f"{type(exc).__name__}: {exc}"
            log.warning("no %s meter: %s", what, self.missing[what])

    def close(self) -> None:
        for meter in self.meters or []:
            try:
                meter.close()
            except Exception as exc:
                log.warning("closing %s: %s", type(meter).__name__, exc)
