"""How a Slurm sweep ends: every job waited for, each job that left no result named in one line.

hydra-submitit-launcher 1.2 waits on a sweep's jobs in order and raises at the first one that
left no result (killed by SIGKILL, the OOM killer, a lost node, or an error outside lpm's job):
a Hydra traceback, the later jobs not waited for, no sweep summary. lpm's launcher
(`hydra_plugins.lpm_slurm_launcher`, selected by `hydra/launcher=slurm`) submits as that one does
and hands its jobs to :func:`collect` instead, which waits for all of them. A job without a result
is said in one error line (the job, its Slurm job id and state, the last line of its error log
and the log's path) and recorded as failed in its job directory, unless its record already says
how it ended: the sweep's summary counts it, and rerunning the sweep runs it again.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lpm.job import axes_of
from lpm.record.record import Record, read_status
from lpm.record.sinks import save

# As submitit: a finished job's result file may show up late on a shared file system.
RESULT_GRACE_S = 15.0


def collect(
    launcher: Any, jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]], first: int
) -> list[JobReturn]:
    """The jobs' returns, in order, once every job has ended.

    Args:
        launcher: the Hydra submitit launcher that submitted `jobs` (its config and loader
            give each job's directory).
        jobs: submitit jobs, one per entry of `job_overrides`.
        first: the sweep index of the first job (Hydra's `initial_job_idx`).

    Returns:
        Each job's return; for a job that left no result, a completed return whose value is the
        status of its record (`failed` unless the record already said how the job ended).
    """
    for job in jobs:
        job.wait()  # every task: a DDP job has ended once all of its ranks have
    # Global rank 0 writes the record; its result is the job's. One grace period for all jobs,
    # not one per job without a result.
    firsts = [job.task(0) for job in jobs]
    deadline = time.monotonic() + RESULT_GRACE_S
    while not all(_has_result(t) for t in firsts) and time.monotonic() < deadline:
        time.sleep(1.0)
    returns = []
    for index, overrides, job, rank0 in zip(
        range(first, first + len(jobs)), job_overrides, jobs, firsts, strict=True
    ):
        if not _has_result(rank0):
            why = f"ended {job.state} without a result"
            said = last_line(Path(rank0.paths.stderr), "error:")  # srun's or slurmstepd's
        else:
            outcome, value = _result(rank0)
            if outcome == "success":
                returns.append(value)
                continue
            # An exception outside lpm's job, which returns a status for what fails inside it.
            why, said = f"ended {job.state}, raising", _last(str(value).splitlines())
        error = f"Slurm job {job.job_id} {why}" + (f" ({said})" if said else "")
        returns.append(_lost(launcher, index, overrides, error, Path(rank0.paths.stderr)))
    return returns


def _has_result(task: Any) -> bool:
    folder = Path(task.paths.folder)
    with suppress(OSError):  # as submitit: refreshes a shared file system's cached attributes
        folder.chmod(folder.stat().st_mode)
    return Path(task.paths.result_pickle).exists()


def _result(task: Any) -> tuple[str, Any]:
    """submitit's `(outcome, value)`: `("success", what the job returned)` or `("error", its
    traceback)`."""
    from submitit.core.utils import pickle_load

    return pickle_load(task.paths.result_pickle)


def _lost(
    launcher: Any, index: int, overrides: Sequence[str], error: str, log_path: Path
) -> JobReturn:
    config = job_config(launcher, overrides, index)
    job_dir = Path(config.hydra.runtime.output_dir)
    error += f"; log: {log_path}"
    status = record_lost(config, job_dir, error)
    name = job_dir.relative_to(Path(str(config.hydra.sweep.dir)).absolute())
    print(f"lpm: job #{index} ({name}): {error}; recorded {status} in {job_dir}", file=sys.stderr)
    return JobReturn(
        overrides=list(config.hydra.overrides.task),
        working_dir=str(job_dir),
        status=JobStatus.COMPLETED,
        _return_value=status,
    )


def _last(lines: Sequence[str], containing: str = "") -> str | None:
    return next((ln.strip() for ln in reversed(lines) if ln.strip() and containing in ln), None)


def last_line(path: Path, containing: str = "", tail_bytes: int = 8192) -> str | None:
    """The last non-empty line of a log holding `containing` (the last line at all when none
    does): srun's `task 0: Killed`, slurmstepd's time limit or OOM kill."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    return _last(lines, containing) or _last(lines)


def job_config(launcher: Any, overrides: Sequence[str], index: int) -> DictConfig:
    """Job `index`'s config with its output directory, as Hydra's `run_job` makes it on the
    node (the sweep subdir may use the job's number and Hydra's config)."""
    config = launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, list(overrides)
    )
    with open_dict(config.hydra.job):
        config.hydra.job.num = index
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    hydra_config.set_config(config)
    try:
        job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
    finally:
        hydra_config.cfg = before
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(job_dir.absolute())
    return config


def record_lost(config: DictConfig, job_dir: Path, error: str) -> str:
    """Record a job that ended without a result as failed; return its record's status.

    A record that says how the job ended (`ok`, `failed`, `interrupted`: it was written, then the
    process died) is kept as it is. One still `running` keeps what the job measured and says it
    failed, with `error`. Without a record, one is written from the job's config alone.
    """
    path = job_dir / "record.json"
    status = read_status(path)
    if status not in (None, "running"):
        return status
    if status == "running":
        data = json.loads(path.read_text())
        record = Record(**{f.name: data[f.name] for f in fields(Record) if f.name in data})
    else:
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        record = Record(axes=axes_of(task, None), job={"dir": str(job_dir), "overrides": overrides})
    record.status, record.error = "failed", error
    save(record, job_dir)
    return record.status
