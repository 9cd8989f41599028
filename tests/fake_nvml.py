# ruff: noqa: N802, N801, N818  (pynvml's own names)
"""A fake `pynvml` at its own boundary: the functions lpm calls, over devices the test controls.

Energy counters are monotonic and advance only when a test says so, so expected joules are exact.
Power is a function of a clock the test can also control, for the sampling path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


@dataclass
class Device:
    index: int
    uuid: str
    pci_bus_id: str
    energy_mj: int = 0
    counter: bool = True  # Volta and newer have the total-energy counter
    power_mw: Callable[[float], float] = lambda t: 100_000.0
    reads: int = field(default=0)


class FakeNvml:
    """Drop-in for the `pynvml` module (`nvidia-ml-py`), for the calls lpm makes."""

    NVMLError = NVMLError

    def __init__(
        self, n: int = 2, counter: bool = True, clock: Callable[[], float] = time.perf_counter
    ):
        self.clock = clock
        self.devices = [
            Device(i, f"GPU-{i:08d}-fake", f"00000000:{0x10 + i:02X}:00.0", counter=counter)
            for i in range(n)
        ]

    def advance(self, index: int, mj: int) -> None:
        assert mj >= 0, "NVML energy counters never go back"
        self.devices[index].energy_mj += mj

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Device:
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Device:
        return self._find(lambda d: d.uuid == uuid)

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> Device:
        return self._find(lambda d: d.pci_bus_id.lower() == bus_id.lower())

    def _find(self, match: Callable[[Device], bool]) -> Device:
        for d in self.devices:
            if match(d):
                return d
        raise NVMLError_NotFound()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Device) -> int:
        if not handle.counter:
            raise NVMLError_NotSupported()
        handle.reads += 1
        return handle.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: Device) -> float:
        return handle.power_mw(self.clock())
