"""`python -m lpm.report` with a --csv series: a zone the series lacks is an error naming
--zones, unless --fallback annual, which the report then states."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import make_record, report, write_sweep

from lpm.report.__main__ import main

SERIES = "zone,start,intensity_g_per_kwh\nDE,2024-01,450\nDE,2024-02,400\nFR,2024-01,60\n"


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return write_sweep(tmp_path / "sweep", {"baseline": make_record()})


@pytest.fixture
def series(tmp_path: Path) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(SERIES)
    return path


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_a_zone_the_series_lacks_is_an_error_naming_zones(
    sweep: Path, series: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, POL was priced from the annual table without a word.
    line = usage_error(capsys, sweep, "--csv", series, "--zones", "DE,POL")
    assert "--zones: no carbon intensity for zone 'POL' in series.csv; it has DE, FR" in line
    assert line.endswith("; --fallback annual prices it from the annual tables")


def test_fallback_annual_prices_it_and_the_report_says_so(
    sweep: Path, series: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = report(sweep, "--csv", str(series), "--zones", "DE,POL", "--fallback", "annual")
    assert code == 0
    statement = (
        "zone POL: no carbon intensity for zone 'POL' in series.csv; it has DE, FR (2 in all); "
        "priced from the annual table instead: POL 2023"
    )
    assert statement in capsys.readouterr().err
    assert statement in (out / "report.md").read_text()


def test_default_zones_with_a_series_are_its_zones_and_a_recorded_site_it_lacks_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = write_sweep(tmp_path / "sweep", {"baseline": make_record(zone="POL")})
    path = tmp_path / "series.csv"
    path.write_text(SERIES)
    code, out = report(sweep, "--csv", str(path))
    assert code == 0
    text = (out / "report.md").read_text()
    assert "recorded zone POL is not in the re-pricing source: no carbon intensity" in text
    assert "DE (" in text and "FR (" in text and "IND" not in text  # no country-table spread


def test_a_recorded_fallback_is_stated(tmp_path: Path) -> None:
    record = make_record()
    record["carbon"]["fallback"] = "no carbon intensity for zone 'DE' at 2025-03 in em.csv; ..."
    sweep = write_sweep(tmp_path / "sweep", {"baseline": record})
    code, out = report(sweep, "--zones", "DEU,FRA")
    assert code == 0
    assert (
        "recorded price of baseline is a fallback: no carbon intensity for zone 'DE' at 2025-03"
        in (out / "report.md").read_text()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fallback", "annual"], "--fallback: applies to a --csv series"),
        (["--fallback", "nearest"], "argument --fallback: invalid choice: 'nearest'"),
    ],
)
def test_bad_fallback_names_the_option(
    sweep: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in usage_error(capsys, sweep, *argv)


def test_a_garbage_csv_is_one_error_line_naming_csv(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\xfd")
    line = usage_error(capsys, sweep, "--csv", path)
    assert line.startswith("python -m lpm.report: error: --csv: ") and "not a CSV text" in line
