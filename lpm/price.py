"""Re-price finished records for other zones, months and PUEs without rerunning anything.

python -m lpm.price multirun/<sweep> --zones DEU,FRA,US-CA --months 2024-01,2024-07 --csv em.csv

A zone or month the --csv series does not cover is an error, unless --fallback annual prices it
from CodeCarbon's annual tables; the row's `fallback` column then says what was asked and what
was used. Records that cannot be priced are skipped and listed on stderr. The `embodied_kg`
column is the hardware's manufacturing share (the record's factors; lpm's defaults for a record
from before embodied CO2e, said on stderr), the same in every zone and month and not in
`co2e_kg`.

Exit status: 0 rows written, 1 no record could be priced, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lpm.carbon.embodied import Embodied, EmbodiedFactors
from lpm.carbon.equivalents import Factors
from lpm.carbon.intensity import (
    FALLBACKS,
    CsvSeries,
    Intensity,
    IntensitySource,
    OutOfRangeError,
    SeriesError,
    UnknownZone,
    annual_tables,
    with_fallback,
)
from lpm.carbon.intensity.periods import span
from lpm.carbon.pricing import ASSUMPTION_PREFIXES, price
from lpm.record.load import Loaded, dig, load_records

PROG = "python -m lpm.price"
COLUMNS = (
    "job",
    "zone",
    "period",
    "intensity_g_per_kwh",
    "pue",
    "energy_kwh",
    "co2e_kg",
    "embodied_kg",
    "car_km",
    "fallback",
)


def priced_at(
    record: Mapping[str, Any],
    intensity: Intensity,
    pue: float | None = None,
    factors: Factors | None = None,
    embodied: EmbodiedFactors | None = None,
) -> dict[str, Any]:
    """A copy of `record` priced at `intensity` (PUE: the record's unless given).

    The copy's `carbon`, `totals`, per-phase `co2e_kg` and `embodied_kg` and the pricing lines
    of `assumptions` are the new pricing's; everything else is the record's. Embodied CO2e is
    priced for a record with a `hardware` block, with `embodied` factors when given, else the
    record's own (`carbon.embodied`), else the defaults (a record from before embodied CO2e).
    """
    pue = pue if pue is not None else record["carbon"]["pue"]
    hardware = record.get("hardware")
    if hardware and embodied is None:
        embodied = EmbodiedFactors.from_record(dig(record, "carbon.embodied"))
    amortised = Embodied.of(embodied, hardware) if hardware else None
    priced = price(record["phases"], intensity, pue, factors, amortised)
    out = json.loads(json.dumps(record))
    out["carbon"], out["totals"] = priced["carbon"], priced["totals"]
    for name, co2e in priced["co2e_kg"].items():
        out["phases"][name]["co2e_kg"] = co2e
    for name, kg in priced.get("embodied_kg", {}).items():
        out["phases"][name]["embodied_kg"] = kg
    kept = [a for a in record.get("assumptions") or [] if not a.startswith(ASSUMPTION_PREFIXES)]
    out["assumptions"] = kept + priced["assumptions"]
    return out


def reprice(
    record: Mapping[str, Any],
    source: IntensitySource,
    zone: str,
    when: str | None = None,
    pue: float | None = None,
    factors: Factors | None = None,
) -> dict[str, Any]:
    """A copy of `record` priced at `zone` and `when` (PUE: the record's unless given).

    Raises:
        UnknownZone, OutOfRangeError: `source` has no value for `zone` at `when`.
    """
    return priced_at(record, source.lookup(zone, when), pue, factors)


def load_priceable(sweep: str | Path, pue: float | None = None) -> list[Loaded]:
    """Every record under `sweep`; an `ok` one that cannot be priced (no phases, no PUE when
    `pue` is None, phases not objects) is marked `incomplete` with the reason."""
    needed = ("phases",) if pue is not None else ("phases", "carbon.pue")
    out = []
    for loaded in load_records(sweep, needed):
        phases = loaded.record["phases"] if loaded.ok and loaded.record else {}
        if not isinstance(phases, dict) or not all(isinstance(p, dict) for p in phases.values()):
            why = "phases is not an object of phase objects"
            loaded = dataclasses.replace(loaded, status="incomplete", error=why)
        out.append(loaded)
    return out


def reprice_sweep(
    records: Iterable[Loaded], intensities: Sequence[Intensity], pue: float | None = None
) -> list[dict[str, Any]]:
    """One row per ok record × intensity (zone and month) with the priced totals."""
    rows = []
    for loaded in records:
        if not loaded.ok or loaded.record is None:
            continue
        for intensity in intensities:
            r = priced_at(loaded.record, intensity, pue)
            rows.append(
                {
                    "job": loaded.name,
                    "zone": r["carbon"]["zone"],
                    "period": r["carbon"]["period"],
                    "intensity_g_per_kwh": r["carbon"]["intensity_g_per_kwh"],
                    "pue": r["carbon"]["pue"],
                    "energy_kwh": r["totals"]["energy_kwh"],
                    "co2e_kg": r["totals"]["co2e_kg"],
                    "embodied_kg": r["totals"].get("embodied_kg"),
                    "car_km": r["totals"].get("car_km"),
                    "fallback": r["carbon"]["fallback"] or "",
                }
            )
    return rows


# --- the command ----------------------------------------------------------------------------------


def _zones(text: str) -> list[str]:
    zones = [z.strip() for z in text.split(",") if z.strip()]
    if not zones:
        raise argparse.ArgumentTypeError(f"no zone in {text!r}; e.g. DEU,FRA,US-CA")
    return zones


def _months(text: str) -> list[str]:
    months = [m.strip() for m in text.split(",") if m.strip()]
    for month in months:
        try:
            span(month)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{month!r} is not a month (YYYY-MM) or another ISO date or time"
            ) from None
    return months


def at_least(minimum: float, what: str = "a number", why: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number >= `minimum`; the error says `what` it is and `why`."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= minimum):
            raise argparse.ArgumentTypeError(f"must be {what} >= {minimum:g}{why}, got {text!r}")
        return value

    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument(
        "sweep", type=Path, help="sweep (or job) directory holding record.json files"
    )
    parser.add_argument(
        "--zones", required=True, type=_zones, help="comma-separated zones: DEU,FRA,US-CA,SE-SE3"
    )
    parser.add_argument(
        "--months", type=_months, default=[], help="comma-separated YYYY-MM (needs --csv)"
    )
    parser.add_argument(
        "--csv", type=Path, help="intensity series (lpm, Electricity Maps or Ember)"
    )
    parser.add_argument(
        "--fallback",
        choices=FALLBACKS,
        help="price a zone or month the --csv series lacks from the annual tables (each row "
        "says so in its fallback column); default: an error",
    )
    parser.add_argument(
        "--pue",
        type=at_least(1, why=" (facility energy / IT energy)"),
        help="override every record's PUE (>= 1)",
    )
    parser.add_argument("--out", type=Path, help="write the rows as CSV here (default: stdout)")
    return parser


def fail(prog: str, message: str) -> NoReturn:
    """One line on stderr and exit status 2, as argparse does for bad arguments."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _fail(message: str) -> NoReturn:
    fail(PROG, message)


def look_up_all(
    source: IntensitySource,
    zones: list[str],
    months: list[str],
    hint: str,
    fail: Callable[[str], NoReturn] = _fail,
) -> list[Intensity]:
    """Every zone × month looked up before any record is read: a bad one stops the command
    through `fail` (one line naming the option; `hint` appended)."""
    out = []
    for zone in zones:
        for month in months or [None]:
            try:
                out.append(source.lookup(zone, month))
            except UnknownZone as exc:
                fail(f"argument --zones: {exc}{hint}")
            except OutOfRangeError as exc:
                fail(f"argument --months: {exc}{hint}")
    return out


def _write(rows: list[dict[str, Any]], out: Path | None) -> None:
    if out is None:
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        return
    try:
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        _fail(f"argument --out: {out}: {exc.strerror or exc}")


def check_sweep_args(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> None:
    """The sweep directory exists; --months and --fallback come with a --csv series."""
    if not args.sweep.is_dir():
        fail(f"sweep {args.sweep}: no such directory")
    if args.csv is None and args.months:
        fail("argument --months: needs --csv; the annual tables hold one value per zone")
    if args.csv is None and args.fallback:
        fail("argument --fallback: applies to a --csv series; without one, prices are annual")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_sweep_args(args, _fail)
    try:
        source = with_fallback(CsvSeries(args.csv), args.fallback) if args.csv else annual_tables()
    except SeriesError as exc:
        _fail(f"argument --csv: {exc}")
    except ModuleNotFoundError as exc:  # the annual tables ship with codecarbon
        _fail(str(exc))
    hint = ""
    if args.csv and not args.fallback:
        hint = "; --fallback annual prices it from the annual tables"
    intensities = look_up_all(source, args.zones, args.months, hint)

    records = load_priceable(args.sweep, args.pue)
    for loaded in records:
        if not loaded.ok:
            reason = f"{loaded.status}: {loaded.error}" if loaded.error else loaded.status
            print(f"lpm.price: skipping {loaded.name}: {reason}", file=sys.stderr)
        elif loaded.record.get("hardware") and dig(loaded.record, "carbon.embodied") is None:
            print(
                f"lpm.price: {loaded.name}: no embodied factors recorded; embodied_kg from "
                "lpm's defaults (site.embodied)",
                file=sys.stderr,
            )
    rows = reprice_sweep(records, intensities, args.pue)
    if not rows:
        print(f"lpm.price: no record under {args.sweep} could be priced", file=sys.stderr)
        return 1
    _write(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
