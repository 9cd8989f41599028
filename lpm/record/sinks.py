"""Sinks for a finished record: a flat CSV row beside it and the job's W&B run.

Sinks only reshape the record; nothing here computes a number. The W&B run is set up here too
(:func:`job_logger`): its config, group, job type and tags, and the directories W&B writes to.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lpm.console import projected, verdicts
from lpm.record.record import Record

WANDB_TARGET = "lpm.record.sinks.wandb_logger"
# Where W&B writes besides the run itself (its service's logs, artifact staging), relative to the
# job directory: a job leaves nothing under $HOME. WANDB_CONFIG_DIR is left alone: W&B only reads
# it during a run, and it holds the `wandb login` settings (a private server's base_url) that an
# online run needs.
WANDB_DIRS = {"WANDB_DIR": "", "WANDB_CACHE_DIR": "wandb/cache", "WANDB_DATA_DIR": "wandb/data"}
_outer_env: dict[str, str | None] = {}  # what the job's W&B directories replaced, to restore


def wandb_logger(**kwargs: Any) -> Any:
    """Lightning's `WandbLogger(**kwargs)`, without the `anonymous=None` it always hands to
    `wandb.init` (W&B 0.31 warns on every run that the setting has no effect)."""
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(**kwargs)
    logger._wandb_init.pop("anonymous", None)
    return logger


def tags(axes: Mapping[str, Any]) -> list[str]:
    """`axis=value` for every scalar axis (W&B tags hold at most 64 characters)."""
    return [
        f"{k}={v}"[:64]
        for k, v in axes.items()
        if isinstance(v, (str, int, float)) and not isinstance(v, bool)
    ]


def wandb_run_args(cfg: DictConfig, axes: Mapping[str, Any], group: str) -> dict[str, Any]:
    """`wandb.init` arguments for a job: the axes at the top of its config (the runs table
    groups by config keys: `dims`, `model`, ...), the resolved config under `cfg`, the sweep as
    its group, `<model>-<dims>` as job type, the axes as tags."""
    return {
        "config": {**axes, "cfg": OmegaConf.to_container(cfg, resolve=True)},
        "group": group,
        "job_type": f"{axes['model']}-{axes['dims']}",
        "tags": tags(axes),
    }


def keep_wandb_in(job_dir: Path) -> None:
    """Point W&B's directories into `job_dir` until :func:`close_wandb`."""
    for key, sub in WANDB_DIRS.items():
        _outer_env.setdefault(key, os.environ.get(key))
        os.environ[key] = str(job_dir / sub)


def job_logger(cfg: DictConfig, axes: Mapping[str, Any], job_dir: Path) -> Any:
    """The Lightning logger `cfg.logger` names, or None for none.

    The W&B one (`_target_: lpm.record.sinks.wandb_logger`) gets :func:`wandb_run_args`, its
    group being the sweep's directory name (a single run's own); W&B writes inside `job_dir`.
    """
    target = cfg.logger.get("_target_")
    if not target:
        return None
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if target != WANDB_TARGET:
        return hydra.utils.instantiate(cfg.logger)
    hc = HydraConfig.get()
    group = Path(hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.runtime.output_dir).name
    keep_wandb_in(job_dir)
    # Partial, then called: instantiating with the resolved config as an argument would make
    # Hydra instantiate the `_target_` inside it.
    make = hydra.utils.instantiate(cfg.logger, _partial_=True)
    return make(**wandb_run_args(cfg, axes, group))


def close_wandb() -> None:
    """Finish the job's W&B run and stop W&B's service (its logs are in this job's directory),
    then give back the directories W&B had before the job: the next job of a sweep gets its
    own run, in its own directory (W&B silently reuses an unfinished run otherwise)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    if not _outer_env:
        return
    if wandb is not None:
        wandb.teardown()
    for key, value in _outer_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _outer_env.clear()


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to scalars; lists become JSON text so one job stays one row."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def write_csv_row(record: Mapping[str, Any], path: str | Path) -> Path:
    """One header and one row: concatenating a sweep's files gives a table."""
    flat = flatten(record)
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat))
        writer.writeheader()
        writer.writerow(flat)
    return path


def _bounded(name: str, value: Any, ci: Any) -> dict[str, Any]:
    """`name` with its 95% bounds as `name_lo`, `name_hi` where the record has them."""
    if value is None:
        return {}
    low, high = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    bounds = {f"{name}_lo": low, f"{name}_hi": high} if low is not None else {}
    return {name: value} | bounds


def _quality_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """Each quality metric (`quality/sampler/psnr_db`, `quality/fid`, ...) with its bounds, and
    the sampler's `identical` (its PSNR ∞, not logged) and `stochastic` flags."""
    quality = record.get("quality")
    if not isinstance(quality, Mapping):
        return {}
    out: dict[str, Any] = {}
    for part, block in quality.items():
        if not isinstance(block, Mapping):
            continue
        if "value" in block:  # fid: a metric of its own
            out |= _bounded(f"quality/{part}", block["value"], block.get("ci95"))
            continue
        for key, entry in block.items():
            name = f"quality/{part}/{key}"
            if isinstance(entry, Mapping) and "value" in entry:
                out |= _bounded(name, entry["value"], entry.get("ci95"))
            elif key in ("identical", "stochastic") and isinstance(entry, bool):
                out[name] = entry
    return out


def _efficiency_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """Per phase and unit: FLOPs per iteration, joules per PFLOP and MFU with their bounds
    (`efficiency/<phase>/<unit>/...`)."""
    out: dict[str, Any] = {}
    for phase, block in (record.get("phases") or {}).items():
        eff = block.get("efficiency") if isinstance(block, Mapping) else None
        if not isinstance(eff, Mapping):
            continue
        mfu, mfu_ci = eff.get("mfu") or {}, eff.get("mfu_ci95") or {}
        for unit, flops in (eff.get("flops_per_iteration") or {}).items():
            name = f"efficiency/{phase}/{unit}"
            joules = (eff.get("joules_per_pflop") or {}).get(unit) or {}
            out |= {f"{name}/flops": flops}
            out |= _bounded(f"{name}/j_per_pflop", joules.get("value"), joules.get("ci95"))
            out |= _bounded(f"{name}/mfu", mfu.get(unit), mfu_ci.get(unit))
    return out


def _embodied_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """Projected embodied kg CO2e per phase and in total, and the total with it
    (`projected/<phase>/embodied_kg`, `projected/total/co2e_with_embodied_kg`): beside the
    operational `co2e_kg`, never in it."""
    out: dict[str, Any] = {}
    for phase, block in (record.get("phases") or {}).items():
        embodied = block.get("embodied_kg") if isinstance(block, Mapping) else None
        if isinstance(embodied, Mapping):
            value, ci = embodied.get("projected"), embodied.get("projected_ci95")
            out |= _bounded(f"projected/{phase}/embodied_kg", value, ci)
    totals = record.get("totals") or {}
    out |= _bounded(
        "projected/total/embodied_kg", totals.get("embodied_kg"), totals.get("embodied_kg_ci95")
    )
    with_embodied = totals.get("co2e_with_embodied_kg")
    return out | _bounded("projected/total/co2e_with_embodied_kg", with_embodied, None)


def wandb_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """Per phase and in total: projected kWh and kg CO2e with their 95% bounds
    (`projected/<phase>/co2e_kg`, `..._lo`, `..._hi`), embodied kg CO2e on its own, car-km,
    each phase's verdict (`verdict/<phase>`) and energy per unit of work
    (`efficiency/<phase>/<unit>/...`), and the quality metrics (`quality/...`)."""
    out: dict[str, Any] = {}
    for phase, estimates in projected(record).items():
        for key, e in estimates.items():
            name = f"projected/{phase}/{key}"
            out |= {name: e.value, f"{name}_lo": e.low, f"{name}_hi": e.high}
    car_km = (record.get("totals") or {}).get("car_km")
    if car_km is not None:
        out["projected/total/car_km"] = car_km
    out |= {f"verdict/{phase}": status for phase, status in verdicts(record).items()}
    return out | _embodied_summary(record) | _efficiency_summary(record) | _quality_summary(record)


def log_wandb(record: Mapping[str, Any]) -> bool:
    """Put the record into the active W&B run: the final axes into its config (the precision
    that ran), :func:`wandb_summary` and every field into its summary, and a one-row table.

    Returns whether a run was there to take it (no run, no import of wandb).
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb else None
    if run is None:
        return False
    run.config.update(dict(record.get("axes") or {}), allow_val_change=True)
    flat = {k: v for k, v in flatten(record).items() if v is not None}
    run.summary.update({f"lpm/{k}": v for k, v in flat.items()} | wandb_summary(record))
    columns = list(flat)
    run.log({"lpm/record": wandb.Table(columns=columns, data=[[flat[c] for c in columns]])})
    return True


def save(record: Record, job_dir: str | Path) -> Path:
    """Every sink: `record.json` (atomic), `record.csv`, and the W&B run if one is active."""
    job_dir = Path(job_dir)
    path = record.write(job_dir / "record.json")
    data = record.to_dict()
    write_csv_row(data, job_dir / "record.csv")
    log_wandb(data)
    return path
