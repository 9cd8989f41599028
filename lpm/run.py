"""Entry point: `python -m lpm.run -m model=small,base,large dims=2d,3d`.

A thin `@hydra.main` around :func:`run`, which runs one job and writes its `record.json`.
A failing job is recorded as failed and never takes the sweep down with it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lpm.config import ConfigError, check, resolve_scale, resolve_spec
from lpm.console import job_line, report_command, sweep_table
from lpm.record.load import load_records
from lpm.record.record import Record, error_line
from lpm.record.sinks import save
from lpm.slurm import slurm_job

CONF = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("lpm")


def _rank() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _quiet() -> None:
    # Lightning imports torchmetrics, which imports matplotlib: on a new machine it says
    # "generated new fontManager" (INFO) in the middle of the job's lines.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import lightning.pytorch  # noqa: F401  (its import resets its loggers to INFO)

    os.environ.setdefault("WANDB_SILENT", "true")
    # WARNING also drops Lightning's "💡 Tip: ... litlogger / litmodels" lines (INFO).
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if "SLURM_JOB_ID" not in os.environ:
        # Outside a Slurm allocation `srun` merely exists on this host (a login node, a
        # workstation): Lightning's hint to prepend it is noise. Inside one it may be right.
        warnings.filterwarnings("ignore", ".*The `srun` command is available on your system.*")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*predict returned None.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    # Said once by the job, which records the precision that ran; Lightning says it per trainer.
    warnings.filterwarnings("ignore", ".*AMP with fp16 is not supported on CPU.*")


def _relaunch_this_job(local_rank: int) -> tuple[list[str], str]:
    """DDP ranks > 0 run exactly this job as a single Hydra run in this job's directory.

    Lightning's default re-runs the original command line, which under `-m` re-runs the whole
    sweep in every extra rank (and breaks under the submitit launcher).
    """
    hc = HydraConfig.get()
    command = [sys.executable, "-m", "lpm.run", *hc.overrides.task]
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',  # job dirs hold = and , (override names)
        "hydra.output_subdir=null",
        f"hydra.job.name=rank{local_rank}",
    ]
    return command, hydra.utils.get_original_cwd()


def _install_relaunch() -> None:
    # Installed from inside the task function: submitit pickles the task, so module-level
    # code of this file does not run on the cluster node.
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
    import lightning.pytorch.strategies.launchers.subprocess_script as pytorch_launcher

    fabric_launcher._hydra_subprocess_cmd = _relaunch_this_job
    pytorch_launcher._hydra_subprocess_cmd = _relaunch_this_job


def pricer(cfg: DictConfig) -> Callable[[dict, dict], dict]:
    """The job's pricing function of its phases and hardware, with the intensity looked up now
    so a bad zone fails early.

    Raises:
        ConfigError: for an unknown zone or an unusable intensity source.
    """
    from lpm.carbon.embodied import Embodied, EmbodiedFactors
    from lpm.carbon.equivalents import Factors
    from lpm.carbon.intensity import OutOfRangeError, UnknownZone, source_from_config
    from lpm.carbon.pricing import price

    try:
        source = source_from_config(OmegaConf.to_container(cfg.carbon))
        intensity = source.lookup(cfg.site.zone, cfg.carbon.when)
        factors = Factors.from_config(OmegaConf.to_container(cfg.equivalents))
        embodied = EmbodiedFactors.from_config(OmegaConf.to_container(cfg.site.embodied))
    except (KeyError, ValueError, OSError, RuntimeError) as exc:
        message = str(exc)
        # The carbon modules name the field they reject ("carbon.csv: ..."); lookups do not.
        key, sep, detail = message.partition(": ")
        if not (sep and key.startswith(("carbon.", "equivalents.", "site.embodied."))):
            key = "carbon.when" if isinstance(exc, OutOfRangeError) else "site.zone"
            key = key if isinstance(exc, (UnknownZone, OutOfRangeError)) else "carbon.source"
            detail = message
        raise ConfigError(key, OmegaConf.select(cfg, key), detail) from exc
    return lambda phases, hardware: price(
        phases, intensity, cfg.site.pue, factors, Embodied.of(embodied, hardware)
    )


class JobDirTakenError(Exception):
    """The job directory holds the record of another job: other overrides, or none recorded."""

    def __init__(self, job_dir: Path, theirs: Sequence[str] | None, ours: Sequence[str]) -> None:
        held = f"the overrides [{' '.join(theirs)}]" if theirs is not None else "no overrides"
        super().__init__(
            f"{job_dir} holds the record of another job ({held}), not of this one "
            f"([{' '.join(ours)}]); its record is kept: give this job another directory "
            "(hydra.run.dir, or hydra.sweep.dir / hydra.sweep.subdir in a sweep)"
        )


def resume_action(path: Path, overrides: Sequence[str]) -> str:
    """`skip` or `run`, from the record at `path` and this job's overrides alone.

    Every rank decides for itself from the same file, so all ranks of a job agree (rank 0
    writes the record only once every rank has joined the first phase). Overrides are compared
    as a set of `key=value` items: their order on the command line does not change the job.

    Returns:
        `skip` when the record is `ok` and of this job; `run` when there is none, it cannot be
        read (no record lpm could use), or it is this job's but not `ok`.

    Raises:
        JobDirTakenError: the record is another job's, whatever its status.
    """
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return "run"
    if not isinstance(record, dict):
        return "run"
    theirs = (record.get("job") or {}).get("overrides")
    if theirs is None or sorted(theirs) != sorted(overrides):
        raise JobDirTakenError(path.parent, theirs, overrides)
    return "skip" if record.get("status") == "ok" else "run"


_signals: list[str] = []  # received by this process; Lightning turns them into SystemExit(1)
# Slurm's time limit, preemption and `kill`; Ctrl-C; the warning Slurm sends `signal_delay_s`
# before the time limit (hydra/launcher=slurm: submitit's `--signal=USR2@...`). submitit's own
# USR2 handler would raise its UncompletedJobError inside training: the job would be `failed`.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def _interrupt_on_signals() -> dict[int, Any]:
    """Turn the first of SIGNALS into KeyboardInterrupt naming the signal, so the record says
    which one stopped the job; later ones are only noted, so that they cannot cut short the
    writing of that record (Slurm sends SIGTERM some seconds after USR2). Returns the handlers
    to restore (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _signals.clear()

    def interrupt(signum: int, frame: Any) -> None:
        _signals.append(signal.Signals(signum).name)
        if len(_signals) == 1:
            raise KeyboardInterrupt(_signals[0])

    return {s: signal.signal(s, interrupt) for s in SIGNALS}


def _interrupt_ends_only_the_job(multirun: bool) -> bool:
    """Whether an interrupted job returns `interrupted` instead of stopping this process.

    A submitit sweep job (Slurm) runs alone in its process and the launcher waits for its
    result: returning one lets the sweep end with its summary, and rerunning the sweep finishes
    the job. A sweep whose jobs run in this process (Hydra's basic launcher) is stopped by
    Ctrl-C as a whole, and a single run exits non-zero.
    """
    return multirun and "SUBMITIT_EXECUTOR" in os.environ


def _log_rank(status: str) -> None:
    """Each rank of a distributed job says where it ran (read from the job's process group)."""
    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return
    log.info(
        "  rank %d of %d (local rank %s, node %s): %s",
        dist.get_rank(),
        dist.get_world_size(),
        os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "?")),
        os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", "?")),
        status,
    )


def run(cfg: DictConfig) -> str:
    """Run one job; return its status. Exits non-zero outside a sweep when the job fails."""
    from lpm.job import axes_of, execute, finish_loggers, reset_distributed

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    rank0 = _rank() == 0
    path = job_dir / "record.json"
    total = os.environ.get("LPM_SWEEP_JOBS", "?")
    label = " ".join(hc.overrides.task) or "(defaults)"
    if rank0:
        log.info("job %d/%s %s", hc.job.num + 1 if multirun else 1, total if multirun else 1, label)
    try:
        action = resume_action(path, hc.overrides.task)
    except JobDirTakenError as exc:
        if not multirun:
            print(f"lpm: {exc}", file=sys.stderr)
            sys.exit(2)
        log.error("  %s", exc)
        return "failed"
    if action == "skip":
        if rank0:
            log.info("  already ok in %s: skipped", job_dir)
        return "skipped"

    t0 = time.time()
    record = Record(
        axes=axes_of(cfg, None),
        job={
            "dir": str(job_dir),
            "overrides": list(hc.overrides.task),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "slurm": slurm_job(),  # None outside Slurm; the ids sacct joins on
        },
    )
    try:
        check(cfg)
        spec = resolve_spec(cfg, resolve_scale(cfg))
        price = pricer(cfg)
    except ConfigError as exc:
        if not multirun:
            print(f"lpm: config error: {exc}", file=sys.stderr)
            sys.exit(2)
        record.status, record.error = "failed", f"config error: {exc}"
        log.error("  %s", record.error)
        record.write(path)
        return record.status

    record.axes, record.spec = axes_of(cfg, spec), spec.to_dict()
    _quiet()
    _install_relaunch()
    previous = _interrupt_on_signals()
    try:
        execute(cfg, spec, record, job_dir, price)
        record.status = "ok"
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, SIGTERM (Slurm), Lightning's exit
        record.status = "interrupted"
        record.error = f"interrupted by {_signals[0]}" if _signals else error_line(exc)
        if not _interrupt_ends_only_the_job(multirun):
            raise
    except Exception as exc:
        record.status, record.error = "failed", error_line(exc)
        if rank0:
            (job_dir / "error.txt").write_text(traceback.format_exc())
        log.error("  job failed: %s (traceback in error.txt)", record.error)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        record.job["seconds"] = time.time() - t0
        if rank0:
            save(record, job_dir)
            log.info("  %s", job_line(record.to_dict(), path))
        finish_loggers()
        _log_rank(record.status)
        reset_distributed()
    if record.status != "ok" and not multirun:
        sys.exit(1)
    return record.status


class SweepProgress(Callback):
    """Counts a sweep's jobs up front (for `job 3/6` lines) and summarises it at the end."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        completed = job_return.status == JobStatus.COMPLETED
        self.statuses.append(job_return.return_value if completed else "failed")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        # As Hydra's basic sweeper does: the config's sweeper params, then the command line's.
        params = config.hydra.sweeper.get("params") or {}
        given = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(given)
        by_key = {o.get_key_element(): o for o in parsed}
        sizes = [
            len(list(o.sweep_string_iterator())) for o in by_key.values() if o.is_sweep_override()
        ]
        os.environ["LPM_SWEEP_JOBS"] = str(math.prod(sizes))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        # The jobs' own statuses where they ran in this process (a job refused because its
        # directory holds another job's record leaves no record of its own); a launcher that
        # runs them elsewhere (submitit) leaves only the records to count.
        records = load_records(sweep)  # read once: for the count and for the table
        statuses = self.statuses or [r.status for r in records]
        counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no jobs"
        # Printed, not logged: outside a job only Hydra's own log format applies, whose
        # `[time][HYDRA]` prefix would bury the table.
        print(f"sweep {sweep}: {summary}")
        for line in sweep_table(records):
            print(f"  {line}")
        print(f"next: {report_command(sweep)}", flush=True)
        if any(s not in ("ok", "skipped") for s in statuses):
            sys.exit(1)


@hydra.main(config_path=CONF, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    return run(cfg)


if __name__ == "__main__":
    main()
