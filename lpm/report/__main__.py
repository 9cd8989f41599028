"""python -m lpm.report multirun/<sweep> [--zones DEU,FRA,POL] [--csv series.csv] [--out dir]

Exit status: 0 when at least one job could be compared, 1 when none could (the report is still
written, listing why), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lpm.carbon.intensity import UnknownZone
from lpm.report.build import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lpm.report",
        description="Report on a sweep: results.csv, figures, report.md and a self-contained "
        "report.html.",
    )
    parser.add_argument("sweep", type=Path, help="sweep (or job) directory holding record.json")
    parser.add_argument(
        "--zones",
        help="comma-separated zones to re-price at (default: the country table's cleanest and "
        "dirtiest grids, NOR SWE FRA USA DEU CHN POL IND, and the recorded sites)",
    )
    parser.add_argument(
        "--csv", type=Path, help="intensity series (lpm, Electricity Maps or Ember): adds months"
    )
    parser.add_argument("--out", type=Path, help="report directory (default: <sweep>/report)")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        parser.error(f"sweep {args.sweep}: no such directory")
    if args.csv and not args.csv.is_file():
        parser.error(f"--csv {args.csv}: no such file")
    zones = [z.strip() for z in (args.zones or "").split(",") if z.strip()] or None
    try:
        report = build_report(args.sweep, args.out, zones, args.csv)
    except UnknownZone as exc:
        parser.error(f"--zones: {exc}")
    except ValueError as exc:
        parser.error(f"--csv: {exc}")
    for warning in report.warnings:
        print(f"lpm.report: {warning}", file=sys.stderr)
    print(f"lpm.report: {report.compared} jobs compared; wrote {report.out}/")
    for path in report.files:
        print(f"  {path.name}")
    for line in report.headlines:
        print(f"- {line}")
    return 0 if report.compared else 1


if __name__ == "__main__":
    sys.exit(main())
