"""Sinks for a finished record: a flat CSV row beside it and the job's W&B run.

Sinks only reshape the record; nothing here computes a number.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lpm.record.record import Record


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


def log_wandb(record: Mapping[str, Any]) -> bool:
    """Put the record into the active W&B run: summary fields and a one-row table.

    Returns whether a run was there to take it (no run, no import of wandb).
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb else None
    if run is None:
        return False
    flat = {k: v for k, v in flatten(record).items() if v is not None}
    run.summary.update({f"lpm/{k}": v for k, v in flat.items()})
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
