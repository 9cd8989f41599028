from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import REPO, compose_cfg

from lpm.carbon.intensity import (
    ISO2_TO_ISO3,
    Chain,
    Constant,
    CountryTable,
    CsvSeries,
    ElectricityMapsApi,
    Fallback,
    Intensity,
    OutOfRangeError,
    SeriesError,
    SubnationalTable,
    UnknownZone,
    annual_tables,
    co2e_kg,
    source_from_config,
)


def raw(relative: str) -> dict[str, Any]:
    """A CodeCarbon data file read here, independently of the module under test."""
    spec = importlib.util.find_spec("codecarbon")
    assert spec and spec.submodule_search_locations
    root = Path(spec.submodule_search_locations[0], "data", "private_infra")
    return json.loads((root / relative).read_text())


# --- CodeCarbon tables ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("iso2", "iso3"),
    [
        ("DE", "DEU"),
        ("FR", "FRA"),
        ("SE", "SWE"),
        ("NO", "NOR"),
        ("PL", "POL"),
        ("US", "USA"),
        ("IN", "IND"),
    ],
)
def test_country_table_matches_codecarbon_json(iso2, iso3):
    row = raw("global_energy_mix.json")[iso3]
    table = CountryTable()
    for zone in (iso2, iso3, iso3.lower()):
        got = table.lookup(zone)
        assert got.g_per_kwh == row["carbon_intensity"]
        assert (got.zone, got.period, got.kind, got.basis) == (
            iso3,
            str(row["year"]),
            "annual",
            "lifecycle",
        )
        assert "global_energy_mix.json" in got.source


def test_every_iso2_alias_is_in_the_table():
    zones = set(CountryTable().zones())
    assert len(ISO2_TO_ISO3) == 29 and set(ISO2_TO_ISO3.values()) <= zones


def test_country_table_reference_values():
    # The project's reference sheet.
    table = CountryTable()
    assert table.lookup("DEU").g_per_kwh == pytest.approx(380.95, abs=0.01)
    assert table.lookup("DEU").period == "2023"
    assert table.lookup("FR").g_per_kwh == pytest.approx(56.04, abs=0.01)


def test_country_table_unknown_zone_names_it():
    with pytest.raises(UnknownZone, match=r"'XX'.*213 in all.*zones\(\)") as e:
        CountryTable().lookup("XX")
    assert isinstance(e.value, KeyError)
    assert e.value.zone == "XX" and "DEU" in e.value.known
    with pytest.raises(UnknownZone, match=r"'DEX'.*include.*DEU"):
        CountryTable().lookup("DEX")


def test_country_spread_paraguay_to_turkmenistan():
    low, high = CountryTable().spread()
    assert (low.zone, high.zone) == ("PRY", "TKM")
    assert low.g_per_kwh == pytest.approx(23.755) and high.g_per_kwh == pytest.approx(1306.025)
    assert high.g_per_kwh / low.g_per_kwh > 40
    # Without the generation floor, rounding artefacts of tiny grids set the minimum.
    assert CountryTable().spread(0.0)[0].g_per_kwh < low.g_per_kwh


def test_subnational_us_state_converted_from_lbs_per_mwh():
    lbs_per_mwh = raw("2023/usa_emissions.json")["california"]["emissions"]
    got = SubnationalTable().lookup("us-ca")
    assert got.g_per_kwh == pytest.approx(lbs_per_mwh * 0.45359237)
    assert (got.zone, got.period, got.basis) == ("US-CA", "2023", "direct")


def test_subnational_china_province_is_direct_co2():
    factor = raw("2023/china_provincial_emissions.json")["data"]["CN-BJ"]["emission_factor"]
    got = SubnationalTable().lookup("CN-BJ")
    assert got.g_per_kwh == factor and got.basis == "direct"


def test_subnational_nordic_bidding_zone_both_spellings():
    factor = raw("nordic_emissions.json")["data"]["SE3"]["emission_factor"]
    table = SubnationalTable()
    assert table.lookup("SE-SE3") == table.lookup("se3")
    assert table.lookup("SE3").g_per_kwh == factor and table.lookup("SE3").zone == "SE-SE3"
    assert {"SE-SE1", "NO-NO5", "FI", "US-TX", "CN-BJ"} <= set(table.zones())
    with pytest.raises(UnknownZone):
        table.lookup("DEU")


# --- CSV series -----------------------------------------------------------------------------------

UTC = timezone.utc
EM_HEADER = (
    "Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
    "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
    "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method"
)


def write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def lpm_csv(tmp_path):
    return write(
        tmp_path,
        "lpm.csv",
        "zone,start,intensity_g_per_kwh,note",
        "DE,2024-01,400,a",
        "DE,2024-03,350,c",
        "DE,2024-02,300,b",
        "FR,2024-01-01T00:00:00Z,50,",
    )


def test_csv_lpm_monthly(lpm_csv):
    series = CsvSeries(lpm_csv)
    assert series.zones() == ["DE", "FR"]
    feb = series.lookup("de", "2024-02")
    assert (feb.g_per_kwh, feb.zone, feb.period, feb.kind) == (300.0, "DE", "2024-02", "monthly")
    assert feb.basis == "unknown" and "lpm.csv" in feb.source
    assert series.lookup("DE", datetime(2024, 3, 31, 23, 59, tzinfo=UTC)).g_per_kwh == 350
    assert series.lookup("DE", "2024-01-15T12:00:00Z").period == "2024-01"
    mean = series.lookup("DE")
    assert (mean.g_per_kwh, mean.period, mean.kind) == (350.0, "2024-01..2024-03", "mean")
    # A year over a series that covers part of it: the mean, labelled with what it covers.
    year = series.lookup("DE", "2024")
    assert (year.g_per_kwh, year.period, year.kind) == (350.0, "2024-01..2024-03", "annual")
    assert series.months("DE") == ["2024-01", "2024-02", "2024-03"]
    assert series.monthly("DE") == {"2024-01": 400.0, "2024-02": 300.0, "2024-03": 350.0}
    with pytest.raises(OutOfRangeError, match=r"'DE' at 2024-04 in lpm\.csv.*2024-01\.\.2024-03"):
        series.lookup("DE", "2024-04")
    with pytest.raises(KeyError):
        series.lookup("DE", datetime(2023, 12, 31, 23, tzinfo=UTC))
    with pytest.raises(UnknownZone, match=r"'PL' in lpm\.csv; it has DE, FR \(2 in all\)"):
        series.lookup("PL")


def test_csv_electricity_maps_hourly_prefers_life_cycle(tmp_path):
    rows = [
        f"2024-01-01 0{h}:00:00,Germany,Germany,DE,{300 + h},{400 + h},50,45,x,false,"
        for h in range(4)
    ]
    rows.append("2024-02-01 00:00:00,Germany,Germany,DE,200,500,50,45,x,true,TIME_SLICER")
    series = CsvSeries(write(tmp_path, "DE_2024_hourly.csv", EM_HEADER, *rows))
    hour = series.lookup("de", "2024-01-01T01:30:00Z")
    assert (hour.g_per_kwh, hour.period, hour.kind) == (401.0, "2024-01-01T01:00:00Z", "hourly")
    assert hour.basis == "lifecycle" and "life cycle" in hour.source
    # Naive datetimes are UTC.
    assert series.lookup("DE", datetime(2024, 1, 1, 3, 59)).g_per_kwh == 403.0
    jan = series.lookup("DE", "2024-01")
    assert (jan.g_per_kwh, jan.period, jan.kind) == (
        401.5,
        "2024-01-01T00:00:00Z..2024-01-01T03:00:00Z",
        "monthly",
    )
    assert series.monthly("DE") == {"2024-01": 401.5, "2024-02": 500.0}
    assert series.months("DE") == ["2024-01", "2024-02"]
    assert series.lookup("DE").g_per_kwh == pytest.approx((400 + 401 + 402 + 403 + 500) / 5)
    with pytest.raises(OutOfRangeError, match="2024-01-01T05"):
        series.lookup("DE", "2024-01-01T05:00:00Z")  # a gap in the series


def test_csv_electricity_maps_direct_only_and_ascii_header(tmp_path):
    path = write(
        tmp_path,
        "em.csv",
        "Datetime (UTC),Zone id,Carbon Intensity gCO2eq/kWh (direct)",
        "2024-01-01 00:00:00,PL,700",
        "2024-01-01 01:00:00,PL,710",
    )
    got = CsvSeries(path).lookup("PL", "2024-01-01T01:00:00Z")
    assert (got.g_per_kwh, got.basis) == (710.0, "direct")


def test_csv_electricity_maps_monthly(tmp_path):
    rows = [
        f"2024-{m:02d}-01 00:00:00,Sweden,Sweden 3,SE-SE3,{10 + m},{20 + m},98,70,x,false,"
        for m in (1, 2, 3)
    ]
    series = CsvSeries(write(tmp_path, "SE-SE3_2024_monthly.csv", EM_HEADER, *rows))
    assert series.zones() == ["SE-SE3"]
    feb = series.lookup("se-se3", "2024-02")
    assert (feb.g_per_kwh, feb.period, feb.kind) == (22.0, "2024-02", "monthly")
    assert series.lookup("SE-SE3", datetime(2024, 3, 20, tzinfo=UTC)).g_per_kwh == 23.0
    assert series.lookup("SE-SE3", "2024-03-20").period == "2024-03"
    assert series.months("SE-SE3") == ["2024-01", "2024-02", "2024-03"]


def test_csv_ember_monthly_keeps_only_co2_intensity(tmp_path):
    header = (
        "Area,ISO 3 code,Date,Area type,Continent,Ember region,EU,OECD,G20,G7,ASEAN,Category,"
        "Subcategory,Variable,Unit,Value,YoY absolute change,YoY % change"
    )
    common = "Country,Europe,EU,1,1,1,1,0"
    intensity = "Power sector emissions,CO2 intensity,CO2 intensity,gCO2/kWh"
    path = write(
        tmp_path,
        "monthly_full_release_long_format.csv",
        header,
        f"Germany,DEU,2024-01-01,{common},{intensity},381.5,,",
        f"Germany,DEU,2024-02-01,{common},{intensity},340.25,,",
        f"Germany,DEU,2024-01-01,{common},Power sector emissions,Total,Total emissions,mtCO2,17,,",
        f"Germany,DEU,2024-01-01,{common},Electricity generation,Fuel,Coal,TWh,9.1,,",
        f"Germany,DEU,2024-01-01,{common},Electricity generation,Fuel,Coal,%,18.2,,",
        f"World,,2024-01-01,Region,,,0,0,0,0,0,{intensity},480,,",
    )
    series = CsvSeries(path)
    assert series.zones() == ["DEU"]
    jan = series.lookup("deu", "2024-01")
    assert (jan.g_per_kwh, jan.zone, jan.kind, jan.basis) == (381.5, "DEU", "monthly", "lifecycle")
    assert series.lookup("DEU", datetime(2024, 2, 29, 12, tzinfo=UTC)).g_per_kwh == 340.25
    assert series.monthly("DEU") == {"2024-01": 381.5, "2024-02": 340.25}
    by_area = CsvSeries(path, zone_column="Area")
    assert by_area.zones() == ["Germany", "World"]
    assert by_area.lookup("world").g_per_kwh == 480.0


def test_csv_unknown_header_names_file_and_layouts(tmp_path):
    path = write(tmp_path, "odd.csv", "time,region,gco2", "2024-01,DE,300")
    with pytest.raises(SeriesError, match=r"odd\.csv") as e:
        CsvSeries(path)
    for accepted in ("zone,start,intensity_g_per_kwh", "Zone id", "ISO 3 code"):
        assert accepted in str(e.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"bad\.csv: No such file or directory"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"bad\.csv: not a CSV text file"),
        (b"zone,start,intensity_g_per_kwh\n" + b"x" * 200_000, r"bad\.csv: not a CSV text.*limit"),
        (b"", r"bad\.csv: unrecognised CSV header \[\]"),
        (b"zone,start,intensity_g_per_kwh\n", r"bad\.csv: no intensity rows"),
        (b"zone,start,intensity_g_per_kwh\nDE,2024-01\n", r"bad\.csv:2: only 2 cells"),
        (b"zone,start,intensity_g_per_kwh\nDE,2024-01,lots\n", r"bad\.csv:2: could not conv"),
        (b"zone,start,intensity_g_per_kwh\nDE,2024-01,-5\n", r"bad\.csv:2: .*'-5'.*>= 0"),
        (b"zone,start,intensity_g_per_kwh\nDE,2024-01,nan\n", r"bad\.csv:2: .*'nan'.*finite"),
        (b"zone,start,intensity_g_per_kwh\nDE,January,5\n", r"bad\.csv:2: .*January"),
    ],
)
def test_csv_garbage_is_one_series_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SeriesError, match=message) as e:
        CsvSeries(path)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_csv_directory_is_a_series_error(tmp_path):
    with pytest.raises(SeriesError, match=str(tmp_path)):
        CsvSeries(tmp_path)


# --- constant, chain, config ----------------------------------------------------------------------


def test_constant():
    got = Constant(123.0).lookup("anywhere", "2024-01")
    assert (got.g_per_kwh, got.zone, got.kind, got.source) == (
        123.0,
        "anywhere",
        "constant",
        "constant override",
    )
    with pytest.raises(UnknownZone):
        Constant(1.0, zone="DEU").lookup("FRA")


def test_chain_first_hit_wins(lpm_csv):
    assert Chain(Constant(1.0, zone="DEU"), CountryTable()).lookup("deu").g_per_kwh == 1.0
    assert Chain(CountryTable(), Constant(1.0, zone="DEU")).lookup("DEU").g_per_kwh == 380.95
    chain = Chain(CsvSeries(lpm_csv), SubnationalTable(), CountryTable())
    assert chain.lookup("DE", "2024-02").g_per_kwh == 300.0
    assert chain.lookup("SE3").zone == "SE-SE3"
    # A source that has the zone but not the time answers with an error: a later source
    # answering instead would be a silent fallback (it was, and priced DE 2025-06 at DEU 2023).
    with pytest.raises(OutOfRangeError, match=r"'DE' at 2025-06 in lpm\.csv"):
        chain.lookup("DE", "2025-06")
    with pytest.raises(UnknownZone, match="'ATLANTIS'"):
        chain.lookup("ATLANTIS")
    assert {"DE", "SE-SE3", "DEU"} <= set(chain.zones())


def test_source_from_config(lpm_csv, monkeypatch):
    assert source_from_config({}).lookup("US-CA").zone == "US-CA"
    assert source_from_config({"source": "codecarbon"}).lookup("DE").zone == "DEU"
    csv_source = source_from_config({"source": "csv", "csv": str(lpm_csv)})
    assert csv_source.lookup("DE", "2024-01").g_per_kwh == 400.0
    assert csv_source.lookup("DE", "2024-01").fallback is None
    assert (
        source_from_config({"source": "constant", "constant_g_per_kwh": 7}).lookup("x").g_per_kwh
        == 7
    )
    api = source_from_config(
        {"source": "electricitymaps", "api_token": "t", "api_url": "http://127.0.0.1:1/v3"}
    )
    assert isinstance(api, ElectricityMapsApi) and api.base_url == "http://127.0.0.1:1/v3"
    monkeypatch.setenv("MY_EM_TOKEN", "secret")
    assert (
        source_from_config({"source": "electricitymaps", "api_token_env": "MY_EM_TOKEN"}).token
        == "secret"
    )

    monkeypatch.delenv("ELECTRICITYMAPS_API_TOKEN", raising=False)
    bad = [
        ({"source": "wind"}, r"carbon\.source.*'wind'.*codecarbon, csv, constant, electricitymaps"),
        ({"source": "csv"}, r"carbon\.csv"),
        ({"source": "constant"}, r"carbon\.constant_g_per_kwh"),
        ({"source": "electricitymaps"}, r"carbon\.api_token_env.*ELECTRICITYMAPS_API_TOKEN"),
    ]
    for cfg, message in bad:
        with pytest.raises(ValueError, match=message):
            source_from_config(cfg)
    with pytest.raises(FileNotFoundError, match=r"carbon\.csv"):
        source_from_config({"source": "csv", "csv": str(lpm_csv.with_name("missing.csv"))})
    garbage = write(lpm_csv.parent, "garbage.csv", "time,region,gco2", "2024-01,DE,300")
    with pytest.raises(SeriesError, match=r"^carbon\.csv: .*garbage\.csv: unrecognised"):
        source_from_config({"source": "csv", "csv": str(garbage)})


def test_source_from_project_config():
    cfg = compose_cfg("site=se3")
    assert source_from_config(cfg.carbon).lookup(cfg.site.zone).zone == "SE-SE3"


# --- nothing silent: what a series lacks is an error, unless carbon.fallback=annual -----------


@pytest.fixture
def em_csv(tmp_path):
    """Germany's 2024 months in lpm's layout, as the issue's example names it."""
    months = [f"DE,2024-{m:02d},{300 + m}" for m in range(1, 13)]
    return write(tmp_path, "em.csv", "zone,start,intensity_g_per_kwh", *months)


def test_csv_source_out_of_range_month_is_an_error(em_csv):
    source = source_from_config({"source": "csv", "csv": str(em_csv)})
    with pytest.raises(OutOfRangeError) as e:
        source.lookup("DE", "2025-03")
    assert str(e.value) == (
        "no carbon intensity for zone 'DE' at 2025-03 in em.csv; covered: 2024-01..2024-12"
    )
    assert (e.value.zone, e.value.when, e.value.covered) == ("DE", "2025-03", "2024-01..2024-12")


def test_csv_source_zone_not_in_series_is_an_error(em_csv):
    source = source_from_config({"source": "csv", "csv": str(em_csv), "fallback": None})
    # FRA is in the annual table: before, the series' lack of it went unsaid.
    with pytest.raises(UnknownZone) as e:
        source.lookup("FRA", "2024-03")
    assert (
        str(e.value)
        == "no carbon intensity for zone 'FRA' at 2024-03 in em.csv; it has DE (1 in all)"
    )
    with pytest.raises(UnknownZone, match=r"'PL' in em\.csv"):
        source.lookup("PL")  # the series mean is asked: still not the tables' value
    # A country's ISO-3 code finds its ISO-2 series (site configs say DEU, exports DE).
    assert source.lookup("DEU", "2024-03").g_per_kwh == 303.0


def test_run_path_prices_an_uncovered_month_only_with_fallback_annual(em_csv):
    # What lpm.run's pricer does: source_from_config(cfg.carbon).lookup(site.zone, carbon.when).
    overrides = ["site=de", "carbon.source=csv", f"carbon.csv={em_csv}", "carbon.when=2025-03"]
    cfg = compose_cfg(*overrides)
    assert cfg.site.zone == "DEU"
    with pytest.raises(
        OutOfRangeError, match=r"'DE' at 2025-03 in em\.csv; covered: 2024-01\.\.2024-12"
    ):
        source_from_config(cfg.carbon).lookup(cfg.site.zone, cfg.carbon.when)
    cfg = compose_cfg(*overrides, "carbon.fallback=annual")
    got = source_from_config(cfg.carbon).lookup(cfg.site.zone, cfg.carbon.when)
    assert (got.zone, got.period, got.g_per_kwh) == ("DEU", "2023", 380.95)
    assert "at 2025-03" in got.fallback and "fallback=annual" in got.fallback


def test_fallback_annual_states_what_was_asked_why_and_what_was_used(em_csv):
    source = source_from_config({"source": "csv", "csv": str(em_csv), "fallback": "annual"})
    assert isinstance(source, Fallback)
    covered = source.lookup("DE", "2024-03")
    assert (covered.g_per_kwh, covered.period, covered.fallback) == (303.0, "2024-03", None)
    month = source.lookup("DE", "2025-03")
    assert (month.zone, month.period, month.g_per_kwh, month.kind) == (
        "DEU",
        "2023",
        380.95,
        "annual",
    )
    assert month.source.startswith("codecarbon global_energy_mix.json")
    assert month.fallback == (
        "no carbon intensity for zone 'DE' at 2025-03 in em.csv; covered: 2024-01..2024-12; "
        "priced from the annual table instead: DEU 2023, 380.95 g/kWh (fallback=annual)"
    )
    zone = source.lookup("US-CA", "2024-03")
    assert zone.zone == "US-CA" and zone.fallback.startswith(
        "no carbon intensity for zone 'US-CA' at 2024-03 in em.csv; it has DE (1 in all); priced "
        "from the annual table instead: US-CA 2023"
    )
    assert "\n" not in month.fallback + zone.fallback
    # Not in the series nor in the tables: one error naming both.
    with pytest.raises(UnknownZone, match=r"'ATLANTIS' in em\.csv or the annual tables"):
        source.lookup("ATLANTIS")
    assert {"DE", "DEU", "US-CA"} <= set(source.zones())


def test_fallback_keeps_out_of_range_when_no_table_has_the_zone(tmp_path):
    path = write(tmp_path, "bz.csv", "zone,start,intensity_g_per_kwh", "DE-LU,2024-01,300")
    source = Fallback(CsvSeries(path), annual_tables())
    with pytest.raises(OutOfRangeError, match=r"'DE-LU' at 2025-01 in bz\.csv"):
        source.lookup("DE-LU", "2025-01")


@pytest.mark.parametrize("source", ["csv", "codecarbon", "constant"])
def test_invalid_fallback_names_the_field_and_the_allowed_values(em_csv, source):
    cfg = {"source": source, "csv": str(em_csv), "constant_g_per_kwh": 1, "fallback": "nearest"}
    with pytest.raises(
        ValueError, match=r"^carbon\.fallback: unknown 'nearest'; allowed: null, annual$"
    ):
        source_from_config(cfg)


# --- Electricity Maps API against a loopback fake -------------------------------------------------


@pytest.fixture
def fake_api():
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlsplit(self.path)
            requests.append(
                {
                    "path": url.path,
                    "query": parse_qs(url.query),
                    "token": self.headers["auth-token"],
                }
            )
            query = parse_qs(url.query)
            if self.headers["auth-token"] != "good":
                status, body = 401, {"message": "Invalid auth-token"}
            else:
                when = query.get("datetime", ["2024-06-01T12:00:00.000Z"])[0]
                status, body = (
                    200,
                    {
                        "zone": query["zone"][0],
                        "carbonIntensity": 321,
                        "datetime": when,
                        "isEstimated": True,
                        "emissionFactorType": "lifecycle",
                    },
                )
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v3", requests
    server.shutdown()
    server.server_close()


def test_electricity_maps_latest_and_past(fake_api):
    base, requests = fake_api
    api = ElectricityMapsApi("good", base_url=base, timeout_s=5)
    latest = api.lookup("DE")
    assert (latest.g_per_kwh, latest.zone, latest.kind, latest.basis) == (
        321.0,
        "DE",
        "live",
        "lifecycle",
    )
    assert "estimated" in latest.source
    assert requests[-1] == {
        "path": "/v3/carbon-intensity/latest",
        "query": {"zone": ["DE"]},
        "token": "good",
    }
    past = api.lookup("DE", datetime(2024, 3, 5, 14, 30, tzinfo=UTC))
    assert requests[-1]["path"] == "/v3/carbon-intensity/past"
    assert requests[-1]["query"] == {"zone": ["DE"], "datetime": ["2024-03-05T14:30:00Z"]}
    assert (past.period, past.kind) == ("2024-03-05T14:30:00Z", "hourly")
    with pytest.raises(ValueError, match="ISO time"):
        api.lookup("DE", "2024-03")


def test_electricity_maps_error_status_is_clear(fake_api):
    base, _ = fake_api
    with pytest.raises(RuntimeError, match=r"zone 'FR'.*HTTP 401.*Invalid auth-token"):
        ElectricityMapsApi("bad", base_url=base, timeout_s=5).lookup("FR")


# --- arithmetic and import weight -----------------------------------------------------------------


def test_co2e_kg_by_hand():
    intensity = Intensity(380.95, "DEU", "2023", "test")
    assert co2e_kg(2.0, 1.58, intensity) == pytest.approx(1.203802)  # 2 × 1.58 × 380.95 g


def test_import_is_light():
    code = (
        "import sys, lpm.carbon.intensity as i, lpm.carbon.equivalents\n"
        "i.source_from_config({}).lookup('DE')\n"
        "heavy = {'torch', 'lightning', 'pandas', 'codecarbon'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=30)
