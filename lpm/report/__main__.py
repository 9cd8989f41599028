"""python -m lpm.report multirun/<sweep> [--zones DEU,FRA,POL] [--csv series.csv] [--out dir]
    [--include-noisy]

With --csv, a zone the series lacks is an error unless --fallback annual prices it from the
annual tables (the report then says so).

Exit status: 0 when at least one job could be compared, 1 when none could (the report is still
written, listing why), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from lpm.carbon.intensity import FALLBACKS, SeriesError, UnknownZone
from lpm.report.build import build_report


def _unwritable(out: Path) -> str | None:
    """Why no report can be written to `out`, or None; creates nothing (a probe file in the
    nearest existing directory is removed at once)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        return "is a file, not a directory" if existing == out else f"{existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write in {existing}: {exc.strerror or exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lpm.report",
        description="Report on a sweep: results.csv, figures, report.md and a self-contained "
        "report.html.",
    )
    parser.add_argument("sweep", type=Path, help="sweep (or job) directory holding record.json")
    parser.add_argument(
        "--zones",
        help="comma-separated zones to re-price at (default: the --csv series' zones, else the "
        "country table's cleanest and dirtiest grids, NOR SWE FRA USA DEU CHN POL IND; and the "
        "recorded sites)",
    )
    parser.add_argument(
        "--csv", type=Path, help="intensity series (lpm, Electricity Maps or Ember): adds months"
    )
    parser.add_argument(
        "--fallback",
        choices=FALLBACKS,
        help="price a zone the --csv series lacks from the annual tables (the report says so); "
        "default: an error",
    )
    parser.add_argument("--out", type=Path, help="report directory (default: <sweep>/report)")
    parser.add_argument(
        "--include-noisy",
        action="store_true",
        help="let headlines rest on phases whose verdict is noisy (each such sentence says so); "
        "default: noisy numbers are shown, marked, and kept out of headlines",
    )
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        parser.error(f"sweep {args.sweep}: no such directory")
    out = args.out or args.sweep / "report"
    if why := _unwritable(out.absolute()):
        option = "--out" if args.out else "--out (default: <sweep>/report)"
        parser.exit(2, f"{parser.prog}: error: {option} {out}: {why}\n")
    if args.csv and not args.csv.is_file():
        parser.error(f"--csv {args.csv}: no such file")
    if args.fallback and not args.csv:
        parser.error("--fallback: applies to a --csv series; without one, prices are annual")
    zones = [z.strip() for z in (args.zones or "").split(",") if z.strip()] or None
    try:
        report = build_report(
            args.sweep, args.out, zones, args.csv, args.fallback, include_noisy=args.include_noisy
        )
    except UnknownZone as exc:
        hint = "; --fallback annual prices it from the annual tables"
        parser.error(f"--zones: {exc}{hint if args.csv and not args.fallback else ''}")
    except SeriesError as exc:
        parser.error(f"--csv: {exc}")
    for warning in report.warnings:
        print(f"lpm.report: {warning}", file=sys.stderr)
    print(f"lpm.report: {report.compared} jobs compared; wrote {report.out}/")
    for path in report.files:
        print(f"  {path.name}")
    print("checks (warnings above, and in report.md):")
    for check in report.checks:
        flagged = f" [{len(check.flags)} WARNING(S)]" if check.flags else ""
        print(f"  {check.name}: {check.summary}{flagged}")
    for line in report.headlines:
        print(f"- {line}")
    for note in report.notes:
        print(f"  {note}")
    return 0 if report.compared else 1


if __name__ == "__main__":
    sys.exit(main())
