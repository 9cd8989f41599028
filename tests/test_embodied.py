"""Embodied CO2e: the amortisation by hand, GPU servers pro rata, CPU servers for nodes without
GPUs, its interval, re-pricing that leaves it as it is, config errors, and records from before it
(or from before `cpu_server_kg`)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_cfg

from lpm.carbon.embodied import Embodied, EmbodiedFactors, Fleet
from lpm.carbon.equivalents import Factor
from lpm.carbon.intensity import CountryTable, Intensity
from lpm.carbon.pricing import price
from lpm.config import ConfigError, check
from lpm.price import main as price_main
from lpm.price import priced_at

# Default life × hours × utilisation: 6 × 8,760 h × 0.85 = 44,676 h.
LIFE_H = 44_676.0
CPU = {"accelerator": "cpu", "devices": 1, "nodes": 1}
EIGHT_GPUS = {"accelerator": "cuda", "devices": 8, "nodes": 1}
PHASES = {
    # 10 h projected (8.33-12.5 h), 6 min measured; 30 kWh (27-33).
    "diffusion": {
        "measured": {"seconds": 360.0, "energy_j": {"total": 3.6e6}},
        "projected": {
            "seconds": 36_000.0,
            "seconds_ci95": [30_000.0, 45_000.0],
            "energy_kwh": 30.0,
            "energy_kwh_ci95": [27.0, 33.0],
        },
    },
    # 2 h projected, no interval on the time: its bounds are the value.
    "synthesis": {
        "measured": {"seconds": 72.0, "energy_j": {"total": 7.2e5}},
        "projected": {"seconds": 7_200.0, "energy_kwh": 10.0, "energy_kwh_ci95": [9.0, 11.0]},
    },
}
GERMANY = Intensity(380.95, "DEU", "2023", "test", "annual", "lifecycle")


def test_the_amortisation_by_hand_on_an_eight_gpu_node() -> None:
    made = Embodied.of(EmbodiedFactors(), EIGHT_GPUS)
    assert made.fleet == Fleet(nodes=1, gpus=8, servers=1.0, cpu_servers=0)
    # (8 × 181 kg + 8/8 × 2,500 kg) / 44,676 h = 3,948 / 44,676 = 0.088369 kg per hour.
    assert made.kg_per_hour == pytest.approx(3948 / LIFE_H)
    phase = made.phase(PHASES["diffusion"])
    # 360 s = 0.1 h → 0.0088369 kg; 10 h → 0.88369 kg; 8.33 h and 12.5 h → 0.73641, 1.10462.
    assert phase["measured"] == pytest.approx(0.1 * 3948 / LIFE_H)
    assert phase["projected"] == pytest.approx(0.88369, rel=1e-4)
    assert phase["projected_ci95"] == pytest.approx([0.73641, 1.10462], rel=1e-4)


def test_a_cpu_only_job_holds_one_cpu_server_per_node_and_no_gpu() -> None:
    cpu = Embodied.of(EmbodiedFactors(), CPU)
    assert cpu.fleet == Fleet(nodes=1, gpus=0, servers=0.0, cpu_servers=1)
    # 1 × 1,200 kg (Dell R740) / 44,676 h = 0.026860 kg per hour, not the GPU server's 2,500 kg.
    assert cpu.kg_per_hour == pytest.approx(1200 / LIFE_H)
    assert cpu.kg_per_hour == pytest.approx(0.026860, rel=1e-4)
    # DDP ranks on two CPU nodes: still no GPU, one CPU server each: 2 × 1,200 kg.
    two = {"accelerator": "cpu", "devices": 4, "nodes": 2}
    assert Fleet.of(two, 8) == Fleet(nodes=2, gpus=0, servers=0.0, cpu_servers=2)
    assert Embodied.of(EmbodiedFactors(), two).kg_per_hour == pytest.approx(2400 / LIFE_H)
    # Each kind of job pays its own server: the GPU server's figure leaves a CPU job as it is,
    # and the CPU server's leaves a GPU job as it is.
    factors = EmbodiedFactors.from_config({"server_kg": 3000, "cpu_server_kg": 600})
    assert Embodied.of(factors, CPU).kg_per_hour == pytest.approx(600 / LIFE_H)  # 1 × 600 kg
    # 8 × 181 + 8/8 × 3,000 = 4,448 kg: the 600 kg CPU server is not in it.
    assert Embodied.of(factors, EIGHT_GPUS).kg_per_hour == pytest.approx(4448 / LIFE_H)


def test_gpu_servers_are_carried_pro_rata_by_the_job_s_share_of_their_gpus() -> None:
    # One GPU of an 8-GPU server: 1/8 of the chassis. (1 × 181 + 0.125 × 2,500) / 44,676
    # = (181 + 312.5) / 44,676 = 493.5 / 44,676 = 0.011046 kg per hour (a whole server, as
    # ceil() charged it, was 2,681 / 44,676 = 0.060010).
    one = Embodied.of(EmbodiedFactors(), {"accelerator": "cuda", "devices": 1, "nodes": 1})
    assert one.fleet == Fleet(nodes=1, gpus=1, servers=0.125, cpu_servers=0)
    assert one.kg_per_hour == pytest.approx(493.5 / LIFE_H)
    assert one.kg_per_hour == pytest.approx(0.011046, rel=1e-4)
    # 2 nodes × 12 GPUs on 8-GPU servers: 24 / 8 = 3 servers (ceil per node gave 2 × 2 = 4),
    # (24 × 181 + 3 × 2,500) / 44,676 = (4,344 + 7,500) / 44,676 = 11,844 / 44,676 kg per hour.
    made = Embodied.of(EmbodiedFactors(), {"accelerator": "cuda", "devices": 12, "nodes": 2})
    assert made.fleet == Fleet(nodes=2, gpus=24, servers=3.0, cpu_servers=0)
    assert made.kg_per_hour == pytest.approx(11_844 / LIFE_H)
    # 3 GPUs, 4 per server: 0.75 server; (3 × 181 + 0.75 × 2,500) = 543 + 1,875 = 2,418 kg.
    four = dataclasses.replace(EmbodiedFactors(), gpus_per_server=Factor(4.0, "test"))
    three = Embodied.of(four, {"accelerator": "cuda", "devices": 3, "nodes": 1})
    assert three.fleet.servers == 0.75
    assert three.kg_per_hour == pytest.approx(2418 / LIFE_H)
    line = three.assumption()
    assert "(3 GPU × 181 kg + 0.75 server × 2500 kg)" in line
    assert "servers pro rata: 3 GPU / 4 GPUs per server" in line
    assert "gpu_kg is an A100 PCIe 40 GB's, whatever the GPU" in line
    h100 = dataclasses.replace(four, gpu_kg=Factor(575.0, "config: site.embodied.gpu_kg = 575"))
    assert (
        "whatever the GPU"
        not in Embodied.of(h100, {"accelerator": "cuda", "devices": 3}).assumption()
    )


def test_reproduces_bloom_s_embodied_total() -> None:
    # Luccioni et al. 2023: 1,082,990 GPU-hours on 48 servers of 8 A100s, 150 kg per GPU,
    # 2,500 kg per server, 6 years, 85% → 11.2 t. Wall time: 1,082,990 / 384 = 2,820.3 h.
    bloom = dataclasses.replace(EmbodiedFactors(), gpu_kg=Factor(150.0, "BLOOM"))
    made = Embodied.of(bloom, {"accelerator": "cuda", "devices": 8, "nodes": 48})
    assert made.kg(1_082_990 / 384 * 3600) == pytest.approx(11_200, rel=0.005)


def test_totals_interval_and_sum_beside_the_operational_co2e() -> None:
    bare = price(PHASES, GERMANY, 1.58)
    out = price(PHASES, GERMANY, 1.58, embodied=Embodied.of(EmbodiedFactors(), EIGHT_GPUS))
    rate = 3948 / LIFE_H
    totals = out["totals"]
    # 10 h + 2 h; bounds 8.33 h + 2 h and 12.5 h + 2 h (synthesis has no time interval).
    assert totals["embodied_kg"] == pytest.approx(12 * rate)
    assert totals["embodied_kg_ci95"] == pytest.approx([(30_000 / 3600 + 2) * rate, 14.5 * rate])
    # The operational figure is the one priced without embodied: nothing folded in.
    assert totals["co2e_kg"] == bare["totals"]["co2e_kg"] == pytest.approx(40 * 1.58 * 0.38095)
    assert totals["car_km"] == bare["totals"]["car_km"]
    assert totals["co2e_with_embodied_kg"] == pytest.approx(totals["co2e_kg"] + 12 * rate)
    assert out["embodied_kg"]["synthesis"] == {
        "measured": pytest.approx(0.02 * rate),  # 72 s = 0.02 h
        "projected": pytest.approx(2 * rate),
        "projected_ci95": None,
    }
    block = out["carbon"]["embodied"]
    assert (block["gpus"], block["servers"], block["cpu_servers"], block["nodes"]) == (8, 1, 0, 1)
    assert block["gpu_kg"] == {"value": 181.0, "source": EmbodiedFactors().gpu_kg.source}
    assert block["cpu_server_kg"]["value"] == 1200.0
    assert "Dell PowerEdge R740" in block["cpu_server_kg"]["source"]
    assert "pro rata" in block["method"]
    assert "INFERRED" in block["utilisation"]["source"]
    [line] = [a for a in out["assumptions"] if a.startswith("embodied: ")]
    assert "(8 GPU × 181 kg + 1 server × 2500 kg)" in line and "utilisation INFERRED" in line


def test_totals_need_every_phase_projected() -> None:
    phases = {**PHASES, "autoencoder": {"measured": {"seconds": 10.0}, "projected": {}}}
    out = price(phases, GERMANY, 1.58, embodied=Embodied.of(EmbodiedFactors(), CPU))
    assert out["embodied_kg"]["autoencoder"]["measured"] == pytest.approx(10 / 3600 * 1200 / LIFE_H)
    assert out["embodied_kg"]["autoencoder"]["projected"] is None
    assert out["totals"]["embodied_kg"] is None
    assert out["totals"]["embodied_kg_ci95"] is None
    assert out["totals"]["co2e_with_embodied_kg"] is None


def job_record(factors: EmbodiedFactors, hardware: dict[str, Any]) -> dict[str, Any]:
    """A record as a job writes it (`JobRun._file`)."""
    priced = price(PHASES, CountryTable().lookup("DEU"), 1.58, None, Embodied.of(factors, hardware))
    phases = {
        name: {
            **phase,
            "co2e_kg": priced["co2e_kg"][name],
            "embodied_kg": priced["embodied_kg"][name],
        }
        for name, phase in PHASES.items()
    }
    return {
        "schema": "lpm.record/1",
        "status": "ok",
        "hardware": hardware,
        "phases": phases,
        "carbon": priced["carbon"],
        "totals": priced["totals"],
        "assumptions": ["CPU power: CodeCarbon estimate", *priced["assumptions"]],
    }


def test_repricing_keeps_embodied_and_the_record_s_factors_across_zones() -> None:
    mine = EmbodiedFactors.from_config({"gpu_kg": 575})  # as site.embodied.gpu_kg=575 gives
    original = job_record(mine, EIGHT_GPUS)
    table = CountryTable()
    france = priced_at(original, table.lookup("FRA"))
    poland = priced_at(original, table.lookup("POL"))
    assert france["totals"]["co2e_kg"] < original["totals"]["co2e_kg"] < poland["totals"]["co2e_kg"]
    for other in (france, poland):
        assert other["carbon"]["embodied"] == original["carbon"]["embodied"]
        assert (
            other["carbon"]["embodied"]["gpu_kg"]["source"] == "config: site.embodied.gpu_kg = 575"
        )
        for key in ("embodied_kg", "embodied_kg_ci95"):
            assert other["totals"][key] == original["totals"][key]
        assert other["totals"]["co2e_with_embodied_kg"] == pytest.approx(
            other["totals"]["co2e_kg"] + original["totals"]["embodied_kg"]
        )
        assert [p["embodied_kg"] for p in other["phases"].values()] == [
            p["embodied_kg"] for p in original["phases"].values()
        ]
        # The embodied line is replaced, not repeated; measurement lines are kept.
        assert other["assumptions"] == original["assumptions"]
    assert priced_at(france, table.lookup("DEU")) == original
    # Factors given to the re-pricing win over the record's.
    cheaper = priced_at(original, table.lookup("FRA"), embodied=EmbodiedFactors())
    assert cheaper["totals"]["embodied_kg"] == pytest.approx(12 * 3948 / LIFE_H)


def old_record(hardware: dict[str, Any] | None) -> dict[str, Any]:
    """A record written before embodied CO2e: no `embodied_kg`, no `carbon.embodied`."""
    priced = price(PHASES, CountryTable().lookup("DEU"), 1.58)
    phases = {name: {**phase, "co2e_kg": priced["co2e_kg"][name]} for name, phase in PHASES.items()}
    record = {"schema": "lpm.record/1", "status": "ok", "phases": phases,
              "carbon": priced["carbon"], "totals": priced["totals"],
              "assumptions": priced["assumptions"]}  # fmt: skip
    return record | ({"hardware": hardware} if hardware is not None else {})


def test_an_old_record_reprices_with_the_default_factors_or_without_hardware_none() -> None:
    with_hardware = priced_at(old_record(CPU), CountryTable().lookup("FRA"))
    # 12 h × 1,200 kg (one CPU server) / 44,676 h = 0.32232 kg.
    assert with_hardware["totals"]["embodied_kg"] == pytest.approx(12 * 1200 / LIFE_H)
    assert with_hardware["carbon"]["embodied"]["gpu_kg"]["value"] == 181.0
    assert sum(a.startswith("embodied: ") for a in with_hardware["assumptions"]) == 1
    without = priced_at(old_record(None), CountryTable().lookup("FRA"))
    assert "embodied_kg" not in without["totals"] and "embodied" not in without["carbon"]
    assert all("embodied_kg" not in p for p in without["phases"].values())
    assert without["totals"]["co2e_kg"] == with_hardware["totals"]["co2e_kg"]


def test_a_record_priced_before_cpu_server_kg_reprices_its_cpu_node_with_the_default() -> None:
    mine = EmbodiedFactors.from_config({"life_years": 4})
    before = job_record(mine, CPU)
    # As a CPU job was recorded then: no `cpu_server_kg`, one (GPU) server per node.
    block = before["carbon"]["embodied"]
    del block["cpu_server_kg"], block["cpu_servers"]
    block |= {"servers": 1, "kg_per_hour": 2500 / 29_784}
    again = priced_at(before, CountryTable().lookup("FRA"))
    made = again["carbon"]["embodied"]
    # The record's own factors are kept; the missing one is the cited default.
    assert made["life_years"] == {"value": 4.0, "source": "config: site.embodied.life_years = 4"}
    assert made["cpu_server_kg"] == dataclasses.asdict(EmbodiedFactors().cpu_server_kg)
    assert (made["servers"], made["cpu_servers"]) == (0.0, 1)
    # 1,200 kg / (4 × 8,760 h × 0.85 = 29,784 h) × 12 h = 14,400 / 29,784 = 0.48348 kg.
    assert again["totals"]["embodied_kg"] == pytest.approx(0.48348, rel=1e-4)
    [line] = [a for a in again["assumptions"] if a.startswith("embodied: ")]
    assert line.startswith("embodied: (1 CPU server × 1200 kg) / (4 years × 8,760 h × 0.85")
    assert "no GPU: one CPU server per node" in line


def test_the_price_cli_has_the_same_embodied_in_every_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, record in {"new": job_record(EmbodiedFactors(), EIGHT_GPUS),
                         "old": old_record(None), "old_cpu": old_record(CPU)}.items():  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(json.dumps(record))
    out = tmp_path / "rows.csv"
    assert price_main([str(tmp_path), "--zones", "DEU,FRA,SWE", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    new = [r for r in rows if r["job"] == "new"]
    assert len({r["co2e_kg"] for r in new}) == 3
    [made] = {r["embodied_kg"] for r in new}
    assert float(made) == pytest.approx(12 * 3948 / LIFE_H)
    assert {r["embodied_kg"] for r in rows if r["job"] == "old"} == {""}
    # A record from before embodied CO2e, with hardware: priced with the defaults, and said so.
    old_cpu = [float(r["embodied_kg"]) for r in rows if r["job"] == "old_cpu"]
    assert old_cpu == [pytest.approx(12 * 1200 / LIFE_H)] * 3
    err = capsys.readouterr().err
    assert "old_cpu: no embodied factors recorded; embodied_kg from lpm's defaults" in err
    assert "lpm.price: new:" not in err and "lpm.price: old:" not in err


def test_the_config_defaults_are_the_cited_ones() -> None:
    cfg = compose_cfg()
    assert EmbodiedFactors.from_config(cfg.site.embodied) == EmbodiedFactors()
    # Any site: the default comes from the schema, not from each site file.
    assert compose_cfg("site=se3").site.embodied == cfg.site.embodied


def test_a_config_value_is_the_user_s_and_sourced_to_the_config() -> None:
    factors = EmbodiedFactors.from_config({"life_years": 4, "server_kg": 2500.0})
    assert factors.life_years == Factor(4.0, "config: site.embodied.life_years = 4")
    assert factors.server_kg == EmbodiedFactors().server_kg  # the default, still cited
    with pytest.raises(
        ValueError, match=r"site\.embodied\.cpu_kg: unknown factor; allowed: gpu_kg"
    ):
        EmbodiedFactors.from_config({"cpu_kg": 30})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gpu_kg=-1", r"site\.embodied\.gpu_kg=-1\.0: must be >= 0 kg CO2e"),
        ("server_kg=-0.5", r"site\.embodied\.server_kg=-0\.5: must be >= 0 kg CO2e"),
        ("server_kg=inf", r"site\.embodied\.server_kg=inf: must be a finite number"),
        ("cpu_server_kg=-1", r"site\.embodied\.cpu_server_kg=-1\.0: must be >= 0 kg CO2e"),
        ("cpu_server_kg=nan", r"site\.embodied\.cpu_server_kg=nan: must be a finite number"),
        ("gpus_per_server=0", r"site\.embodied\.gpus_per_server=0: must be an integer >= 1"),
        ("life_years=0", r"site\.embodied\.life_years=0\.0: must be > 0 years"),
        ("utilisation=0", r"site\.embodied\.utilisation=0\.0: must be in \(0, 1\]"),
        ("utilisation=1.5", r"site\.embodied\.utilisation=1\.5: must be in \(0, 1\]"),
    ],
)
def test_config_errors_name_the_field_and_what_it_accepts(override: str, message: str) -> None:
    cfg = compose_cfg(f"site.embodied.{override}")
    with pytest.raises(ConfigError, match=message):
        check(cfg, cuda=False)


def test_zero_kg_and_full_utilisation_are_allowed() -> None:
    zero = ("site.embodied.server_kg=0", "site.embodied.cpu_server_kg=0")
    check(compose_cfg(*zero, "site.embodied.utilisation=1"), cuda=False)
    # Chien et al.'s 318 kg per GPU includes its share of the server: no server on top.
    chien = EmbodiedFactors.from_config({"gpu_kg": 318, "server_kg": 0})
    assert Embodied.of(chien, EIGHT_GPUS).kg_per_hour == pytest.approx(8 * 318 / LIFE_H)
    # A CPU job holds no GPU instance: it still pays its CPU server, 1,200 kg.
    assert Embodied.of(chien, CPU).kg_per_hour == pytest.approx(1200 / LIFE_H)


def test_the_job_s_pricer_prices_embodied_on_the_record_s_hardware() -> None:
    from lpm.run import pricer

    cfg = compose_cfg("site=de", "carbon.source=constant", "carbon.constant_g_per_kwh=400",
                      "site.embodied.life_years=4")  # fmt: skip
    out = pricer(cfg)(PHASES, CPU)
    # 1,200 kg / (4 × 8,760 h × 0.85) = 1,200 / 29,784 kg per hour, for 12 h: 0.48348 kg.
    assert out["totals"]["embodied_kg"] == pytest.approx(12 * 1200 / 29_784)
    assert out["totals"]["co2e_kg"] == pytest.approx(40 * 1.58 * 0.4)
    # The CPU server is the user's to set: 600 kg halves it.
    cheaper = pricer(compose_cfg("site.embodied.cpu_server_kg=600"))(PHASES, CPU)
    assert cheaper["totals"]["embodied_kg"] == pytest.approx(12 * 600 / LIFE_H)
    block = cheaper["carbon"]["embodied"]["cpu_server_kg"]
    assert block == {"value": 600.0, "source": "config: site.embodied.cpu_server_kg = 600.0"}
