"""What would cut a sweep's CO2e: its levers, zones and months, and the best combination.

python -m lpm.advise multirun/<sweep> [--zones DEU FRA SE-SE3] [--csv series.csv]
    [--months 2024-01 2024-05] [--max-quality-loss-db 1.0] [--include-noisy] [--json out.json]

Only stable, complete numbers enter the advice; the rest is listed as excluded with its reason
(--include-noisy lets noisy numbers in, marked). Zones without --zones: the report's (the --csv
series' zones, else a spread of countries), plus the recorded sites. --months prices each zone at
each month of the --csv series.

Exit status: 0 advice written, 1 no number could enter the advice (the exclusions are still
printed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from lpm.carbon.intensity import (
    FALLBACKS,
    CsvSeries,
    SeriesError,
    UnknownZone,
    with_fallback,
)
from lpm.price import _months, _zones, at_least, check_sweep_args, fail, look_up_all
from lpm.report.advice import MAX_QUALITY_LOSS_DB, Advice, advise, blocks, to_json
from lpm.report.checks import run_checks
from lpm.report.study import build_study
from lpm.report.sweep import load_sweep

PROG = "python -m lpm.advise"
WIDTH = 100
# Where a user finds the zones the annual tables know (UnknownZone lists a few close matches).
ZONES_LISTED = (
    "codecarbon's data/private_infra/global_energy_mix.json lists the ISO-3 countries; its "
    "usa_emissions.json, china_provincial_emissions.json and nordic_emissions.json the "
    "sub-national zones (US-CA, CN-BJ, SE-SE3)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="sweep (or job) directory holding record.json")
    parser.add_argument(
        "--zones",
        type=_zones,
        nargs="+",
        help="zones, comma- or space-separated: ISO-3 countries or sub-national codes of the "
        "annual tables (DEU FRA SE-SE3 US-CA), or the --csv series' zones (default: the "
        "report's zones)",
    )
    parser.add_argument(
        "--csv", type=Path, help="intensity series (lpm, Electricity Maps or Ember)"
    )
    parser.add_argument(
        "--months",
        type=_months,
        nargs="+",
        default=[],
        help="months (YYYY-MM), comma- or space-separated, of the --csv series: each zone priced "
        "at each month",
    )
    parser.add_argument(
        "--fallback",
        choices=FALLBACKS,
        help="price a zone or month the --csv series lacks from the annual tables (it says so); "
        "default: an error",
    )
    parser.add_argument(
        "--max-quality-loss-db",
        type=at_least(0, "a number of dB"),
        default=MAX_QUALITY_LOSS_DB,
        help="the best combination may lose at most this much PSNR against the best the sweep "
        f"measured for the same dims (default {MAX_QUALITY_LOSS_DB:g})",
    )
    parser.add_argument(
        "--include-noisy",
        action="store_true",
        help="let numbers whose verdict is noisy into the advice, marked 'noisy'",
    )
    parser.add_argument("--json", type=Path, help="also write the advice as JSON here")
    return parser


def _fail(message: str) -> NoReturn:
    fail(PROG, message)


def _cell(cell: Any) -> str:
    return str(cell).replace("\n", " ")


def plain(section: list[tuple[str, Any]]) -> str:
    """Report blocks as plain text: headings underlined, lists and paragraphs wrapped, tables one
    row a line with aligned columns."""
    out = []
    for kind, body in section:
        if kind in ("h1", "h2"):
            out.append(f"{body}\n{('=' if kind == 'h1' else '-') * len(body)}")
        elif kind == "p":
            out.append(textwrap.fill(body, WIDTH))
        elif kind == "ul":
            out.append(
                "\n".join(
                    textwrap.fill(item, WIDTH, initial_indent="- ", subsequent_indent="  ")
                    for item in body
                )
            )
        elif kind == "table":
            header, rows = body
            table = [[_cell(c) for c in row] for row in (header, *rows)]
            widths = [max(len(row[k]) for row in table) for k in range(len(header))]
            lines = [
                " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table
            ]
            lines.insert(1, "-+-".join("-" * w for w in widths))
            out.append("\n".join(line.rstrip() for line in lines))
    return "\n\n".join(out) + "\n"


def _write_json(advice: Advice, path: Path) -> None:
    try:
        path.write_text(json.dumps(to_json(advice), indent=1, ensure_ascii=False) + "\n")
    except OSError as exc:
        _fail(f"argument --json: {path}: {exc.strerror or exc}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    parser.error = _fail  # type: ignore[method-assign]  # one line, no usage block
    args = parser.parse_args(argv)
    # Each value may itself be a comma-separated list (as `lpm.price` takes them).
    args.zones = [z for group in args.zones for z in group] if args.zones else None
    args.months = [m for group in args.months for m in group]
    check_sweep_args(args, _fail)
    sweep = load_sweep(args.sweep)
    if all(j.status == "no record" for j in sweep.jobs):
        _fail(f"sweep {args.sweep}: no record.json under it (not a sweep, or nothing ran yet)")
    try:
        series = CsvSeries(args.csv) if args.csv else None
    except SeriesError as exc:
        _fail(f"argument --csv: {exc}")
    try:
        study = build_study(sweep, args.zones, args.csv, args.fallback)
    except UnknownZone as exc:
        listed = f"the --csv series {args.csv} has them" if args.csv else ZONES_LISTED
        _fail(f"argument --zones: {exc}; {listed}")
    study.include_noisy = args.include_noisy
    study.checks = run_checks(study)
    places = study.zones
    if series and args.months:
        hint = "" if args.fallback else "; --fallback annual prices it from the annual tables"
        source = with_fallback(series, args.fallback)
        places = look_up_all(source, args.zones or series.zones(), args.months, hint, _fail)
    advice = advise(study, places, args.max_quality_loss_db)
    if args.json:
        _write_json(advice, args.json)
    for warning in sweep.warnings + study.notes:
        print(f"lpm.advise: {warning}", file=sys.stderr)
    title = f"lpm advice: {sweep.root.name}"
    print(plain([("h1", title), *blocks(advice)]), end="")
    return 0 if advice.best or advice.levers else 1


if __name__ == "__main__":
    sys.exit(main())
