"""Slurm for real: sweeps through the submitit launcher on a single-node cluster that
tests/slurm/cluster.sh starts (`make test-slurm`).

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
    for model in ("small", "base"):
        record = read_record(tmp_path / f"model={model}")
        assert record["status"] == "ok", (model, record["error"])
        assert record["axes"]["model"] == model
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
    assert "has not produced any output (state: FAILED)" in text, text[-4000:]
    assert "Killed" in text  # srun's word for the task's end, in the error stream quoted
    assert seconds < 90  # submitit gives a finished job 15 s to leave its result
    # SIGKILL leaves lpm no chance to write: no job may look finished.
    assert all(read_record(p.parent)["status"] != "ok" for p in sweep.glob("*/record.json"))


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
