"""Re-price finished records for other zones, months and PUEs without rerunning anything.

python -m lpm.price multirun/<sweep> --zones DEU,FRA,US-CA --months 2024-01,2024-07 --csv em.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lpm.carbon.equivalents import Factors
from lpm.carbon.intensity import IntensitySource, source_from_config
from lpm.carbon.pricing import price


def reprice(
    record: Mapping[str, Any],
    source: IntensitySource,
    zone: str,
    when: str | None = None,
    pue: float | None = None,
    factors: Factors | None = None,
) -> dict[str, Any]:
    """A copy of `record` priced at `zone` and `when` (PUE: the record's unless given)."""
    pue = pue if pue is not None else record["carbon"]["pue"]
    priced = price(record["phases"], source.lookup(zone, when), pue, factors)
    out = json.loads(json.dumps(record))
    out["carbon"], out["totals"] = priced["carbon"], priced["totals"]
    for name, co2e in priced["co2e_kg"].items():
        out["phases"][name]["co2e_kg"] = co2e
    return out


def load_records(sweep: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every readable record.json under `sweep`, in path order."""
    for path in sorted(Path(sweep).glob("**/record.json")):
        try:
            yield path, json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"lpm.price: skipping {path}: {exc}", file=sys.stderr)


def reprice_sweep(
    records: Iterable[tuple[Path, Mapping[str, Any]]],
    source: IntensitySource,
    zones: list[str],
    months: list[str | None],
    pue: float | None = None,
) -> list[dict[str, Any]]:
    """One row per job × zone × month with the priced totals."""
    rows = []
    for path, record in records:
        if record.get("status") != "ok":
            continue
        for zone in zones:
            for month in months:
                r = reprice(record, source, zone, month, pue)
                rows.append(
                    {
                        "job": path.parent.name,
                        "zone": r["carbon"]["zone"],
                        "period": r["carbon"]["period"],
                        "intensity_g_per_kwh": r["carbon"]["intensity_g_per_kwh"],
                        "pue": r["carbon"]["pue"],
                        "energy_kwh": r["totals"]["energy_kwh"],
                        "co2e_kg": r["totals"]["co2e_kg"],
                        "car_km": r["totals"].get("car_km"),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpm.price", description=__doc__.split("\n")[0])
    parser.add_argument(
        "sweep", type=Path, help="sweep (or job) directory holding record.json files"
    )
    parser.add_argument(
        "--zones", required=True, help="comma-separated zones: DEU,FRA,US-CA,SE-SE3"
    )
    parser.add_argument("--months", default="", help="comma-separated YYYY-MM (needs --csv)")
    parser.add_argument(
        "--csv", type=Path, help="intensity series (lpm, Electricity Maps or Ember)"
    )
    parser.add_argument("--pue", type=float, help="override every record's PUE")
    parser.add_argument("--out", type=Path, help="write the rows as CSV here")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        parser.error(f"sweep={args.sweep}: no such directory")
    config = {"source": "csv", "csv": str(args.csv)} if args.csv else {"source": "codecarbon"}
    source = source_from_config(config)
    zones = [z.strip() for z in args.zones.split(",") if z.strip()]
    months = [m.strip() for m in args.months.split(",") if m.strip()] or [None]
    try:
        rows = reprice_sweep(load_records(args.sweep), source, zones, months, args.pue)
    except KeyError as exc:
        parser.error(str(exc.args[0] if exc.args else exc))
    if not rows:
        print(f"lpm.price: no ok records under {args.sweep}", file=sys.stderr)
        return 1
    out = args.out.open("w", newline="") if args.out else sys.stdout
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
