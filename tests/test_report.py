"""`python -m lpm.report` on records written here: files, numbers, figures, bad sweep dirs."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from conftest import REPO
from PIL import Image

from lpm.carbon.intensity import CountryTable, Intensity
from lpm.carbon.pricing import price
from lpm.price import reprice
from lpm.report.__main__ import main
from lpm.report.study import fmt

PUE = 1.58
DEU = 380.95
BASE_KWH = {"autoencoder": 2.0, "diffusion": 3.0, "synthesis": 40.0}  # 3D base, DDPM 1000 steps
SIZE = {"small": 0.25, "base": 1.0, "large": 4.0}
FIGURES = ("fig1_dims", "fig2_size", "fig3_site", "fig4_speedups")


def make_record(
    *,
    model: str = "base",
    dims: str = "3d",
    sampler: str = "ddpm",
    steps: int = 1000,
    precision: str = "32-true",
    gpus: int = 1,
    zone: str = "DEU",
    intensity: float = DEU,
    status: str = "ok",
    error: str | None = None,
    schema: str = "lpm.record/1",
    kwh: dict[str, float] | None = None,
    ci: float = 0.1,
    seed: int | None = None,
    verdicts: dict[str, str] | None = None,
    coverage: dict[str, tuple[int, int]] | None = None,
    unet_j: tuple[float, float, float] | None = None,
    scaling: str | None = None,
    accelerator: str = "cuda",
    scale: str = "paper",
    windows: tuple[float, ...] = (),
) -> dict[str, Any]:
    """A valid lpm.record/1 with energies from a toy cost model of the axes, priced as a job is.

    Older records have no verdict, coverage or per-unit joules; these knobs add them:
        kwh: projected kWh per phase, in place of the toy model's.
        ci: relative half-width of every projected interval.
        seed: a `seed=` override in `job.overrides`.
        verdicts: phase -> "stable" | "noisy" (every phase gets one when given; default stable).
        coverage: phase -> (GPUs metered, expected) (every phase gets one when given).
        unet_j: synthesis joules per UNet evaluation (value, low, high).
        scaling: "weak" | "strong": `axes.scaling` and per-device batch sizes (8, 16, 16).
        accelerator: "cuda", or "cpu" (then every component an estimate).
        scale: `axes.scale`; "cpu" also shrinks images to 32² or 32³ and the networks.
        windows: J per iteration of the diffusion step's windows; the largest is an outlier.
    """
    factor = SIZE[model] * (1.0 if dims == "3d" else 0.1) * (0.6 if precision != "32-true" else 1)
    phases = {}
    for phase, base_kwh in BASE_KWH.items():
        e = base_kwh * factor * (steps / 1000 if phase == "synthesis" else 1)
        e = kwh[phase] if kwh and phase in kwh else e
        seconds = 3600 * e / gpus
        target = {"samples": 10_000, "steps": steps} if phase == "synthesis" else {}
        phases[phase] = {
            "measured": {
                "iterations": 10,
                "seconds": seconds / 1000,
                "energy_j": {"gpu": 800.0, "cpu": 150.0, "ram": 50.0, "total": 1000.0},
                "method": {"gpu": "nvml_counter", "cpu": "rapl", "ram": "estimate"},
            },
            "target": target or {"iterations": 150_000},
            "projected": {
                "seconds": seconds,
                "seconds_ci95": [(1 - ci) * seconds, (1 + ci) * seconds],
                "energy_kwh": e,
                "energy_kwh_ci95": [(1 - ci) * e, (1 + ci) * e],
            },
        }
        if verdicts is not None:
            verdict = verdicts.get(phase, "stable")
            reasons = ["step: 1 of 5 windows excluded as outliers"] if verdict == "noisy" else []
            phases[phase]["verdict"] = {"status": verdict, "reasons": reasons}
        if coverage is not None:
            metered, expected = coverage.get(phase, (gpus, gpus))
            phases[phase]["coverage"] = {
                "gpu": {"metered": metered, "expected": expected},
                "complete": metered >= expected,
            }
    if unet_j is not None:
        value, low, high = unet_j
        phases["synthesis"]["measured"]["units"] = {
            "unet": {"joules_per_iteration": {"value": value, "ci95": [low, high]}}
        }
    priced = price(phases, Intensity(intensity, zone, "2023", "test table"), PUE)
    for phase, co2e in priced["co2e_kg"].items():
        phases[phase]["co2e_kg"] = co2e
    if windows:
        kept = sorted(windows)[:-1]
        value = sum(kept) / len(kept)
        phases["diffusion"]["measured"]["units"] = {
            "step": {
                "per_window": [[10, 1.0, 10 * j] for j in windows],
                "outliers": [windows.index(max(windows))],
                "joules_per_iteration": {
                    "value": value,
                    "ci95": [0.9 * value, 1.1 * value],
                    "mean": sum(windows) / len(windows),
                },
                "verdict": {"status": "stable", "reasons": []},
            }
        }
    if accelerator == "cpu":
        for block in phases.values():
            block["measured"]["method"] = {"cpu": "estimate", "ram": "estimate"}
    cpu = scale == "cpu"
    record = {
        "axes": {
            "model": model,
            "dims": dims,
            "gpus": f"{gpus}gpu",
            "sampler": sampler,
            "scheduler": f"{sampler.upper()}Scheduler",
            "steps": steps,
            "precision": precision,
            "scale": scale,
            "image_size": (
                ([32] * 3 if dims == "3d" else [32] * 2)
                if cpu
                else ([144, 176, 112] if dims == "3d" else [256, 256])
            ),
        },
        "status": status,
        "error": error,
        "schema": schema,
        "params": {
            "autoencoder": int((0.03e6 if cpu else 21e6) * SIZE[model]),
            "unet": int((0.45e6 if cpu else 191e6) * SIZE[model]),
        },
        "hardware": {
            "accelerator": accelerator,
            "devices": gpus,
            "nodes": 1,
            "world_size": gpus,
            "gpu_name": "NVIDIA H100",
            "cpu_model": "test CPU",
        },
        "phases": phases,
        "carbon": priced["carbon"],
        "totals": priced["totals"],
        "job": {"overrides": [] if seed is None else [f"seed={seed}"]},
    }
    if scaling:
        record["axes"] |= {
            "scaling": scaling,
            "batch_size": {"autoencoder": 8, "diffusion": 16, "synthesis": 16},
        }
    return record


# Every axis varied once from the baseline (3D, base, DDPM 1000 steps, fp32, 1 GPU, Germany).
JOBS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "dims=2d": {"dims": "2d"},
    "model=small": {"model": "small"},
    "model=large": {"model": "large"},
    "sampler=ddim,steps=50": {"sampler": "ddim", "steps": 50},
    "steps=250": {"steps": 250},
    "precision=bf16-mixed": {"precision": "bf16-mixed"},
    "gpus=2gpu": {"gpus": 2},
    "site=fr": {"zone": "FRA", "intensity": 56.04},
}
FAILED = ("model=huge", "RuntimeError: CUDA out of memory")
INTERRUPTED = ("dims=3d,big", "KeyboardInterrupt")


def write_sweep(root: Path, jobs: dict[str, dict[str, Any]]) -> Path:
    for name, record in jobs.items():
        (root / name).mkdir(parents=True)
        (root / name / "record.json").write_text(json.dumps(record))
    return root


def records() -> dict[str, dict[str, Any]]:
    out = {name: make_record(**axes) for name, axes in JOBS.items()}
    out[FAILED[0]] = make_record(status="failed", error=FAILED[1])
    out[INTERRUPTED[0]] = make_record(status="interrupted", error=INTERRUPTED[1])
    return out


def report(sweep: Path, *args: str) -> tuple[int, Path]:
    out = sweep.parent / f"{sweep.name}-report"
    return main([str(sweep), "--out", str(out), *args]), out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    recs = records()
    sweep = write_sweep(tmp_path_factory.mktemp("sweep") / "sweep", recs)
    code, out = report(sweep)
    assert code == 0
    return recs, out, (out / "report.md").read_text()


def kg(kwh: float, intensity: float = DEU) -> float:
    return kwh * PUE * intensity / 1000


# --- files ------------------------------------------------------------------------------------


def test_every_file_is_written_and_readable(built: tuple[dict[str, Any], Path, str]) -> None:
    _, out, _ = built
    names = ["results.csv", "report.md", "report.html"]
    names += [f"{f}.{ext}" for f in FIGURES for ext in ("png", "svg")]
    for name in names:
        assert (out / name).stat().st_size > 0, name
    for figure in FIGURES:
        with Image.open(out / f"{figure}.png") as image:
            image.verify()
        assert ElementTree.parse(out / f"{figure}.svg").getroot().tag.endswith("svg")


def test_results_csv_has_one_row_per_job_with_the_records_numbers(
    built: tuple[dict[str, Any], Path, str],
) -> None:
    recs, out, _ = built
    with (out / "results.csv").open(newline="") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(recs)
    for name, record in recs.items():
        row = rows[name]
        assert row["status"] == record["status"]
        assert row["axes.model"] == record["axes"]["model"]
        assert row["carbon.zone"] == record["carbon"]["zone"]
        assert float(row["totals.co2e_kg"]) == record["totals"]["co2e_kg"]
        for phase in BASE_KWH:
            block = record["phases"][phase]
            assert float(row[f"phases.{phase}.co2e_kg.projected"]) == block["co2e_kg"]["projected"]
            assert float(row[f"phases.{phase}.projected.seconds"]) == block["projected"]["seconds"]
        assert json.loads(row["axes.image_size"]) == record["axes"]["image_size"]
        # Interval bounds as numbers of their own, the whole job's with them.
        low, high = record["phases"]["synthesis"]["projected"]["energy_kwh_ci95"]
        assert float(row["phases.synthesis.projected.energy_kwh_ci95_lo"]) == low
        assert float(row["phases.synthesis.projected.energy_kwh_ci95_hi"]) == high
        if row["status"] == "ok":
            assert row["site"] == record["carbon"]["zone"]
            total = sum(record["phases"][p]["co2e_kg"]["projected"] for p in BASE_KWH)
            assert float(row["co2e_kg_total"]) == pytest.approx(total)
            lows = sum(record["phases"][p]["co2e_kg"]["projected_ci95"][0] for p in BASE_KWH)
            assert float(row["co2e_kg_total_lo"]) == pytest.approx(lows)
            hours = sum(record["phases"][p]["projected"]["seconds"] for p in BASE_KWH) / 3600
            assert float(row["hours_total"]) == pytest.approx(hours)
            assert float(row["hours_total_lo"]) == pytest.approx(0.9 * hours)
    assert rows[FAILED[0]]["error"] == FAILED[1]
    with (out / "results.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["job", "status", "error"]  # one status column, the report's
    assert not [c for c in header if c.endswith("ci95")]


def test_html_embeds_every_figure_and_loads_nothing(
    built: tuple[dict[str, Any], Path, str],
) -> None:
    _, out, _ = built
    page = (out / "report.html").read_text()
    for figure in FIGURES:
        match = re.search(
            rf'id="{figure}"><img alt="[^"]*" src="data:image/svg\+xml;base64,([^"]+)"', page
        )
        assert match, figure
        assert base64.b64decode(match[1]) == (out / f"{figure}.svg").read_bytes()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<script" not in page and "<link" not in page and "@import" not in page


# --- numbers ----------------------------------------------------------------------------------


def test_headlines_are_the_fixture_numbers(built: tuple[dict[str, Any], Path, str]) -> None:
    _, _, text = built
    train = kg(BASE_KWH["autoencoder"] + BASE_KWH["diffusion"])
    synth = kg(BASE_KWH["synthesis"])
    expected = [
        f"Training a 3D LDM (150,000 iterations) emits ≈ {fmt(train)} kg CO2e (projected; 95% CI "
        f"{fmt(0.9 * train)}–{fmt(1.1 * train)}), like driving {fmt(train * 1000 / 107.5)} km.",
        f"Synthesizing 10,000 3D samples emits ≈ {fmt(synth)} kg CO2e (projected; 95% CI "
        f"{fmt(0.9 * synth)}–{fmt(1.1 * synth)}), like driving {fmt(synth * 1000 / 107.5)} km",
        f"Synthesizing 10,000 2D samples emits ≈ {fmt(0.1 * synth)} kg CO2e",
        f"In 3D, synthesis emits {fmt(synth / train, 2)}× the CO2e of training",
        # DDIM 50 against DDPM 1000: 50/1000 of the synthesis energy.
        "Sampler: ddim 50 steps instead of ddpm 1000 steps: 0.05× the synthesis CO2e",
        "Precision: bf16-mixed instead of 32-true: 0.6× the total CO2e",
        # Two GPUs: the same energy in half the time.
        "GPUs: 2 GPUs instead of 1 GPU (scaling not recorded: as recorded, each its own budget): "
        "1× the total CO2e (",
        "kg, projected), 0.5× the time.",
        "A large 3D model emits 16× the CO2e of a small one",
    ]
    for sentence in expected:
        assert sentence in text, sentence
    assert "GPU: NVML counter; CPU: RAPL; RAM: estimate" in text
    assert "DEU 2023, 381 g CO2e/kWh" in text and "PUE 1.58" in text


def test_location_spread_is_max_over_min_of_the_repriced_totals(tmp_path: Path) -> None:
    recs = records()
    sweep = write_sweep(tmp_path / "sweep", recs)
    code, out = report(sweep, "--zones", "NOR,DEU,POL,IND")
    assert code == 0
    source = CountryTable()
    totals = {
        z: reprice(recs["baseline"], source, z)["totals"]["co2e_kg"]
        for z in ("NOR", "DEU", "POL", "IND")
    }
    factor = max(totals.values()) / min(totals.values())
    assert factor == pytest.approx(source.lookup("IND").g_per_kwh / source.lookup("NOR").g_per_kwh)
    text = (out / "report.md").read_text()
    assert f"Location changes emissions up to {fmt(factor, 2)}×" in text
    assert f"NOR {fmt(totals['NOR'])} kg to IND {fmt(totals['IND'])} kg" in text
    # The what-if table: the recorded site, then cleanest, middle and dirtiest other zone.
    assert (
        "| job | recorded site | NOR (Norway), 30.1 g/kWh | POL (Poland), 662 g/kWh | "
        "IND (India), 713 g/kWh |" in text
    )


def test_months_figure_states_the_seasonal_spread(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "sweep", {"baseline": make_record()})
    series = tmp_path / "series.csv"
    series.write_text(
        "zone,start,intensity_g_per_kwh\n"
        "DE,2024-01-01,450\nDE,2024-02-01,400\nDE,2024-03-01,300\n"
        "FR,2024-01-01,60\nFR,2024-02-01,50\nFR,2024-03-01,55\n"
    )
    code, out = report(sweep, "--csv", str(series), "--zones", "DE,FR")
    assert code == 0
    text = (out / "report.md").read_text()
    assert (
        "Time of year changes emissions by up to 50% (Germany (DE): cleanest month 2024-03" in text
    )
    with Image.open(out / "fig3_months.png") as image:
        image.verify()


# --- what is listed, what is left out --------------------------------------------------------


def test_failed_and_interrupted_jobs_are_listed_with_their_error(
    built: tuple[dict[str, Any], Path, str],
) -> None:
    _, out, text = built
    page = (out / "report.html").read_text()
    for name, error in (FAILED, INTERRUPTED):
        status = "failed" if name == FAILED[0] else "interrupted"
        assert f"| {name} | {status} | {error} |" in text
        assert f"<td>{name}</td><td>{status}</td><td>{error}</td>" in page


def test_a_figure_whose_axis_did_not_vary_is_omitted_with_its_reason(tmp_path: Path) -> None:
    jobs = {name: make_record(model=name) for name in SIZE}
    code, out = report(write_sweep(tmp_path / "sweep", jobs))
    assert code == 0
    text = (out / "report.md").read_text()
    assert "fig1_dims omitted: the sweep did not vary dims (only 3d)." in text
    assert (
        "fig4_speedups omitted: the sweep varied none of sampler, steps, precision, speed, gpus."
        in text
    )
    assert "fig3_months omitted: no --csv time series given" in text
    assert not (out / "fig1_dims.png").exists() and (out / "fig2_size.png").exists()


# --- bad sweep directories -------------------------------------------------------------------


def test_a_nonexistent_dir_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nope")])
    assert exc.value.code == 2
    assert "nope: no such directory" in capsys.readouterr().err


def test_an_empty_dir_gives_a_report_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sweep").mkdir()
    code, out = report(tmp_path / "sweep")
    assert code == 1
    assert "no record.json under" in capsys.readouterr().err
    assert "no job finished ok" in (out / "report.md").read_text()


def test_unusable_records_are_reported_and_the_rest_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {"baseline": make_record(), "dims=2d": make_record(dims="2d")}
    jobs["next"] = make_record(schema="lpm.record/2")
    jobs["partial"] = make_record()
    del jobs["partial"]["phases"]["synthesis"]["co2e_kg"]
    sweep = write_sweep(tmp_path / "sweep", jobs)
    (sweep / "corrupt").mkdir()
    (sweep / "corrupt" / "record.json").write_text('{"status": "ok", ')
    (sweep / "killed" / ".hydra").mkdir(parents=True)
    code, out = report(sweep)
    assert code == 0
    err = capsys.readouterr().err
    assert "corrupt: unreadable" in err
    assert "next: unsupported: schema 'lpm.record/2'" in err
    assert "mixed schema versions: lpm.record/1 (3), lpm.record/2 (1)" in err
    assert "partial: incomplete: status ok but missing phases.synthesis.co2e_kg.projected" in err
    assert "killed: no record" in err
    text = (out / "report.md").read_text()
    for name in ("corrupt", "next", "partial", "killed"):
        assert f"| {name} |" in text
    assert (out / "fig1_dims.png").exists()  # the two good jobs still make figure 1


def test_the_report_command_imports_no_ml_stack(built: tuple[dict[str, Any], Path, str]) -> None:
    _, out, _ = built
    sweep = out.parent / "sweep"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['lpm.report', {str(sweep)!r}, '--out', {str(out.parent / 'sub')!r}]\n"
        "try:\n    runpy.run_module('lpm.report', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "heavy = ('torch', 'lightning', 'monai', 'diffusers', 'codecarbon')\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout, proc.stdout
    assert "Location changes emissions up to" in proc.stdout  # the headlines are printed
