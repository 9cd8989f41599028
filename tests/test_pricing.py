"""Carbon math against hand computations; re-pricing finished records round trip."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from lpm.carbon.equivalents import Factors
from lpm.carbon.intensity import (
    Constant,
    CountryTable,
    CsvSeries,
    Intensity,
    source_from_config,
    with_fallback,
)
from lpm.carbon.pricing import price
from lpm.price import main as price_main
from lpm.price import reprice

PHASES = {
    # 7.2 MJ measured = 2 kWh; projected 10 kWh (8..12) for training, 30 kWh (27..33) for synthesis.
    "diffusion": {
        "measured": {"energy_j": {"gpu": 5.4e6, "cpu": 1.8e6, "total": 7.2e6}},
        "projected": {"energy_kwh": 10.0, "energy_kwh_ci95": [8.0, 12.0]},
    },
    "synthesis": {
        "measured": {"energy_j": {"total": 3.6e6}},
        "projected": {"energy_kwh": 30.0, "energy_kwh_ci95": [27.0, 33.0]},
    },
}
GERMANY = Intensity(380.95, "DEU", "2023", "test", "annual", "lifecycle")


def test_co2e_is_energy_times_pue_times_intensity() -> None:
    out = price(PHASES, GERMANY, pue=1.58)
    # 2 kWh × 1.58 × 380.95 g/kWh = 1203.802 g
    assert out["co2e_kg"]["diffusion"]["measured"] == pytest.approx(1.203802)
    assert out["co2e_kg"]["diffusion"]["projected"] == pytest.approx(10 * 1.58 * 0.38095)
    assert out["co2e_kg"]["synthesis"]["projected_ci95"] == pytest.approx(
        [27 * 1.58 * 0.38095, 33 * 1.58 * 0.38095]
    )
    totals = out["totals"]
    assert totals["energy_kwh"] == pytest.approx(40.0)
    assert totals["energy_kwh_ci95"] == pytest.approx([35.0, 45.0])
    assert totals["co2e_kg"] == pytest.approx(40 * 1.58 * 0.38095)
    assert totals["measured_energy_kwh"] == pytest.approx(3.0)
    # 24.0764 kg at 107.5 g/km = 223.966 km; at 240 g/pkm = 100.32 km; of 1,070 kg = 2.25%.
    assert totals["car_km"] == pytest.approx(40 * 1.58 * 380.95 / 107.5)
    assert totals["flight_km"] == pytest.approx(40 * 1.58 * 380.95 / 240.0)
    assert totals["budget_share"] == pytest.approx(40 * 1.58 * 0.38095 / 1070.0)
    assert out["carbon"] == {
        "zone": "DEU",
        "period": "2023",
        "intensity_g_per_kwh": 380.95,
        "intensity_source": "test",
        "intensity_kind": "annual",
        "intensity_basis": "lifecycle",
        "pue": 1.58,
        "fallback": None,
    }
    # No fallback; the equivalents rest on two factors inferred from the study.
    assert out["assumptions"] == [
        "equivalents: flight_g_per_pkm = 240, INFERRED from Seyfarth et al. 2024: 360 kg ≈ a "
        "1,500 km flight",
        "equivalents: budget_kg_per_year = 1070, INFERRED from Seyfarth et al. 2024: 360 kg = "
        "33.7% of the per-capita annual budget for a 50% chance of 1.5 °C",
    ]
    # Factors set in the config are the user's, not inferred.
    mine = Factors.from_config({"flight_g_per_pkm": 200, "budget_kg_per_year": 1000})
    assert price(PHASES, GERMANY, 1.58, mine)["assumptions"] == []


def test_a_fallback_is_stated_in_carbon_and_in_the_assumptions() -> None:
    statement = (
        "no carbon intensity for zone 'DE' at 2025-03 in em.csv; covered: 2024-01..2024-12; "
        "priced from the annual table instead: DEU 2023, 380.95 g/kWh (fallback=annual)"
    )
    fell_back = dataclasses.replace(GERMANY, fallback=statement)
    out = price(PHASES, fell_back, pue=1.58)
    assert out["carbon"]["fallback"] == statement
    assert out["assumptions"][0] == f"carbon: {statement}"
    assert out["totals"] == price(PHASES, GERMANY, pue=1.58)["totals"]


def test_unmeasured_energy_stays_none_and_totals_need_every_phase() -> None:
    phases = {
        "autoencoder": {"measured": {"energy_j": {}}, "projected": {}},
        "diffusion": PHASES["diffusion"],
    }
    out = price(phases, GERMANY, pue=1.0)
    assert out["co2e_kg"]["autoencoder"] == {
        "measured": None,
        "projected": None,
        "projected_ci95": None,
    }
    assert out["totals"]["energy_kwh"] is None and out["totals"]["co2e_kg"] is None
    assert "car_km" not in out["totals"]
    assert out["assumptions"] == []  # no equivalents, so none of their factors


def _record(tmp_path: Path, name: str) -> Path:
    priced = price(PHASES, CountryTable().lookup("DEU"), 1.58, Factors())
    phases = {k: {**v, "co2e_kg": priced["co2e_kg"][k]} for k, v in PHASES.items()}
    record = {
        "schema": "lpm.record/1",
        "status": "ok",
        "phases": phases,
        "carbon": priced["carbon"],
        "totals": priced["totals"],
        "assumptions": ["CPU power: CodeCarbon estimate", *priced["assumptions"]],
    }
    path = tmp_path / name / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path


def test_reprice_round_trip(tmp_path: Path) -> None:
    original = json.loads(_record(tmp_path, "job").read_text())
    source = source_from_config({"source": "codecarbon"})
    france = reprice(original, source, "FRA")
    assert france["carbon"]["zone"] == "FRA"
    ratio = france["carbon"]["intensity_g_per_kwh"] / original["carbon"]["intensity_g_per_kwh"]
    assert france["totals"]["co2e_kg"] == pytest.approx(original["totals"]["co2e_kg"] * ratio)
    assert france["totals"]["energy_kwh"] == original["totals"]["energy_kwh"]  # energy untouched
    back = reprice(france, source, "DEU")
    assert back == original
    # Measurement assumptions kept; the pricing's replaced, not repeated.
    assert france["assumptions"] == original["assumptions"]
    series = tmp_path / "series.csv"
    series.write_text("zone,start,intensity_g_per_kwh\nDE,2024-01,400\n")
    annual = with_fallback(CsvSeries(series), "annual")
    late = reprice(original, annual, "DE", "2025-01")
    assert late["carbon"]["zone"] == "DEU" and "at 2025-01" in late["carbon"]["fallback"]
    assert late["assumptions"] == [
        "CPU power: CodeCarbon estimate",
        f"carbon: {late['carbon']['fallback']}",
        *original["assumptions"][1:],
    ]
    assert reprice(late, annual, "DE", "2024-01")["assumptions"] == original["assumptions"]
    cheaper_site = reprice(original, Constant(100.0), "anywhere", pue=1.1)
    assert cheaper_site["totals"]["co2e_kg"] == pytest.approx(40 * 1.1 * 0.1)


def test_price_cli_writes_one_row_per_job_zone_and_month(tmp_path: Path) -> None:
    _record(tmp_path, "a")
    _record(tmp_path, "b")
    series = tmp_path / "series.csv"
    series.write_text("zone,start,intensity_g_per_kwh\nDE,2024-01,400\nDE,2024-07,200\n")
    out = tmp_path / "rows.csv"
    argv = [str(tmp_path), "--zones", "DE", "--months", "2024-01,2024-07", "--csv", str(series)]
    assert price_main([*argv, "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["job"], r["period"]) for r in rows] == [
        ("a", "2024-01"),
        ("a", "2024-07"),
        ("b", "2024-01"),
        ("b", "2024-07"),
    ]
    january, july = float(rows[0]["co2e_kg"]), float(rows[1]["co2e_kg"])
    assert january == pytest.approx(40 * 1.58 * 0.4) and january / july == pytest.approx(2.0)


def test_price_cli_names_an_unknown_zone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _record(tmp_path, "a")
    with pytest.raises(SystemExit):
        price_main([str(tmp_path), "--zones", "ATLANTIS"])
    assert "ATLANTIS" in capsys.readouterr().err
