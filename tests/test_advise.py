"""`python -m lpm.advise` and the report's "What would cut it" on a synthetic sweep whose best
combination is known by construction. Records are built as in `test_report.make_record`, with a
`quality` block as the contract gives it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from test_report import BASE_KWH, DEU, kg, make_record, write_sweep

from lpm.advise import main
from lpm.carbon.intensity import CountryTable
from lpm.report.advice import Quality
from lpm.report.checks import run_checks
from lpm.report.document import document, headlines, markdown
from lpm.report.study import build_study, fmt
from lpm.report.sweep import load_sweep

ZONES = ("DEU", "FRA", "SWE", "POL", "IND")
TRAIN_KWH = BASE_KWH["autoencoder"] + BASE_KWH["diffusion"]
SYNTH_KWH = BASE_KWH["synthesis"]  # 3D base, 1,000 steps


def metric(value: float) -> dict[str, Any]:
    return {"value": value, "ci95": [value - 0.3, value + 0.3], "n": 8}


def with_quality(
    record: dict[str, Any],
    *,
    ae: float = 30.0,
    sampler: float | None = None,
    identical: bool = False,
    stochastic: bool = False,
) -> dict[str, Any]:
    """`record` with a `quality` block: autoencoder PSNR `ae`, sampler PSNR `sampler` (null when
    `identical` to the reference)."""
    record["quality"] = {
        "autoencoder": {"psnr_db": metric(ae), "ssim": metric(0.9), "images": 8},
        "sampler": {
            "reference": {"scheduler": "DDIMScheduler", "steps": 1000, "eta": 0.0},
            "psnr_db": None if identical else metric(sampler or 0.0),
            "ssim": None,
            "samples": 4,
            "identical": identical,
            "stochastic": stochastic,
            "method": "test",
        },
    }
    return record


def job(quality: dict[str, Any] | None = None, **axes: Any) -> dict[str, Any]:
    """A 3D job in DEU, every phase stable with all its meters unless `axes` say otherwise."""
    axes = {"verdicts": {}, "coverage": {}} | axes
    record = make_record(**axes)
    return with_quality(record, **quality) if quality is not None else record


def sweep_jobs() -> dict[str, dict[str, Any]]:
    """Baseline DDPM-1000. Within 1 dB of the best sampler (DDIM-250, 34 dB): DDIM-50 (33.5) is
    the cheapest stable synthesis; DDIM-10 is cheaper but 3.5 dB worse; DDIM-25 cheaper and good
    but noisy; DDIM-20 cheaper and good but incompletely metered. Training: bf16 (0.2 dB) within
    1 dB, model small (3 dB) cheaper; speed flags cheapest but without quality."""
    speed = job(kwh={"autoencoder": 0.5, "diffusion": 0.5, "synthesis": 1.0})
    speed["axes"]["speed"] = "compile"
    return {
        "baseline": job({"sampler": 18.0, "stochastic": True}),
        "ddpm250": job({"sampler": 17.0, "stochastic": True}, steps=250),
        "ddim1000": job({"identical": True}, sampler="ddim"),
        "ddim250": job({"sampler": 34.0}, sampler="ddim", steps=250),
        "ddim50": job({"sampler": 33.5}, sampler="ddim", steps=50),
        "ddim10": job({"sampler": 30.5}, sampler="ddim", steps=10),
        "ddim25": job({"sampler": 33.2}, sampler="ddim", steps=25, verdicts={"synthesis": "noisy"}),
        "ddim20": job({"sampler": 33.4}, sampler="ddim", steps=20, coverage={"synthesis": (0, 1)}),
        "bf16": job({"ae": 29.8, "sampler": 18.0, "stochastic": True}, precision="bf16-mixed"),
        "small": job({"ae": 27.0, "sampler": 18.0, "stochastic": True}, model="small"),
        "speed": speed,
        "failed": make_record(status="failed", error="RuntimeError: CUDA out of memory"),
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("advise") / "sweep", sweep_jobs())


def advise(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any], str]:
    """Runs the command over `ZONES` (unless `args` give --zones): exit code, JSON, stdout."""
    out = tmp_path / "advice.json"
    # Zones space- and comma-separated, both as a user may type them.
    zones = () if "--zones" in args else ("--zones", *ZONES[:2], ",".join(ZONES[2:]))
    code = main([str(sweep), *zones, "--json", str(out), *args])
    return code, json.loads(out.read_text()), capsys.readouterr().out


def best(advice: dict[str, Any], group: str) -> dict[str, Any]:
    (found,) = [b for b in advice["best"] if b["dims"] == "3d" and b["group"] == group]
    return found


def lever(advice: dict[str, Any], name: str, group: str = "synthesis") -> dict[str, Any]:
    (found,) = [x for x in advice["levers"] if x["job"] == name and x["group"] == group]
    return found


def cleanest() -> tuple[str, float]:
    table = CountryTable()
    low = min((table.lookup(z) for z in ZONES), key=lambda i: i.g_per_kwh)
    return low.zone, low.g_per_kwh


def bounds(e: dict[str, float]) -> tuple[float, float, float]:
    return e["value"], e["low"], e["high"]


# --- the best combination -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "synthesis", "training"),
    [("1.0", "ddim50", "bf16"), ("5", "ddim10", "small")],
)
def test_the_cheapest_job_within_the_quality_bound_at_the_cleanest_zone(
    sweep: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bound: str,
    synthesis: str,
    training: str,
) -> None:
    code, advice, _ = advise(sweep, tmp_path, capsys, "--max-quality-loss-db", bound)
    assert code == 0
    zone, _ = cleanest()
    assert (best(advice, "synthesis")["job"], best(advice, "training")["job"]) == (
        synthesis,
        training,
    )
    assert best(advice, "synthesis")["place"]["zone"] == zone
    assert best(advice, "training")["place"]["zone"] == zone
    # The speed-flag job is the cheapest of all, but its quality was not measured.
    assert "speed" in " ".join(advice["notes"])
    assert lever(advice, "speed", "training")["quality"]["loss_db"] is None


def test_the_sentence_states_saving_interval_and_quality_by_hand(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, advice, out = advise(sweep, tmp_path, capsys)
    zone, g = cleanest()
    b = best(advice, "synthesis")
    # DDIM-50 at the cleanest zone against the baseline as recorded, two independent jobs.
    old, new = kg(SYNTH_KWH), kg(SYNTH_KWH * 50 / 1000, g)
    half_up = math.hypot(0.1 * new, 0.1 * old)
    assert bounds(b["change"]["kg"]) == pytest.approx(
        (new - old, new - old - half_up, new - old + half_up)
    )
    ratio, rel = new / old, math.hypot(0.1, 0.1)
    percent = (100 * (ratio - 1), 100 * (ratio * (1 - rel) - 1), 100 * (ratio * (1 + rel) - 1))
    assert bounds(b["change"]["percent"]) == pytest.approx(percent)
    sentence = b["sentence"]
    assert sentence.startswith(
        f"3D synthesis of 10,000 samples with ddim 50 steps in {zone} (Sweden) in 2023: "
        f"{fmt(new)} kg CO2e instead of {fmt(old)} kg with ddpm 1,000 steps in DEU (Germany) in "
        f"2023 as recorded (−{fmt(-percent[0])}%, 95% CI "
    )
    assert "image PSNR to the 1,000-step DDIM reference 33.5 dB (loss 0.5 dB)" in sentence
    assert "[paper scale: 144×176×112 images" in sentence
    assert "3D synthesis of 10,000 samples with ddim 50 steps" in out


def test_levers_compare_one_change_at_the_recorded_price_with_their_quality_cost(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, advice, out = advise(sweep, tmp_path, capsys)
    x = lever(advice, "ddim10")
    assert (x["lever"], x["old_setting"], x["new_setting"]) == (
        "sampler",
        "ddpm 1,000 steps",
        "ddim 10 steps",
    )
    old, new = kg(SYNTH_KWH), kg(SYNTH_KWH * 10 / 1000)
    half = math.hypot(0.1 * old, 0.1 * new)
    assert bounds(x["change"]["kg"]) == pytest.approx(
        (new - old, new - old - half, new - old + half)
    )
    assert x["quality"]["loss_db"] == pytest.approx(34.0 - 30.5)
    assert lever(advice, "ddim1000")["quality"]["loss_db"] == 0  # the reference itself
    assert lever(advice, "small", "training")["quality"]["loss_db"] == pytest.approx(3.0)
    # Sampler levers touch synthesis only; the others both groups.
    assert not [x for x in advice["levers"] if x["lever"] == "sampler" and x["group"] == "training"]
    assert {x["group"] for x in advice["levers"] if x["job"] == "bf16"} == {"training", "synthesis"}
    row = next(line for line in out.splitlines() if "ddpm 1,000 steps → ddpm 250 steps" in line)
    assert "stochastic sampler: reads low against the deterministic reference" in row
    assert "Quality loss (dB) = the best PSNR measured in the sweep for the same dims" in out


def test_gpu_counts_compare_equal_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weak scaling: 2 GPUs for the same iterations see twice the samples; per sample seen they
    cost half the energy of the toy model's equal-energy job."""
    jobs = {
        "baseline": job({"sampler": 18.0}, scaling="weak"),
        "2gpu": job({"ae": 29.9, "sampler": 18.0}, gpus=2, scaling="weak"),
    }
    _, advice, _ = advise(write_sweep(tmp_path / "sweep", jobs), tmp_path, capsys)
    x = lever(advice, "2gpu", "training")
    assert (x["lever"], x["old_setting"], x["new_setting"]) == ("gpus", "1 GPU", "2 GPUs")
    assert x["change"]["new"]["value"] == pytest.approx(kg(TRAIN_KWH) / 2)
    assert x["quality"]["loss_db"] == pytest.approx(0.1)


def test_zones_are_exact_ratios_carrying_only_the_energy_interval(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, advice, _ = advise(sweep, tmp_path, capsys)
    table = CountryTable()
    assert [p["intensity"]["zone"] for p in advice["places"]] == sorted(
        ZONES, key=lambda z: table.lookup(z).g_per_kwh
    )
    for place in advice["places"]:
        g = place["intensity"]["g_per_kwh"]
        (r,) = [r for r in place["changes"] if r["group"] == "synthesis"]
        old, new = kg(SYNTH_KWH), kg(SYNTH_KWH, g)
        assert bounds(r["change"]["percent"]) == pytest.approx((100 * (g / DEU - 1),) * 3)
        expected = sorted((0.9 * (new - old), 1.1 * (new - old)))
        assert bounds(r["change"]["kg"]) == pytest.approx((new - old, *expected))
        assert place["recorded"] is (place["intensity"]["zone"] == "DEU")


def test_months_of_a_series_are_places_and_the_cleanest_month_wins(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "series.csv"
    series.write_text(
        "zone,start,intensity_g_per_kwh\nSE,2024-01,30\nSE,2024-05,10\nDE,2024-01,400\n"
        "DE,2024-05,300\n"
    )
    args = ("--csv", str(series), "--zones", "SE,DE", "--months", "2024-01,2024-05")
    code, advice, _ = advise(sweep, tmp_path, capsys, *args)
    assert code == 0
    places = [(p["intensity"]["zone"], p["intensity"]["period"]) for p in advice["places"]]
    assert places == [("SE", "2024-05"), ("SE", "2024-01"), ("DE", "2024-05"), ("DEU", "2023"),
                      ("DE", "2024-01")]  # fmt: skip
    b = best(advice, "synthesis")
    assert b["change"]["new"]["value"] == pytest.approx(kg(SYNTH_KWH * 50 / 1000, 10))
    assert "with ddim 50 steps in SE (Sweden) in 2024-05:" in b["sentence"]


def test_embodied_is_its_own_line_and_no_zone_changes_it(tmp_path: Path, capsys: Any) -> None:
    jobs = {
        "baseline": job({"sampler": 18.0, "stochastic": True}),
        "ddim50": job({"sampler": 34.0}, sampler="ddim", steps=50),
    }
    for record, synthesis_kg in ((jobs["baseline"], 0.5), (jobs["ddim50"], 0.025)):
        for phase in record["phases"]:
            value = synthesis_kg if phase == "synthesis" else 0.1
            record["phases"][phase]["embodied_kg"] = {"measured": 1e-6, "projected": value}
    sweep = write_sweep(tmp_path / "sweep", jobs)
    _, advice, _ = advise(sweep, tmp_path, capsys)
    b = best(advice, "synthesis")
    assert b["embodied_kg"] == [0.5, 0.025]
    assert (
        "Embodied, on its own line (a zone does not change it): 0.025 kg instead of 0.5 kg."
        in (b["sentence"])
    )
    assert b["change"]["new"]["value"] == pytest.approx(kg(2.0, cleanest()[1]))  # operational only


# --- what enters ----------------------------------------------------------------------------------


def test_noisy_and_incomplete_jobs_are_excluded_and_listed(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, advice, out = advise(sweep, tmp_path, capsys)
    why = {(x["job"], x["what"]): x["why"] for x in advice["excluded"]}
    assert why[("ddim25", "synthesis")].startswith("synthesis: noisy (step: 1 of 5 windows")
    assert (
        why[("ddim20", "synthesis")] == "synthesis: incomplete meter coverage (GPU meters 0 of 1)"
    )
    assert why[("failed", "record")] == "failed: RuntimeError: CUDA out of memory"
    assert ("ddim25", "training") not in why  # its training is stable
    assert {x["job"] for x in advice["levers"]}.isdisjoint({"ddim25", "ddim20", "failed"})
    assert "(noisy)" not in out
    (row,) = [line for line in out.splitlines() if line.startswith("ddim20 ")]
    assert "| synthesis: incomplete meter coverage (GPU meters 0 of 1)" in " ".join(row.split())


def test_include_noisy_lets_noisy_numbers_in_marked(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, advice, out = advise(sweep, tmp_path, capsys, "--include-noisy")
    b = best(advice, "synthesis")
    assert b["job"] == "ddim25"  # 1.0 kWh, 0.8 dB: cheaper than DDIM-50 once noisy may enter
    assert "Rests on noisy numbers: ddim25 synthesis (step: 1 of 5 windows" in b["sentence"]
    assert lever(advice, "ddim25")["noisy"]
    row = next(line for line in out.splitlines() if "→ ddim 25 steps" in line)
    assert row.count("(noisy)") == 2
    assert "ddim20" in {x["job"] for x in advice["excluded"]}  # incomplete stays out


def test_a_sweep_with_every_baseline_noisy_gives_no_advice_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noisy = {p: "noisy" for p in BASE_KWH}
    jobs = {"baseline": job(verdicts=noisy), "small": job(model="small", verdicts=noisy)}
    sweep = write_sweep(tmp_path / "sweep", jobs)
    code, advice, out = advise(sweep, tmp_path, capsys)
    assert code == 1
    assert advice["best"] == [] and advice["levers"] == []
    assert "3D training: no advice: its baseline job baseline is excluded" in advice["notes"]
    assert "- None: no baseline job's numbers entered." in out
    code, advice, _ = advise(sweep, tmp_path, capsys, "--include-noisy")
    assert code == 0 and len(advice["best"]) == 2


# --- bad input ------------------------------------------------------------------------------------


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    """Runs the command expecting exit 2 and one stderr line; returns it."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m lpm.advise: error: "), err
    return lines[0]


def test_bad_input_is_one_line_naming_it(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no such directory" in usage_error(capsys, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no record.json under it" in usage_error(capsys, tmp_path / "empty")
    line = usage_error(capsys, sweep, "--zones", "DEU,XYZ")
    assert "argument --zones: " in line and "'XYZ'" in line and "global_energy_mix.json" in line
    series = tmp_path / "s.csv"
    series.write_text("zone,start,intensity_g_per_kwh\nSE,2024-01,30\nSE,2024-05,10\n")
    line = usage_error(capsys, sweep, "--csv", series, "--zones", "SE", "--months", "2025-01")
    assert (
        "argument --months: " in line and "2025-01" in line and "covered: 2024-01..2024-05" in line
    )
    assert "needs --csv" in usage_error(capsys, sweep, "--months", "2024-01")
    assert "argument --months: 'May' is not a month" in usage_error(
        capsys, sweep, "--months", "May"
    )
    line = usage_error(capsys, sweep, "--max-quality-loss-db", "-1")
    assert "argument --max-quality-loss-db: must be a number of dB >= 0" in line
    assert "argument --json: " in usage_error(capsys, sweep, "--json", tmp_path / "no" / "a.json")


# --- one code path: the report ----------------------------------------------------------------


def test_the_report_has_the_section_with_the_same_sentences(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, advice, _ = advise(sweep, tmp_path, capsys)
    # What `build_report` writes, less the figures (drawing them takes seconds).
    study = build_study(load_sweep(sweep), list(ZONES))
    study.checks = run_checks(study)
    text = markdown(document(study, [], headlines(study)))
    section = text.split("## What would cut it")[1].split("## Jobs not compared")[0]
    for b in advice["best"]:
        assert f"- {b['sentence']}" in section
    assert "| 3D | synthesis | sampler | ddpm 1,000 steps → ddim 50 steps |" in section
    assert "| ddim25 | synthesis: noisy (step: 1 of 5 windows" in section


def test_the_advise_command_imports_no_ml_stack(sweep: Path) -> None:
    code = (
        "import sys\n"
        "from lpm.advise import main\n"
        f"assert main([{str(sweep)!r}, '--zones', 'DEU,SWE']) == 0\n"
        "heavy = ('torch', 'lightning', 'monai', 'diffusers', 'matplotlib', 'codecarbon')\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout, proc.stdout[-500:]


def test_psnr_beyond_8_bit_rounding_is_no_quality_gain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 25-step solver that matches the reference to float precision (119 dB) and one at 60 dB
    # both round to the same 8-bit image: neither loses against the other; DDIM-50 at 47.3 dB
    # loses 58.9 − 47.3 = 11.6 dB, all measured values shown as recorded.
    ceiling = 10 * math.log10(255**2 * 12)
    jobs = {
        "baseline": job({"sampler": 13.4, "stochastic": True}),
        "unipc": job({"sampler": 119.0}, sampler="unipc", steps=25),
        "dpmpp": job({"sampler": 60.0}, sampler="dpmpp", steps=25),
        "ddim50": job({"sampler": 47.3}, sampler="ddim", steps=50),
    }
    _, advice, _ = advise(write_sweep(tmp_path / "sweep", jobs), tmp_path, capsys)
    assert lever(advice, "unipc")["quality"]["loss_db"] == 0
    assert lever(advice, "dpmpp")["quality"]["loss_db"] == 0
    assert lever(advice, "unipc")["quality"]["psnr_db"] == pytest.approx(119.0)
    assert lever(advice, "ddim50")["quality"]["loss_db"] == pytest.approx(ceiling - 47.3)


def test_a_psnr_past_the_8_bit_ceiling_reads_as_the_same_images() -> None:
    beyond = Quality("sampler", 119.0, 0.0, reference="1,000-step DDIM reference")
    assert str(beyond) == (
        "image PSNR to the 1,000-step DDIM reference ≥ 58.9 dB (the same 8-bit images) (loss 0 dB)"
    )
    assert "47.3 dB (loss 12 dB)" in str(Quality("sampler", 47.3, 11.62, reference="r"))


def test_a_zone_priced_by_fallback_says_so_in_the_text(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "s.csv"
    series.write_text("zone,start,intensity_g_per_kwh\nSE,2024-01,30\nSE,2024-05,10\n")
    argv = ("--csv", str(series), "--zones", "SE,FRA", "--months", "2024-01,2024-05")
    _, _, out = advise(sweep, tmp_path, capsys, *argv, "--fallback", "annual")
    text = " ".join(out.split())
    assert "annual, fallback (below)" in text and "Fallbacks taken (--fallback):" in text
    statements = text.split("Fallbacks taken (--fallback):")[1].split("Excluded")[0]
    for month in ("2024-01", "2024-05"):  # each month asked for FRA, priced at its annual value
        assert month in statements
    assert statements.count("fallback=annual") == 2
