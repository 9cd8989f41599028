from __future__ import annotations

import pytest
from conftest import compose_cfg

from lpm.carbon.equivalents import Factor, Factors, equivalents


def test_hand_computations():
    assert equivalents(10.75)["car_km"] == pytest.approx(100.0)  # 10,750 g / 107.5 g/km
    assert equivalents(2.4)["flight_km"] == pytest.approx(10.0)  # 2,400 g / 240 g/pkm
    assert equivalents(107.0)["budget_share"] == pytest.approx(0.1)  # 107 kg / 1,070 kg


def test_reproduces_the_study_statements():
    # Seyfarth et al. 2024: 360 kg ≈ 3,345 car-km ≈ a 1,500 km flight ≈ 33.7% of the budget.
    got = equivalents(360.0)
    assert got["car_km"] == pytest.approx(3345, rel=0.002)
    assert got["flight_km"] == pytest.approx(1500)
    assert got["budget_share"] == pytest.approx(0.337, abs=0.001)


def test_reports_the_factors_used_with_sources():
    factors = equivalents(1.0)["factors"]
    assert factors["car_g_per_km"]["value"] == 107.5
    assert "EEA" in factors["car_g_per_km"]["source"]
    for inferred in ("flight_g_per_pkm", "budget_kg_per_year"):
        assert "INFERRED" in factors[inferred]["source"]
    custom = Factors(car_g_per_km=Factor(120.4, "EEA 2018"))
    assert equivalents(1.204, custom)["car_km"] == pytest.approx(10.0)


def test_from_config_overrides_and_keeps_cited_sources():
    factors = Factors.from_config({"car_g_per_km": 120.4, "flight_g_per_pkm": 240.0})
    assert factors.car_g_per_km == Factor(120.4, "config: equivalents.car_g_per_km = 120.4")
    assert factors.flight_g_per_pkm == Factors().flight_g_per_pkm  # the default, still cited
    assert factors.budget_kg_per_year == Factors().budget_kg_per_year
    # The project config's defaults are the cited ones.
    assert Factors.from_config(compose_cfg().equivalents) == Factors()


def test_from_config_rejects_unknown_keys_and_bad_values():
    allowed = r"car_g_per_km, flight_g_per_pkm, budget_kg_per_year"
    with pytest.raises(ValueError, match=rf"equivalents\.bus_g_per_km.*{allowed}"):
        Factors.from_config({"bus_g_per_km": 80})
    with pytest.raises(ValueError, match=r"equivalents\.car_g_per_km.*> 0"):
        Factors.from_config({"car_g_per_km": 0})
