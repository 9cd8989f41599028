"""`python -m lpm.price` on bad input: every error names its option, no traceback, bad records
skipped and listed; what a --csv series lacks is an error unless --fallback annual."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from lpm.carbon.intensity import CountryTable
from lpm.carbon.pricing import price
from lpm.price import main

PHASES = {
    "diffusion": {
        "measured": {"energy_j": {"total": 7.2e6}},
        "projected": {"energy_kwh": 10.0, "energy_kwh_ci95": [8.0, 12.0]},
    },
    "synthesis": {
        "measured": {"energy_j": {"total": 3.6e6}},
        "projected": {"energy_kwh": 30.0, "energy_kwh_ci95": [27.0, 33.0]},
    },
}
SERIES = "zone,start,intensity_g_per_kwh\nDE,2024-01,400\nDE,2024-07,200\n"


def good_record() -> dict[str, Any]:
    priced = price(PHASES, CountryTable().lookup("DEU"), 1.58)
    phases = {k: {**v, "co2e_kg": priced["co2e_kg"][k]} for k, v in PHASES.items()}
    return {
        "schema": "lpm.record/1",
        "status": "ok",
        "error": None,
        "phases": phases,
        "carbon": priced["carbon"],
        "totals": priced["totals"],
        "assumptions": priced["assumptions"],
    }


def put(root: Path, name: str, content: Any) -> Path:
    path = root / name / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    put(root, "good", good_record())
    return root


@pytest.fixture
def series(tmp_path: Path) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(SERIES)
    return path


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Runs the command expecting a usage error; returns its last stderr line."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("python -m lpm.price: error: "), err
    return lines[-1]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- nothing silent -------------------------------------------------------------------------------


def test_a_month_the_series_lacks_is_an_error_naming_months_zone_and_range(
    sweep: Path, series: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fails(capsys, sweep, "--zones", "DE", "--months", "2024-01,2025-03", "--csv", series)
    assert "argument --months: no carbon intensity for zone 'DE' at 2025-03 in series.csv" in line
    assert "covered: 2024-01..2024-07" in line and "--fallback annual" in line


def test_a_zone_the_series_lacks_is_an_error_naming_zones(
    sweep: Path, series: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # FR is in the annual tables: before, it was priced from them without a word.
    line = fails(capsys, sweep, "--zones", "DE,FR", "--csv", series)
    assert "argument --zones: no carbon intensity for zone 'FR' in series.csv; it has DE" in line


def test_fallback_annual_prices_what_the_series_lacks_and_says_so(
    sweep: Path, series: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rows.csv"
    argv = ["--zones", "DE,FR", "--months", "2024-01,2025-03", "--csv", str(series)]
    assert main([str(sweep), *argv, "--fallback", "annual", "--out", str(out)]) == 0
    got = rows(out)
    periods = [(r["zone"], r["period"]) for r in got]
    assert periods == [("DE", "2024-01"), ("DEU", "2023"), ("FRA", "2023"), ("FRA", "2023")]
    assert got[0]["fallback"] == ""
    assert got[1]["fallback"] == (
        "no carbon intensity for zone 'DE' at 2025-03 in series.csv; covered: 2024-01..2024-07; "
        "priced from the annual table instead: DEU 2023, 380.95 g/kWh (fallback=annual)"
    )
    assert float(got[1]["co2e_kg"]) == pytest.approx(40 * 1.58 * 0.38095)
    for month, row in zip(("2024-01", "2025-03"), got[2:], strict=True):
        assert row["fallback"].startswith(f"no carbon intensity for zone 'FR' at {month} in ")


def test_rows_have_a_fallback_column_empty_without_one(
    sweep: Path, series: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rows.csv"
    assert main([str(sweep), "--zones", "DE,SE3", "--out", str(out)]) == 0
    got = rows(out)
    assert list(got[0]) == [
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
    ]
    assert [(r["zone"], r["fallback"]) for r in got] == [("DEU", ""), ("SE-SE3", "")]


# --- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--zones", "DEX"], "argument --zones: unknown carbon-intensity zone 'DEX'; known zones "
         "include MEX, DEU"),
        (["--zones", " , "], "argument --zones: no zone in ' , '"),
        (["--zones", "DE", "--months", "2024-01"], "argument --months: needs --csv"),
        (["--zones", "DE", "--months", "2024-13"], "argument --months: '2024-13' is not a month"),
        (["--zones", "DE", "--pue", "0.9"], "argument --pue: must be a number >= 1"),
        (["--zones", "DE", "--pue", "lots"], "argument --pue: must be a number >= 1"),
        (["--zones", "DE", "--pue", "inf"], "argument --pue: must be a number >= 1"),
        (["--zones", "DE", "--fallback", "nearest"], "argument --fallback: invalid choice"),
        (["--zones", "DE", "--fallback", "annual"], "argument --fallback: applies to a --csv"),
        (["--zones", "DE", "--csv", "missing.csv"], "argument --csv: missing.csv: No such file"),
        (["--months", "2024-01"], "the following arguments are required: --zones"),
    ],
)  # fmt: skip
def test_bad_arguments_name_their_option(
    sweep: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in fails(capsys, sweep, *argv)


def test_a_missing_sweep_dir_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "sweep" in fails(capsys, tmp_path / "nope", "--zones", "DE")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"time,region,gco2\n2024-01,DE,300\n", "unrecognised CSV header"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe\xfd", "not a CSV text file"),
        (b"zone,start,intensity_g_per_kwh\nDE,2024-01,lots\n", "garbage.csv:2: could not convert"),
    ],
)
def test_a_garbage_csv_is_one_line(
    sweep: Path, tmp_path: Path, content: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), "--zones", "DE", "--csv", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("python -m lpm.price: error: argument --csv: ") and message in err


@pytest.mark.parametrize("where", ["no-such-dir/rows.csv", "."])
def test_an_unwritable_out_is_one_line(
    sweep: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), "--zones", "DE", "--out", str(tmp_path / where)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("python -m lpm.price: error: argument --out: ")


# --- bad records ----------------------------------------------------------------------------------


def test_bad_records_are_skipped_and_listed_with_their_reason(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(sweep, "corrupt", '{"status": "ok", ')
    put(sweep, "list", [1, 2])
    put(sweep, "next", {**good_record(), "schema": "lpm.record/2"})
    put(sweep, "noschema", {k: v for k, v in good_record().items() if k != "schema"})
    put(sweep, "failed", {**good_record(), "status": "failed", "error": "CUDA out of memory"})
    put(sweep, "odd", {**good_record(), "status": "done"})
    put(sweep, "nophases", {k: v for k, v in good_record().items() if k != "phases"})
    put(sweep, "badphases", {**good_record(), "phases": ["diffusion"]})
    (sweep / "binary").mkdir()
    (sweep / "binary" / "record.json").write_bytes(b"\xff\xfe\x00")
    out = tmp_path / "rows.csv"
    assert main([str(sweep), "--zones", "DE", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    skipped = {line.split(": ")[1].removeprefix("skipping "): line for line in err.splitlines()}
    assert sorted(skipped) == [
        "badphases",
        "binary",
        "corrupt",
        "failed",
        "list",
        "next",
        "nophases",
        "noschema",
        "odd",
    ]
    expected = {
        "corrupt": "unreadable: Expecting property name",
        "binary": "unreadable: 'utf-8' codec can't decode",
        "list": "unreadable: not a JSON object but list",
        "next": "unsupported: schema 'lpm.record/2'; lpm reads lpm.record/1",
        "noschema": "unsupported: schema None",
        "failed": "failed: CUDA out of memory",
        "odd": "incomplete: unknown status 'done'",
        "nophases": "incomplete: status ok but missing phases",
        "badphases": "incomplete: phases is not an object of phase objects",
    }
    for name, reason in expected.items():
        assert skipped[name].startswith(f"lpm.price: skipping {name}: {reason}"), skipped[name]
    assert [r["job"] for r in rows(out)] == ["good"]


def test_a_pue_override_prices_records_that_have_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = good_record()
    del record["carbon"]["pue"]
    put(tmp_path / "sweep", "nopue", record)
    assert main([str(tmp_path / "sweep"), "--zones", "DE"]) == 1
    assert "skipping nopue: incomplete: status ok but missing carbon.pue" in capsys.readouterr().err
    out = tmp_path / "rows.csv"
    assert main([str(tmp_path / "sweep"), "--zones", "DE", "--pue", "1.1", "--out", str(out)]) == 0
    assert float(rows(out)[0]["co2e_kg"]) == pytest.approx(40 * 1.1 * 0.38095)


def test_no_priceable_record_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(tmp_path / "sweep", "next", {**good_record(), "schema": "lpm.record/2"})
    assert main([str(tmp_path / "sweep"), "--zones", "DE"]) == 1
    err = capsys.readouterr().err
    assert "skipping next: unsupported" in err and "no record under" in err
