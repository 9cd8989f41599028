"""The `experiment=NAME` presets: each composes, sweeps what it documents, and one runs for real."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from conftest import CONF, SHORT_DIRNAMES, TINY, lpm_run, options, read_record
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from lpm.config import check
from lpm.report.build import build_report

# Jobs per preset: the product of its sweep params, as each file's header states.
JOBS = {"fig1_dims": 2, "fig2_size": 6, "fig3_site": 9, "fig4_speedups": 10, "paper": 12}


def compose_hydra(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def sweep_params(name: str) -> dict[str, list[str]]:
    params = compose_hydra(f"experiment={name}").hydra.sweeper.params
    return {key: str(value).split(",") for key, value in params.items()}


def test_every_preset_is_documented_here() -> None:
    assert options("experiment") == sorted(JOBS)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_preset_sweeps_the_documented_number_of_valid_jobs(name: str) -> None:
    params = sweep_params(name)
    assert math.prod(len(v) for v in params.values()) == JOBS[name]
    for combo in itertools.product(*params.values()):
        overrides = [f"{k}={v}" for k, v in zip(params, combo, strict=True)]
        cfg = compose_hydra(f"experiment={name}", *overrides)
        check(cfg)
        choices = cfg.hydra.runtime.choices  # the option picked in each config group
        for key, value in zip(params, combo, strict=True):
            actual = choices[key] if key in choices else OmegaConf.select(cfg, key)
            assert str(actual) == value, key


def test_presets_fix_what_the_study_held_fixed() -> None:
    assert sweep_params("fig1_dims") == {"dims": ["2d", "3d"]}
    fig1 = compose_hydra("experiment=fig1_dims")
    assert (fig1.model.name, fig1.sampler.name) == ("base", "ddpm")
    fig4 = compose_hydra("experiment=fig4_speedups")
    assert (fig4.model.name, fig4.dims.name) == ("base", "3d")
    assert fig4.gpus.name == "auto"  # CPU-safe: asks for no GPU
    assert compose_hydra("experiment=fig3_site").dims.name == "3d"
    assert compose_hydra("experiment=paper").scale == "paper"


def test_fig1_preset_runs_its_jobs_and_reports_them(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = lpm_run("experiment=fig1_dims", *TINY, SHORT_DIRNAMES, out=sweep, multirun=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    found = [read_record(p.parent) for p in sweep.glob("**/record.json")]
    assert sorted(r["axes"]["dims"] for r in found) == ["2d", "3d"]
    assert all(r["status"] == "ok" and r["axes"]["model"] == "base" for r in found)
    report = build_report(sweep)
    assert report.compared == 2
    assert (sweep / "report" / "fig1_dims.png").is_file()
