"""Measurement: meters and the Lightning callback that opens a window per phase.

from lpm.energy import EnergyCallback, NodeMeters
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: the report reads measurement types without importing Lightning or torch.
    if name == "EnergyCallback":
        from lpm.energy.callback import EnergyCallback

        return EnergyCallback
    if name == "NodeMeters":
        from lpm.energy.meters import NodeMeters

        return NodeMeters
    raise AttributeError(name)
