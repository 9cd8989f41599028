"""Read `record.json` files back: one loader for `lpm.price` and `lpm.report`.

Each record gets the status it is used under: its own (`ok`, `failed`, ...), or `unreadable` (not
JSON, not an object), `unsupported` (another schema version) or `incomplete` (an unknown status,
or `ok` without a key the caller needs), with a one-line reason. Standard library only, plus the
record's constants: the report must start without torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpm.record.record import SCHEMA, STATUSES


@dataclass(frozen=True)
class Loaded:
    """One `record.json` as read.

    Attributes:
        name: the job directory relative to the root searched (the root's own name when the
            record lies in the root itself).
        record: the JSON object; None when it is unreadable.
        status: the record's status, or `unreadable`, `unsupported`, `incomplete`.
        error: why it is not `ok`, one line; the record's own error for failed jobs.
    """

    path: Path
    name: str
    record: dict[str, Any] | None
    status: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def dig(data: Any, dotted: str) -> Any:
    """`data["a"]["b"]` for "a.b"; None where a level is missing."""
    for key in dotted.split("."):
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def check(record: Any, required: Iterable[str] = ()) -> tuple[str, str | None]:
    """The status `record` is used under, and why it is not `ok` (None when it is).

    Args:
        required: dotted keys (see `dig`) an `ok` record must hold, not None, to be used.
    """
    if not isinstance(record, dict):
        return "unreadable", f"not a JSON object but {type(record).__name__}"
    schema = record.get("schema")
    if schema != SCHEMA:
        return "unsupported", f"schema {schema!r}; lpm reads {SCHEMA}"
    status = record.get("status")
    if status not in STATUSES:
        return "incomplete", f"unknown status {status!r}"
    if status == "running":  # the job writes its final status last
        return status, record.get("error") or "no final status: the job was killed mid-run"
    if status != "ok":
        return status, record.get("error") or None
    missing = [key for key in required if dig(record, key) is None]
    if missing:
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        return "incomplete", f"status ok but missing {shown}"
    return "ok", None


def load_record(path: str | Path, name: str | None = None, required: Iterable[str] = ()) -> Loaded:
    """One record file; never raises for what the file holds."""
    path = Path(path)
    name = name if name is not None else path.parent.name
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return Loaded(path, name, None, "unreadable", " ".join(str(exc).split()))
    status, error = check(record, required)
    return Loaded(path, name, record if status != "unreadable" else None, status, error)


def load_records(root: str | Path, required: Iterable[str] = ()) -> list[Loaded]:
    """Every `record.json` under `root` (a sweep or a job directory), in path order."""
    root = Path(root)
    required = tuple(required)
    loaded = []
    for path in sorted(root.glob("**/record.json")):
        job_dir = path.parent
        name = job_dir.relative_to(root).as_posix() if job_dir != root else root.name
        loaded.append(load_record(path, name, required))
    return loaded
