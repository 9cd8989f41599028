"""The intensity value object, the errors a lookup raises and the source protocol."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

KINDS = ("annual", "monthly", "daily", "hourly", "mean", "constant", "live")


@dataclass(frozen=True)
class Intensity:
    """Grid carbon intensity of one zone over one period, with its provenance.

    Attributes:
        period: "2023" (a year), "2024-01" (a month), "2024-01-05" (a day), an ISO timestamp
            (an hour or a live reading), or "first..last" for a mean over a series.
        kind: one of `KINDS`.
        basis: "lifecycle", "direct" (combustion only) or "unknown".
        fallback: None, or one line saying what was asked, why the configured source could not
            answer it and what was used instead (`carbon.fallback=annual`).
    """

    g_per_kwh: float
    zone: str
    period: str
    source: str
    kind: str = "annual"
    basis: str = "lifecycle"
    fallback: str | None = None


class UnknownZone(KeyError):  # noqa: N818  (public name, reads as a lookup miss)
    """A source without the zone. `where` names the source ("em.csv") and `when` the time
    asked, where they help."""

    def __init__(
        self, zone: str, known: list[str], where: str | None = None, when: str | None = None
    ) -> None:
        super().__init__(zone)
        self.zone, self.known, self.where, self.when = zone, known, where, when

    def __str__(self) -> str:
        shown = difflib.get_close_matches(self.zone.upper(), self.known, n=5) or self.known[:5]
        listed = f"{', '.join(shown)} ({len(self.known)} in all"
        if self.where is None:
            return (
                f"unknown carbon-intensity zone {self.zone!r}; known zones include {listed}; "
                "list them with the source's zones())"
            )
        at = f" at {self.when}" if self.when else ""
        return f"no carbon intensity for zone {self.zone!r}{at} in {self.where}; it has {listed})"


class OutOfRangeError(KeyError):
    """The zone is known but the series has no value at the requested time."""

    def __init__(self, zone: str, when: str, covered: str, where: str | None = None) -> None:
        super().__init__(zone)
        self.zone, self.when, self.covered, self.where = zone, when, covered, where

    def __str__(self) -> str:
        where = f" in {self.where}" if self.where else ""
        return (
            f"no carbon intensity for zone {self.zone!r} at {self.when}{where}; "
            f"covered: {self.covered}"
        )


class SeriesError(ValueError):
    """A CSV series that cannot be used: missing, unreadable, or not an intensity series."""


class IntensitySource(Protocol):
    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity: ...

    def zones(self) -> list[str]: ...


def co2e_kg(energy_kwh: float, pue: float, intensity: Intensity) -> float:
    return energy_kwh * pue * intensity.g_per_kwh / 1000.0
