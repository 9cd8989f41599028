"""Everyday equivalents of a CO2e mass: car kilometres, flight kilometres, share of a per-capita
1.5 °C budget, each factor with its source.

The defaults reproduce the equivalents of Seyfarth et al. 2024 (arXiv:2407.14892), which states
them but not all of its factors; the ones it does not state are inferred from its numbers and
marked INFERRED.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Factor:
    value: float
    source: str

    @property
    def inferred(self) -> bool:
        """Inferred from the study's numbers rather than stated by a source: an assumption."""
        return "INFERRED" in self.source


def with_config(
    defaults: Any, cfg: Mapping[str, Any], prefix: str, problem: Callable[[str, Any], str | None]
) -> Any:
    """`defaults` (a dataclass of :class:`Factor`) with the values in `cfg` substituted.

    A value equal to the default keeps its cited source; any other is sourced to the config.

    Raises:
        ValueError: "<prefix>.<name>: <what it accepts>, got <value>", or naming the allowed
            names for an unknown one; `problem(name, value)` says what is wrong, None if nothing.
    """
    allowed = [f.name for f in dataclasses.fields(defaults)]
    changes: dict[str, Factor] = {}
    for key, value in cfg.items():
        if key not in allowed:
            raise ValueError(f"{prefix}.{key}: unknown factor; allowed: {', '.join(allowed)}")
        if (why := problem(key, value)) is not None:
            raise ValueError(f"{prefix}.{key}: {why}, got {value!r}")
        if float(value) != getattr(defaults, key).value:
            changes[key] = Factor(float(value), f"config: {prefix}.{key} = {value}")
    return dataclasses.replace(defaults, **changes)


@dataclass(frozen=True)
class Factors:
    # EEA, average CO2 of new passenger cars registered in the EU in 2020 (2018: 120.4 g/km),
    # https://www.eea.europa.eu/ims/co2-performance-of-new-passenger-cars; the value in
    # Carbontracker v1.2.5's co2eq.csv. That the study's car-km used it is INFERRED: 360 kg /
    # 107.5 g/km = 3,349 km against its 3,345 km.
    car_g_per_km: Factor = Factor(
        107.5, "EEA: average new passenger car, EU 2020, 107.5 gCO2/km (as in Carbontracker)"
    )
    # INFERRED from the study: 360 kg ≈ a 1,500 km flight → 240 g per passenger-km.
    flight_g_per_pkm: Factor = Factor(
        240.0, "INFERRED from Seyfarth et al. 2024: 360 kg ≈ a 1,500 km flight"
    )
    # INFERRED from the study: 3,345 car-km ≈ 360 kg = 33.7% of the annual per-capita budget
    # for a 50% chance of 1.5 °C → 360 / 0.337 ≈ 1,070 kg per person and year.
    budget_kg_per_year: Factor = Factor(
        1070.0,
        "INFERRED from Seyfarth et al. 2024: 360 kg = 33.7% of the per-capita annual budget "
        "for a 50% chance of 1.5 °C",
    )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Factors:
        """Defaults with the values in `cfg` (keys: the field names) substituted."""

        def problem(key: str, value: Any) -> str | None:
            return "must be > 0" if value is None or float(value) <= 0 else None

        return with_config(cls(), cfg, "equivalents", problem)

    def assumptions(self) -> list[str]:
        """One line per INFERRED factor: 'equivalents: flight_g_per_pkm = 240, INFERRED ...'."""
        return [
            f"equivalents: {f.name} = {factor.value:g}, {factor.source}"
            for f in dataclasses.fields(self)
            if (factor := getattr(self, f.name)).inferred
        ]


def equivalents(co2e_kg: float, factors: Factors | None = None) -> dict[str, Any]:
    """`car_km`, `flight_km`, `budget_share` (a fraction of one person's annual budget) and the
    `factors` used, each `{"value", "source"}`."""
    f = factors or Factors()
    return {
        "car_km": co2e_kg * 1000.0 / f.car_g_per_km.value,
        "flight_km": co2e_kg * 1000.0 / f.flight_g_per_pkm.value,
        "budget_share": co2e_kg / f.budget_kg_per_year.value,
        "factors": dataclasses.asdict(f),
    }
