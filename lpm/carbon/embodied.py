"""Embodied emissions: the manufacturing of the GPUs and servers a job ran on, amortised over the
hours it held them, each factor with its source.

    embodied_kg = (gpus × gpu_kg + servers × server_kg + cpu_servers × cpu_server_kg) × hours
                  / (life_years × 8,760 h × utilisation)

A GPU job carries the servers its GPUs sit in pro rata, by the share of their GPUs it holds:
`servers` = gpus / gpus_per_server, a fraction (one GPU of an 8-GPU server carries 1/8 of the
chassis; the other seven GPUs carry the rest for the jobs they run). A node without GPUs is a CPU
server (`cpu_server_kg`, one per node), not the chassis of a GPU server. Embodied CO2e depends on
neither zone nor month: re-pricing leaves it as it is. It is recorded beside the operational
CO2e and never added to it silently.

The defaults combine the GPU card of the ADEME/Hubblo life-cycle model with the BLOOM study's
server, service life and utilisation (Luccioni et al. 2023), the one published amortisation that
names all four; its utilisation we could not read in the study's text, so it is INFERRED from the
study's total. Chien et al.'s 318 kg per GPU (HotCarbon 2023) is an eighth of a whole 8-GPU
instance, server included: use it as `gpu_kg=318 server_kg=0`, not beside a server figure.
The CPU server is Boavizta's Dell R740 archetype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lpm.carbon.equivalents import Factor, with_config

HOURS_PER_YEAR = 8760.0
METHOD = (
    "(gpus × gpu_kg + servers × server_kg + cpu_servers × cpu_server_kg) × hours "
    "/ (life_years × 8,760 h × utilisation); servers = gpus / gpus_per_server, pro rata "
    "(a 1-GPU job on an 8-GPU server carries 1/8 of it); cpu_servers = nodes without GPUs, "
    "one CPU server each"
)
_BLOOM = "Luccioni et al. 2023 (BLOOM, JMLR 24(253))"


def problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for factor `name` (the values it accepts), None if nothing."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number):
        return "must be a finite number"
    if name in ("gpu_kg", "server_kg", "cpu_server_kg") and number < 0:
        return "must be >= 0 kg CO2e"
    if name == "gpus_per_server" and (number < 1 or number != int(number)):
        return "must be an integer >= 1"
    if name == "life_years" and number <= 0:
        return "must be > 0 years"
    if name == "utilisation" and not 0 < number <= 1:
        return "must be in (0, 1]: the share of its life the hardware is in use"
    return None


# Hubblo's GPU calculator on the parametric model made for ADEME (Lees-Perasso et al., ADEME 2026,
# "Life cycle assessments of GPUs for artificial intelligence"): the card alone, manufacturing,
# transport and end of life. boaviztapi 2.5.0's own GPU model gives more for the same card
# (322 kg) and 575 kg for an H100 SXM 80 GB: on H100s, gpu_kg=575.
GPU_KG = Factor(
    181.0,
    "ADEME/Hubblo parametric GPU model (Boavizta data): NVIDIA A100 PCIe 40 GB card, 181 kg CO2e "
    "excluding use",
)
# The study's HPE Apollo 6500 Gen10 Plus without its GPUs; also the default of Boavizta's
# e-footprint GPUServer, sourced there to the study. Boavizta's 8-GPU server archetypes
# (boaviztapi 2.5.0, low to very high) come to 1.1-2.3 t without their GPUs.
SERVER_KG = Factor(
    2500.0, f"{_BLOOM}: HPE Apollo 6500 Gen10 Plus server without GPUs, 2,500 kg CO2e"
)
# A node without GPUs: Boavizta's Dell PowerEdge R740 archetype, a 2-socket rack server, its
# embedded (manufacturing) CO2e computed offline with boaviztapi 2.5.0.
CPU_SERVER_KG = Factor(
    1200.0,
    "Boavizta: Dell PowerEdge R740 server archetype (no GPU), 1,200 kg CO2e embedded, computed "
    "offline with boaviztapi 2.5.0",
)
GPUS_PER_SERVER = Factor(
    8.0, f"{_BLOOM}: 8 A100 per HPE Apollo 6500 Gen10 Plus (384 GPUs in 48 servers)"
)
LIFE_YEARS = Factor(6.0, f"{_BLOOM}: 6-year service life (4-6 years is typical)")
# 1,082,990 GPU-hours on 48 servers of 8: (384 × 150 kg + 48 × 2,500 kg) × 2,820.3 h /
# (6 × 8,760 h × u) = 11.2 t  →  u = 9,530 kg / 11,200 kg = 0.85.
UTILISATION = Factor(
    0.85,
    f"INFERRED from {_BLOOM}: 11.2 t embodied for 1,082,990 GPU-hours at 150 kg per GPU, "
    "2,500 kg per 8-GPU server and 6 years",
)


@dataclass(frozen=True)
class EmbodiedFactors:
    gpu_kg: Factor = GPU_KG
    server_kg: Factor = SERVER_KG
    cpu_server_kg: Factor = CPU_SERVER_KG
    gpus_per_server: Factor = GPUS_PER_SERVER
    life_years: Factor = LIFE_YEARS
    utilisation: Factor = UTILISATION

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EmbodiedFactors:
        """Defaults with the values in `cfg` (config `site.embodied`) substituted; a value
        equal to the default keeps its cited source.

        Raises:
            ValueError: "site.embodied.<name>: <what it accepts>, got <value>".
        """
        return with_config(cls(), cfg, "site.embodied", problem)

    @classmethod
    def from_record(cls, block: Mapping[str, Any] | None) -> EmbodiedFactors:
        """The factors a record was priced with (its `carbon.embodied`), sources included;
        the default for each factor it lacks (a record priced before embodied emissions were,
        or before `cpu_server_kg` was)."""
        defaults = cls()
        recorded = {
            f.name: Factor(float(entry["value"]), str(entry["source"]))
            for f in dataclasses.fields(cls)
            if isinstance(entry := (block or {}).get(f.name), Mapping)
        }
        return dataclasses.replace(defaults, **recorded)


@dataclass(frozen=True)
class Fleet:
    """The hardware a job holds, over all its nodes."""

    nodes: int
    gpus: int
    servers: float  # its share of the GPU servers: gpus / gpus_per_server
    cpu_servers: int  # nodes without GPUs, one CPU server each

    @classmethod
    def of(cls, hardware: Mapping[str, Any], gpus_per_server: float) -> Fleet:
        """From the record's `hardware` block: CUDA devices are GPUs, carrying their servers pro
        rata; a job without any holds one CPU server per node."""
        nodes = int(hardware.get("nodes") or 1)
        per_node = int(hardware.get("devices") or 0) if hardware.get("accelerator") == "cuda" else 0
        gpus = nodes * per_node
        return cls(nodes, gpus, servers=gpus / gpus_per_server, cpu_servers=0 if gpus else nodes)


@dataclass(frozen=True)
class Embodied:
    """Embodied CO2e of one job's hardware per hour it runs."""

    factors: EmbodiedFactors
    fleet: Fleet

    @classmethod
    def of(cls, factors: EmbodiedFactors, hardware: Mapping[str, Any]) -> Embodied:
        return cls(factors, Fleet.of(hardware, factors.gpus_per_server.value))

    @property
    def kg_per_hour(self) -> float:
        f, fleet = self.factors, self.fleet
        made_kg = (
            fleet.gpus * f.gpu_kg.value
            + fleet.servers * f.server_kg.value
            + fleet.cpu_servers * f.cpu_server_kg.value
        )
        return made_kg / (f.life_years.value * HOURS_PER_YEAR * f.utilisation.value)

    def kg(self, seconds: float | None) -> float | None:
        """Embodied CO2e of `seconds` of the job's wall time; None when that is unknown."""
        return None if seconds is None else self.kg_per_hour * seconds / 3600.0

    def phase(self, phase: Mapping[str, Any]) -> dict[str, Any]:
        """`{measured, projected, projected_ci95}` kg of one record phase, from its measured and
        projected seconds (the interval is the projected time's)."""
        projected = phase.get("projected") or {}
        ci = projected.get("seconds_ci95")
        return {
            "measured": self.kg((phase.get("measured") or {}).get("seconds")),
            "projected": self.kg(projected.get("seconds")),
            "projected_ci95": [self.kg(ci[0]), self.kg(ci[1])] if ci else None,
        }

    def to_record(self) -> dict[str, Any]:
        """The record's `carbon.embodied`: every factor with its source, the fleet, the rate."""
        return {
            **dataclasses.asdict(self.factors),
            **dataclasses.asdict(self.fleet),
            "kg_per_hour": self.kg_per_hour,
            "method": METHOD,
        }

    def assumption(self) -> str:
        """'embodied: ...': the amortisation in numbers, and each INFERRED factor."""
        f, fleet = self.factors, self.fleet
        if fleet.gpus:
            held = (
                f"{fleet.gpus} GPU × {f.gpu_kg.value:g} kg + {fleet.servers:.3g} server × "
                f"{f.server_kg.value:g} kg"
            )
            how = (
                f"servers pro rata: {fleet.gpus} GPU / {f.gpus_per_server.value:g} GPUs per "
                "server, not whole servers"
            )
            if f.gpu_kg == GPU_KG:  # one card's figure stands for whatever GPU ran
                how += "; gpu_kg is an A100 PCIe 40 GB's, whatever the GPU (H100 SXM: 575 kg)"
        else:
            held = f"{fleet.cpu_servers} CPU server × {f.cpu_server_kg.value:g} kg"
            how = "no GPU: one CPU server per node, no GPU server"
        inferred = "".join(
            f"; {field.name} {factor.source}"
            for field in dataclasses.fields(f)
            if (factor := getattr(f, field.name)).inferred
        )
        return (
            f"embodied: ({held}) / ({f.life_years.value:g} years × 8,760 h × "
            f"{f.utilisation.value:g} utilisation) = {self.kg_per_hour:.3g} kg CO2e per hour "
            f"of the job, recorded apart from co2e_kg; {how}{inferred}"
        )
