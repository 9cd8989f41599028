"""What the report's figures show, read from the specs `lpm.report.figures` builds (not pixels):
the stacking rule, the scale stamp, fig3's zones, fig4's groups and GPU comparison, the windows
figure; and the text around them: headline footnotes, HTML without Markdown, the example series,
the samples caption."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from conftest import REPO
from matplotlib.backends.backend_agg import FigureCanvasAgg
from test_report import BASE_KWH, DEU, kg, make_record, records, report, write_sweep

from lpm.carbon.intensity import CountryTable, CsvSeries
from lpm.report.document import headline_notes, headlines
from lpm.report.figures import Bar, Figure, Panel, Windows, figures, log_axis, stacks
from lpm.report.plot import RC, draw, render
from lpm.report.study import Study, build_study, fmt
from lpm.report.sweep import load_sweep

EXAMPLE = REPO / "examples" / "intensity_monthly_example.csv"


def study_of(tmp_path: Path, jobs: dict[str, dict[str, Any]], **kwargs: Any) -> Study:
    return build_study(load_sweep(write_sweep(tmp_path / "sweep", jobs)), **kwargs)


def by_name(study: Study) -> dict[str, Figure]:
    return {f.name: f for f in figures(study) if isinstance(f, Figure)}


def bars(panel: Panel) -> list[Bar]:
    return [b for _, group in panel.groups for b in group]


# --- one stacking rule ------------------------------------------------------------------------


def test_no_figure_stacks_phases_on_a_log_axis(tmp_path: Path) -> None:
    # The fixture sweep spans 2D training (0.2 kWh) to 3D synthesis (40 kWh): log axes.
    wide = by_name(study_of(tmp_path / "wide", records()))
    # Same phases within a decade of each other: linear, stacked.
    narrow_kwh = {"autoencoder": 20.0, "diffusion": 30.0, "synthesis": 40.0}
    narrow = by_name(
        study_of(
            tmp_path / "narrow",
            {"3d": make_record(kwh=narrow_kwh), "2d": make_record(dims="2d", kwh=narrow_kwh)},
        )
    )
    shown = [*wide.values(), *narrow.values()]
    assert wide["fig1_dims"].log and narrow["fig1_dims"].log is False  # both branches ran
    for figure in shown:
        assert figure.log or not log_axis(figure), f"{figure.name} needs a log axis"
        assert not (figure.log and stacks(figure)), f"{figure.name} stacks on a log axis"
    assert stacks(narrow["fig1_dims"])  # training stacks where the axis is linear
    # On the log axis each phase is its own bar, with its own interval.
    (group_3d,) = [b for g, b in wide["fig1_dims"].panels[0].groups if g == "3D"]
    assert [b.segments[0][0] for b in group_3d] == ["autoencoder", "diffusion", "synthesis"]
    assert group_3d[0].ci == pytest.approx((kg(0.9 * 2.0), kg(1.1 * 2.0)))
    # The drawing refuses a spec that breaks the rule, whoever built it.
    broken = Figure("bad", "bad", "", narrow["fig1_dims"].panels, log=True)
    with pytest.raises(ValueError, match="stacked phases on a log axis"):
        draw(broken, tmp_path)


# --- the scale on every figure and headline, provenance once ------------------------------------


def cpu_sweep() -> dict[str, dict[str, Any]]:
    common = {"scale": "cpu", "accelerator": "cpu", "scaling": "weak"}
    return {
        "dims=3d": make_record(**common),
        "dims=2d": make_record(dims="2d", **common),
        "steps=50": make_record(steps=50, **common),
    }


def test_every_figure_and_headline_says_the_scale(tmp_path: Path) -> None:
    study = study_of(tmp_path, cpu_sweep())
    shown = by_name(study)
    assert {"fig1_dims", "fig3_site", "fig4_speedups"} <= set(shown)
    for figure in shown.values():
        assert figure.stamp.startswith("CPU scale: "), figure.name
        assert figure.stamp.endswith("M parameters — not the study's networks"), figure.name
    assert shown["fig4_speedups"].stamp == (
        "CPU scale: 32³ images, 0.48 M parameters — not the study's networks"
    )
    assert shown["fig1_dims"].stamp.startswith("CPU scale: 32² and 32³ images, ")
    lines = headlines(study)
    assert lines and all("CPU scale: 32" in line for line in lines if "Time of year" not in line)


def test_provenance_is_one_footnote_not_a_bracket_per_headline(tmp_path: Path) -> None:
    study = study_of(tmp_path / "one", cpu_sweep())
    lines = headlines(study)
    assert not [line for line in lines if "codecarbon" in line or "estimate" in line]
    (note,) = headline_notes(study)
    assert note.startswith("Every headline: Priced at DEU 2023, 381 g CO2e/kWh (")
    assert "PUE 1.58. Energy: CPU, RAM: estimate." in note
    # Two prices: numbered notes, each headline marked with its own.
    jobs = {"de": make_record(), "fr": make_record(zone="FRA", intensity=56.04, dims="2d")}
    two = study_of(tmp_path / "two", jobs)
    notes = headline_notes(two)
    assert [n[:1] for n in notes] == ["¹", "²"] and "FRA 2023, 56 g" in notes[1]
    assert any(line.endswith("]²") for line in headlines(two))


# --- fig3: zones named, the recorded intensity one number -----------------------------------------


def test_fig3_names_zones_and_shows_the_recorded_intensity(tmp_path: Path) -> None:
    series = tmp_path / "series.csv"
    series.write_text(
        "zone,start,intensity_g_per_kwh\nDE,2024-01-01,500\nDE,2024-02-01,300\n"
        "FR,2024-01-01,60\nFR,2024-02-01,50\n"
    )
    study = study_of(tmp_path, {"baseline": make_record()}, csv=series)
    figure = by_name(study)["fig3_site"]
    ticks = [b.label for b in bars(figure.panels[0])]
    # The series says 400 for Germany; the record was priced at 381: one number, the record's.
    assert ticks == ["FR\nFrance\n55 g/kWh", "DEU\nGermany\n381 g/kWh\n(recorded)"]
    assert bars(figure.panels[0])[1].segments == (("total", kg(sum(BASE_KWH.values()))),)
    assert any("the re-pricing source has 400 g/kWh for it" in n for n in study.notes)
    code, out = report(tmp_path / "sweep", "--csv", str(series))
    assert code == 0
    text = (out / "report.md").read_text()
    assert f"| DEU (recorded) | Germany | {fmt(DEU)} | 2023 |" in text


@pytest.mark.parametrize("count", [3, 30])
def test_fig3_titles_and_labels_fit_the_figure(tmp_path: Path, count: int) -> None:
    zones = [z for z in CountryTable().zones() if z != "DEU"][: count - 1]
    study = study_of(tmp_path, {"baseline": make_record()}, zones=zones)
    figure = by_name(study)["fig3_site"]
    # Zones whose table value reads 0 g/kWh are skipped (and noted); the rest are drawn.
    assert len(bars(figure.panels[0])) >= 0.8 * count
    with matplotlib.rc_context(RC):
        canvas = FigureCanvasAgg(render(figure))
        canvas.draw()  # constrained layout places everything
        fig, renderer = canvas.figure, canvas.get_renderer()
        texts = [fig._suptitle, *(ax.title for ax in fig.axes), *fig.legends[0].texts]
        texts += [fig.legends[0].get_title()]
        texts += [t for ax in fig.axes for t in ax.get_xticklabels()]
        for text in texts:
            extent = text.get_window_extent(renderer)
            assert fig.bbox.x0 - 1 <= extent.x0 and extent.x1 <= fig.bbox.x1 + 1, text.get_text()
            assert fig.bbox.y0 - 1 <= extent.y0 and extent.y1 <= fig.bbox.y1 + 1, text.get_text()


# --- fig4: grouped by axis, absolute values, equal work -------------------------------------------


def speedup_sweep(**common: Any) -> dict[str, dict[str, Any]]:
    jobs = {}
    for sampler in ("ddpm", "ddim"):
        for steps in (1000, 50, 250):
            jobs[f"{sampler}{steps}"] = make_record(sampler=sampler, steps=steps, **common)
    jobs["bf16"] = make_record(precision="bf16-mixed", **common)
    jobs["2gpu"] = make_record(gpus=2, **common)
    return jobs


def test_fig4_groups_by_axis_steps_ascending_with_absolute_values(tmp_path: Path) -> None:
    figure = by_name(study_of(tmp_path, speedup_sweep(scaling="weak")))["fig4_speedups"]
    co2e = figure.panels[0]
    groups = [g for g, _ in co2e.groups]
    assert groups == [
        "ddim (synthesis)",
        "ddpm (synthesis)",
        "precision (all phases)",
        "GPUs (all phases; weak scaling: per sample seen)",
    ]
    ddpm = dict(co2e.groups)["ddpm (synthesis)"]
    assert [b.label for b in ddpm] == ["50 steps", "250 steps", "1000 steps\n(baseline)"]
    synth = kg(BASE_KWH["synthesis"])
    assert ddpm[0].note == f"0.05×\n{fmt(0.05 * synth)} kg"
    assert ddpm[2].note == f"1×\n{fmt(synth)} kg"
    # GPUs at equal work: the 2-GPU job saw twice the training samples; per sample seen its
    # training costs half, synthesis (the same 10,000 samples) as much.
    gpus = dict(co2e.groups)["GPUs (all phases; weak scaling: per sample seen)"]
    train, total = BASE_KWH["autoencoder"] + BASE_KWH["diffusion"], sum(BASE_KWH.values())
    expected = (0.5 * train + BASE_KWH["synthesis"]) / total
    assert sum(v for _, v in gpus[1].segments) == pytest.approx(expected)
    assert "weak scaling each GPU takes its own batch" in figure.caption
    # The headline compares the same work and says how.
    text = "\n".join(headlines(study_of(tmp_path / "h", speedup_sweep(scaling="weak"))))
    assert (
        f"GPUs: 2 GPUs instead of 1 GPU (weak scaling: per sample seen): {fmt(expected, 2)}× "
        "the total CO2e" in text
    )


def test_strong_scaling_compares_the_recorded_budgets(tmp_path: Path) -> None:
    figure = by_name(study_of(tmp_path, speedup_sweep(scaling="strong")))["fig4_speedups"]
    gpus = dict(figure.panels[0].groups)["GPUs (all phases; strong scaling: same global batch)"]
    assert sum(v for _, v in gpus[1].segments) == pytest.approx(1.0)


def test_speed_flags_are_an_axis_and_a_tick_names_what_else_differs(tmp_path: Path) -> None:
    jobs = {"baseline": make_record(), "compile": make_record()}
    jobs["compile"]["axes"]["speed"] = "compile"
    jobs["all"] = make_record(sampler="dpmpp", steps=25, precision="bf16-mixed")
    jobs["all"]["axes"]["speed"] = "compile+sdpa"
    study = study_of(tmp_path, jobs)
    assert "speed" in study.varied and study.base["speed"] == "baseline"
    figure = by_name(study)["fig4_speedups"]
    flags = dict(figure.panels[0].groups)["speed flags (all phases)"]
    assert [b.label for b in flags] == [
        "baseline\n(baseline)",
        "compile",
        "compile+sdpa\n(+ sampler=dpmpp,\nsteps=25,\nprecision=bf16-mixed)",
    ]
    # The ratio of the job that differs in the flag alone is a headline; the other is not.
    text = "\n".join(headlines(study))
    assert "Speed flags: compile instead of baseline: 1× the total CO2e" in text
    assert "compile+sdpa instead" not in text
    code, out = report(tmp_path / "sweep")
    assert code == 0
    assert "| precision | speed flags | GPUs |" in (out / "report.md").read_text()


def test_the_time_panel_only_where_it_says_more(tmp_path: Path) -> None:
    # GPUs: 2 GPUs take half the time for the same energy, so time says something CO2e does not.
    gpu = by_name(study_of(tmp_path / "gpu", speedup_sweep()))["fig4_speedups"]
    assert [p.title for p in gpu.panels] == ["CO2e (projected)", "time (projected)"]
    # CPU: energy is power × time; the panel would repeat the CO2e one, and the caption says so.
    cpu = by_name(study_of(tmp_path / "cpu", cpu_sweep()))["fig4_speedups"]
    assert [p.title for p in cpu.panels] == ["CO2e (projected)"]
    assert "on CPU every component's energy is estimated as power × time" in cpu.caption


# --- the windows behind a verdict -----------------------------------------------------------------


def test_the_windows_figure_shows_each_window_the_estimate_and_outliers(tmp_path: Path) -> None:
    windows = (2.0, 2.2, 9.0, 1.8, 2.0)
    study = study_of(tmp_path, {"baseline": make_record(windows=windows, verdicts={})})
    figure = by_name(study)["windows_baseline"]
    (panel,) = figure.panels
    assert isinstance(panel, Windows)
    assert panel.values == pytest.approx(windows)  # J per iteration: joules / iterations
    assert panel.outliers == (2,)
    assert panel.estimate == pytest.approx(2.0) and panel.ci == pytest.approx((1.8, 2.2))
    assert panel.title == "diffusion: step (stable, ±10%)"
    paths = draw(figure, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def test_older_records_without_windows_omit_the_figure_with_a_reason(tmp_path: Path) -> None:
    shown = figures(study_of(tmp_path, {"baseline": make_record()}))
    (omitted,) = [f for f in shown if f.name == "windows"]
    assert "has no per-window measurements" in omitted.reason


# --- HTML ---------------------------------------------------------------------------------------


def test_html_has_no_markdown_and_short_job_labels_with_the_full_name_on_hover(
    tmp_path: Path,
) -> None:
    jobs = {
        "experiment=x,logger=none,model=small": make_record(model="small"),
        "experiment=x,logger=none,model=base": make_record(),
    }
    code, out = report(write_sweep(tmp_path / "sweep", jobs))
    assert code == 0
    page = (out / "report.html").read_text()
    body = re.sub(r'src="data:[^"]+"', "", page)
    assert "`" not in re.sub(r"<[^>]+>", "", body)  # no literal Markdown
    assert "<code>" in page
    assert '<span title="experiment=x,logger=none,model=small">model=small</span>' in page
    # Markdown, read as text, keeps the full directory.
    assert "| experiment=x,logger=none,model=small | small |" in (out / "report.md").read_text()


# --- the example series --------------------------------------------------------------------------


def test_the_shipped_example_series_is_labelled_made_up_and_gives_the_month_heatmap(
    tmp_path: Path,
) -> None:
    with EXAMPLE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all("MADE-UP" in row["note"] for row in rows)
    series = CsvSeries(EXAMPLE)
    assert len(series.zones()) >= 3
    assert all(len(series.monthly(zone)) == 12 for zone in series.zones())
    code, out = report(write_sweep(tmp_path / "sweep", {"baseline": make_record()}), "--csv",
                       str(EXAMPLE))  # fmt: skip
    assert code == 0 and (out / "fig3_months.png").stat().st_size > 0
    assert "monthly means of intensity_monthly_example.csv" in (out / "report.md").read_text()


# --- samples.png ----------------------------------------------------------------------------------


def test_samples_png_carries_its_caption(tmp_path: Path) -> None:
    import torch
    from PIL import Image

    from lpm.workload.images import samples_caption, save_samples_png

    cut = samples_caption(33, 1000, 33, 150_000)
    assert cut == [
        "33 of 1,000 denoising steps: not a finished sample",
        "trained 33 of 150,000 diffusion steps",
    ]
    assert samples_caption(50, 50, None, None) == ["50 of 50 denoising steps"]
    samples = torch.randn(4, 1, 16, 16)
    plain = save_samples_png(samples, tmp_path / "plain.png")
    captioned = save_samples_png(samples, tmp_path / "captioned.png", caption=cut)
    with Image.open(plain) as a, Image.open(captioned) as b:
        assert b.height > a.height and b.width >= a.width
        strip = b.crop((0, a.height, b.width, b.height))
        assert min(strip.getdata()) < 128 < max(strip.getdata())  # dark text on white
        assert b.crop((0, 0, a.width, a.height)).tobytes() == a.tobytes()


def test_the_noted_values_are_the_recorded_ones(tmp_path: Path) -> None:
    # A guard on the spec helpers the other tests read: a bar's note is its height.
    figure = by_name(study_of(tmp_path, {"3d": make_record(), "2d": make_record(dims="2d")}))
    for bar in bars(figure["fig1_dims"].panels[0]):
        assert bar.note.split("\n")[0] == fmt(sum(v for _, v in bar.segments))
