"""Grid carbon intensity: one value object and pluggable sources.

Sources: CodeCarbon's shipped annual country and sub-national tables (read as plain JSON, without
importing CodeCarbon), CSV time series (lpm, Electricity Maps or Ember exports), a constant and
the Electricity Maps API. Only the standard library is imported: the report command imports this
module and must start fast.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import difflib
import functools
import importlib.util
import json
import os
import statistics
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

LBS_PER_MWH_TO_G_PER_KWH = 0.45359237  # 1 lb = 453.59237 g; 1 MWh = 1000 kWh

# ISO 3166-1 alpha-2 → alpha-3 for the zones lpm ships site configs and examples for.
ISO2_TO_ISO3 = {
    "AT": "AUT", "AU": "AUS", "BE": "BEL", "BR": "BRA", "CA": "CAN", "CH": "CHE", "CN": "CHN",
    "CZ": "CZE", "DE": "DEU", "DK": "DNK", "ES": "ESP", "FI": "FIN", "FR": "FRA", "GB": "GBR",
    "IE": "IRL", "IN": "IND", "IS": "ISL", "IT": "ITA", "JP": "JPN", "KR": "KOR", "NL": "NLD",
    "NO": "NOR", "PL": "POL", "PT": "PRT", "PY": "PRY", "SE": "SWE", "TM": "TKM", "US": "USA",
    "ZA": "ZAF",
}  # fmt: skip

ELECTRICITYMAPS_URL = "https://api.electricitymap.org/v3"
KINDS = ("annual", "monthly", "daily", "hourly", "mean", "constant", "live")


@dataclass(frozen=True)
class Intensity:
    """Grid carbon intensity of one zone over one period, with its provenance.

    Attributes:
        period: "2023" (a year), "2024-01" (a month), "2024-01-05" (a day), an ISO timestamp
            (an hour or a live reading), or "first..last" for a mean over a series.
        kind: one of `KINDS`.
        basis: "lifecycle", "direct" (combustion only) or "unknown".
    """

    g_per_kwh: float
    zone: str
    period: str
    source: str
    kind: str = "annual"
    basis: str = "lifecycle"


class UnknownZone(KeyError):  # noqa: N818  (public name, reads as a lookup miss)
    def __init__(self, zone: str, known: list[str]) -> None:
        super().__init__(zone)
        self.zone, self.known = zone, known

    def __str__(self) -> str:
        shown = difflib.get_close_matches(self.zone.upper(), self.known, n=5) or self.known[:5]
        return (
            f"unknown carbon-intensity zone {self.zone!r}; known zones include "
            f"{', '.join(shown)} ({len(self.known)} in all; list them with the source's zones())"
        )


class OutOfRangeError(KeyError):
    """The zone is known but the series has no value at the requested time."""

    def __init__(self, zone: str, when: str, covered: str) -> None:
        super().__init__(zone)
        self.zone, self.when, self.covered = zone, when, covered

    def __str__(self) -> str:
        return f"no carbon intensity for zone {self.zone!r} at {self.when}; covered: {self.covered}"


class IntensitySource(Protocol):
    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity: ...

    def zones(self) -> list[str]: ...


def co2e_kg(energy_kwh: float, pue: float, intensity: Intensity) -> float:
    return energy_kwh * pue * intensity.g_per_kwh / 1000.0


# --- CodeCarbon's shipped tables ------------------------------------------------------------------


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


# --- time -----------------------------------------------------------------------------------------


def _parse_time(text: str) -> datetime:
    """An ISO date or datetime (or "YYYY", "YYYY-MM") as an aware UTC datetime."""
    text = text.strip()
    if len(text) == 4:
        text += "-01"
    if len(text) == 7:
        text += "-01"
    # Python 3.10's fromisoformat rejects a trailing "Z".
    return _utc(datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text))


def _utc(t: datetime) -> datetime:
    """Naive times are taken as UTC."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _period_start(t: datetime, kind: str) -> datetime:
    if kind == "annual":
        return t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if kind == "monthly":
        return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t


def _period_end(start: datetime, kind: str) -> datetime:
    if kind == "annual":
        return start.replace(year=start.year + 1)
    if kind == "monthly":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start + (timedelta(days=1) if kind == "daily" else timedelta(hours=1))


def _label(t: datetime, kind: str) -> str:
    formats = {"annual": "%Y", "monthly": "%Y-%m", "daily": "%Y-%m-%d"}
    return t.strftime(formats.get(kind, "%Y-%m-%dT%H:%M:%SZ"))


_PRECISION = {4: "annual", 7: "monthly", 10: "daily"}  # length of "2024", "2024-01", "2024-01-01"


def _span(when: datetime | str) -> tuple[datetime, datetime, str | None]:
    """`when` as [start, end) and its kind: a year, month or day string is a span, else an instant
    (kind None)."""
    kind = None if isinstance(when, datetime) else _PRECISION.get(len(when.strip()))
    t = _utc(when) if isinstance(when, datetime) else _parse_time(when)
    if kind is None:
        return t, t + timedelta(microseconds=1), None
    return t, _period_end(t, kind), kind


# --- CSV series -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    start: datetime
    end: datetime
    g_per_kwh: float


@dataclass(frozen=True)
class _Series:
    zone: str  # as spelled in the file
    kind: str
    rows: tuple[_Row, ...]  # sorted by start

    def covered(self, rows: tuple[_Row, ...] | list[_Row] = ()) -> str:
        """ "first..last" of `rows` (default: the whole series)."""
        rows = rows or self.rows
        return f"{_label(rows[0].start, self.kind)}..{_label(rows[-1].start, self.kind)}"


@dataclass(frozen=True)
class _Layout:
    label: str
    zone: int
    start: int
    value: int
    basis: str
    kind: str | None = None  # None: inferred per zone from the spacing of starts
    keep: tuple[tuple[int, str], ...] = ()  # (column, lower-case value) a row must have


LAYOUTS = (
    "lpm: zone,start,intensity_g_per_kwh",
    "Electricity Maps export: Datetime (UTC),Zone id,Carbon intensity gCO₂eq/kWh (Life cycle)",
    "Ember monthly: ISO 3 code,Date,Variable,Unit,Value",
)


def _detect(path: Path, header: list[str], zone_column: str | None, basis: str | None) -> _Layout:
    names = [h.strip().lower().replace("₂", "2") for h in header]

    def find(*parts: str) -> int | None:
        return next((i for i, n in enumerate(names) if any(p in n for p in parts)), None)

    layout: _Layout | None = None
    if {"zone", "start", "intensity_g_per_kwh"} <= set(names):
        index = names.index
        layout = _Layout(
            "lpm series", index("zone"), index("start"), index("intensity_g_per_kwh"), "unknown"
        )
    elif {"iso 3 code", "date", "variable", "unit", "value"} <= set(names):
        index = names.index
        keep = ((index("variable"), "co2 intensity"), (index("unit"), "gco2/kwh"))
        # Ember's intensities include upstream (lifecycle) emissions.
        layout = _Layout(
            "Ember monthly CO2 intensity",
            *(index(c) for c in ("iso 3 code", "date", "value")),
            "lifecycle",
            "monthly",
            keep,
        )
    elif (dt := find("datetime")) is not None and (zone := find("zone id")) is not None:
        life, direct = find("life cycle", "(lca)"), find("direct")
        if life is not None or direct is not None:
            basis_found = "lifecycle" if life is not None else "direct"
            label = f"Electricity Maps export, {basis_found.replace('lifecycle', 'life cycle')}"
            layout = _Layout(label, zone, dt, life if life is not None else direct, basis_found)
    if layout is None:
        raise ValueError(
            f"{path}: unrecognised CSV header {header}; accepted: " + "; ".join(LAYOUTS)
        )
    if zone_column is not None:
        if zone_column.lower() not in names:
            raise ValueError(f"{path}: no zone column {zone_column!r} in {header}")
        layout = dataclasses.replace(layout, zone=names.index(zone_column.lower()))
    return layout if basis is None else dataclasses.replace(layout, basis=basis)


def _infer_kind(starts: list[datetime], first_text: str) -> str:
    """Granularity from the written precision ("2024", "2024-01"), else from calendar alignment:
    gaps alone would read a sparse monthly series (January, July) as annual."""
    written = _PRECISION.get(len(first_text.strip()))
    if written in ("annual", "monthly"):
        return written
    if any(t.hour or t.minute or t.second for t in starts):
        return "hourly"
    if len(starts) < 2:
        return written or "daily"
    gap = statistics.median(b - a for a, b in pairwise(starts))
    if gap >= timedelta(days=28) and all(t.day == 1 for t in starts):
        yearly = gap >= timedelta(days=365) and all(t.month == 1 for t in starts)
        return "annual" if yearly else "monthly"
    return "daily" if gap >= timedelta(days=1) else "hourly"


class CsvSeries:
    """A carbon-intensity time series from a CSV in one of `LAYOUTS`, detected by its header.

    Columns are matched by name, case-insensitively, extra columns ignored; times are UTC. The
    granularity (hourly, daily, monthly, annual) is inferred per zone from the spacing of starts.

    Args:
        zone_column: column to read zones from instead of the layout's (e.g. Ember's "Area" for
            aggregates such as "World", which have no ISO 3 code).
        basis: overrides the basis recorded for the file's layout ("unknown" for lpm's own).
    """

    def __init__(
        self, path: str | Path, zone_column: str | None = None, basis: str | None = None
    ) -> None:
        self.path = Path(path)
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            layout = _detect(self.path, next(reader, []), zone_column, basis)
            parsed: dict[str, list[tuple[datetime, float, str, str]]] = {}
            for line, cells in enumerate(reader, start=2):
                if not cells or any(cells[i].strip().lower() != v for i, v in layout.keep):
                    continue
                zone, start, value = (
                    cells[i].strip() for i in (layout.zone, layout.start, layout.value)
                )
                # Exports leave zone or value blank for aggregates and missing hours: no data.
                if not zone or not value:
                    continue
                try:
                    parsed.setdefault(zone.upper(), []).append(
                        (_parse_time(start), float(value), zone, start)
                    )
                except ValueError as e:
                    raise ValueError(f"{self.path}:{line}: {e}") from e
        self._layout = layout
        self._series = {key: self._build(rows) for key, rows in parsed.items()}

    def _build(self, rows: list[tuple[datetime, float, str, str]]) -> _Series:
        rows.sort()
        starts = [r[0] for r in rows]
        if len(set(starts)) < len(starts):
            raise ValueError(f"{self.path}: zone {rows[0][2]!r} has duplicate start times")
        kind = self._layout.kind or _infer_kind(starts, rows[0][3])
        built = []
        for start, value, _, _ in rows:
            s = _period_start(start, kind)
            built.append(_Row(s, _period_end(s, kind), value))
        return _Series(rows[0][2], kind, tuple(built))

    def zones(self) -> list[str]:
        return sorted(s.zone for s in self._series.values())

    def _get(self, zone: str) -> _Series:
        series = self._series.get(zone.strip().upper())
        if series is None:
            raise UnknownZone(zone, self.zones())
        return series

    def _intensity(
        self, series: _Series, value: float, period: str, kind: str, note: str = ""
    ) -> Intensity:
        source = f"{self.path.name}: {self._layout.label}{note}"
        return Intensity(value, series.zone, period, source, kind, self._layout.basis)

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        """The value at `when`: an instant's containing period, or the mean over a year, month
        or day string (when finer data lie in it); None: the mean over the whole series."""
        series = self._get(zone)
        rows = series.rows
        if when is None:
            mean = statistics.fmean(r.g_per_kwh for r in rows)
            note = f", mean of {len(rows)} {series.kind} values"
            return self._intensity(series, mean, series.covered(), "mean", note)
        start, end, span_kind = _span(when)
        # Rows are sorted and disjoint: those overlapping [start, end) are a contiguous run
        # ending at the last one starting before `end`.
        last = bisect.bisect_left(rows, end, key=lambda r: r.start)
        hits = []
        for row in reversed(rows[:last]):
            if row.end <= start:
                break
            hits.append(row)
        if not hits:
            raise OutOfRangeError(series.zone, str(when), series.covered())
        if len(hits) == 1 or span_kind is None:
            row = hits[0]
            period = _label(row.start, series.kind)
            return self._intensity(series, row.g_per_kwh, period, series.kind)
        hits.reverse()
        mean = statistics.fmean(r.g_per_kwh for r in hits)
        note = f", mean of {len(hits)} {series.kind} values"
        period = _label(start, span_kind)
        if hits[0].start > start or hits[-1].end < end:  # the series covers part of the span
            period = series.covered(hits)
        return self._intensity(series, mean, period, span_kind, note)

    def monthly(self, zone: str) -> dict[str, float]:
        """Month ("YYYY-MM") → mean g/kWh of the rows overlapping it."""
        buckets: dict[str, list[float]] = {}
        for row in self._get(zone).rows:
            month = _period_start(row.start, "monthly")
            while month < row.end:
                buckets.setdefault(_label(month, "monthly"), []).append(row.g_per_kwh)
                month = _period_end(month, "monthly")
        return {m: statistics.fmean(v) for m, v in buckets.items()}

    def months(self, zone: str) -> list[str]:
        return list(self.monthly(zone))


# --- other sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    g_per_kwh: float
    zone: str = "*"
    basis: str = "unknown"

    def zones(self) -> list[str]:
        return [self.zone]

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        if self.zone != "*" and zone.strip().upper() != self.zone.upper():
            raise UnknownZone(zone, self.zones())
        return Intensity(self.g_per_kwh, zone, "any", "constant override", "constant", self.basis)


class ElectricityMapsApi:
    """Electricity Maps API v3: latest reading, or the past hour containing `when`."""

    def __init__(
        self,
        token: str,
        base_url: str = ELECTRICITYMAPS_URL,
        timeout_s: float = 10,
    ) -> None:
        self.token, self.base_url, self.timeout_s = token, base_url.rstrip("/"), timeout_s

    def _get(self, path: str, params: Mapping[str, str], zone: str) -> Any:
        query = urllib.parse.urlencode(params)
        url = f"{self.base_url}/{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, headers={"auth-token": self.token})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")[:200]
            raise RuntimeError(
                f"Electricity Maps API, zone {zone!r}: HTTP {e.code} {e.reason}: {body}"
            ) from e
        except urllib.error.URLError as e:
            raise RuntimeError(f"Electricity Maps API, zone {zone!r}: {e.reason}") from e

    def zones(self) -> list[str]:
        return sorted(self._get("zones", {}, "*"))

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        params = {"zone": zone.strip()}
        if when is None:
            path = "carbon-intensity/latest"
        else:
            start, _, span_kind = _span(when)
            if span_kind is not None:
                # The API prices one hour; a month's mean needs the data portal's export.
                raise ValueError(
                    f"the Electricity Maps API takes an ISO time, not {when!r}; for monthly "
                    "means export the zone's CSV from the data portal and use source=csv"
                )
            path = "carbon-intensity/past"
            params["datetime"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        data = self._get(path, params, zone)
        if data.get("carbonIntensity") is None:
            raise RuntimeError(f"Electricity Maps API, zone {zone!r}: no carbonIntensity in {data}")
        estimated = " (estimated)" if data.get("isEstimated") else ""
        return Intensity(
            float(data["carbonIntensity"]),
            data.get("zone", zone),
            data.get("datetime", params.get("datetime", "")),
            f"Electricity Maps API{estimated}",
            "live" if when is None else "hourly",
            data.get("emissionFactorType", "lifecycle"),
        )


class Chain:
    """Tries each source in order; the first that has the zone (and time) wins."""

    def __init__(self, *sources: IntensitySource) -> None:
        self.sources = sources

    def zones(self) -> list[str]:
        return list(dict.fromkeys(z for s in self.sources for z in s.zones()))

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        out_of_range: OutOfRangeError | None = None
        for source in self.sources:
            try:
                return source.lookup(zone, when)
            except OutOfRangeError as e:
                out_of_range = out_of_range or e
            except UnknownZone:
                pass
        # A zone a series has but not at `when` says more than "unknown zone".
        raise out_of_range or UnknownZone(zone, self.zones())


SOURCES = ("codecarbon", "csv", "constant", "electricitymaps")


def source_from_config(cfg: Mapping[str, Any]) -> IntensitySource:
    """The source the `carbon` config section names (`when` is the caller's to apply)."""
    kind = cfg.get("source") or "codecarbon"
    if kind == "codecarbon":
        return Chain(SubnationalTable(), CountryTable())
    if kind == "csv":
        path = cfg.get("csv")
        if not path:
            raise ValueError("carbon.csv: source=csv needs the path of a CSV series")
        if not Path(path).is_file():
            raise FileNotFoundError(f"carbon.csv: no such file {path}")
        return Chain(CsvSeries(path), SubnationalTable(), CountryTable())
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
