"""Measurement: meters and the Lightning callback that opens a window per phase.

from lpm.energy import EnergyCallback, NodeMeters

with NodeMeters("energy", "DEU") as meters:  # closed on exit: CodeCarbon stopped, CSV written
    trainer = Trainer(callbacks=[energy := EnergyCallback(warmup=20, window=100, meters=meters)])
    trainer.fit(model, datamodule)
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
