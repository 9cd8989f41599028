"""Slurm for real: sweeps through the submitit launcher on a single-node cluster that
tests/slurm/cluster.sh starts (`make test-slurm`): an array sweep, jobs killed without a result,
a 2-rank CPU DDP job and its rerun, a job past its time limit and its rerun, `job.slurm` in steps.

Outside `make test-slurm` a machine that cannot run the cluster (not root, not Debian, no
packages) skips these with the reason; with LPM_REQUIRE_SLURM=1 (CI) that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, SIZE_2D, TINY, lpm_run, read_record

pytestmark = pytest.mark.slurm

CLUSTER = Path(__file__).with_name("cluster.sh")
SCRATCH = Path(os.environ.get("LPM_SLURM_DIR", "/tmp/lpm-slurm"))
# As cluster.sh names them; its node is this machine, `hostname -s`.
PARTITION, CLUSTER_NAME, NODE = "lpm", "lpm", socket.gethostname().split(".")[0]


def _replacing(overrides: list[str], values: dict[str, object]) -> list[str]:
    """`overrides` with these keys set to these values (added where absent), others kept."""
    merged = dict(o.split("=", 1) for o in overrides)
    merged.update({key: str(value) for key, value in values.items()})
    return [f"{key}={value}" for key, value in merged.items()]


# Tiny jobs: 1 warm-up + 3 measured iterations in 3 windows per phase (windows >= 3 is required).
JOB = [
    *_replacing(
        TINY,
        {
            "measure.windows": 3,
            "measure.autoencoder.iterations": 3,
            "measure.diffusion.iterations": 3,
            "measure.synthesis.iterations": 3,
            "measure.synthesis.decodes": 3,
        },
    ),
    *SIZE_2D,
]
# Job directories named by the swept axis only (model=small, model=base).
DIRNAMES = "hydra.job.config.override_dirname.exclude_keys=[{}]".format(
    ",".join(o.split("=", 1)[0] for o in JOB)
)
# The test node has 4 CPUs and ~90% of this machine's memory; the launcher's defaults ask more.
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
    DIRNAMES,
]
SWEEP_TIMEOUT_S = 240


@pytest.fixture(scope="session")
def say(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Print past pytest's capture: the suite reports its timings in the CI log."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def _say(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n[slurm] {message}", flush=True)

    return _say


@pytest.fixture(scope="session")
def cluster(say: Callable[[str], None]) -> Iterator[None]:
    """A running cluster, its sacct stand-in first on PATH; stopped after if this started it."""
    required = os.environ.get("LPM_REQUIRE_SLURM") == "1"
    was_running = subprocess.run(["bash", CLUSTER, "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    proc = subprocess.run(["bash", CLUSTER, "start"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        reason = f"cluster.sh start: exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
        if required:
            pytest.fail(f"LPM_REQUIRE_SLURM=1 and no Slurm cluster: {reason}", pytrace=False)
        pytest.skip(reason)
    say(f"cluster up in {time.monotonic() - t0:.1f} s: {proc.stdout.strip()}")
    with pytest.MonkeyPatch.context() as mp:
        # submitit asks sacct for the state of jobs that left no result: without an answer it
        # waits forever for a job killed by SIGKILL or the OOM killer.
        mp.setenv("PATH", f"{SCRATCH / 'bin'}{os.pathsep}{os.environ['PATH']}")
        yield
    if not was_running:
        subprocess.run(["bash", CLUSTER, "stop"], capture_output=True, timeout=120)


def _sweep(
    *overrides: str, out: Path, say: Callable[[str], None], what: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    try:
        proc = lpm_run(*overrides, out=out, multirun=True, timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        squeue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
        pytest.fail(f"{what}: still waiting after {exc.timeout:.0f} s; squeue:\n{squeue}")
    seconds = time.monotonic() - t0
    say(f"{what}: exit {proc.returncode} in {seconds:.1f} s")
    return proc, seconds


def _job_ids(sweep: Path) -> list[str]:
    """The submitit folders of a sweep's plain (one-job sweep) Slurm jobs: `<job>`."""
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())


def _array_ids(sweep: Path) -> list[str]:
    """The submitit folders of the sweep's array tasks: `<array job>_<task>`."""
    return sorted(
        p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)
    )


def test_array_sweep_leaves_an_ok_record_per_job(
    cluster: None, tmp_path: Path, say: Callable[[str], None]
) -> None:
    proc, _ = _sweep(
        *LAUNCHER, "model=small,base", *JOB, out=tmp_path, say=say, what="2-job array sweep"
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    tasks = _array_ids(tmp_path)
    assert len(tasks) == 2, tasks
    array_job = tasks[0].split("_")[0]
    assert tasks == [f"{array_job}_0", f"{array_job}_1"]  # one array job, two tasks
    script = (tmp_path / ".submitit" / array_job / f"{array_job}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script
    assert "#SBATCH --ntasks-per-node=1" in script
    assert "--gpus-per-node" not in script  # gpus=cpu asks Slurm for no GPU
    assert "#SBATCH --signal=USR2@30" in script
    for task, model in enumerate(("small", "base")):
        record = read_record(tmp_path / f"model={model}")
        assert record["status"] == "ok", (model, record["error"])
        assert record["axes"]["model"] == model
        # What joins the record with sacct: the array task's JobID, where and how it ran.
        slurm = record["job"]["slurm"]
        assert slurm["job_id"] == f"{array_job}_{task}"
        assert (slurm["array_job_id"], slurm["array_task_id"]) == (int(array_job), task)
        assert (slurm["cluster"], slurm["partition"], slurm["node_list"]) == (
            CLUSTER_NAME,
            PARTITION,
            NODE,
        )
        assert (slurm["nodes"], slurm["tasks"], slurm["gpus_per_node"], slurm["procid"]) == (
            1,
            1,
            0,
            0,
        )
    assert f"sweep {tmp_path}: 2 ok" in text


def test_a_job_killed_without_a_result_fails_the_sweep_fast(
    cluster: None, tmp_path: Path, say: Callable[[str], None]
) -> None:
    # SIGKILL each job's step once lpm has started the job (its first log line, `job 1/2 ...`,
    # is in the task's output): what the OOM killer or a lost node leaves, no result at all.
    killer = tmp_path / "kill_step.sh"
    killer.write_text(
        'out="$1/.submitit/${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}/'
        '${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}_0_log.out"\n'
        "for _ in $(seq 1200); do\n"
        '    grep -q "^job " "$out" 2>/dev/null && exec scancel --signal=KILL "$SLURM_JOB_ID.0"\n'
        "    sleep 0.1\n"
        "done\n"
    )
    sweep = tmp_path / "sweep"
    proc, seconds = _sweep(
        *LAUNCHER,
        f"hydra.launcher.setup=['bash {killer} {sweep} &']",
        "model=small,base",
        *JOB,
        out=sweep,
        say=say,
        what="sweep whose jobs are SIGKILLed",
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]  # one line per job, not Hydra's traceback
    (array_job,) = {t.split("_")[0] for t in _array_ids(sweep)}
    for task, model in enumerate(("small", "base")):
        # The job, its Slurm id and state, srun's last word on it, its log and record.
        line = re.search(
            rf"lpm: job #{task} \(model={model}\): Slurm job {array_job}_{task} .*", text
        )
        assert line, text[-4000:]
        assert "ended FAILED without a result (srun: error: " in line[0], line[0]
        assert ": Killed); log: " in line[0], line[0]
        assert line[0].endswith(f"_{task}_0_log.err; recorded failed in {sweep}/model={model}")
        # Recorded as failed, so that the summary counts it and a rerun runs it again.
        record = read_record(sweep / f"model={model}")
        assert record["status"] == "failed", record
        assert record["error"].startswith(f"Slurm job {array_job}_{task} ended FAILED")
        assert record["job"]["overrides"] == ["model=" + model, *JOB]
    assert f"sweep {sweep}: 2 failed" in text  # the summary is printed all the same
    assert seconds < 90  # a finished job gets 15 s to leave its result, then it is lost


def _run_json(cmd: list[str]) -> list[dict]:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


PRINT_SLURM_JOB = "import json; from lpm.slurm import slurm_job; print(json.dumps(slurm_job()))"


def test_slurm_job_block_inside_a_two_task_gpu_step(cluster: None) -> None:
    blocks = _run_json(
        [
            "srun", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1",
            "--mem=100M", "--time=1", sys.executable, "-c", PRINT_SLURM_JOB,
        ]
    )  # fmt: skip
    blocks.sort(key=lambda b: b["procid"])
    assert [b["procid"] for b in blocks] == [0, 1]
    first, second = blocks
    assert {**first, "procid": 1} == second  # the same job seen from both ranks
    assert first["job_id"] == first["job_id_raw"]
    assert first["job_id"].isdigit()
    assert first["array_job_id"] is first["array_task_id"] is None
    assert (first["cluster"], first["partition"], first["node_list"]) == (
        CLUSTER_NAME,
        PARTITION,
        NODE,
    )
    assert (first["nodes"], first["tasks"], first["tasks_per_node"]) == (1, 2, 2)
    assert first["gpus_per_node"] == 2  # the fake gres: --gpus-per-node reaches the job


def test_slurm_job_block_of_array_tasks_joins_with_sacct(cluster: None, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            "sbatch", "--wait", "--parsable", "--array=0-1", "--ntasks=1", "--cpus-per-task=1",
            "--mem=100M", "--time=1", f"--output={tmp_path}/%A_%a.json",
            f"--error={tmp_path}/%A_%a.err",
            f"--wrap={sys.executable} -c '{PRINT_SLURM_JOB}'",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_job = int(proc.stdout.strip())
    blocks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert [(b["array_job_id"], b["array_task_id"]) for b in blocks] == [
        (array_job, 0),
        (array_job, 1),
    ]
    assert [b["job_id"] for b in blocks] == [f"{array_job}_0", f"{array_job}_1"]
    assert blocks[0]["job_id_raw"] != blocks[1]["job_id_raw"]  # each task has its own id
    assert all(b["gpus_per_node"] == 0 and b["tasks"] == 1 for b in blocks)
    # The key a user joins on is sacct's JobID column (here the stand-in's, from scontrol).
    sacct = subprocess.run(
        ["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", str(array_job)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    states = dict(line.split("|")[:2] for line in sacct.splitlines()[1:])
    assert {b["job_id"]: states.get(b["job_id"]) for b in blocks} == {
        f"{array_job}_0": "COMPLETED",
        f"{array_job}_1": "COMPLETED",
    }


def _task_result(sweep: Path, array_task: str, rank: int) -> object:
    """What lpm's job function returned in one Slurm task (rank) of an array task."""
    from submitit.core.utils import pickle_load

    outcome, value = pickle_load(
        sweep / ".submitit" / array_task / f"{array_task}_{rank}_result.pkl"
    )
    assert outcome == "success", value
    return value.return_value


def test_ddp_job_trains_on_slurms_ranks_and_a_rerun_skips_on_every_rank(
    cluster: None, tmp_path: Path, say: Callable[[str], None]
) -> None:
    # gpus=cpu2: two CPU ranks (gloo) as two Slurm tasks of one job; Lightning takes the ranks
    # from Slurm and starts no process itself.
    overrides = [*LAUNCHER, "gpus=cpu2", "model=small", *[o for o in JOB if o != "gpus=cpu"]]
    proc, _ = _sweep(*overrides, out=tmp_path, say=say, what="2-rank DDP job")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # A sweep of one job is one plain Slurm job (no array): its submitit folder is its id.
    (task,) = _job_ids(tmp_path)
    script = tmp_path / ".submitit" / task / f"{task}_submission.sh"
    assert "#SBATCH --ntasks-per-node=2" in script.read_text()
    # From inside the workload: each task's log says its rank in the process group it trained in.
    for rank in (0, 1):
        log = (tmp_path / ".submitit" / task / f"{task}_{rank}_log.out").read_text()
        assert f"rank {rank} of 2 (local rank {rank}, node 0): ok" in log, log[-3000:]
        assert _task_result(tmp_path, task, rank) == "ok"
    (job_dir,) = [p.parent for p in tmp_path.glob("*/record.json")]
    record = read_record(job_dir)
    assert record["status"] == "ok", record["error"]
    assert (record["hardware"]["world_size"], record["hardware"]["nodes"]) == (2, 1)
    assert (record["job"]["slurm"]["tasks"], record["job"]["slurm"]["tasks_per_node"]) == (2, 2)
    assert record["job"]["slurm"]["procid"] == 0  # one record, from global rank 0
    # CPU and RAM metered once for the node (by local rank 0), not once per rank.
    for name, phase in record["phases"].items():
        cover = phase["coverage"]
        assert cover["cpu"] == cover["ram"] == {"metered": 1, "expected": 1}, (name, cover)
        assert "gpu" not in cover and cover["complete"], (name, cover)

    # The same sweep again: both ranks find the job ok and skip it (rank 1 used to wait for
    # rank 0 in DDP set-up until the time limit).
    before = (job_dir / "record.json").read_text()
    proc, seconds = _sweep(*overrides, out=tmp_path, say=say, what="2-rank DDP job, rerun")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (rerun,) = set(_job_ids(tmp_path)) - {task}
    assert [_task_result(tmp_path, rerun, rank) for rank in (0, 1)] == ["skipped", "skipped"]
    assert (job_dir / "record.json").read_text() == before
    assert seconds < 60


def test_time_limit_leaves_an_interrupted_record_and_a_rerun_finishes_it(
    cluster: None, tmp_path: Path, say: Callable[[str], None]
) -> None:
    # A job that outlasts its time limit: once model=base has finished its first phase (its
    # record appears), its job step is stopped (SIGSTOP) and waits there for Slurm, which sends
    # SIGCONT and USR2 `signal_delay_s` before the limit. Slurm checks limits every 30 s: with
    # --time=1 and USR2@1 the signal comes 29-59 s after the start, model=small has finished by
    # then. The tiny job itself is never slow enough on its own.
    freezer = tmp_path / "freeze_step.sh"
    freezer.write_text(
        "[[ $SLURM_ARRAY_TASK_ID == 1 ]] || exit 0\n"
        "for _ in $(seq 1200); do\n"
        '    [[ -e "$1/model=base/record.json" ]] && exec scancel --signal=STOP "$SLURM_JOB_ID.0"\n'
        "    sleep 0.1\n"
        "done\n"
    )
    sweep = tmp_path / "sweep"
    jobs = ["model=small,base", *JOB]
    short = [
        *_replacing(LAUNCHER, {"hydra.launcher.timeout_min": 1}),
        "hydra.launcher.signal_delay_s=1",
        f"hydra.launcher.setup=['bash {freezer} {sweep} &']",
    ]
    proc, _ = _sweep(*short, *jobs, out=sweep, say=say, what="sweep hitting --time=1")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]  # an interrupted job is not ok: the sweep says so
    assert "Traceback" not in text, text[-4000:]
    assert re.search(rf"sweep {sweep}: (1 interrupted, 1 ok|1 ok, 1 interrupted)", text), text
    (first,) = {t.split("_")[0] for t in _array_ids(sweep)}
    small = read_record(sweep / "model=small")
    assert small["status"] == "ok", small["error"]
    base = read_record(sweep / "model=base")
    assert base["status"] == "interrupted", base["error"]
    assert base["error"] == "interrupted by SIGUSR2"
    assert base["job"]["slurm"]["job_id"] == f"{first}_1"
    # What it measured before the limit is kept: the finished phase, projected.
    autoencoder = base["phases"]["autoencoder"]
    assert autoencoder["measured"]["iterations"] == 3 and autoencoder["projected"]["energy_kwh"] > 0
    # The phase it was stopped in projects nothing (it may have measured nothing yet).
    assert set(base["phases"]) <= {"autoencoder", "diffusion"}
    assert base["phases"].get("diffusion", {}).get("projected", {}) == {}
    say(f"time limit: model=base interrupted after {base['job']['seconds']:.1f} s of its job")

    # The same sweep given more time: model=small is skipped, model=base finishes.
    small_before = (sweep / "model=small" / "record.json").read_text()
    proc, _ = _sweep(*LAUNCHER, *jobs, out=sweep, say=say, what="the same sweep, rerun")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert f"sweep {sweep}: 2 ok" in text
    assert (sweep / "model=small" / "record.json").read_text() == small_before  # skipped
    base = read_record(sweep / "model=base")
    assert base["status"] == "ok", base["error"]
    assert base["job"]["slurm"]["array_job_id"] != int(first)  # this run's job
    assert set(base["phases"]) == {"autoencoder", "diffusion", "synthesis"}
