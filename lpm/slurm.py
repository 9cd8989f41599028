"""The Slurm job a process runs in, read from the variables Slurm sets: the record's `job.slurm`.

Light on purpose (stdlib only): the record writer calls it in every job. The keys are what a user
needs to join lpm's records with `sacct`: `job_id` is sacct's `JobID` column (`12_3` for task 3 of
array job 12), `job_id_raw` its `JobIDRaw` (the task's own id), `cluster` its `--clusters`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

# `--gpus-per-node` takes `[type:]count[,[type:]count...]`; Slurm hands it on as given.
_GPU_COUNT = re.compile(r"(?:[^:,]+:)?(\d+)")


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: Slurm sets it to an integer") from None


def _gpus_per_node(env: Mapping[str, str]) -> int:
    # SLURM_GPUS_ON_NODE is what this node got, however it was asked for (--gpus-per-node,
    # --gres, --gpus); SLURM_GPUS_PER_NODE only the request, which may name a type (a100:2).
    on_node = _int(env, "SLURM_GPUS_ON_NODE")
    if on_node is not None:
        return on_node
    request = env.get("SLURM_GPUS_PER_NODE")
    if not request:
        return 0  # neither is set in a job that was given no GPU
    matches = [_GPU_COUNT.fullmatch(item) for item in request.split(",")]
    if not all(matches):
        raise ValueError(f"SLURM_GPUS_PER_NODE={request!r}: expected [type:]count[,...]")
    return sum(int(m.group(1)) for m in matches if m)


def slurm_job(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The Slurm job this process runs in, or None outside Slurm (no `SLURM_JOB_ID`).

    Args:
        env: the environment to read; `os.environ` by default.

    Returns:
        `job_id` (sacct's JobID: `<array job>_<task>` for an array task), `job_id_raw`,
        `array_job_id` and `array_task_id` (None outside an array), `cluster`, `partition`,
        `node_list` (Slurm's compressed host list), `nodes`, `tasks`, `tasks_per_node`,
        `gpus_per_node` (0 when the job has none) and `procid` (this process's global rank).
        A variable Slurm did not set gives None.

    Raises:
        ValueError: a variable that holds a count is not one; the message names it.
    """
    env = os.environ if env is None else env
    raw = env.get("SLURM_JOB_ID")
    if not raw:
        return None
    array_job = _int(env, "SLURM_ARRAY_JOB_ID")
    array_task = _int(env, "SLURM_ARRAY_TASK_ID")
    in_array = array_job is not None and array_task is not None
    return {
        "job_id": f"{array_job}_{array_task}" if in_array else raw,
        "job_id_raw": raw,
        "array_job_id": array_job,
        "array_task_id": array_task,
        "cluster": env.get("SLURM_CLUSTER_NAME"),
        "partition": env.get("SLURM_JOB_PARTITION"),
        "node_list": env.get("SLURM_JOB_NODELIST"),
        "nodes": _int(env, "SLURM_NNODES"),
        "tasks": _int(env, "SLURM_NTASKS"),
        "tasks_per_node": _int(env, "SLURM_NTASKS_PER_NODE"),
        "gpus_per_node": _gpus_per_node(env),
        "procid": _int(env, "SLURM_PROCID"),
    }
