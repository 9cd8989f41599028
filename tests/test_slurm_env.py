"""Slurm without a cluster: `job.slurm` from a faked Slurm environment, and the launcher's
resources from the `gpus` group. tests/slurm/ runs the same against a real cluster."""

from __future__ import annotations

import pytest
from conftest import CONF
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
