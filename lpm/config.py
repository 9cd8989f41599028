"""Typed config: the structured schema behind `conf/`, range checks, and the resolved LDM spec.

Light on purpose (no torch): `--help`, config validation and the report import it.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import math
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

SCALES = ("auto", "paper", "cpu")
# CodeCarbon's attribution of CPU/RAM: the whole node, or this process tree's share.
TRACKING_MODES = ("machine", "process")
PHASES = ("autoencoder", "diffusion", "synthesis")
# The diffusion UNet is trained on this many noise levels (the MONAI LDM recipes): a sampler can
# take at most one denoising step per level.
TRAIN_TIMESTEPS = 1000
# What `Trainer(precision=...)` accepts in Lightning 2.6 (`_PRECISION_INPUT` in
# lightning/fabric/plugins/precision/precision.py), listed here so that checking costs no import;
# the aliases are what Lightning turns them into.
PRECISIONS = (
    "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
PRECISION_ALIASES = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
MIN_WINDOWS = 3  # fewer give no robust centre, no outlier test and no interval worth the name
# `speed.attention`: MONAI's einsum attention, or F.scaled_dot_product_attention (its
# `use_flash_attention`), which takes a flash or memory-efficient kernel where the device has one.
ATTENTIONS = ("math", "sdpa")
# `speed.*` switches in the order `speed_label` names them.
SPEED_SWITCHES = ("channels_last", "compile", "fused_adam")


class ConfigError(ValueError):
    """A config value out of range: the message names the field and what it accepts."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={_show(value)}: {allowed}")
        self.key = key


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


# Structured schema. OmegaConf checks types on every compose and override; `check()` adds ranges.
# OmegaConf reads these annotations (postponed ones too) to type-check every override.


@dataclass
class ModelConfig:
    name: str = MISSING
    width: float = 1.0
    num_res_blocks: int = 2
    attention: bool = True


@dataclass
class AutoencoderArch:
    channels: list[int] = MISSING
    latent_channels: int = 1


@dataclass
class UNetArch:
    channels: list[int] = MISSING
    attention_levels: list[bool] = MISSING
    num_head_channels: int = 32


@dataclass
class Batch:
    autoencoder: int | None = None
    diffusion: int | None = None
    synthesis: int | None = None


@dataclass
class ScaleDims:
    image_size: list[int] = MISSING
    batch: Batch = field(default_factory=Batch)
    norm_num_groups: int = 32
    autoencoder: AutoencoderArch = field(default_factory=AutoencoderArch)
    unet: UNetArch = field(default_factory=UNetArch)


@dataclass
class DimsConfig:
    name: str = MISSING
    spatial_dims: int = MISSING
    in_channels: int = 1
    image_size: list[int] | None = None
    paper: ScaleDims = field(default_factory=ScaleDims)
    cpu: ScaleDims = field(default_factory=ScaleDims)


@dataclass
class GpusConfig:
    name: str = MISSING
    accelerator: str = "auto"
    devices: Any = "auto"  # int or "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    scaling: str = "weak"


@dataclass
class SamplerConfig:
    name: str = MISSING
    scheduler: str = MISSING
    steps: int = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = MISSING
    root: str | None = None
    num_workers: int = 0
    pool: int = 256


@dataclass
class SpeedConfig:
    """Speed-up techniques (`lpm.workload.ldm.Speed`); all off is the baseline."""

    channels_last: bool = False
    compile: bool = False
    fused_adam: bool = False
    attention: str = "math"


@dataclass
class PhaseWindow:
    warmup: int = 2
    iterations: int = 10


@dataclass
class SynthesisWindow(PhaseWindow):
    decode_warmup: int = 1
    decodes: int = 5


@dataclass
class NoiseConfig:
    """When measured windows are trusted (`lpm.energy.window.NoiseRules`)."""

    outlier_mads: float = 3.0
    max_rel_half_width: float = 0.10
    max_drift: float = 0.20


@dataclass
class MeasureConfig:
    full: bool = False
    windows: int = 5
    autoencoder: PhaseWindow = field(default_factory=PhaseWindow)
    diffusion: PhaseWindow = field(default_factory=PhaseWindow)
    synthesis: SynthesisWindow = field(default_factory=SynthesisWindow)
    force_cpu_power_w: float | None = None
    force_ram_power_w: float | None = None
    tracking_mode: str = "machine"
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class EmbodiedConfig:
    """Embodied CO2e of the hardware, amortised over the hours a job holds it
    (`lpm.carbon.embodied`, where each default's source is)."""

    gpu_kg: float = 181.0  # per GPU card: ADEME/Hubblo model, A100 PCIe 40 GB
    server_kg: float = 2500.0  # per GPU server without its GPUs: BLOOM (Luccioni et al. 2023)
    cpu_server_kg: float = 1200.0  # per node without GPUs: Boavizta's Dell R740 archetype
    gpus_per_server: int = 8  # BLOOM's HPE Apollo 6500 Gen10 Plus
    life_years: float = 6.0  # service life: BLOOM; 4-6 years is typical
    utilisation: float = 0.85  # share of its life in use: inferred from BLOOM's 11.2 t


@dataclass
class SiteConfig:
    name: str = MISSING
    zone: str = MISSING
    country_iso3: str = MISSING
    pue: float = 1.58
    embodied: EmbodiedConfig = field(default_factory=EmbodiedConfig)


@dataclass
class CarbonConfig:
    source: str = "codecarbon"
    csv: str | None = None
    constant_g_per_kwh: float | None = None
    when: str | None = None
    fallback: str | None = None
    api_token_env: str = "ELECTRICITYMAPS_API_TOKEN"
    api_url: str = "https://api.electricitymap.org/v3"


@dataclass
class EquivalentsConfig:
    car_g_per_km: float = 107.5
    flight_g_per_pkm: float = 240.0
    budget_kg_per_year: float = 1070.0


@dataclass
class TargetConfig:
    autoencoder_iterations: int = 150_000
    diffusion_iterations: int = 150_000
    samples: int = 10_000


@dataclass
class QualityConfig:
    """The per-job quality evaluation (`lpm.quality.evaluate`)."""

    enabled: bool = True
    holdout: int = 8
    samples: int = 4
    reference_steps: int = 1000
    fid_weights: str | None = None


@dataclass
class LpmConfig:
    model: ModelConfig = MISSING
    dims: DimsConfig = MISSING
    gpus: GpusConfig = MISSING
    sampler: SamplerConfig = MISSING
    data: DataConfig = MISSING
    site: SiteConfig = MISSING
    logger: Any = None
    scale: str = "auto"
    seed: int = 0
    precision: str = "32-true"
    batch: Batch = field(default_factory=Batch)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    carbon: CarbonConfig = field(default_factory=CarbonConfig)
    equivalents: EquivalentsConfig = field(default_factory=EquivalentsConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)


ConfigStore.instance().store(name="lpm_schema", node=LpmConfig)


def job_dirname(overrides: str, limit: int = 120) -> str:
    """A job directory named by its overrides, cut with a hash suffix to stay a valid filename."""
    name = overrides.replace("/", "_") or "defaults"
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("lpm_dirname", job_dirname, replace=True)


def _at_least(key: str, value: Any, low: int, why: str = "") -> None:
    if value is not None and value < low:
        raise ConfigError(key, value, f"must be an integer >= {low}{why}")


def _one_of(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        names = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(key, value, f"must be one of {names}")


def _unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Keys added with `+key=...` that no schema field reads: they would be silently ignored."""
    hints = typing.get_type_hints(schema)
    known = {f.name for f in dataclasses.fields(schema)} | ({"hydra"} if not prefix else set())
    for key in node:
        if key not in known:
            where = f"a key of {prefix.rstrip('.')}" if prefix else "an lpm config key"
            raise ConfigError(
                f"{prefix}{key}",
                node[key],
                f"not {where}; known keys: {', '.join(sorted(known))}",
            )
        kind = hints.get(key)  # none for `hydra`: Hydra's own, checked by Hydra
        if dataclasses.is_dataclass(kind) and isinstance(node[key], DictConfig):
            _unknown_keys(node[key], kind, f"{prefix}{key}.")


def windows_for(iterations: int, windows: int) -> tuple[int, int]:
    """(iterations per window, windows) when `iterations` are split into at most `windows`."""
    size = max(1, math.ceil(iterations / windows))
    return size, math.ceil(iterations / size)


def scheduler_arguments(name: str) -> tuple[str, ...] | None:
    """The keyword arguments of diffusers scheduler `name`, read from its source (no import).

    None when that cannot be told without importing diffusers: the class is not found in
    diffusers' scheduler sources, or its `__init__` takes `**kwargs`.
    """
    spec = importlib.util.find_spec("diffusers")  # finds, does not import, a top-level package
    if spec is None or spec.origin is None:
        return None
    head = f"class {name}("
    for path in sorted((Path(spec.origin).parent / "schedulers").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if head not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.name == name:
                inits = [f for f in node.body if isinstance(f, ast.FunctionDef)]
                init = next((f.args for f in inits if f.name == "__init__"), None)
                if init is None or init.kwarg is not None:  # inherited, or open-ended
                    return None
                return tuple(a.arg for a in [*init.posonlyargs, *init.args, *init.kwonlyargs][1:])
    return None


def _check_sampler(cfg: DictConfig) -> None:
    steps = cfg.sampler.steps
    _at_least("sampler.steps", steps, 1)
    if steps > TRAIN_TIMESTEPS:
        raise ConfigError(
            "sampler.steps",
            steps,
            f"must be <= {TRAIN_TIMESTEPS}, the timesteps the diffusion model is trained on "
            "(one denoising step per trained noise level at most)",
        )
    # Only when kwargs are given: reading the scheduler's source costs ~10 ms. An unknown
    # scheduler is left to the job, which lists the ones diffusers has.
    accepted = scheduler_arguments(cfg.sampler.scheduler) if cfg.sampler.kwargs else None
    if accepted is None:
        return
    for key, value in cfg.sampler.kwargs.items():
        if key not in accepted:
            raise ConfigError(
                f"sampler.kwargs.{key}",
                value,
                f"not an argument of {cfg.sampler.scheduler}; it takes {', '.join(accepted)}",
            )


def speed_label(speed: Any) -> str:
    """The speed-up techniques `speed` (config `speed`) turns on, as one axis value:
    `baseline` when none, else e.g. `channels_last+sdpa`."""
    on = [name for name in SPEED_SWITCHES if speed.get(name)]
    if speed.get("attention", "math") != "math":
        on.append(str(speed.attention))
    return "+".join(on) or "baseline"


def _check_speed(cfg: DictConfig) -> None:
    _one_of("speed.attention", cfg.speed.attention, ATTENTIONS)
    if cfg.speed.attention != "math" and not cfg.model.attention:
        raise ConfigError(
            "speed.attention",
            cfg.speed.attention,
            "needs attention blocks, and model.attention=false leaves the UNet none; "
            "use speed.attention=math",
        )


def _check_gpus(cfg: DictConfig, cuda: bool | None) -> None:
    gpus = cfg.gpus
    if gpus.scaling not in ("weak", "strong"):
        raise ConfigError("gpus.scaling", gpus.scaling, "must be weak or strong")
    devices = gpus.devices
    if not (devices == "auto" or (isinstance(devices, int) and devices >= 1)):
        raise ConfigError("gpus.devices", devices, "must be an integer >= 1 or auto")
    _at_least("gpus.num_nodes", gpus.num_nodes, 1)
    if gpus.accelerator in ("gpu", "cuda") and not (cuda_visible() if cuda is None else cuda):
        raise ConfigError(
            "gpus",
            gpus.name,
            f"asks for CUDA GPUs (gpus.accelerator={gpus.accelerator}) but none is visible "
            "(no NVIDIA driver or device, or CUDA_VISIBLE_DEVICES hides them); use gpus=cpu, "
            "or gpus=auto to take a GPU where there is one",
        )


def _check_measure(cfg: DictConfig) -> None:
    m = cfg.measure
    why = f" ({MIN_WINDOWS} give a robust centre, outlier windows and an interval)"
    _at_least("measure.windows", m.windows, MIN_WINDOWS, why)
    for phase in PHASES:
        _at_least(f"measure.{phase}.warmup", m[phase].warmup, 0)
        _at_least(f"measure.{phase}.iterations", m[phase].iterations, 1)
    _at_least("measure.synthesis.decode_warmup", m.synthesis.decode_warmup, 0)
    _at_least("measure.synthesis.decodes", m.synthesis.decodes, 1)
    if not m.full:  # a full run's windows split the target budget, not these counts
        counts = {f"measure.{p}.iterations": m[p].iterations for p in PHASES}
        counts["measure.synthesis.decodes"] = m.synthesis.decodes
        for key, n in counts.items():
            size, k = windows_for(n, m.windows)
            if k < MIN_WINDOWS:
                raise ConfigError(
                    key,
                    n,
                    f"makes {k} window(s) of {size} with measure.windows={m.windows}; at least "
                    f"{MIN_WINDOWS} are needed: use a multiple of measure.windows",
                )
    for key in ("force_cpu_power_w", "force_ram_power_w"):
        if m[key] is not None and m[key] <= 0:
            raise ConfigError(f"measure.{key}", m[key], "must be > 0 watts, or null (measured)")
    _one_of("measure.tracking_mode", m.tracking_mode, TRACKING_MODES)
    for key in ("outlier_mads", "max_rel_half_width", "max_drift"):
        if m.noise[key] <= 0:
            raise ConfigError(f"measure.noise.{key}", m.noise[key], "must be > 0")


def _check_carbon(cfg: DictConfig) -> None:
    # The carbon package imports only the standard library: cheap enough for a check.
    from lpm.carbon.intensity import FALLBACKS
    from lpm.carbon.intensity.periods import parse_time

    if cfg.carbon.when is not None:
        try:
            parse_time(cfg.carbon.when)
        except ValueError:
            raise ConfigError(
                "carbon.when",
                cfg.carbon.when,
                "must be a year (2024), a month (2024-03), a day (2024-03-15) or an ISO time "
                "(2024-03-15T12:00Z), or null",
            ) from None
    _one_of("carbon.fallback", cfg.carbon.fallback, (None, *FALLBACKS))


def _check_embodied(cfg: DictConfig) -> None:
    # Standard library only, like the carbon package's intensity modules: cheap for a check.
    from lpm.carbon.embodied import problem

    for key, value in cfg.site.embodied.items():
        if (why := problem(key, value)) is not None:
            raise ConfigError(f"site.embodied.{key}", value, why)


def _check_quality(cfg: DictConfig) -> None:
    q = cfg.quality
    why = " (a mean with an interval needs 2)"
    _at_least("quality.holdout", q.holdout, 2, why)
    _at_least("quality.samples", q.samples, 2, why + "; diversity needs a pair")
    if not 1 <= q.reference_steps <= TRAIN_TIMESTEPS:
        raise ConfigError(
            "quality.reference_steps",
            q.reference_steps,
            f"must be an integer from 1 to {TRAIN_TIMESTEPS} (the trained timesteps)",
        )
    if q.fid_weights is not None and not Path(q.fid_weights).expanduser().is_file():
        raise ConfigError(
            "quality.fid_weights",
            q.fid_weights,
            "no such file: give a TorchScript feature extractor (torch.jit.save) on disk, "
            "mapping images (B, C, H, W) to features (B, D), or null for no FID; lpm "
            "downloads nothing",
        )


def check(cfg: DictConfig, cuda: bool | None = None) -> None:
    """Range and consistency checks that types alone cannot express; imports no torch.

    Args:
        cuda: whether a CUDA GPU is visible; None asks NVML (only for configs that want one).

    Raises:
        ConfigError: naming the first offending field and the values it accepts.
    """
    _unknown_keys(cfg, LpmConfig)
    if cfg.scale not in SCALES:
        raise ConfigError("scale", cfg.scale, f"must be one of {', '.join(SCALES)}")
    if cfg.model.width <= 0:
        raise ConfigError("model.width", cfg.model.width, "must be > 0")
    _at_least("model.num_res_blocks", cfg.model.num_res_blocks, 1)
    if cfg.dims.spatial_dims not in (2, 3):
        raise ConfigError("dims.spatial_dims", cfg.dims.spatial_dims, "must be 2 or 3")
    _at_least("seed", cfg.seed, 0)
    if cfg.precision not in PRECISIONS + tuple(PRECISION_ALIASES):
        raise ConfigError(
            "precision",
            cfg.precision,
            f"must be one of Lightning's: {', '.join(PRECISIONS + tuple(PRECISION_ALIASES))}",
        )
    _check_sampler(cfg)
    _check_speed(cfg)
    for name in ("autoencoder_iterations", "diffusion_iterations", "samples"):
        _at_least(f"target.{name}", cfg.target[name], 1)
    for phase in PHASES:
        _at_least(f"batch.{phase}", cfg.batch[phase], 1)
    _check_measure(cfg)
    _check_gpus(cfg, cuda)
    _at_least("data.num_workers", cfg.data.num_workers, 0)
    _at_least("data.pool", cfg.data.pool, 1)
    if cfg.data.name == "folder" and (
        cfg.data.root is None or not Path(cfg.data.root).expanduser().is_dir()
    ):
        raise ConfigError("data.root", cfg.data.root, "data=folder needs an existing directory")
    elif cfg.data.name not in ("phantom", "folder"):
        raise ConfigError("data.name", cfg.data.name, "must be phantom or folder")
    if cfg.site.pue < 1:
        raise ConfigError("site.pue", cfg.site.pue, "must be >= 1 (facility energy / IT energy)")
    _check_embodied(cfg)
    size = cfg.dims.image_size
    if size is not None:
        n = cfg.dims.spatial_dims
        if len(size) != n:
            raise ConfigError(
                "dims.image_size", list(size), f"needs {n} entries for dims={cfg.dims.name}"
            )
        _at_least("dims.image_size", min(size), 1)
    _check_carbon(cfg)
    _check_quality(cfg)


def cuda_visible() -> bool:
    """A CUDA GPU is visible? Asked without torch (NVML ignores CUDA_VISIBLE_DEVICES)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no device: all mean "no GPU"
        return False


def resolve_scale(cfg: DictConfig, cuda: bool | None = None) -> str:
    """`paper` or `cpu`: `auto` follows the hardware the job will run on, like Lightning's."""
    if cfg.scale != "auto":
        return cfg.scale
    if cfg.gpus.accelerator == "cpu":
        return "cpu"
    return "paper" if (cuda_visible() if cuda is None else cuda) else "cpu"


@dataclass(frozen=True)
class LDMSpec:
    """Everything needed to build one LDM: resolved from model × dims × scale."""

    scale: str
    spatial_dims: int
    in_channels: int
    image_size: tuple[int, ...]
    latent_size: tuple[int, ...]
    batch: dict[str, int]
    norm_num_groups: int
    autoencoder: dict[str, Any]
    unet: dict[str, Any]

    @property
    def latent_downsample(self) -> int:
        return self.image_size[0] // self.latent_size[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _widen(channels: list[int], width: float, multiple_of: list[int]) -> list[int]:
    return [
        max(m, math.ceil(c * width / m) * m) for c, m in zip(channels, multiple_of, strict=True)
    ]


def resolve_spec(cfg: DictConfig, scale: str) -> LDMSpec:
    """Apply the model size to the dims' reference networks at `scale` (`paper` or `cpu`).

    Raises:
        ConfigError: when the image size does not divide by the networks' downsampling.
    """
    ref = cfg.dims[scale]
    groups = ref.norm_num_groups
    width, blocks = cfg.model.width, cfg.model.num_res_blocks
    ae_channels = _widen(
        list(ref.autoencoder.channels), width, [groups] * len(ref.autoencoder.channels)
    )
    heads = ref.unet.num_head_channels
    attention = [bool(a) and cfg.model.attention for a in ref.unet.attention_levels]
    # Attention levels need channels divisible by both the norm groups and the head width.
    unet_multiple = [math.lcm(groups, heads) if a else groups for a in attention]
    unet_channels = _widen(list(ref.unet.channels), width, unet_multiple)
    n_ae, n_unet = len(ae_channels), len(unet_channels)
    image_size = tuple(cfg.dims.image_size or ref.image_size)
    down = 2 ** (n_ae - 1)
    total = down * 2 ** (n_unet - 1)
    if any(s % total for s in image_size):
        raise ConfigError(
            "dims.image_size",
            list(image_size),
            f"each entry must divide by {total} (autoencoder ×{down} × UNet ×{total // down})",
        )
    batch = {p: int(cfg.batch[p] if cfg.batch[p] is not None else ref.batch[p]) for p in PHASES}
    return LDMSpec(
        scale=scale,
        spatial_dims=cfg.dims.spatial_dims,
        in_channels=cfg.dims.in_channels,
        image_size=image_size,
        latent_size=tuple(s // down for s in image_size),
        batch=batch,
        norm_num_groups=groups,
        autoencoder=dict(
            channels=ae_channels,
            latent_channels=ref.autoencoder.latent_channels,
            num_res_blocks=blocks,
            attention_levels=[False] * n_ae,
            # The MONAI LDM recipes train the autoencoder without its mid-block attention.
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        ),
        unet=dict(
            channels=unet_channels,
            attention_levels=attention,
            num_res_blocks=blocks,
            num_head_channels=[heads if a else 0 for a in attention],
        ),
    )
