"""The record's newer blocks in the report: CO2e against quality (the Pareto figure), energy per
unit of work (J/PFLOP, MFU), embodied emissions beside the operational ones; their columns in
results.csv and keys in the W&B summary. Synthetic records per the record contract (quality,
`phases.<p>.efficiency`, embodied keys); older records without them still report."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
from test_report import BASE_KWH, kg, make_record, write_sweep

from lpm.energy.window import Estimate
from lpm.record.sinks import wandb_summary
from lpm.report.build import build_report, write_results
from lpm.report.document import document, headlines, markdown
from lpm.report.figures import (
    QUALITY,
    Figure,
    Omission,
    Scatter,
    _counted,
    figures,
    frontier,
)
from lpm.report.plot import draw
from lpm.report.study import Study, build_study, fmt
from lpm.report.sweep import load_sweep

UNITS = {"autoencoder": ("step",), "diffusion": ("step",), "synthesis": ("unet", "decode")}
H100_PEAK = 989e12
RATE_KG_PER_DEVICE_HOUR = 0.02


def entry(value: float, half: float | None = None, n: int = 8) -> dict[str, Any]:
    """A quality metric as the record holds it: mean, t-interval (None under 2), count."""
    ci = None if half is None else [value - half, value + half]
    return {"value": value, "ci95": ci, "n": n}


def with_quality(
    record: dict[str, Any],
    sampler_db: float | None,
    ae_db: float = 30.0,
    *,
    stochastic: bool = False,
    fid: float | None = None,
) -> dict[str, Any]:
    """`record` with a `quality` block; `sampler_db` None: the job's sampler is the reference."""
    identical = sampler_db is None
    record["quality"] = {
        "autoencoder": {
            "psnr_db": entry(ae_db, 1.0),
            "ssim": entry(0.9, 0.02),
            "images": 8,
            "data_range": 1.0,
            "method": "MONAI PSNRMetric, SSIMMetric on held-out images",
        },
        "sampler": {
            "reference": {"scheduler": "DDIMScheduler", "steps": 1000, "eta": 0.0},
            "psnr_db": None if identical else entry(sampler_db, 1.5, 4),
            "ssim": None if identical else entry(0.8, 0.05, 4),
            "samples": 4,
            "identical": identical,
            "stochastic": stochastic,
            "method": "same initial noise, image space",
        },
        "diversity": {"ms_ssim": entry(0.3, 0.05, 6), "pairs": 6, "scales": 3, "method": "x"},
        "fid": None
        if fid is None
        else {"value": fid, "weights": "/w.pt", "samples": 4, "reference_images": 8},
        "seconds": 3.2,
        "assumptions": ["quality: 8 held-out images, 4 samples"],
    }
    return record


def with_efficiency(
    record: dict[str, Any], j_per_pflop: float = 500.0, peak: float | None = H100_PEAK
) -> dict[str, Any]:
    """`record` with an `efficiency` block per phase: `j_per_pflop` for every unit (decode
    twice that), MFU 0.3 where a `peak` is given."""
    for phase, units in UNITS.items():
        value = {u: j_per_pflop * (2 if u == "decode" else 1) for u in units}
        record["phases"][phase]["efficiency"] = {
            "flops_per_iteration": {u: 2e12 for u in units},
            "method": "torch.utils.flop_counter.FlopCounterMode on one unit",
            "achieved_flop_per_s": {u: 0.3 * (peak or 1e12) for u in units},
            "joules_per_pflop": {
                u: {"value": v, "ci95": [0.9 * v, 1.1 * v]} for u, v in value.items()
            },
            "peak_flop_per_s": peak,
            "peak_source": "H100 SXM5 BF16 tensor, NVIDIA datasheet" if peak else None,
            "mfu": {u: 0.3 for u in units} if peak else None,
        } | ({} if peak else {"peak_reason": "no peak for this device"})
    return record


def with_embodied(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with embodied kg CO2e: a fixed rate per projected device-hour, bounds from the
    projected seconds' interval (make_record's device-hours equal its kWh)."""
    devices = record["hardware"]["world_size"]
    total = [0.0, 0.0, 0.0]
    for block in record["phases"].values():
        seconds = block["projected"]["seconds"]
        low, high = block["projected"]["seconds_ci95"]
        rate = RATE_KG_PER_DEVICE_HOUR * devices / 3600
        block["embodied_kg"] = {
            "measured": block["measured"]["seconds"] * rate,
            "projected": seconds * rate,
            "projected_ci95": [low * rate, high * rate],
        }
        total = [t + s * rate for t, s in zip(total, (seconds, low, high), strict=True)]
    record["totals"] |= {
        "embodied_kg": total[0],
        "embodied_kg_ci95": total[1:],
        "co2e_with_embodied_kg": record["totals"]["co2e_kg"] + total[0],
    }
    record["carbon"]["embodied"] = {"gpu_kg": 150.0, "source": "test"}
    record["assumptions"] = ["embodied: 0.02 kg CO2e per device-hour (test)"]
    return record


def study_of(tmp_path: Path, jobs: dict[str, dict[str, Any]]) -> Study:
    return build_study(load_sweep(write_sweep(tmp_path / "sweep", jobs)))


def shown(study: Study) -> dict[str, Figure | Omission]:
    return {f.name: f for f in figures(study)}


def sampler_sweep() -> dict[str, dict[str, Any]]:
    """Deterministic DDIM at 25 to 1,000 steps (synthesis CO2e grows with the steps): 50 and 250
    steps are dominated by 25 (more CO2e, less fidelity); 1,000 steps is the reference itself
    (PSNR ∞). DDPM at 10 steps is the cheapest, stochastic, so it marks no frontier."""
    return {
        "steps=25": with_quality(make_record(sampler="ddim", steps=25), 24.0, 30.0),
        "steps=50": with_quality(make_record(sampler="ddim", steps=50), 22.0, 31.0),
        "steps=250": with_quality(make_record(sampler="ddim", steps=250), 21.0, 29.0),
        "steps=1000": with_quality(make_record(sampler="ddim", steps=1000), None, 30.0),
        "ddpm10": with_quality(make_record(steps=10), 12.0, 30.0, stochastic=True),
    }


def test_frontier_keeps_the_undominated_points() -> None:
    pairs = [(1.0, 20.0), (2.0, 18.0), (3.0, 25.0), (3.0, 24.0), (4.0, math.inf)]
    assert frontier(pairs) == [0, 2, 4]
    # Lower is better (FID): the cheapest point with the lowest FID dominates all.
    assert frontier([(1.0, 10.0), (2.0, 12.0), (0.5, 30.0)], higher_better=False) == [0, 2]
    assert frontier([(1.0, 5.0), (1.0, 5.0)]) == [0, 1]  # a tie dominates neither


def test_pareto_figure_marks_the_frontier_the_reference_and_stochastic_samplers(
    tmp_path: Path,
) -> None:
    figure = shown(study_of(tmp_path, sampler_sweep()))["fig5_pareto"]
    assert isinstance(figure, Figure)
    sampler, autoencoder = figure.panels
    assert isinstance(sampler, Scatter) and isinstance(autoencoder, Scatter)
    assert sampler.title == "sampler fidelity (reference: 1,000-step DDIM)"
    # Cheapest first, labelled by the axes the jobs differ in.
    labels = ["ddpm 10", "ddim 25", "ddim 50", "ddim 250", "ddim 1000"]
    assert [p.label for p in sampler.points] == labels
    points = {p.label: p for p in sampler.points}
    assert {label for label, p in points.items() if p.frontier} == {"ddim 25", "ddim 1000"}
    assert points["ddpm 10"].stochastic and not points["ddpm 10"].frontier
    # x: synthesis CO2e with its interval; y: the recorded PSNR with its interval.
    synth = kg(BASE_KWH["synthesis"] * 25 / 1000)
    assert points["ddim 25"].kg.value == pytest.approx(synth)
    assert points["ddim 25"].kg.high == pytest.approx(1.1 * synth)
    assert (points["ddim 25"].quality.low, points["ddim 25"].quality.high) == (22.5, 25.5)
    # The reference job: no finite PSNR, placed on the "= reference" line above every interval.
    assert points["ddim 1000"].quality is None
    assert sampler.reference is not None and sampler.reference > 25.5
    assert sampler.log  # 10 to 1,000 steps: two decades and more
    # Every job trains alike: one reconstruction point, the baseline sampler's job (its name).
    assert [(p.label, p.frontier) for p in autoencoder.points] == [("ddpm10", True)]
    assert autoencoder.reference is None and not any(p.stochastic for p in autoencoder.points)
    assert "'= reference' (PSNR ∞)" in figure.caption
    assert "Open triangles: stochastic samplers" in figure.caption
    assert figure.stamp.startswith("paper scale: ")


def test_each_kind_of_image_has_its_own_frontier(tmp_path: Path) -> None:
    # 2D synthesis costs a tenth of 3D: across dims 2D DDIM 50 would "dominate" 3D DDIM 50.
    jobs = {
        "2d50": with_quality(make_record(dims="2d", sampler="ddim", steps=50), 30.0),
        "2d250": with_quality(make_record(dims="2d", sampler="ddim", steps=250), 28.0),
        "3d50": with_quality(make_record(sampler="ddim", steps=50), 25.0),
        "3d250": with_quality(make_record(sampler="ddim", steps=250), 27.0),
    }
    figure = shown(study_of(tmp_path, jobs))["fig5_pareto"]
    assert isinstance(figure, Figure)
    points = {p.label: p for p in figure.panels[0].points}
    assert {label for label, p in points.items() if p.frontier} == {
        "2D 50 steps",
        "3D 50 steps",
        "3D 250 steps",
    }
    assert points["2D 50 steps"].family == "2D 256×256 paper"
    assert points["3D 50 steps"].family == "3D 144×176×112 paper"


def test_repeats_stand_as_one_point_their_mean_between_runs(tmp_path: Path) -> None:
    jobs = {
        f"seed={seed}": with_quality(make_record(sampler="ddim", steps=50, seed=seed), db)
        for seed, db in ((0, 24.0), (1, 26.0))
    }
    jobs["steps=1000"] = with_quality(make_record(sampler="ddim", steps=1000), None)
    figure = shown(study_of(tmp_path, jobs))["fig5_pareto"]
    assert isinstance(figure, Figure)
    pooled = figure.panels[0].points[0]
    assert pooled.runs == 2 and pooled.quality.value == pytest.approx(25.0)
    # Two runs: the t-interval of their mean (standard deviation √2, standard error 1, t 12.71).
    assert pooled.quality.high == pytest.approx(25.0 + 12.706, abs=1e-3)
    assert "n=k: between k repeats" in figure.caption


def test_reconstruction_has_one_point_per_training_setting(tmp_path: Path) -> None:
    jobs = {}
    for model, db in (("small", 27.0), ("base", 31.0), ("large", 29.0)):
        for sampler, steps in (("ddpm", 1000), ("ddim", 50)):
            record = make_record(model=model, sampler=sampler, steps=steps)
            ae_db = db + (0.5 if sampler == "ddim" else 0.0)  # the other job's training run
            jobs[f"{model}-{sampler}"] = with_quality(record, 20.0, ae_db)
    figure = shown(study_of(tmp_path, jobs))["fig5_pareto"]
    assert isinstance(figure, Figure)
    sampler_panel, autoencoder = figure.panels
    # The job nearest the baseline (DDPM) stands for each model; large is dominated by base.
    assert [p.label for p in autoencoder.points] == ["small", "base", "large"]
    assert [p.quality.value for p in autoencoder.points] == [27.0, 31.0, 29.0]
    assert [p.frontier for p in autoencoder.points] == [True, True, False]
    train = kg(BASE_KWH["autoencoder"] + BASE_KWH["diffusion"])
    assert autoencoder.points[1].kg.value == pytest.approx(train)
    assert len(sampler_panel.points) == 6 and "large ddpm 1000" in {
        p.label for p in sampler_panel.points
    }


def test_fid_panel_prefers_the_lower_value_and_noisy_jobs_fade(tmp_path: Path) -> None:
    jobs = {
        "steps=50": with_quality(
            make_record(sampler="ddim", steps=50, verdicts={"synthesis": "noisy"}), 25.0, fid=40.0
        ),
        "steps=250": with_quality(make_record(sampler="ddim", steps=250), 28.0, fid=45.0),
        "steps=1000": with_quality(make_record(sampler="ddim", steps=1000), None, fid=20.0),
    }
    figure = shown(study_of(tmp_path, jobs))["fig5_pareto"]
    assert isinstance(figure, Figure)
    (fid,) = [p for p in figure.panels if isinstance(p, Scatter) and p.title == "FID"]
    assert {p.label: p.frontier for p in fid.points} == {
        "50 steps": True,
        "250 steps": False,
        "1000 steps": True,
    }
    noisy = {p.label: p.noisy for p in figure.panels[0].points}
    assert noisy == {"50 steps": True, "250 steps": False, "1000 steps": False}
    assert "Faded points: a phase behind their CO2e has a noisy verdict" in figure.caption
    assert "(down and to the left for FID)" in figure.caption


def test_figures_without_quality_or_flops_are_omitted_with_their_reason(tmp_path: Path) -> None:
    old = shown(study_of(tmp_path / "old", {"3d": make_record(), "2d": make_record(dims="2d")}))
    assert isinstance(old["fig5_pareto"], Omission) and isinstance(old["fig6_efficiency"], Omission)
    assert old["fig5_pareto"].reason.startswith("no job recorded quality")
    assert old["fig6_efficiency"].reason.startswith("no job recorded FLOPs per iteration")
    # Recorded, but every phase that buys the quality lacks a meter: left out, with that reason.
    cut = {"synthesis": (1, 2), "autoencoder": (1, 2)}
    jobs = {"3d": with_quality(make_record(gpus=2, coverage=cut), 20.0)}
    partial = shown(study_of(tmp_path / "partial", jobs))["fig5_pareto"]
    assert isinstance(partial, Omission) and "complete meter coverage" in partial.reason


def test_energy_per_work_figure_by_unit_and_dims_with_mfu(tmp_path: Path) -> None:
    jobs = {
        "3d": with_efficiency(make_record(), 500.0),
        "2d": with_efficiency(make_record(dims="2d"), 800.0, peak=None),
        "old": make_record(model="small"),  # no efficiency: not drawn
    }
    figure = shown(study_of(tmp_path, jobs))["fig6_efficiency"]
    assert isinstance(figure, Figure)
    (panel,) = figure.panels
    groups = dict(panel.groups)
    assert list(groups) == ["2D", "3D"]
    labels = ["autoencoder\nstep", "diffusion\nstep", "synthesis\nUNet", "synthesis\ndecode"]
    assert [b.label for b in groups["3D"]] == labels
    heights = [b.segments for b in groups["3D"]]
    assert heights == [(("autoencoder", 500.0),), (("diffusion", 500.0),),
                       (("synthesis", 500.0),), (("synthesis", 1000.0),)]  # fmt: skip
    assert groups["3D"][3].ci == pytest.approx((900.0, 1100.0))
    assert panel.ylabel == "J per PFLOP"
    assert groups["3D"][0].note == "500\nMFU 30%"
    assert groups["2D"][0].note == "800"  # no peak, no MFU
    assert "989 TFLOP/s (H100 SXM5 BF16 tensor, NVIDIA datasheet) for 3D autoencoder" in (
        figure.caption
    )
    assert (
        "No MFU where no peak is recorded: 2D autoencoder (no peak for this device), 2D diffusion"
        in figure.caption
    )


def dense_sweep() -> dict[str, dict[str, Any]]:
    """2D and 3D, three model sizes at DDPM 1,000 steps, the base model also at DDPM 250 and
    DDIM 50, 250, 1,000 (the reference): 14 jobs, every new block, one noisy phase."""
    ae = {"small": 27.0, "base": 30.5, "large": 32.0}
    fidelity = {("ddim", 50): 24.0, ("ddim", 250): 29.5, ("ddim", 1000): None}
    fidelity |= {("ddpm", 1000): 14.0, ("ddpm", 250): 13.0}
    jobs = {}
    for dims in ("2d", "3d"):
        for model in ae:
            for (sampler, steps), db in fidelity.items():
                if model != "base" and (sampler, steps) != ("ddpm", 1000):
                    continue
                noisy = (dims, sampler, steps) == ("3d", "ddim", 250)
                record = make_record(
                    dims=dims,
                    model=model,
                    sampler=sampler,
                    steps=steps,
                    verdicts={"synthesis": "noisy"} if noisy else {},
                )
                with_quality(record, db, ae[model], stochastic=sampler == "ddpm")
                with_efficiency(with_embodied(record), 420.0 * (1.4 if dims == "3d" else 1.0))
                jobs[f"dims={dims},model={model},sampler={sampler},steps={steps}"] = record
    return jobs


def test_energy_per_work_of_a_cpu_toy_reads_in_megajoules(tmp_path: Path) -> None:
    jobs = {"3d": with_efficiency(make_record(scale="cpu", accelerator="cpu"), 3e7, peak=None)}
    figure = shown(study_of(tmp_path, jobs))["fig6_efficiency"]
    assert isinstance(figure, Figure)
    (panel,) = figure.panels
    assert panel.ylabel == "MJ per PFLOP"
    heights = [b.segments[0][1] for _, bars in panel.groups for b in bars]
    assert heights == [30.0, 30.0, 30.0, 60.0]  # 3e7 J per PFLOP, the decode twice that
    assert "measured MJ per PFLOP" in figure.caption


def test_the_new_figures_render_their_labels_apart_and_inside(tmp_path: Path) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Annotation, Text

    from lpm.report.plot import RC, render

    found = shown(study_of(tmp_path, dense_sweep()))
    assert isinstance(found["fig6_efficiency"], Figure)
    peak = "peak: 989 TFLOP/s (H100 SXM5 BF16 tensor, NVIDIA datasheet)."
    assert peak in found["fig6_efficiency"].caption  # one peak for all: said once
    assert all(p.stat().st_size > 0 for p in draw(found["fig6_efficiency"], tmp_path))
    with matplotlib.rc_context(RC):
        canvas = FigureCanvasAgg(render(found["fig5_pareto"]))
        canvas.draw()
        fig, renderer = canvas.figure, canvas.get_renderer()
        labels = [t for ax in fig.axes for t in ax.texts if isinstance(t, Annotation)]
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its line
        fig.savefig(tmp_path / "fig5_pareto.png", dpi=150)  # as `draw` saves it
    assert (tmp_path / "fig5_pareto.png").stat().st_size > 0
    assert len(labels) == 14 + 6  # every sampler job; one per training setting
    for i, box in enumerate(boxes):
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, labels[i].get_text()
        assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, labels[i].get_text()
        others = [labels[j].get_text() for j in range(i) if boxes[j].overlaps(box)]
        assert not others, f"{labels[i].get_text()} overprints {others}"


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


def test_results_csv_has_quality_efficiency_and_embodied_columns(tmp_path: Path) -> None:
    new = with_embodied(with_efficiency(with_quality(make_record(), 25.0, fid=33.0)))
    reference = with_quality(make_record(sampler="ddim"), None)
    jobs = {"new": new, "ref": reference, "old": make_record(dims="2d")}
    got = rows(write_results(study_of(tmp_path, jobs), tmp_path / "results.csv"))
    row = got["new"]
    assert float(row["sampler_psnr_db"]) == 25.0
    assert (float(row["sampler_psnr_db_lo"]), float(row["sampler_psnr_db_hi"])) == (23.5, 26.5)
    assert float(row["ae_psnr_db"]) == 30.0 and float(row["ae_ssim_hi"]) == pytest.approx(0.92)
    assert float(row["sampler_ssim"]) == 0.8 and float(row["diversity_ms_ssim"]) == 0.3
    assert float(row["fid"]) == 33.0 and "fid_lo" not in row
    assert row["sampler_identical"] == "False" and row["sampler_stochastic"] == "False"
    assert float(row["j_per_pflop_synthesis_decode"]) == 1000.0
    assert float(row["j_per_pflop_synthesis_decode_lo"]) == 900.0
    assert float(row["mfu_diffusion_step"]) == 0.3
    # Embodied beside the operational total, never in it; the sum on its own.
    total_kwh = sum(BASE_KWH.values())
    embodied = RATE_KG_PER_DEVICE_HOUR * total_kwh
    assert float(row["co2e_kg_total"]) == pytest.approx(kg(total_kwh))
    assert float(row["embodied_kg_total"]) == pytest.approx(embodied)
    assert float(row["embodied_kg_total_lo"]) == pytest.approx(0.9 * embodied)
    both = kg(total_kwh) + embodied
    assert float(row["co2e_with_embodied_kg_total"]) == pytest.approx(both)
    assert float(row["co2e_with_embodied_kg_total_hi"]) == pytest.approx(1.1 * both)
    # The reference sampler: PSNR ∞ is blank, flagged; an older record: blank, but a row.
    assert got["ref"]["sampler_psnr_db"] == "" and got["ref"]["sampler_identical"] == "True"
    assert got["old"]["ae_psnr_db"] == "" and got["old"]["embodied_kg_total"] == ""
    assert float(got["old"]["co2e_kg_total"]) > 0


def test_report_md_shows_embodied_on_its_own_and_the_sum(tmp_path: Path) -> None:
    jobs = {"3d": with_embodied(make_record()), "2d": make_record(dims="2d")}
    study = study_of(tmp_path, jobs)
    text = markdown(document(study, figures(study), headlines(study)))
    total_kwh = sum(BASE_KWH.values())
    operational, embodied = kg(total_kwh), RATE_KG_PER_DEVICE_HOUR * total_kwh
    assert (
        f"Embodied emissions (manufacturing the hardware, amortised over its service life by "
        f"the device-hours used) add ≈ {fmt(embodied)} kg CO2e (projected; 95% CI "
        f"{fmt(0.9 * embodied)}–{fmt(1.1 * embodied)}) to the {fmt(operational)} kg operational "
        f"CO2e of 3D training and synthesis: {fmt(operational + embodied)} kg in all." in text
    )
    assert (
        "| operational kg (95% CI) | embodied kg (95% CI) | operational + embodied kg (95% CI) |"
        in text
    )
    row = next(line for line in text.splitlines() if line.startswith("| 3d |"))
    assert f"| {fmt(operational)} ({fmt(0.9 * operational)}–{fmt(1.1 * operational)}) |" in row
    assert f"| {fmt(embodied)} ({fmt(0.9 * embodied)}–{fmt(1.1 * embodied)}) |" in row
    assert f"| {fmt(operational + embodied)} (" in row
    old = next(line for line in text.splitlines() if line.startswith("| 2d |"))
    assert "| not recorded | not recorded |" in old
    # The operational headline is unchanged by it.
    train = kg(BASE_KWH["autoencoder"] + BASE_KWH["diffusion"])
    assert f"Training a 3D LDM (150,000 iterations) emits ≈ {fmt(train)} kg CO2e" in text


def test_wandb_summary_has_quality_efficiency_and_embodied_keys() -> None:
    record = with_embodied(with_efficiency(with_quality(make_record(), 25.0, fid=33.0)))
    summary = wandb_summary(record)
    assert summary["quality/sampler/psnr_db"] == 25.0
    assert [summary[f"quality/sampler/psnr_db_{b}"] for b in ("lo", "hi")] == [23.5, 26.5]
    assert summary["quality/autoencoder/ssim"] == 0.9
    assert summary["quality/diversity/ms_ssim"] == 0.3 and summary["quality/fid"] == 33.0
    assert summary["quality/sampler/identical"] is False
    assert summary["efficiency/synthesis/decode/flops"] == 2e12
    assert summary["efficiency/synthesis/decode/j_per_pflop"] == 1000.0
    assert summary["efficiency/synthesis/decode/j_per_pflop_hi"] == 1100.0
    assert summary["efficiency/diffusion/step/mfu"] == 0.3
    totals = record["totals"]
    assert summary["projected/total/embodied_kg"] == totals["embodied_kg"]
    assert summary["projected/total/embodied_kg_lo"] == totals["embodied_kg_ci95"][0]
    assert summary["projected/total/co2e_with_embodied_kg"] == totals["co2e_with_embodied_kg"]
    synthesis = record["phases"]["synthesis"]["embodied_kg"]
    assert summary["projected/synthesis/embodied_kg"] == synthesis["projected"]
    assert summary["projected/synthesis/embodied_kg_hi"] == synthesis["projected_ci95"][1]
    # Operational CO2e stays what it was; the reference sampler logs no PSNR, only its flag.
    assert summary["projected/total/co2e_kg"] == pytest.approx(totals["co2e_kg"])
    reference = wandb_summary(with_quality(make_record(), None))
    assert reference["quality/sampler/identical"] is True
    assert "quality/sampler/psnr_db" not in reference
    old = wandb_summary(make_record())
    assert not [k for k in old if k.startswith(("quality/", "efficiency/")) or "embodied" in k]


def test_a_sweep_of_older_records_still_reports(tmp_path: Path) -> None:
    # make_record writes the records of before quality, FLOPs and embodied CO2e.
    jobs = {f"dims={d},model={m}": make_record(model=m, dims=d)
            for m in ("small", "base", "large") for d in ("2d", "3d")}  # fmt: skip
    report_ = build_report(write_sweep(tmp_path / "sweep", jobs), tmp_path / "report")
    assert report_.compared == 6
    text = (tmp_path / "report" / "report.md").read_text()
    assert "fig5_pareto omitted: no job recorded quality" in text
    assert "fig6_efficiency omitted: no job recorded FLOPs per iteration" in text
    assert "| total kg (95% CI) |" in text and "embodied kg" not in text
    assert "Embodied emissions (" not in text
    got = rows(tmp_path / "report" / "results.csv")
    assert len(got) == 6 and all(r["ae_psnr_db"] == "" and r["co2e_kg_total"] for r in got.values())


def test_frontier_counts_psnr_beyond_8_bit_rounding_as_equal() -> None:
    # 119 dB and 114 dB are the same 8-bit image: the cheaper one dominates the dearer one.
    sampler = QUALITY[0]
    counted = [_counted(sampler, Estimate(v, v, v)) for v in (119.0, 114.0, 47.3)]
    assert counted == [pytest.approx(58.92, abs=0.01)] * 2 + [47.3]
    assert frontier([(0.63, counted[0]), (0.58, counted[1]), (1.2, counted[2])]) == [1]
    assert _counted(sampler, None) == counted[0]  # the reference itself (∞) is no better


def test_a_pool_reports_embodied_and_quality_of_the_runs_its_totals_use(tmp_path: Path) -> None:
    # Seed 2 lost a GPU meter in diffusion: co2e leaves it out, and so must what is added to it.
    synthesis = {0: 40.0, 1: 44.0, 2: 100.0}
    jobs = {
        f"seed={s}": with_embodied(
            with_quality(
                make_record(
                    seed=s, kwh={"synthesis": e}, coverage={"diffusion": (1 if s == 2 else 2, 2)}
                ),
                25.0,
                ae_db=30.0 + 10 * s,
            )
        )
        for s, e in synthesis.items()
    }
    (pool,) = study_of(tmp_path, jobs).jobs
    complete = [jobs["seed=0"], jobs["seed=1"]]
    assert pool.co2e().value == pytest.approx(sum(r["totals"]["co2e_kg"] for r in complete) / 2)
    assert pool.embodied().value == pytest.approx(
        sum(r["totals"]["embodied_kg"] for r in complete) / 2
    )
    assert pool.metric("quality.autoencoder.psnr_db").value == pytest.approx(35.0)
