"""Slurm without a cluster: `job.slurm` from a faked Slurm environment, and the launcher's
resources from the `gpus` group. tests/slurm/ runs the same against a real cluster."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CONF, compose_cfg
from hydra import compose, initialize_config_dir

from lpm.slurm import slurm_job

# Faked (one machine has one node): the variables Slurm sets in global rank 3, on the second
# node, of array task 3 (its own job id 15) of `sbatch --array=0-3 --nodes=2 --ntasks-per-node=2
# --gpus-per-node=2`; tests/slurm checks the names against a real single-node job.
ARRAY_TASK_ON_NODE_2 = {
    "SLURM_JOB_ID": "15",
    "SLURM_ARRAY_JOB_ID": "12",
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_CLUSTER_NAME": "hpc",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_NODELIST": "gpu[01-02]",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_GPUS_PER_NODE": "2",
    "SLURM_GPUS_ON_NODE": "2",
    "SLURM_PROCID": "3",
    "SLURM_NODEID": "1",
    "SLURM_LOCALID": "1",
}


def test_outside_slurm_there_is_no_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm_job() is None
    assert slurm_job({"SLURM_PROCID": "0"}) is None  # a rank variable alone is no Slurm job


def test_array_task_of_a_two_node_job_names_what_sacct_joins_on() -> None:
    assert slurm_job(ARRAY_TASK_ON_NODE_2) == {
        "job_id": "12_3",  # sacct's JobID column for an array task
        "job_id_raw": "15",  # its JobIDRaw
        "array_job_id": 12,
        "array_task_id": 3,
        "cluster": "hpc",
        "partition": "gpu",
        "node_list": "gpu[01-02]",
        "nodes": 2,
        "tasks": 4,
        "tasks_per_node": 2,
        "gpus_per_node": 2,
        "procid": 3,
    }


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ARRAY_TASK_ON_NODE_2.items():
        monkeypatch.setenv(key, value)
    assert slurm_job() == slurm_job(ARRAY_TASK_ON_NODE_2)


def test_plain_job_without_gpus_or_task_counts() -> None:
    block = slurm_job({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1", "SLURM_PROCID": "0"})
    assert block is not None
    assert (block["job_id"], block["job_id_raw"]) == ("7", "7")
    assert block["array_job_id"] is block["array_task_id"] is None
    assert block["tasks"] is block["tasks_per_node"] is block["partition"] is None
    assert block["gpus_per_node"] == 0


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ({"SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_NODE": "a100:2"}, 4),  # what the node got
        ({"SLURM_GPUS_PER_NODE": "a100:2"}, 2),
        ({"SLURM_GPUS_PER_NODE": "a100:1,v100:2"}, 3),
        ({"SLURM_GPUS_PER_NODE": "8"}, 8),
    ],
)
def test_gpus_per_node(gpus: dict[str, str], expected: int) -> None:
    block = slurm_job({"SLURM_JOB_ID": "7", **gpus})
    assert block is not None
    assert block["gpus_per_node"] == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [("SLURM_NTASKS", "two"), ("SLURM_ARRAY_TASK_ID", "1-3"), ("SLURM_GPUS_PER_NODE", "a100")],
)
def test_a_count_that_is_not_one_names_the_variable(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{key}='{value}'"):
        slurm_job({"SLURM_JOB_ID": "7", key: value})


# --- conf/hydra/launcher/slurm.yaml ------------------------------------------------------------


def launcher(*overrides: str) -> dict[str, object]:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True
        )
    keys = ("nodes", "tasks_per_node", "gpus_per_node")
    return {key: cfg.hydra.launcher[key] for key in keys}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["gpus=4gpu"], {"nodes": 1, "tasks_per_node": 4, "gpus_per_node": 4}),
        (
            ["gpus=8gpu", "gpus.num_nodes=2"],
            {"nodes": 2, "tasks_per_node": 8, "gpus_per_node": 8},
        ),
        (["gpus=cpu"], {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": None}),
        (
            ["gpus=cpu", "gpus.devices=2", "gpus.strategy=ddp"],  # CPU ranks ask for no GPU
            {"nodes": 1, "tasks_per_node": 2, "gpus_per_node": None},
        ),
    ],
    ids=" ".join,
)
def test_launcher_resources_follow_the_gpus_group(
    overrides: list[str], expected: dict[str, object]
) -> None:
    assert launcher(*overrides) == expected


def test_launcher_needs_a_fixed_device_count() -> None:
    with pytest.raises(Exception, match=r"tasks_per_node[\s\S]*auto|auto[\s\S]*tasks_per_node"):
        launcher("gpus=auto")


# --- ranks of a 2-node job: who meters what ----------------------------------------------------


def two_node_rank(procid: int) -> dict[str, str]:
    """Faked: the variables Slurm sets in global rank `procid` of a job of two nodes with two
    tasks each (`--nodes=2 --ntasks-per-node=2`, what gpus=cpu2 gpus.num_nodes=2 asks for)."""
    return {
        "SLURM_JOB_ID": "15",
        "SLURM_JOB_NAME": "lpm",
        "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_NODELIST": "node[01-02]",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_PROCID": str(procid),
        "SLURM_NODEID": str(procid // 2),
        "SLURM_LOCALID": str(procid % 2),
    }


class FakeCodeCarbon:
    """Stands in for CodeCarbonMeter: which rank builds one is what these tests ask."""

    methods = {"cpu": "estimate", "ram": "estimate"}  # noqa: RUF012

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def read_j(self) -> dict[str, float]:
        return {"cpu": 0.0, "ram": 0.0}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("procid", range(4))
def test_two_node_job_meters_cpu_and_ram_once_per_node_and_writes_once(
    procid: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import lightning.pytorch as pl
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from lpm.energy import meters as meters_module
    from lpm.energy.meters import NodeMeters
    from lpm.run import _rank

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in two_node_rank(procid).items():
        monkeypatch.setenv(key, value)
    gpus = compose_cfg("gpus=cpu2", "gpus.num_nodes=2").gpus
    trainer = pl.Trainer(
        accelerator=gpus.accelerator,
        devices=gpus.devices,
        strategy=gpus.strategy,
        num_nodes=gpus.num_nodes,
        logger=False,
        enable_progress_bar=False,
    )
    # Lightning takes the ranks from Slurm (and starts no process of its own).
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    node, local = procid // 2, procid % 2
    assert (trainer.world_size, trainer.global_rank) == (4, procid)
    assert (trainer.node_rank, trainer.local_rank) == (node, local)
    # CPU and RAM: one meter per node, on its local rank 0; summed over ranks, each node once.
    monkeypatch.setattr(meters_module, "CodeCarbonMeter", FakeCodeCarbon)
    meters = NodeMeters(tmp_path)
    built = meters(trainer)
    assert meters.expected == ({"cpu": 1, "ram": 1} if local == 0 else {})
    assert [type(m) for m in built] == ([FakeCodeCarbon] if local == 0 else [])
    # On GPUs each rank meters its own GPU as well (device index = local rank).
    monkeypatch.setattr(NodeMeters, "_nvml", lambda self, index: FakeCodeCarbon())
    on_gpu = NodeMeters(tmp_path)
    on_gpu.for_device(SimpleNamespace(type="cuda", index=local), local)
    assert on_gpu.expected == {"gpu": 1, **({"cpu": 1, "ram": 1} if local == 0 else {})}
    # One record per job: lpm writes it from global rank 0 only.
    assert (_rank() == 0) == (procid == 0)


def test_the_multi_node_example_asks_slurm_for_two_nodes_of_four_gpus() -> None:
    # README "On a cluster": gpus=4gpu gpus.num_nodes=2 is 8 GPUs, 8 ranks.
    assert launcher("gpus=4gpu", "gpus.num_nodes=2") == {
        "nodes": 2,
        "tasks_per_node": 4,
        "gpus_per_node": 4,
    }


# --- signals: time limit, preemption, Ctrl-C ---------------------------------------------------


def test_the_first_signal_interrupts_the_job_and_later_ones_are_only_noted() -> None:
    from lpm.run import _interrupt_on_signals, _signals

    previous = _interrupt_on_signals()
    try:
        assert set(previous) == {signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}
        with pytest.raises(KeyboardInterrupt, match="SIGUSR2"):  # Slurm's warning, submitit's
            signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGTERM)  # the time limit, while the record is written
        assert _signals == ["SIGUSR2", "SIGTERM"]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize(
    ("multirun", "submitit", "ends_only_the_job"),
    [
        (True, True, True),  # a Slurm sweep job: return `interrupted`, the sweep goes on
        (True, False, False),  # Ctrl-C in a local sweep stops the sweep
        (False, False, False),  # a single run exits
    ],
)
def test_an_interrupt_ends_only_a_submitit_sweep_job(
    multirun: bool, submitit: bool, ends_only_the_job: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lpm.run import _interrupt_ends_only_the_job

    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    if submitit:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert _interrupt_ends_only_the_job(multirun) is ends_only_the_job


# --- a job that left no result (lpm.launcher) --------------------------------------------------


def test_a_lost_job_without_a_record_gets_a_failed_one(tmp_path: Path) -> None:
    from lpm.launcher import record_lost
    from lpm.run import resume_action

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = compose("config", overrides=["model=base"], return_hydra_config=True)
    status = record_lost(config, tmp_path, "Slurm job 12_1 ended FAILED without a result")
    assert status == "failed"
    record = json.loads((tmp_path / "record.json").read_text())
    assert (record["status"], record["error"]) == (
        status,
        "Slurm job 12_1 ended FAILED without a result",
    )
    assert record["axes"]["model"] == "base"
    assert record["job"]["overrides"] == ["model=base"]
    # The same sweep runs it again.
    assert resume_action(tmp_path / "record.json", ["model=base"]) == "run"


@pytest.mark.parametrize(
    ("status", "kept"), [("running", False), ("interrupted", True), ("ok", True)]
)
def test_a_lost_job_keeps_what_its_record_says(status: str, kept: bool, tmp_path: Path) -> None:
    from lpm.launcher import record_lost
    from lpm.record.record import Record

    phases = {"autoencoder": {"measured": {"iterations": 3}}}
    Record(axes={"model": "small"}, status=status, phases=phases, job={"overrides": []}).write(
        tmp_path / "record.json"
    )
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = compose("config", return_hydra_config=True)
    assert record_lost(config, tmp_path, "killed") == (status if kept else "failed")
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == (status if kept else "failed")
    assert record["error"] == (None if kept else "killed")
    assert record["phases"] == phases  # what it measured before it died


def test_last_line_prefers_what_srun_said(tmp_path: Path) -> None:
    from lpm.launcher import last_line

    log = tmp_path / "0_log.err"
    log.write_text("training...\nsrun: error: node1: task 0: Killed\nsrun: Force Terminated\n\n")
    assert last_line(log, "error:") == "srun: error: node1: task 0: Killed"
    assert last_line(log) == "srun: Force Terminated"
    assert last_line(tmp_path / "missing.err") is None
