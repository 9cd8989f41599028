"""Carbon-intensity time series from CSV exports (lpm's own, Electricity Maps, Ember)."""

from __future__ import annotations

import bisect
import csv
import dataclasses
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

from lpm.carbon.intensity.base import Intensity, OutOfRangeError, SeriesError, UnknownZone
from lpm.carbon.intensity.periods import (
    PRECISION,
    label,
    parse_time,
    period_end,
    period_start,
    span,
)
from lpm.carbon.intensity.tables import ISO2_TO_ISO3


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
        return f"{label(rows[0].start, self.kind)}..{label(rows[-1].start, self.kind)}"


@dataclass(frozen=True)
class _Layout:
    label: str
    zone: int
    start: int
    value: int
    basis: str
    kind: str | None = None  # None: inferred per zone from the spacing of starts
    keep: tuple[tuple[int, str], ...] = ()  # (column, lower-case value) a row must have


ISO3_TO_ISO2 = {iso3: iso2 for iso2, iso3 in ISO2_TO_ISO3.items()}

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
        raise SeriesError(
            f"{path}: unrecognised CSV header {header}; accepted: " + "; ".join(LAYOUTS)
        )
    if zone_column is not None:
        if zone_column.lower() not in names:
            raise SeriesError(f"{path}: no zone column {zone_column!r} in {header}")
        layout = dataclasses.replace(layout, zone=names.index(zone_column.lower()))
    return layout if basis is None else dataclasses.replace(layout, basis=basis)


def _infer_kind(starts: list[datetime], first_text: str) -> str:
    """Granularity from the written precision ("2024", "2024-01"), else from calendar alignment:
    gaps alone would read a sparse monthly series (January, July) as annual."""
    written = PRECISION.get(len(first_text.strip()))
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


def _value(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"intensity {text!r} is not a finite number >= 0")
    return value


class CsvSeries:
    """A carbon-intensity time series from a CSV in one of `LAYOUTS`, detected by its header.

    Columns are matched by name, case-insensitively, extra columns ignored; times are UTC. The
    granularity (hourly, daily, monthly, annual) is inferred per zone from the spacing of starts.
    A zone the file lacks raises `UnknownZone`, a time it does not cover `OutOfRangeError`: to
    price those from the annual tables, wrap the series in `Fallback`.

    Args:
        zone_column: column to read zones from instead of the layout's (e.g. Ember's "Area" for
            aggregates such as "World", which have no ISO 3 code).
        basis: overrides the basis recorded for the file's layout ("unknown" for lpm's own).

    Raises:
        SeriesError: the file is missing, unreadable, not a CSV in a known layout, or has a bad
            row (its line number is in the message).
    """

    def __init__(
        self, path: str | Path, zone_column: str | None = None, basis: str | None = None
    ) -> None:
        self.path = Path(path)
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                layout = _detect(self.path, next(reader, []), zone_column, basis)
                parsed = self._parse(reader, layout)
        except OSError as e:
            raise SeriesError(f"{self.path}: {e.strerror or e}") from e
        except (csv.Error, UnicodeDecodeError) as e:
            raise SeriesError(f"{self.path}: not a CSV text file ({e})") from e
        if not parsed:
            raise SeriesError(f"{self.path}: no intensity rows under its {layout.label} header")
        self._layout = layout
        self._series = {key: self._build(rows) for key, rows in parsed.items()}

    def _parse(
        self, reader: Iterator[list[str]], layout: _Layout
    ) -> dict[str, list[tuple[datetime, float, str, str]]]:
        parsed: dict[str, list[tuple[datetime, float, str, str]]] = {}
        for line, cells in enumerate(reader, start=2):
            if not cells or any(cells[i].strip().lower() != v for i, v in layout.keep):
                continue
            try:
                zone, start, value = (
                    cells[i].strip() for i in (layout.zone, layout.start, layout.value)
                )
            except IndexError:
                raise SeriesError(f"{self.path}:{line}: only {len(cells)} cells") from None
            # Exports leave zone or value blank for aggregates and missing hours: no data.
            if not zone or not value:
                continue
            try:
                parsed.setdefault(zone.upper(), []).append(
                    (parse_time(start), _value(value), zone, start)
                )
            except ValueError as e:
                raise SeriesError(f"{self.path}:{line}: {e}") from e
        return parsed

    def _build(self, rows: list[tuple[datetime, float, str, str]]) -> _Series:
        rows.sort()
        starts = [r[0] for r in rows]
        if len(set(starts)) < len(starts):
            raise SeriesError(f"{self.path}: zone {rows[0][2]!r} has duplicate start times")
        kind = self._layout.kind or _infer_kind(starts, rows[0][3])
        built = []
        for start, value, _, _ in rows:
            s = period_start(start, kind)
            built.append(_Row(s, period_end(s, kind), value))
        return _Series(rows[0][2], kind, tuple(built))

    def zones(self) -> list[str]:
        return sorted(s.zone for s in self._series.values())

    def _get(self, zone: str, when: datetime | str | None = None) -> _Series:
        key = zone.strip().upper()
        # A country's ISO-2 and ISO-3 codes name one grid: site configs use ISO-3 (DEU),
        # Electricity Maps exports ISO-2 (DE).
        for alias in (key, ISO2_TO_ISO3.get(key), ISO3_TO_ISO2.get(key)):
            if alias in self._series:
                return self._series[alias]
        raise UnknownZone(zone, self.zones(), self.path.name, None if when is None else str(when))

    def _intensity(
        self, series: _Series, value: float, period: str, kind: str, note: str = ""
    ) -> Intensity:
        source = f"{self.path.name}: {self._layout.label}{note}"
        return Intensity(value, series.zone, period, source, kind, self._layout.basis)

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        """The value at `when`: an instant's containing period, or the mean over a year, month
        or day string (when finer data lie in it); None: the mean over the whole series.

        Raises:
            UnknownZone: the file has no such zone.
            OutOfRangeError: the zone's series has no value at `when`.
            ValueError: `when` is not an ISO date or time.
        """
        series = self._get(zone, when)
        rows = series.rows
        if when is None:
            mean = statistics.fmean(r.g_per_kwh for r in rows)
            note = f", mean of {len(rows)} {series.kind} values"
            return self._intensity(series, mean, series.covered(), "mean", note)
        start, end, span_kind = span(when)
        # Rows are sorted and disjoint: those overlapping [start, end) are a contiguous run
        # ending at the last one starting before `end`.
        last = bisect.bisect_left(rows, end, key=lambda r: r.start)
        hits = []
        for row in reversed(rows[:last]):
            if row.end <= start:
                break
            hits.append(row)
        if not hits:
            raise OutOfRangeError(series.zone, str(when), series.covered(), self.path.name)
        if len(hits) == 1 or span_kind is None:
            row = hits[0]
            period = label(row.start, series.kind)
            return self._intensity(series, row.g_per_kwh, period, series.kind)
        hits.reverse()
        mean = statistics.fmean(r.g_per_kwh for r in hits)
        note = f", mean of {len(hits)} {series.kind} values"
        period = label(start, span_kind)
        if hits[0].start > start or hits[-1].end < end:  # the series covers part of the span
            period = series.covered(hits)
        return self._intensity(series, mean, period, span_kind, note)

    def monthly(self, zone: str) -> dict[str, float]:
        """Month ("YYYY-MM") → mean g/kWh of the rows overlapping it."""
        buckets: dict[str, list[float]] = {}
        for row in self._get(zone).rows:
            month = period_start(row.start, "monthly")
            while month < row.end:
                buckets.setdefault(label(month, "monthly"), []).append(row.g_per_kwh)
                month = period_end(month, "monthly")
        return {m: statistics.fmean(v) for m, v in buckets.items()}

    def months(self, zone: str) -> list[str]:
        return list(self.monthly(zone))
