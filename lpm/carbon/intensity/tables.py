"""CodeCarbon's shipped annual tables, read as plain JSON without importing CodeCarbon."""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from lpm.carbon.intensity.base import Intensity, UnknownZone

LBS_PER_MWH_TO_G_PER_KWH = 0.45359237  # 1 lb = 453.59237 g; 1 MWh = 1000 kWh

# ISO 3166-1 alpha-2 → alpha-3 for the zones lpm ships site configs and examples for.
ISO2_TO_ISO3 = {
    "AT": "AUT", "AU": "AUS", "BE": "BEL", "BR": "BRA", "CA": "CAN", "CH": "CHE", "CN": "CHN",
    "CZ": "CZE", "DE": "DEU", "DK": "DNK", "ES": "ESP", "FI": "FIN", "FR": "FRA", "GB": "GBR",
    "IE": "IRL", "IN": "IND", "IS": "ISL", "IT": "ITA", "JP": "JPN", "KR": "KOR", "NL": "NLD",
    "NO": "NOR", "PL": "POL", "PT": "PRT", "PY": "PRY", "SE": "SWE", "TM": "TKM", "US": "USA",
    "ZA": "ZAF",
}  # fmt: skip


@functools.cache
def _codecarbon_json(relative: str) -> dict[str, Any]:
    # find_spec locates the package without running its __init__, which imports the tracker.
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("codecarbon is not installed; its intensity tables ship with it")
    path = Path(spec.submodule_search_locations[0], "data", "private_infra", relative)
    return json.loads(path.read_text(encoding="utf-8"))


class CountryTable:
    """CodeCarbon's annual per-country table (Our World in Data, from Ember), ISO-3 zones.

    Each country has one year (mostly 2022 or 2023); `when` is ignored and `period` says which
    year was used. ISO-2 codes in `ISO2_TO_ISO3` are accepted too.
    """

    FILE = "global_energy_mix.json"

    def __init__(self) -> None:
        self._rows = _codecarbon_json(self.FILE)

    def zones(self) -> list[str]:
        return sorted(self._rows)

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        key = zone.strip().upper()
        key = ISO2_TO_ISO3.get(key, key)
        if key not in self._rows:
            raise UnknownZone(zone, self.zones())
        return self._intensity(key)

    def name(self, zone: str) -> str | None:
        """The country's name ("Germany") for an ISO-3 or known ISO-2 code; None if unknown."""
        key = zone.strip().upper()
        row = self._rows.get(ISO2_TO_ISO3.get(key, key))
        return str(row["country_name"]) if row else None

    def spread(self, min_generation_twh: float = 10.0) -> tuple[Intensity, Intensity]:
        """Cleanest and dirtiest grid among countries generating at least `min_generation_twh`.

        The table's intensities are emissions rounded to 0.01 Mt divided by generation, so a
        value is off by up to 5 / (generation in TWh) g/kWh: the Central African Republic
        (0.15 TWh) reads 0.0. 10 TWh keeps that error under 0.5 g/kWh.
        """
        keys = [k for k, row in self._rows.items() if row["total_TWh"] >= min_generation_twh]
        intensities = sorted((self._intensity(k) for k in keys), key=lambda i: i.g_per_kwh)
        return intensities[0], intensities[-1]

    def _intensity(self, iso3: str) -> Intensity:
        row = self._rows[iso3]
        year = str(row["year"])
        return Intensity(
            float(row["carbon_intensity"]),
            iso3,
            year,
            f"codecarbon {self.FILE} (OWID/Ember, {row['country_name']}), {year}",
        )


class SubnationalTable:
    """CodeCarbon's sub-national annual tables.

    Zones: US states `US-CA` (EPA eGRID, direct CO2e, converted from lbs/MWh), Chinese provinces
    `CN-BJ` (MEE/NBS, direct CO2 only) and Nordic bidding zones in Electricity Maps ids
    `SE-SE3`, `NO-NO1`, `FI` (also the bare `SE3`). `when` is ignored, as for `CountryTable`.
    """

    def __init__(self) -> None:
        self._rows: dict[str, Intensity] = {}
        self._aliases: dict[str, str] = {}
        usa = _codecarbon_json("2023/usa_emissions.json")
        year = str(usa["_source"]["year"])
        for name, row in usa.items():
            # "_unit"/"_source" are metadata; "usa" is the national mean, CountryTable's job.
            if name.startswith("_") or name == "usa":
                continue
            self._rows[f"US-{row['regionCode']}"] = Intensity(
                row["emissions"] * LBS_PER_MWH_TO_G_PER_KWH,
                f"US-{row['regionCode']}",
                year,
                f"codecarbon usa_emissions.json (EPA eGRID{year}, {name}), {year}",
                basis="direct",
            )
        china = _codecarbon_json("2023/china_provincial_emissions.json")["data"]
        for zone, row in china.items():
            self._add(zone, row, "china_provincial_emissions.json (MEE/NBS, CO2 only)", "direct")
        # SE and NO zones are ENTSO-E generation mixes priced with CodeCarbon's per-source
        # factors, lifecycle values for the hydro, wind and nuclear that dominate them.
        nordic = _codecarbon_json("nordic_emissions.json")["data"]
        for bidding, row in nordic.items():
            zone = bidding if len(bidding) == 2 else f"{bidding[:2]}-{bidding}"
            self._add(zone, row, "nordic_emissions.json", "lifecycle")
            self._aliases[bidding] = zone

    def _add(self, zone: str, row: Mapping[str, Any], label: str, basis: str) -> None:
        year = str(row["year"])
        source = f"codecarbon {label}, {row['description']}, {year}"
        self._rows[zone] = Intensity(float(row["emission_factor"]), zone, year, source, basis=basis)

    def zones(self) -> list[str]:
        return sorted(self._rows)

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        key = zone.strip().upper()
        key = self._aliases.get(key, key)
        if key not in self._rows:
            raise UnknownZone(zone, self.zones())
        return self._rows[key]
