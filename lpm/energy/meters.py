"""Energy meters: NVML for a GPU, CodeCarbon for CPU and RAM. Each reads cumulative joules.

Every meter degrades instead of failing: a missing NVML, an unsupported energy counter or a
CodeCarbon that cannot start is recorded as the method (or its absence), never a crash. Each
meter may list the `assumptions` its numbers rest on (an estimated power model, a forced power);
the callback carries them into the measurement.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from lpm.config import TRACKING_MODES
from lpm.energy.window import J_PER_KWH

log = logging.getLogger("lpm.energy")


def check_tracking_mode(tracking_mode: str) -> str:
    if tracking_mode not in TRACKING_MODES:
        raise ValueError(
            f"measure.tracking_mode={tracking_mode!r}: use one of {', '.join(TRACKING_MODES)} "
            "(process on shared hosts)"
        )
    return tracking_mode


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
            self.assumptions: tuple[str, ...] = ()
            self._thread = None
        except nvml.NVMLError:
            self.methods = {"gpu": "nvml_power"}
            self.assumptions = (
                f"GPU energy integrated from power sampled every {interval_s:g} s "
                "(no NVML energy counter on this GPU)",
            )
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


# CodeCarbon's CPU modes that read a hardware counter; the rest model power from load and TDP.
_CPU_COUNTERS = {"intel_rapl": "rapl", "intel_power_gadget": "power_gadget", "windows_emi": "emi"}


class CodeCarbonMeter:
    """CPU and RAM of this node through CodeCarbon, offline (no network, no geolocation).

    One per node. RAPL is used where readable; otherwise CPU power is CodeCarbon's load × TDP
    estimate and RAM its per-DIMM model: `assumptions` says which, in words.

    lpm reads CodeCarbon's running totals at every window edge. CodeCarbon's own scheduler
    updates the same totals from its timer thread without a lock, so a read racing it counts an
    interval twice (a 20 W RAM model was read as 39 W, up to 414 W with a fast timer). The
    meter therefore stops that scheduler once CodeCarbon has started and runs its own backstop
    timer (every `backstop_s`, so that long gaps between reads stay short for counters that
    wrap) under the same lock as the reads. CodeCarbon's 1 s power monitor keeps running: it
    only samples CPU power into a history that has its own lock. The public task API
    (`start_task`/`stop_task`) would also avoid the race, at ~0.6 ms per window edge against
    ~0.1 ms for a locked read here.

    Args:
        force_cpu_power_w: the TDP CodeCarbon's load model scales (power = TDP × load curve);
            not a constant power.
        force_ram_power_w: a constant RAM power, instead of the per-DIMM model.
        tracking_mode: `machine` charges the whole node's CPU load and memory to the job (right
            on a dedicated node); `process` only this process and its children (advised on
            shared hosts, where other tenants' load would otherwise count as yours; ranks
            started by srun are not children of local rank 0 and are not counted).
        backstop_s: seconds between lpm's own background updates of CodeCarbon's totals.
    """

    def __init__(
        self,
        output_dir: str | Path,
        country_iso3: str = "USA",
        force_cpu_power_w: float | None = None,
        force_ram_power_w: float | None = None,
        tracking_mode: str = "machine",
        backstop_s: float = 15.0,
    ) -> None:
        self.tracking_mode = check_tracking_mode(tracking_mode)
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
            # Its scheduler is stopped right after start (see the class docstring): an interval
            # it cannot reach in between.
            measure_power_secs=3600,
            api_call_interval=-1,  # no emissions bookkeeping inside a window-edge read
            tracking_mode=tracking_mode,
            log_level="error",
            allow_multiple_runs=True,
            pue=1.0,  # lpm applies the PUE itself, after measurement
            **extra,
        )
        self._lock = threading.Lock()
        with self._lock:
            self.tracker.start()
            scheduler = getattr(self.tracker, "_scheduler", None)
            if scheduler is not None:
                scheduler.stop()
        if self.tracker._start_time is None:  # start() swallows its own errors
            raise RuntimeError("CodeCarbon did not start (CODECARBON_LOG_LEVEL=info says why)")
        modes = [getattr(h, "_mode", None) for h in self.tracker._hardware]
        cpu = next((_CPU_COUNTERS[m] for m in modes if m in _CPU_COUNTERS), "estimate")
        self.methods = {
            "cpu": "estimate" if force_cpu_power_w is not None else cpu,
            "ram": "estimate",
        }
        self.assumptions = self._assumptions(force_cpu_power_w, force_ram_power_w)
        self._stop = threading.Event()
        self._backstop_s = backstop_s
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name="lpm-codecarbon", daemon=True)
        self._thread.start()

    def _assumptions(
        self, force_cpu_power_w: float | None, force_ram_power_w: float | None
    ) -> tuple[str, ...]:
        from codecarbon.external.hardware import CPU
        from codecarbon.external.ram import RAM

        out = []
        cpu = next((h for h in self.tracker._hardware if isinstance(h, CPU)), None)
        if cpu is not None and cpu._mode not in _CPU_COUNTERS:
            tdp = f"{cpu._tdp:g} W{' (generic)' if cpu._is_generic_tdp else ''}"
            if cpu._mode == "constant":
                model = f"CodeCarbon constant, half of TDP {tdp}"
            elif self.tracking_mode == "machine":
                model = f"CodeCarbon estimate, TDP {tdp} × (0.1 + 0.9 × machine load³)"
            else:
                model = f"CodeCarbon estimate, TDP {tdp} × this process tree's share of the CPUs"
            if force_cpu_power_w is not None:
                model += " (TDP set by measure.force_cpu_power_w)"
            out.append(f"CPU power: {model}; no RAPL")
        ram = next((h for h in self.tracker._hardware if isinstance(h, RAM)), None)
        if force_ram_power_w is not None:
            out.append(f"RAM power forced to {force_ram_power_w:g} W (measure.force_ram_power_w)")
        elif ram is not None:
            out.append(f"RAM power: {self._ram_model(ram)}")
        out.append(
            "tracking_mode machine: the whole node's CPU and RAM are charged to this job"
            if self.tracking_mode == "machine"
            else "tracking_mode process: CPU and RAM of this process and its children only"
        )
        return tuple(out)

    def _ram_model(self, ram: Any) -> str:
        from codecarbon.external import ram as cc_ram

        per_dimm = 1.5 if ram.is_arm_cpu else cc_ram.RAM_SLOT_POWER_X86
        text = f"CodeCarbon model, {per_dimm:g} W per estimated DIMM"
        if self.tracking_mode == "process":
            return text + " of this process tree's memory (at least 2 DIMMs on x86)"
        try:  # private helpers: a CodeCarbon that renames them loses the detail, not the meter
            gb = ram.machine_memory_GB
            return (
                f"{text} ({ram._estimate_dimm_count(gb)} for {gb:.0f} GB: "
                f"{ram._calculate_ram_power(gb):g} W whatever the job uses)"
            )
        except Exception:
            return text

    def _measure(self) -> None:
        with self._lock:
            self.tracker._measure_power_and_energy()

    def _loop(self) -> None:
        while not self._stop.wait(self._backstop_s):
            try:
                self._measure()
            except Exception as exc:  # the next window-edge read tries again
                if not self._warned:
                    self._warned = True
                    log.warning("CodeCarbon background update failed: %s", exc)

    def read_j(self) -> dict[str, float]:
        # Measuring now makes CodeCarbon's running totals end at this edge; the lock keeps
        # the backstop from updating them at the same time.
        with self._lock:
            self.tracker._measure_power_and_energy()
            return {
                "cpu": self.tracker._total_cpu_energy.kWh * J_PER_KWH,
                "ram": self.tracker._total_ram_energy.kWh * J_PER_KWH,
            }

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self.tracker.stop()  # writes emissions.csv beside the record


class NodeMeters:
    """The meters of one process, built once it knows its device and local rank.

    Each rank meters its own GPU; local rank 0 also meters the node's CPU and RAM, so that
    summing over ranks counts every GPU once and every node once. `expected` says which meters
    this process attempted, `missing` which of them could not be built and why: the callback
    reports coverage from both. Release the meters with `close()`, or use a `with` block:

        with NodeMeters("energy", "DEU") as meters:
            trainer = Trainer(callbacks=[EnergyCallback(meters=meters)])

    Args:
        codecarbon: keyword arguments of :class:`CodeCarbonMeter` (force_cpu_power_w, ...).
        tracking_mode: CodeCarbon's attribution of CPU and RAM, `machine` or `process`; use
            `process` on shared hosts (see :class:`CodeCarbonMeter`).
    """

    def __init__(
        self,
        output_dir: str | Path = "energy",
        country_iso3: str = "USA",
        codecarbon: dict | None = None,
        tracking_mode: str = "machine",
    ) -> None:
        self.output_dir, self.country_iso3 = Path(output_dir), country_iso3
        self.codecarbon = codecarbon or {}
        self.tracking_mode = check_tracking_mode(tracking_mode)
        self.meters: list[Any] | None = None
        self.expected: dict[str, int] = {}
        self.missing: dict[str, str] = {}

    def __call__(self, trainer: Any) -> list[Any]:
        """Meters for a trainer's process: pass a NodeMeters as `EnergyCallback(meters=...)`."""
        return self.for_device(trainer.strategy.root_device, trainer.local_rank)

    def for_device(self, device: Any, local_rank: int) -> list[Any]:
        if self.meters is not None:
            return self.meters
        self.meters, self.expected, self.missing = [], {}, {}
        if getattr(device, "type", None) == "cuda":
            self.expected["gpu"] = 1
            self._add(lambda: self._nvml(device.index or 0), "gpu")
        if local_rank == 0:
            self.expected |= {"cpu": 1, "ram": 1}
            self._add(
                lambda: CodeCarbonMeter(
                    self.output_dir,
                    self.country_iso3,
                    **self.codecarbon,
                    tracking_mode=self.tracking_mode,
                ),
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
        """Stop every meter; CodeCarbon writes its emissions.csv. Safe to call twice."""
        for meter in self.meters or []:
            try:
                meter.close()
            except Exception as exc:
                log.warning("closing %s: %s", type(meter).__name__, exc)

    def __enter__(self) -> NodeMeters:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
