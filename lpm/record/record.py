"""`record.json`: the contract between a job, the report and outside tools (schema lpm.record/1).

Keys may be added freely; renaming one needs a new schema version.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lpm.carbon.projection import Projection
from lpm.energy.window import (
    J_PER_KWH,
    Estimate,
    PhaseMeasurement,
    RobustEstimate,
    UnitMeasurement,
)

SCHEMA = "lpm.record/1"
STATUSES = ("running", "ok", "failed", "interrupted", "skipped")


def _interval(e: Estimate | None, factor: float = 1.0) -> dict[str, Any] | None:
    if e is None:
        return None
    out: dict[str, Any] = {"value": e.value * factor, "ci95": [e.low * factor, e.high * factor]}
    if isinstance(e, RobustEstimate):
        out |= {"mean": e.mean * factor, "method": e.method}
    return out


def _measured(m: UnitMeasurement | PhaseMeasurement, methods: dict[str, str]) -> dict[str, Any]:
    energy = m.energy_j
    return {
        "iterations": m.iterations,
        "seconds": m.seconds,
        "energy_j": {**energy, "total": sum(energy.values())} if energy else {},
        "method": methods,
    }


def coverage(m: PhaseMeasurement) -> dict[str, Any]:
    """`{component: {metered, expected}, ..., "complete": bool}` for the record."""
    out: dict[str, Any] = {
        c: {"metered": cov.metered, "expected": cov.expected}
        for c, cov in m.coverage.items()
        if cov.expected
    }
    return out | {"complete": m.complete}


def measured_phase(m: PhaseMeasurement) -> dict[str, Any]:
    """A phase's measured block: steady-state totals, each unit's per-iteration costs with the
    windows behind them, the outliers left out and a verdict, and the warm-up, measured apart."""
    out = _measured(m, m.methods)
    out["units"] = {
        name: {
            **_measured(u, m.methods),
            "windows": len(u.windows),
            "seconds_per_iteration": _interval(u.seconds_per_iteration),
            "joules_per_iteration": _interval(u.joules_per_iteration),
            # Every sub-window, outliers included: [iterations, seconds, joules], in order.
            "per_window": [[w.iterations, w.seconds, w.total_j] for w in u.windows],
            "outliers": list(u.outliers),
            "verdict": u.verdict.to_dict(),
        }
        for name, u in m.units.items()
    }
    out["warmup"] = {name: _measured(u, m.methods) for name, u in m.warmup.items()}
    if m.reason:
        out["reason"] = m.reason
    return out


def projected_phase(p: Projection) -> dict[str, Any]:
    seconds, kwh = _interval(p.seconds), _interval(p.energy_j, 1 / J_PER_KWH)
    return {
        "seconds": seconds["value"],
        "seconds_ci95": seconds["ci95"],
        "energy_kwh": kwh and kwh["value"],
        "energy_kwh_ci95": kwh and kwh["ci95"],
    }


@dataclass
class PhaseRecord:
    measured: dict[str, Any]
    target: dict[str, Any]
    projected: dict[str, Any]
    co2e_kg: dict[str, Any] = field(default_factory=lambda: {"measured": None, "projected": None})
    # The hardware's manufacturing share, priced with co2e_kg and never part of it.
    embodied_kg: dict[str, Any] = field(
        default_factory=lambda: {"measured": None, "projected": None}
    )
    verdict: dict[str, Any] = field(default_factory=dict)  # {status: stable|noisy, reasons}
    coverage: dict[str, Any] = field(default_factory=dict)  # {component: {metered, expected}}
    # Energy per unit of work (lpm.energy.flops.efficiency) or {"error": ...}; None if not counted.
    efficiency: dict[str, Any] | None = None


@dataclass
class Record:
    axes: dict[str, Any]
    status: str = "running"
    error: str | None = None
    schema: str = SCHEMA
    params: dict[str, int] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, PhaseRecord] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    carbon: dict[str, Any] | None = None
    totals: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    # Every assumption a number rests on, one short line each: meters, pricing, scale.
    assumptions: list[str] = field(default_factory=list)
    # Quality beside carbon (lpm.quality.evaluate), or {"error": ...}; None when not evaluated.
    quality: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        """Write atomically: a reader never sees half a record, a crash never leaves one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".json", dir=path.parent)
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide records from other users
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2, default=str)
                f.write("\n")
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def error_line(exc: BaseException) -> str:
    """`exc` as a record's error text: its type and message on one line, at most 500 chars."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def read_status(path: str | Path) -> str | None:
    """The status of the record at `path`, or None when there is none or it cannot be read."""
    try:
        return json.loads(Path(path).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
