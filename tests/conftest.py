"""Shared helpers: compose the Hydra config in-process, run `python -m lpm.run` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lpm.config  # noqa: F401  (registers the lpm_schema structured config)

# Tiny tensors gain nothing from intra-op threads, and spinning OpenMP threads slow every test
# several-fold when another process shares the cores. Set before torch loads; jobs inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Every unit runs 1 warm-up (no decode warm-up) + 3 measured iterations in 3 windows (the fewest
# lpm accepts), no quality evaluation: a job takes a few seconds.
TINY = [
    "logger=none",
    "gpus=cpu",
    "scale=cpu",
    "measure.autoencoder.iterations=3",
    "measure.autoencoder.warmup=1",
    "measure.diffusion.iterations=3",
    "measure.diffusion.warmup=1",
    "measure.synthesis.iterations=3",
    "measure.synthesis.warmup=1",
    "measure.synthesis.decodes=3",
    "measure.synthesis.decode_warmup=0",
    "measure.windows=3",
    # The quality evaluation runs whole chains (1,000 DDPM steps plus the reference's): only
    # tests/test_quality.py turns it on, with short chains.
    "quality.enabled=False",  # as Hydra writes a parsed bool back into the record
]
SIZE_2D = ["dims.image_size=[16,16]"]
SIZE_3D = ["dims=3d", "dims.image_size=[16,16,16]"]
# Keeps sweep job directories named by the swept axes only (see test_run.py for why).
SHORT_DIRNAMES = "hydra.job.config.override_dirname.exclude_keys=[{}]".format(
    ",".join(o.split("=", 1)[0] for o in [*TINY, *SIZE_2D])
)


def options(group: str) -> list[str]:
    """The options of a config group: the yaml files under conf/<group>/."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def lpm_run(
    *overrides: str, out: Path, multirun: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m lpm.run [-m] overrides` from the repo root, its output dir under `out`."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    cmd = [sys.executable, "-m", "lpm.run", *(["-m"] if multirun else []), *overrides]
    return subprocess.run(
        [*cmd, f"{key}={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_record(job_dir: Path) -> dict[str, Any]:
    return json.loads((job_dir / "record.json").read_text())


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    return root
