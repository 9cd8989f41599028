"""Grid carbon intensity: one value object and pluggable sources.

Sources, one module each: CodeCarbon's shipped annual country and sub-national tables (`tables`,
read as plain JSON without importing CodeCarbon), CSV time series from lpm, Electricity Maps or
Ember exports (`series`), a constant (`constant`) and the Electricity Maps API (`api`). Here: how
they combine, and the source the `carbon` config section names.

Nothing is priced silently from a source the user did not configure: a zone or time a CSV series
lacks is an error, unless `carbon.fallback=annual`, and then the `Intensity` says so.

Only the standard library is imported: the report command imports this package and must start
fast.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from lpm.carbon.intensity.api import ELECTRICITYMAPS_URL, ElectricityMapsApi
from lpm.carbon.intensity.base import (
    KINDS,
    Intensity,
    IntensitySource,
    OutOfRangeError,
    SeriesError,
    UnknownZone,
    co2e_kg,
)
from lpm.carbon.intensity.constant import Constant
from lpm.carbon.intensity.series import LAYOUTS, CsvSeries
from lpm.carbon.intensity.tables import (
    ISO2_TO_ISO3,
    LBS_PER_MWH_TO_G_PER_KWH,
    CountryTable,
    SubnationalTable,
)

__all__ = [
    "ELECTRICITYMAPS_URL",
    "FALLBACKS",
    "ISO2_TO_ISO3",
    "KINDS",
    "LAYOUTS",
    "LBS_PER_MWH_TO_G_PER_KWH",
    "SOURCES",
    "Chain",
    "Constant",
    "CountryTable",
    "CsvSeries",
    "ElectricityMapsApi",
    "Fallback",
    "Intensity",
    "IntensitySource",
    "OutOfRangeError",
    "SeriesError",
    "SubnationalTable",
    "UnknownZone",
    "annual_tables",
    "co2e_kg",
    "source_from_config",
    "with_fallback",
]

SOURCES = ("codecarbon", "csv", "constant", "electricitymaps")
FALLBACKS = ("annual",)  # besides None: no fallback


class Chain:
    """Sources with disjoint zones, tried in order: the first that has the zone answers.

    A source that has the zone but not the time raises `OutOfRangeError` at once: a later source
    answering instead would be a silent fallback (`Fallback` is the one that states it).
    """

    def __init__(self, *sources: IntensitySource) -> None:
        self.sources = sources

    def zones(self) -> list[str]:
        return list(dict.fromkeys(z for s in self.sources for z in s.zones()))

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        for source in self.sources:
            try:
                return source.lookup(zone, when)
            except UnknownZone:
                pass
        raise UnknownZone(zone, self.zones())


class Fallback:
    """`primary`, and where it lacks the zone or the time, `backup`, with the miss stated in the
    `fallback` of the `Intensity` returned.

    Args:
        name: what `backup` is, in the statement ("annual": "priced from the annual table").
    """

    def __init__(
        self, primary: IntensitySource, backup: IntensitySource, name: str = "annual"
    ) -> None:
        self.primary, self.backup, self.name = primary, backup, name

    def zones(self) -> list[str]:
        return list(dict.fromkeys([*self.primary.zones(), *self.backup.zones()]))

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        try:
            return self.primary.lookup(zone, when)
        except (UnknownZone, OutOfRangeError) as miss:
            try:
                used = self.backup.lookup(zone, when)
            except UnknownZone:
                if isinstance(miss, OutOfRangeError):
                    raise miss from None
                where = f"{miss.where or 'the series'} or the {self.name} tables"
                raise UnknownZone(zone, self.zones(), where, miss.when) from None
            statement = (
                f"{miss}; priced from the {self.name} table instead: {used.zone} {used.period}, "
                f"{used.g_per_kwh:g} g/kWh (fallback={self.name})"
            )
            return dataclasses.replace(used, fallback=statement)


def annual_tables() -> Chain:
    """CodeCarbon's annual tables: sub-national zones first, then countries."""
    return Chain(SubnationalTable(), CountryTable())


def with_fallback(series: IntensitySource, fallback: str | None) -> IntensitySource:
    """`series` alone (a zone or time it lacks is an error), or with `fallback="annual"` backed
    by `annual_tables()` (what it lacks is priced from them, and the `Intensity` says so).

    Raises:
        ValueError: `fallback` is not None or one of `FALLBACKS`.
    """
    if _checked(fallback) is None:
        return series
    return Fallback(series, annual_tables(), "annual")


def _checked(fallback: str | None) -> str | None:
    if fallback is not None and fallback not in FALLBACKS:
        raise ValueError(
            f"carbon.fallback: unknown {fallback!r}; allowed: null, {', '.join(FALLBACKS)}"
        )
    return fallback


def source_from_config(cfg: Mapping[str, Any]) -> IntensitySource:
    """The source the `carbon` config section names (`when` is the caller's to apply).

    `fallback` applies to `source=csv`; the other sources have no coverage to fall back from.

    Raises:
        ValueError: a field the source needs is missing or invalid, or the CSV cannot be used
            (`SeriesError`); the message starts with the field ("carbon.csv: ...").
        FileNotFoundError: `carbon.csv` names no file.
    """
    fallback = _checked(cfg.get("fallback"))
    kind = cfg.get("source") or "codecarbon"
    if kind == "codecarbon":
        return annual_tables()
    if kind == "csv":
        path = cfg.get("csv")
        if not path:
            raise ValueError("carbon.csv: source=csv needs the path of a CSV series")
        if not Path(path).is_file():
            raise FileNotFoundError(f"carbon.csv: no such file {path}")
        try:
            series = CsvSeries(path)
        except SeriesError as exc:
            raise SeriesError(f"carbon.csv: {exc}") from exc
        return with_fallback(series, fallback)
    if kind == "constant":
        value = cfg.get("constant_g_per_kwh")
        if value is None or float(value) < 0:
            raise ValueError(
                f"carbon.constant_g_per_kwh: source=constant needs a value >= 0, got {value!r}"
            )
        return Constant(float(value))
    if kind == "electricitymaps":
        env = cfg.get("api_token_env") or "ELECTRICITYMAPS_API_TOKEN"
        token = cfg.get("api_token") or os.environ.get(env)
        if not token:
            raise ValueError(
                f"carbon.api_token_env: source=electricitymaps needs a token in ${env} "
                "(or carbon.api_token)"
            )
        return ElectricityMapsApi(token, cfg.get("api_url") or ELECTRICITYMAPS_URL)
    raise ValueError(f"carbon.source: unknown {kind!r}; allowed: {', '.join(SOURCES)}")
