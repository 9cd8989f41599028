"""What `python -m lpm.report` does with verdicts, meter coverage and repeats, and the consistency
checks it runs on a sweep. Records are built here (see `test_report.make_record`)."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from test_report import BASE_KWH, kg, make_record, report, write_sweep

from lpm.report.__main__ import main
from lpm.report.figures import fig1_dims
from lpm.report.study import build_study, fmt
from lpm.report.sweep import load_sweep

TRAIN_KWH = BASE_KWH["autoencoder"] + BASE_KWH["diffusion"]


def run(tmp_path: Path, jobs: dict[str, dict[str, Any]], *args: str) -> tuple[int, Path, str]:
    """Report on `jobs`: exit code, report dir, report.md."""
    sweep = write_sweep(tmp_path / "sweep", jobs)
    code, out = report(sweep, *args)
    return code, out, (out / "report.md").read_text()


def line_with(text: str, start: str) -> str:
    """The one line of `text` that holds `start`."""
    (found,) = [line for line in text.splitlines() if start in line]
    return found


def results(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


# --- verdicts ---------------------------------------------------------------------------------


def noisy_sweep() -> dict[str, dict[str, Any]]:
    """3D training noisy (diffusion), everything else stable, all meters present."""
    return {
        "baseline": make_record(verdicts={"diffusion": "noisy"}, coverage={}),
        "dims=2d": make_record(dims="2d", verdicts={}, coverage={}),
    }


def test_a_noisy_phase_is_marked_and_kept_out_of_headlines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, text = run(tmp_path, noisy_sweep())
    assert code == 0
    headlines = text.split("## Headlines")[1].split("## Checks")[0]
    assert "Training a 3D LDM" not in headlines
    assert "In 3D, synthesis emits" not in headlines  # a ratio over the noisy training
    assert f"Synthesizing 10,000 3D samples emits ≈ {fmt(kg(BASE_KWH['synthesis']))}" in headlines
    assert "Training a 2D LDM" in headlines
    assert "Left out of the headlines: noisy diffusion numbers" in text
    # Marked where it is shown: the jobs table, the figure caption, results.csv.
    row = line_with(text, "| baseline | base | 3d |")
    assert f"| {fmt(kg(TRAIN_KWH))} (noisy) |" in row and row.endswith("| noisy: diffusion |")
    assert line_with(text, "| dims=2d | base |").endswith("| stable |")
    assert "(noisy)" not in line_with(text, "| dims=2d | base |")
    assert "Faded bars with a dashed outline (note 'noisy')" in text
    rows = results(out)
    assert rows["baseline"]["verdict.diffusion"] == "noisy"
    assert rows["baseline"]["verdict.synthesis"] == "stable"
    assert rows["dims=2d"]["verdict.diffusion"] == "stable"
    err = capsys.readouterr().err
    assert "baseline: diffusion noisy: step: 1 of 5 windows excluded as outliers" in err


def test_include_noisy_puts_them_back_and_each_sentence_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, text = run(tmp_path, noisy_sweep(), "--include-noisy")
    assert code == 0
    train = kg(TRAIN_KWH)
    line = line_with(text, "Training a 3D LDM")
    assert f"emits ≈ {fmt(train)} kg CO2e" in line
    assert "Rests on noisy numbers: baseline diffusion (step: 1 of 5 windows excluded" in line
    assert "Rests on noisy numbers" in line_with(text, "In 3D, synthesis emits")
    assert "Rests on noisy numbers" not in line_with(text, "Synthesizing 10,000 3D samples")
    assert "Left out of the headlines" not in text
    assert "Rests on noisy numbers: baseline diffusion" in capsys.readouterr().out


def test_records_without_verdict_or_coverage_report_as_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {"old": make_record(), "new": make_record(dims="2d", verdicts={}, coverage={})}
    code, out, text = run(tmp_path, jobs)
    assert code == 0
    assert "Verdict unknown for 1 of 2 jobs (records written before lpm recorded verdicts" in text
    assert line_with(text, "| old | base |").endswith("| unknown (no verdict recorded) |")
    assert line_with(text, "| new | base |").endswith("| stable |")
    assert "Training a 3D LDM" in text  # unknown is not noisy: old sweeps keep their headlines
    assert "1 of 2 runs recorded no coverage (older records)" in text
    assert results(out)["old"]["verdict.autoencoder"] == "unknown"
    assert "1 of 2 jobs carry no verdict" in capsys.readouterr().err


# --- coverage ---------------------------------------------------------------------------------


def test_incomplete_coverage_is_kept_out_of_comparisons_and_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {
        "baseline": make_record(verdicts={}, coverage={"diffusion": (1, 2)}),
        "dims=2d": make_record(dims="2d", verdicts={}, coverage={}),
    }
    code, out, text = run(tmp_path, jobs, "--include-noisy")
    assert code == 0
    assert "Training a 3D LDM" not in text and "In 3D, synthesis emits" not in text
    assert "Synthesizing 10,000 3D samples" in text  # synthesis had all its meters
    assert (
        "| baseline | diffusion incomplete | GPU meters 1 of 2; kept out of comparisons |" in text
    )
    row = line_with(text, "| baseline | base | 3d |")
    assert "| incomplete | " + fmt(kg(BASE_KWH["synthesis"])) + " | incomplete |" in row
    assert results(out)["baseline"]["coverage.diffusion"] == "incomplete: GPU meters 1 of 2"
    assert results(out)["baseline"]["coverage.synthesis"] == "ok"
    assert "baseline: diffusion: GPU meters 1 of 2: kept out of comparisons" in (
        capsys.readouterr().err
    )
    # Figure 1 keeps the 3D synthesis bar and drops the 3D training bar.
    figure = fig1_dims(build_study(load_sweep(tmp_path / "sweep")))
    groups = dict(figure.panels[0].groups)
    assert [[p for p, _ in b.segments] for b in groups["3D"]] == [["synthesis"]]
    assert len(groups["2D"]) == 2


# --- repeats ----------------------------------------------------------------------------------


def test_repeats_are_pooled_with_a_between_run_t_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthesis = {0: 40.0, 1: 44.0, 2: 48.0}  # kWh; within-run intervals ±1%
    jobs = {
        f"seed={s}": make_record(
            seed=s,
            kwh={"synthesis": e},
            ci=0.01,
            verdicts={"autoencoder": "noisy"} if s == 1 else {},
            coverage={},
        )
        for s, e in synthesis.items()
    }
    jobs["2d"] = make_record(dims="2d", seed=0, verdicts={}, coverage={})  # not a repeat
    code, out, text = run(tmp_path, jobs)
    assert code == 0
    # By hand: mean 44 kWh, sd 4 kWh, n = 3, t(0.975, 2) = 4.303: 44 ± 4.303 × 4 / √3 kWh.
    half = 4.303 * 4 / math.sqrt(3)
    pooled = f"{fmt(kg(44))} ({fmt(kg(44 - half))}–{fmt(kg(44 + half))})"
    each = "; ".join(
        f"seed {s}: {fmt(kg(e))} ({fmt(kg(0.99 * e))}–{fmt(kg(1.01 * e))})"
        for s, e in synthesis.items()
    )
    # Spread: sd 4 kWh over the mean within-run standard error 0.01 × 44 / 1.96 kWh.
    spread = fmt(4 / (0.01 * 44 / 1.96), 2)
    row = line_with(text, "| seed=0,1,2 | synthesis |")
    assert (
        row == f"| seed=0,1,2 | synthesis | {each} | {pooled}, n=3 | stable | ×{spread} (flagged) |"
    )
    assert spread == "18"
    # A noisy repeat is still pooled; the pooled verdict counts it.
    autoencoder = line_with(text, "| seed=0,1,2 | autoencoder |")
    assert ", n=3 (noisy) | noisy (1 of 3 repeats noisy) |" in autoencoder
    # The pool stands in the comparisons: one jobs-table row, the headline's numbers.
    assert (
        "| seed=0,1,2 | base | 3d | ddpm | 1000 | 32-true | 1 GPU | DEU | 3 (seeds 0, 1, 2) |"
        in text
    )
    assert "| 2d | base | 2d |" in text and "| seed=0 |" not in text
    assert (
        f"Synthesizing 10,000 3D samples emits ≈ {fmt(kg(44))} kg CO2e (projected; 95% CI "
        f"between runs {fmt(kg(44 - half))}–{fmt(kg(44 + half))})" in text
    )
    assert results(out)["seed=1"]["pooled_as"] == "seed=0,1,2"
    assert f"within-run intervals understate run-to-run variation ×{spread}" in (
        capsys.readouterr().err
    )


def test_repeats_in_dirs_not_named_by_seed_pool_under_the_first_dir(tmp_path: Path) -> None:
    jobs = {
        "0": make_record(seed=0, verdicts={}),
        "1": make_record(seed=1, verdicts={"synthesis": "noisy"}),
    }
    text = run(tmp_path, jobs)[2]
    row = line_with(text, "| 0 +1 repeat | synthesis |")
    assert "noisy (1 of 2 repeats noisy) |" in row
    assert "(Verdicts): 0 +1 repeat: synthesis noisy: 1 of 2 repeats noisy; seed 1: step: 1" in text


def test_jobs_with_other_overrides_are_not_repeats(tmp_path: Path) -> None:
    jobs = {"seed=0": make_record(seed=0), "seed=1": make_record(seed=1)}
    jobs["seed=1"]["job"]["overrides"].append("measure.windows=7")
    text = run(tmp_path, jobs)[2]
    assert "Repeats: no repeats" in text and "| seed=0 | base |" in text


# --- consistency checks -----------------------------------------------------------------------


def test_ddim_1000_costing_a_tenth_of_ddpm_1000_is_flagged_and_no_headline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {
        "baseline": make_record(),
        "ddim1000": make_record(sampler="ddim", steps=1000, kwh={"synthesis": 0.094 * 40}),
    }
    code, _, text = run(tmp_path, jobs)
    assert code == 0
    flag = (
        "ddim with 1,000 steps costs 0.094× ddpm with 1,000 steps in synthesis (95% 0.077–0.11; "
        "ddim1000 vs baseline), but 1,000 against 1,000 steps allows 1× (the same number of UNet "
        "evaluations): not stated as a headline"
    )
    assert flag in text and flag in capsys.readouterr().err
    assert "1 pair compared, 1 contradicting the step ratio" in text
    assert "Sampler:" not in text
    assert "Contradicted by the consistency checks (see Checks): ddim1000 against baseline" in text


@pytest.mark.parametrize(
    ("synthesis_kwh", "flagged"),
    [
        (2.0, False),  # 50 / 1000 steps: the step ratio
        (12.0, False),  # 0.3×: decoding costs a share, allowed between 0.05 and 1
        (1.0, True),  # 0.025×: cheaper than its steps allow
    ],
)
def test_the_step_ratio_allows_for_decoding(
    tmp_path: Path, synthesis_kwh: float, flagged: bool
) -> None:
    jobs = {
        "baseline": make_record(),
        "ddim50": make_record(sampler="ddim", steps=50, kwh={"synthesis": synthesis_kwh}),
    }
    text = run(tmp_path, jobs)[2]
    assert ("allows 0.05–1× (the step ratio if decoding cost nothing" in text) == flagged
    assert ("Sampler: ddim 50 steps instead of ddpm 1000 steps" in text) != flagged


def test_joules_per_unet_evaluation_must_not_depend_on_the_sampler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {
        "baseline": make_record(unet_j=(10.0, 9.5, 10.5)),
        "ddim50": make_record(sampler="ddim", steps=50, unet_j=(10.9, 10.4, 11.4)),  # overlaps
        "ddim100": make_record(sampler="ddim", steps=100, unet_j=(12.0, 11.5, 12.5)),  # within 10%
        "ddim250": make_record(sampler="ddim", steps=250, unet_j=(20.0, 19.0, 21.0)),  # apart
        # Another model costs other joules per evaluation: never compared with the base ones.
        "small": make_record(model="small", sampler="ddim", steps=50, unet_j=(2.5, 2.4, 2.6)),
    }
    code, _, text = run(tmp_path, jobs)
    assert code == 0
    assert "J per UNet evaluation across samplers: 6 pairs compared, 3 disagreeing" in text
    flag = (
        "3d base, 32-true, 1 GPU, scale paper: ddim with 250 steps (ddim250) 20 J (95% 19–21) vs "
        "ddpm with 1,000 steps (baseline) 10 J (95% 9.5–10.5) per UNet evaluation: ×2, beyond "
        "the intervals (tolerance 10%)"
    )
    assert flag in text and flag in capsys.readouterr().err
    flags = [line for line in text.splitlines() if "WARNING (J per UNet" in line]
    assert len(flags) == 3 and all("(ddim250)" in line for line in flags)
    assert "(small)" not in text.split("## Checks")[1].split("## Figures")[0]


def test_records_without_unit_joules_skip_that_check(tmp_path: Path) -> None:
    jobs = {"baseline": make_record(), "ddim50": make_record(sampler="ddim", steps=50)}
    text = run(tmp_path, jobs)[2]
    assert "J per UNet evaluation across samplers: not run: no record has per-UNet" in text


# --- --out ------------------------------------------------------------------------------------


def _sweep(tmp_path: Path) -> Path:
    return write_sweep(tmp_path / "sweep", {"baseline": make_record()})


@pytest.mark.parametrize("where", ["a file", "below a file", "a read-only dir"])
def test_an_unusable_out_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    sweep = _sweep(tmp_path)
    target = tmp_path / "taken"
    if where == "a read-only dir":
        if os.geteuid() != 0:
            target.mkdir(mode=0o555)
        else:  # root writes where modes forbid it; sysfs refuses new files even to root
            target = Path("/sys")
            try:
                tempfile.TemporaryFile(dir=target).close()
                pytest.skip("no directory here that root cannot write to")
            except PermissionError:
                pass
        out, why = target / "report", f"cannot write in {target}: Permission denied"
    else:
        target.write_text("not a directory")
        out, why = (
            (target, "is a file, not a directory")
            if where == "a file"
            else (target / "report", f"{target} is a file")
        )
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), "--out", str(out)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"python -m lpm.report: error: --out {out}: {why}\n"
    assert captured.out == ""
