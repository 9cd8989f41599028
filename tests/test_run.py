"""`python -m lpm.run` end to end, in subprocesses: tiny jobs, sweeps, failures, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import REPO, SHORT_DIRNAMES, SIZE_2D, SIZE_3D, TINY, compose_cfg, lpm_run, read_record
from PIL import Image

from lpm.config import resolve_spec
from lpm.job import CPU_SCALE
from lpm.run import JobDirTakenError, resume_action
from lpm.workload.ldm import build_autoencoder, build_unet, count_params

# The 2D job asks for 16-mixed, which Lightning runs as bf16-mixed on a CPU.
JOBS = {
    "2d": ["model=small", *TINY, *SIZE_2D, "precision=16-mixed"],
    "3d": ["model=small", *TINY, *SIZE_3D],
}
PRECISION_RAN = {"2d": "bf16-mixed", "3d": "32-true"}
# What TINY asks for: 1 warm-up + 3 measured iterations per unit (no decode warm-up), 3 windows.
MEASURED = {
    "autoencoder": {"step": 3},
    "diffusion": {"step": 3},
    "synthesis": {"unet": 3, "decode": 3},
}
WINDOWS = 3


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def records(sweep: Path) -> dict[str, dict[str, Any]]:
    """Job directory name -> record, for every record under a sweep dir."""
    return {p.parent.name: read_record(p.parent) for p in sweep.glob("**/record.json")}


class Job(NamedTuple):
    dims: str
    proc: subprocess.CompletedProcess[str]
    out: Path
    record: dict[str, Any]


@pytest.fixture(scope="module", params=sorted(JOBS))
def job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp(f"job-{request.param}") / "run"
    proc = lpm_run(*JOBS[request.param], out=out)
    assert proc.returncode == 0, output(proc)[-3000:]
    return Job(request.param, proc, out, read_record(out))


def test_job_succeeds(job: Job) -> None:
    record = job.record
    assert "Traceback" not in output(job.proc)
    assert "job 1/1" in job.proc.stdout
    assert record["status"] == "ok" and record["error"] is None
    assert record["schema"] == "lpm.record/1"


def test_record_has_the_schema_keys(job: Job) -> None:
    record = job.record
    for key in ("schema", "status", "error", "axes", "params", "hardware", "phases"):
        assert key in record, key
    axes = ("model", "dims", "gpus", "sampler", "steps", "precision", "image_size", "batch_size")
    assert set(axes) <= set(record["axes"])
    assert set(record["params"]) >= {"autoencoder", "unet"}
    hardware = ("accelerator", "devices", "nodes", "gpu_name", "cpu_model")
    assert set(hardware) <= set(record["hardware"])
    assert set(record["phases"]) == {"autoencoder", "diffusion", "synthesis"}
    for name, phase in record["phases"].items():
        assert {"measured", "target", "projected", "co2e_kg"} <= set(phase), name
        assert {"iterations", "seconds", "energy_j", "method"} <= set(phase["measured"]), name
        assert phase["verdict"]["status"] in ("stable", "noisy"), name
        assert isinstance(phase["verdict"]["reasons"], list), name
        # CPU only: one CodeCarbon meter for CPU and RAM, no GPU expected.
        assert phase["coverage"] == {
            "cpu": {"metered": 1, "expected": 1},
            "ram": {"metered": 1, "expected": 1},
            "complete": True,
        }, name
    assert record["hardware"]["tracking_mode"] == "machine"
    assert "fallback" in record["carbon"] and record["carbon"]["fallback"] is None


def test_record_lists_the_assumptions_its_numbers_rest_on(job: Job) -> None:
    assumptions = job.record["assumptions"]
    assert len(assumptions) == len(set(assumptions))
    # Meters first, then pricing, then the scale: in that order.
    meter = next(i for i, a in enumerate(assumptions) if a.startswith("RAM power"))
    pricing = next(i for i, a in enumerate(assumptions) if a.startswith("equivalents: "))
    assert meter < pricing < assumptions.index(CPU_SCALE) == len(assumptions) - 1


def test_record_describes_the_job(job: Job) -> None:
    dims, record = job.dims, job.record
    size = [16] * int(dims[0])
    axes = record["axes"]
    assert (axes["model"], axes["dims"], axes["gpus"]) == ("small", dims, "cpu")
    assert (axes["sampler"], axes["steps"]) == ("ddpm", 1000)
    assert axes["precision"] == PRECISION_RAN[dims]  # what ran, not what was asked
    if dims == "2d":
        assert record["job"]["precision_requested"] == "16-mixed"
        assert job.proc.stdout.count("precision: 16-mixed asked, Lightning runs bf16-mixed") == 1
    else:
        assert "precision_requested" not in record["job"]
    assert axes["image_size"] == size
    assert record["spec"]["latent_size"] == [s // 4 for s in size]
    spec = resolve_spec(compose_cfg(*JOBS[dims]), "cpu")
    assert axes["batch_size"] == spec.batch
    assert record["params"]["autoencoder"] == count_params(build_autoencoder(spec))
    assert record["params"]["unet"] == count_params(build_unet(spec))
    hw = record["hardware"]
    assert (hw["accelerator"], hw["devices"], hw["nodes"], hw["gpu_name"]) == ("cpu", 1, 1, None)
    assert isinstance(hw["cpu_model"], str) and hw["cpu_model"]


def test_measured_iterations_are_what_the_overrides_asked(job: Job) -> None:
    record = job.record
    for name, units in MEASURED.items():
        measured = record["phases"][name]["measured"]
        assert measured["iterations"] == sum(units.values()), name
        assert measured["seconds"] > 0
        assert {u: m["iterations"] for u, m in measured["units"].items()} == units, name
        for u, n in units.items():
            assert measured["units"][u]["windows"] == math.ceil(n / math.ceil(n / WINDOWS))


def test_projection_is_warmup_plus_per_iteration_cost_times_the_rest(job: Job) -> None:
    record = job.record
    phases = record["phases"]
    for name in ("autoencoder", "diffusion"):
        measured = phases[name]["measured"]
        step = measured["units"]["step"]["seconds_per_iteration"]
        warm = measured["warmup"]["step"]
        target = phases[name]["target"]["iterations"]
        assert target == 150_000
        rest = target - warm["iterations"]
        assert phases[name]["projected"]["seconds"] == pytest.approx(
            warm["seconds"] + step["value"] * rest  # the robust centre, not the plain mean
        )
        low, high = phases[name]["projected"]["seconds_ci95"]
        assert low == pytest.approx(warm["seconds"] + step["ci95"][0] * rest)
        assert high == pytest.approx(warm["seconds"] + step["ci95"][1] * rest)
    synthesis = phases["synthesis"]
    units, target = synthesis["measured"]["units"], synthesis["target"]
    batch = record["axes"]["batch_size"]["synthesis"]
    assert (target["samples"], target["steps"], target["batch"]) == (10_000, 1000, batch)
    assert target["chains"] == math.ceil(10_000 / batch)
    warm = synthesis["measured"]["warmup"]
    expected = 0.0
    for unit, n in {"unet": target["chains"] * target["steps"], "decode": target["chains"]}.items():
        w = warm.get(unit, {"iterations": 0, "seconds": 0.0})
        expected += w["seconds"] + units[unit]["seconds_per_iteration"]["value"] * (
            n - w["iterations"]
        )
    assert synthesis["projected"]["seconds"] == pytest.approx(expected)


def test_job_writes_samples_config_and_log(job: Job) -> None:
    out, record = job.out, job.record
    with Image.open(out / "samples.png") as image:
        image.load()
        assert min(image.size) >= 16
    assert record["samples"]["path"] == "samples.png"
    assert record["samples"]["count"] == record["axes"]["batch_size"]["synthesis"]
    assert record["samples"]["denoising_steps"] == 1 + 3  # warm-up + measured UNet evaluations
    assert record["samples"]["complete"] is False
    assert (out / ".hydra" / "config.yaml").is_file()
    log = (out / "lpm.log").read_text()
    assert "job 1/1" in log and "record.json" in log


# --- sweeps ---------------------------------------------------------------------------------


def test_sweep_runs_every_job_and_a_rerun_skips_them(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*TINY, *SIZE_2D, "model=small,base", "sampler=ddpm,ddim", SHORT_DIRNAMES]
    proc = lpm_run(*args, out=sweep, multirun=True)
    assert proc.returncode == 0, output(proc)[-3000:]
    for i in range(1, 5):
        assert f"job {i}/4" in proc.stdout
    found = records(sweep)
    assert len(found) == 4
    assert {(r["axes"]["model"], r["axes"]["sampler"]) for r in found.values()} == {
        (m, s) for m in ("small", "base") for s in ("ddpm", "ddim")
    }
    for name, record in found.items():
        assert record["status"] == "ok", name
        assert record["axes"]["model"] in name and record["axes"]["sampler"] in name, name
    paths = sorted(sweep.glob("**/record.json"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}

    again = lpm_run(*args, out=sweep, multirun=True)
    assert again.returncode == 0, output(again)[-3000:]
    assert again.stdout.count(": skipped") == 4
    assert "sweep" in again.stdout and ": 4 skipped" in again.stdout
    assert "params:" not in again.stdout  # nothing was built, let alone trained
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths} == before


def test_each_sweep_job_gets_its_own_offline_wandb_run_with_its_record(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*[o for o in TINY if o != "logger=none"], "logger=wandb", *SIZE_2D, "model=small,base"]
    proc = lpm_run(*args, SHORT_DIRNAMES, out=sweep, multirun=True)
    assert proc.returncode == 0, output(proc)[-3000:]
    for name, record in records(sweep).items():
        runs = list((sweep / name / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, name  # wandb.finish() after every job: no run is shared
        (table,) = runs[0].glob("files/media/table/lpm/record_*.table.json")
        logged = json.loads(table.read_text())
        row = dict(zip(logged["columns"], logged["data"][0], strict=True))
        assert row["axes.model"] == record["axes"]["model"]
        assert row["totals.co2e_kg"] == pytest.approx(record["totals"]["co2e_kg"])


def test_sweep_job_dirs_fit_in_a_file_name(tmp_path: Path) -> None:
    """The documented tiny overrides, swept as they are: job dir names stay legal and distinct."""
    sweep = tmp_path / "sweep"
    args = ["model=small", *TINY, *SIZE_2D, "sampler=ddpm,ddim"]
    proc = lpm_run(*args, out=sweep, multirun=True)
    assert "Traceback" not in output(proc), output(proc)[-3000:]
    assert proc.returncode == 0, output(proc)[-3000:]
    found = records(sweep)
    assert len(found) == 2
    assert sorted(r["axes"]["sampler"] for r in found.values()) == ["ddim", "ddpm"]
    assert all(r["status"] == "ok" for r in found.values())
    for path in sweep.rglob("*"):
        assert len(path.name.encode()) <= 255, path.name


def test_a_failing_job_does_not_take_the_sweep_down(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = lpm_run(
        "model=small", *TINY, *SIZE_2D, "sampler.scheduler=DDIMScheduler,NoSuchScheduler",
        SHORT_DIRNAMES, out=sweep, multirun=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "job 2/2" in proc.stdout
    found = {r["axes"]["scheduler"]: (name, r) for name, r in records(sweep).items()}
    assert set(found) == {"DDIMScheduler", "NoSuchScheduler"}
    assert found["DDIMScheduler"][1]["status"] == "ok"
    name, failed = found["NoSuchScheduler"]
    assert failed["status"] == "failed"
    assert "\n" not in failed["error"]
    assert "sampler.scheduler" in failed["error"] and "NoSuchScheduler" in failed["error"]
    assert (sweep / name / "error.txt").is_file()


def test_config_errors_in_a_sweep_are_recorded(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = lpm_run(
        "model=small", *TINY, *SIZE_2D, "sampler.steps=0,-1", SHORT_DIRNAMES,
        out=sweep, multirun=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in output(proc)
    errors = sorted(r["error"] for r in records(sweep).values() if r["status"] == "failed")
    assert len(errors) == 2
    assert all("sampler.steps=" in e and ">= 1" in e for e in errors), errors


def test_full_mode_keeps_the_configured_window_count(tmp_path: Path) -> None:
    """measure.full measures the whole budget, warm-up included; `measure.windows` still holds."""
    out = tmp_path / "run"
    proc = lpm_run(
        "model=small", *TINY, *SIZE_2D, "measure.full=true", "target.autoencoder_iterations=7",
        "target.diffusion_iterations=7", "target.samples=12", "batch.synthesis=4", "sampler=ddim",
        "sampler.steps=3", out=out,
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)[-3000:]
    record = read_record(out)
    assert record["phases"]["synthesis"]["target"]["chains"] == 3
    assert record["samples"]["complete"] is True
    assert record["samples"]["denoising_steps"] == 3
    units = {
        (phase, unit): measured
        for phase, p in record["phases"].items()
        for unit, measured in p["measured"]["units"].items()
    }
    assert units["synthesis", "unet"]["iterations"] == 3 * 3  # every step of every chain
    assert units["diffusion", "step"]["iterations"] == 7
    assert units["synthesis", "decode"]["iterations"] == 3
    # A window never spans two chains (a decode lies between): 3-step chains, windows of 3.
    for key, measured in units.items():
        assert measured["windows"] == WINDOWS, (key, measured["windows"], measured["iterations"])


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=huge"], ["model", "huge", "small", "base", "large"]),
        (["dims=4d"], ["dims", "4d", "2d", "3d"]),
        (["sampler.steps=0"], ["sampler.steps", ">= 1"]),
        (["sampler.steps=abc"], ["sampler.steps", "Integer"]),
        (["dims=3d", "dims.image_size=[64]"], ["dims.image_size", "3 entries"]),
        (["dims.image_size=[20,20]"], ["dims.image_size", "divide by 16"]),
        (
            ["data=folder", "data.root=/does/not/exist"],
            ["data.root", "/does/not/exist", "directory"],
        ),
        (["target.samples=-1"], ["target.samples", ">= 1"]),
        (["carbon.source=bogus"], ["carbon.source", "bogus", "codecarbon", "csv", "constant"]),
        (
            ["carbon.source=csv", "carbon.csv=/nope.csv"],
            ["carbon.csv", "/nope.csv", "no such file"],
        ),
        (["site.zone=ATLANTIS"], ["site.zone", "ATLANTIS", "known zones"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and "=" in v[0] else None,
)
def test_bad_input_exits_with_a_clear_message(
    overrides: list[str], expected: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = lpm_run(*TINY, *overrides, out=out, timeout=60)
    text = output(proc)
    assert proc.returncode != 0
    assert "Traceback" not in text, text
    for part in expected:
        assert part in text, (part, text)
    assert not (out / "record.json").exists() or read_record(out)["status"] != "ok"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_mid_job_keeps_what_was_measured(signum: signal.Signals, tmp_path: Path) -> None:
    """Slurm's time limit sends SIGTERM, Ctrl-C SIGINT: the record says interrupted by which, and
    keeps finished phases."""
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    slow_diffusion = [o for o in TINY if not o.startswith(("measure.diffusion.it", "measure.wi"))]
    command = [sys.executable, "-m", "lpm.run", "model=small", *slow_diffusion, *SIZE_2D]
    # Windows of one step: the diffusion phase has closed several when the signal comes.
    command += ["measure.diffusion.iterations=100000", "measure.windows=100000"]
    command += [f"hydra.run.dir={out}"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 120
    while not (out / "record.json").exists() and time.time() < deadline:
        time.sleep(0.2)  # the record first appears once the autoencoder phase is done
    time.sleep(3.0)  # well into the diffusion phase's 100,000 steps
    proc.send_signal(signum)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    record = read_record(out)
    assert record["status"] == "interrupted"
    assert record["error"] == f"interrupted by {signum.name}"
    assert record["phases"]["autoencoder"]["measured"]["iterations"] == 3
    assert record["phases"]["autoencoder"]["projected"]["energy_kwh"] > 0
    # The diffusion phase was cut short: what it measured is kept, nothing is projected from it.
    diffusion = record["phases"]["diffusion"]
    assert diffusion["measured"]["iterations"] > 0 and diffusion["projected"] == {}


def test_ddp_job_inside_a_sweep_relaunches_only_itself(tmp_path: Path) -> None:
    """Lightning's DDP relaunch must start this job, not the whole sweep, in every extra rank."""
    sweep = tmp_path / "sweep"
    ddp = ["gpus=cpu", "gpus.devices=1,2", "gpus.strategy=ddp"]
    args = [*[o for o in TINY if o != "gpus=cpu"], *SIZE_2D, "model=small", *ddp, SHORT_DIRNAMES]
    proc = lpm_run(*args, out=sweep, multirun=True, timeout=600)
    assert proc.returncode == 0, output(proc)[-3000:]
    assert proc.stdout.count("job 1/2") == 1 and proc.stdout.count("job 2/2") == 1
    found = records(sweep)
    assert sorted(r["hardware"]["world_size"] for r in found.values()) == [1, 2]
    (two,) = [name for name, r in found.items() if r["hardware"]["world_size"] == 2]
    assert (sweep / two / "rank1.log").is_file()  # rank 1 ran as a single run in this job's dir
    assert not list(sweep.glob("*/*/record.json"))  # ...and wrote no sweep of its own
    record = found[two]
    assert (
        record["phases"]["synthesis"]["target"]["batch"]
        == 2 * record["axes"]["batch_size"]["synthesis"]
    )


# --- resuming: skip only this job's ok record ------------------------------------------------


def write_record(path: Path, status: str, overrides: list[str] | None) -> Path:
    job = {} if overrides is None else {"overrides": overrides}
    path.write_text(json.dumps({"status": status, "job": job}))
    return path


@pytest.mark.parametrize(
    ("status", "theirs", "action"),
    [
        ("ok", ["model=small", "dims=2d"], "skip"),
        ("ok", ["dims=2d", "model=small"], "skip"),  # order on the command line: same job
        ("failed", ["model=small", "dims=2d"], "run"),
        ("interrupted", ["model=small", "dims=2d"], "run"),
        ("running", ["model=small", "dims=2d"], "run"),
    ],
)
def test_resume_reruns_this_jobs_record_unless_ok(
    status: str, theirs: list[str], action: str, tmp_path: Path
) -> None:
    path = write_record(tmp_path / "record.json", status, theirs)
    assert resume_action(path, ["model=small", "dims=2d"]) == action


@pytest.mark.parametrize("status", ["ok", "failed"])
@pytest.mark.parametrize("theirs", [["model=base", "dims=2d"], ["model=small"], [], None], ids=repr)
def test_resume_refuses_another_jobs_record(
    status: str, theirs: list[str] | None, tmp_path: Path
) -> None:
    path = write_record(tmp_path / "record.json", status, theirs)
    with pytest.raises(JobDirTakenError) as info:
        resume_action(path, ["model=small", "dims=2d"])
    message = str(info.value)
    assert str(tmp_path) in message and "[model=small dims=2d]" in message
    assert f"[{' '.join(theirs)}]" in message if theirs is not None else "no overrides" in message


@pytest.mark.parametrize("content", [None, "", "{not json", "[1, 2]"], ids=repr)
def test_resume_runs_where_no_readable_record_is(content: str | None, tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    if content is not None:
        path.write_text(content)
    assert resume_action(path, ["model=small"]) == "run"


def test_rerun_in_a_run_dir_skips_the_same_job_and_refuses_another(
    job: Job, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(job.out, out)
    before = (out / "record.json").read_bytes()

    again = lpm_run(*JOBS[job.dims], out=out, timeout=60)
    assert again.returncode == 0, output(again)[-3000:]
    assert f"already ok in {out}: skipped" in again.stdout
    assert "params:" not in again.stdout

    other = [*JOBS[job.dims], "seed=1"]
    refused = lpm_run(*other, out=out, timeout=60)
    assert refused.returncode == 2
    assert "Traceback" not in output(refused)
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"lpm: {out} holds the record of another job")
    assert f"[{' '.join(JOBS[job.dims])}]" in line and f"[{' '.join(other)}]" in line
    assert (out / "record.json").read_bytes() == before


def test_sweep_jobs_whose_dirs_collide_do_not_overwrite_each_other(tmp_path: Path) -> None:
    """Two jobs in one directory: the second is refused, named, and counted as failed."""
    sweep = tmp_path / "sweep"
    args = [*TINY, *SIZE_2D, "model=small,base", "hydra.sweep.subdir=same"]
    proc = lpm_run(*args, out=sweep, multirun=True)
    assert proc.returncode != 0
    assert "Traceback" not in output(proc)
    assert proc.stdout.count("params:") == 1  # the second job never started
    assert re.search(r"sweep .*: 1 ok, 1 failed", proc.stdout), proc.stdout[-2000:]
    assert f"{sweep / 'same'} holds the record of another job" in proc.stdout
    found = records(sweep)
    assert list(found) == ["same"]
    assert found["same"]["status"] == "ok"
    assert "model=small" in found["same"]["job"]["overrides"]


# --- bad input is refused before torch loads -------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sampler.steps=1001"], "sampler.steps=1001: must be <= 1000"),
        (["gpus=1gpu"], "gpus=1gpu: asks for CUDA GPUs"),
        (["seed=-1"], "seed=-1: must be an integer >= 0"),
        (["precision=8"], "precision=8: must be one of Lightning's: 32-true"),
        (["measure.force_cpu_power_w=0"], "measure.force_cpu_power_w=0.0: must be > 0 watts"),
        (["measure.force_ram_power_w=-1"], "measure.force_ram_power_w=-1.0: must be > 0 watts"),
        (["measure.tracking_mode=proc"], "measure.tracking_mode=proc: must be one of machine"),
        (["carbon.when=last-march"], "carbon.when=last-march: must be a year (2024)"),
        (["carbon.fallback=monthly"], "carbon.fallback=monthly: must be one of null, annual"),
        (["+foo=1"], "foo=1: not an lpm config key"),
        (["+sampler.kwargs.foo=1"], "sampler.kwargs.foo=1: not an argument of DDPMScheduler"),
        (["measure.windows=2"], "measure.windows=2: must be an integer >= 3"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_config_errors_exit_2_with_one_line_before_torch_loads(
    overrides: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # every import, on stderr
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gpus=1gpu: no GPU, even on a GPU host
    out = tmp_path / "run"
    proc = lpm_run(*TINY, *overrides, out=out, timeout=60)
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "lpm.config" in imported
    assert not imported & {"torch", "lightning", "diffusers", "monai"}
    (line,) = [x for x in proc.stderr.splitlines() if not x.startswith("import time:")]
    assert line.startswith(f"lpm: config error: {expected}"), line
    assert proc.returncode == 2
    assert not (out / "record.json").exists()
