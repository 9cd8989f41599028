"""One intensity for every zone and time (a what-if, or a value the user knows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lpm.carbon.intensity.base import Intensity, UnknownZone


@dataclass(frozen=True)
class Constant:
    g_per_kwh: float
    zone: str = "*"  # "*": any zone
    basis: str = "unknown"

    def zones(self) -> list[str]:
        return [self.zone]

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        if self.zone != "*" and zone.strip().upper() != self.zone.upper():
            raise UnknownZone(zone, self.zones())
        return Intensity(self.g_per_kwh, zone, "any", "constant override", "constant", self.basis)
