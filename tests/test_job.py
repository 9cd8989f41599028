"""The job's phase plans and record parts, without running a model (no torch)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import compose_cfg

from lpm.config import resolve_spec, windows_for
from lpm.energy.window import Coverage, PhaseMeasurement, UnitMeasurement, Window
from lpm.job import CPU_SCALE, JobRun, phase_record, synthesis_plan_of, training_plan
from lpm.record.record import Record


def unit(name: str, seconds: list[float], joules: float = 2.0) -> UnitMeasurement:
    return UnitMeasurement(
        name, tuple(Window(name, 2, s, {"cpu": joules * s, "ram": 1.0}) for s in seconds)
    )


def measurement(**units: UnitMeasurement) -> PhaseMeasurement:
    return PhaseMeasurement(
        "diffusion",
        units,
        {"cpu": "estimate", "ram": "estimate"},
        coverage={"gpu": Coverage(0, 0), "cpu": Coverage(1, 1), "ram": Coverage(0, 1)},
        assumptions=("RAM power: a model",),
    )


def test_training_plan_measures_the_configured_window_and_projects_the_target() -> None:
    cfg = compose_cfg("measure.diffusion.warmup=2", "measure.diffusion.iterations=9")
    plan = training_plan(cfg, "diffusion", 150_000)
    assert (plan.warmup, plan.measured) == ({"step": 2}, {"step": 9})
    assert plan.budget == {"step": 150_000} and plan.target == {"iterations": 150_000}
    assert plan.runs("step") == 11


def test_full_plans_measure_the_whole_budget_without_warmup() -> None:
    cfg = compose_cfg("measure.full=true", "sampler=ddim", "sampler.steps=7", "target.samples=9")
    plan = training_plan(cfg, "autoencoder", 40)
    assert plan.warmup == {} and plan.measured == plan.budget == {"step": 40}
    synthesis = synthesis_plan_of(cfg, chains=3, batch=4)
    assert synthesis.warmup == {}
    assert synthesis.measured == synthesis.budget == {"unet": 21, "decode": 3}
    assert synthesis.target == {"samples": 9, "steps": 7, "batch": 4, "chains": 3}


def test_synthesis_plan_measures_unet_evaluations_and_decodes_apart() -> None:
    cfg = compose_cfg("measure.synthesis.warmup=1", "measure.synthesis.decode_warmup=2")
    plan = synthesis_plan_of(cfg, chains=5, batch=2)
    assert plan.warmup == {"unet": 1, "decode": 2}
    assert plan.measured == {"unet": cfg.measure.synthesis.iterations, "decode": 5}
    assert plan.budget == {"unet": 5 * 1000, "decode": 5}


@pytest.mark.parametrize(("n", "windows"), [(3, 3), (30, 5), (31, 5), (7, 3), (150_000, 5)])
def test_windows_for_splits_into_at_most_the_asked_windows(n: int, windows: int) -> None:
    size, k = windows_for(n, windows)
    assert k <= windows and (k - 1) * size < n <= k * size


def test_a_finished_phase_is_projected_with_its_verdict_and_coverage() -> None:
    plan = training_plan(compose_cfg(), "diffusion", 1000)
    part = phase_record(plan, measurement(step=unit("step", [1.0, 1.0, 1.0])), finished=True)
    assert part is not None
    assert part.projected["seconds"] == pytest.approx(0.5 * 1000)
    assert part.verdict == {"status": "stable", "reasons": []}
    assert part.coverage == {
        "cpu": {"metered": 1, "expected": 1},
        "ram": {"metered": 0, "expected": 1},
        "complete": False,
    }
    assert part.target == {"iterations": 1000}


def test_a_phase_cut_short_keeps_its_measurement_and_projects_nothing() -> None:
    plan = training_plan(compose_cfg(), "diffusion", 1000)
    part = phase_record(plan, measurement(step=unit("step", [1.0, 1.0, 1.0])), finished=False)
    assert part is not None and part.projected == {}
    assert part.measured["iterations"] == 6


def test_a_phase_missing_a_budget_unit_projects_nothing_and_says_why() -> None:
    plan = synthesis_plan_of(compose_cfg(), chains=2, batch=1)
    part = phase_record(plan, measurement(unet=unit("unet", [1.0, 1.0, 9.0])), finished=True)
    assert part is not None and part.projected == {}
    assert part.verdict["status"] == "noisy"  # one of three windows is 9x the others
    assert phase_record(plan, None, finished=False) is None


@pytest.mark.parametrize(
    ("asked", "ran", "requested"),
    [
        ("16-mixed", "bf16-mixed", "16-mixed"),  # Lightning on a CPU
        ("16", "16-mixed", None),  # an alias of what ran
        ("32-true", "32-true", None),
    ],
)
def test_the_record_keeps_the_precision_that_ran(asked: str, ran: str, requested: str | None):
    cfg = compose_cfg(f"precision={asked}", "scale=cpu")
    record = Record(axes={"precision": asked})
    job = JobRun(cfg, resolve_spec(cfg, "cpu"), record, None, None, None, None)
    job._note_precision(SimpleNamespace(precision=ran))  # all it reads
    assert record.axes["precision"] == ran
    assert record.job.get("precision_requested") == requested


@pytest.mark.parametrize(("scale", "expected"), [("cpu", [CPU_SCALE]), ("paper", [])])
def test_cpu_scale_is_an_assumption_from_the_start(scale: str, expected: list[str]) -> None:
    cfg = compose_cfg(f"scale={scale}")
    record = Record(axes={})
    JobRun(cfg, resolve_spec(cfg, scale), record, None, None, None, None)
    assert record.assumptions == expected
