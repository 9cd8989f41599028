"""Speed-up techniques as axes: config, record, numerics; the training loss off the hot path."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import CONF, compose_cfg, options
from test_models import tiny_spec

from lpm.config import ConfigError, check, resolve_spec, speed_label
from lpm.job import axes_of
from lpm.workload.ldm import (
    LOSS_EVERY_N_STEPS,
    DiffusionModule,
    Speed,
    build_autoencoder,
    build_unet,
    log_loss,
    make_scheduler,
    synthesis_plan,
)

# What each conf/speedup/ preset changes, as the record's axes name it.
PRESETS = {
    "baseline": {"sampler": "ddpm", "precision": "32-true", "speed": "baseline"},
    "ddim": {"sampler": "ddim", "steps": 50, "speed": "baseline"},
    "dpmpp": {"sampler": "dpmpp", "scheduler": "DPMSolverMultistepScheduler", "steps": 25},
    "unipc": {"sampler": "unipc", "scheduler": "UniPCMultistepScheduler", "steps": 25},
    "bf16": {"precision": "bf16-mixed", "speed": "baseline"},
    "fp16": {"precision": "16-mixed", "speed": "baseline"},
    "channels_last": {"speed": "channels_last", "channels_last": True, "compile": False},
    "compile": {"speed": "compile", "compile": True, "channels_last": False},
    "fused_adam": {"speed": "fused_adam", "fused_adam": True},
    "sdpa": {"speed": "sdpa", "attention": "sdpa"},
    "all": {
        "sampler": "dpmpp",
        "precision": "bf16-mixed",
        "speed": "channels_last+compile+fused_adam+sdpa",
        "channels_last": True,
        "compile": True,
        "fused_adam": True,
        "attention": "sdpa",
    },
}


def test_every_speedup_preset_is_covered_here() -> None:
    assert options("speedup") == sorted(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_speedup_is_named_in_the_record_axes(preset: str) -> None:
    cfg = compose_cfg(f"speedup={preset}")
    check(cfg)
    axes = axes_of(cfg, resolve_spec(cfg, "cpu"))
    assert {k: axes[k] for k in PRESETS[preset]} == PRESETS[preset]
    # Every technique is its own axis, whatever the preset.
    assert {"speed", "channels_last", "compile", "fused_adam", "attention"} <= set(axes)


def test_the_command_line_beats_a_preset_and_fields_mix() -> None:
    cfg = compose_cfg("speedup=all", "sampler=unipc", "speed.compile=false")
    assert cfg.sampler.name == "unipc"
    assert speed_label(cfg.speed) == "channels_last+fused_adam+sdpa"
    mixed = compose_cfg("speed.channels_last=true", "speed.attention=sdpa")
    assert axes_of(mixed, None)["speed"] == "channels_last+sdpa"


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["speed.attention=flash"], "speed.attention", "must be one of math, sdpa"),
        (
            ["speed.attention=sdpa", "model.attention=false"],
            "speed.attention",
            "leaves the UNet none",
        ),
    ],
)
def test_speed_fields_are_checked(overrides: list[str], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check(compose_cfg(*overrides))
    assert info.value.key == key


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp", "unipc", "euler"])
def test_every_sampler_config_samples_a_volume(name: str) -> None:
    cfg = compose_cfg(f"sampler={name}")
    check(cfg)
    assert (CONF / "sampler" / f"{name}.yaml").is_file()
    steps = 4  # a short chain of the same scheduler: the schedule it follows is its own
    spec = tiny_spec("small", "3d", "batch.synthesis=2")
    torch.manual_seed(0)
    sampler = cfg.sampler
    dm = DiffusionModule(spec, build_autoencoder(spec), sampler.scheduler, steps, seed=0).eval()
    assert type(dm.sampler).__name__ == sampler.scheduler
    with torch.no_grad():
        dm.encode(torch.rand(2, 1, *spec.image_size))
        dm.on_predict_start()
        for item in synthesis_plan(steps, steps, 1):
            dm.predict_step(item)
    assert dm.chain_steps == steps
    assert dm.images is not None and torch.isfinite(dm.images).all()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> torch.nn.Module:
    b.load_state_dict(a.state_dict())
    return b


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_channels_last_changes_layout_not_outputs(dims: str) -> None:
    spec = tiny_spec("small", dims)
    fmt = Speed(channels_last=True).memory_format(spec.spatial_dims)
    assert fmt == (torch.channels_last if dims == "2d" else torch.channels_last_3d)
    torch.manual_seed(0)
    unet = build_unet(spec).eval()
    fast = copy.deepcopy(unet).to(memory_format=fmt)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=fmt)
    z = torch.randn(2, spec.autoencoder["latent_channels"], *spec.latent_size)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = unet(z, timesteps=t)
        got = fast(z.contiguous(memory_format=fmt), timesteps=t)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_diffusion_module_with_channels_last_encodes_and_denoises_the_same() -> None:
    spec = tiny_spec("small", "2d")
    torch.manual_seed(0)
    base = DiffusionModule(spec, build_autoencoder(spec))
    fast = DiffusionModule(spec, copy.deepcopy(base.autoencoder), speed=Speed(channels_last=True))
    fast.unet.load_state_dict(base.unet.state_dict())
    images = torch.rand(4, 1, *spec.image_size)
    fmt = torch.channels_last
    with torch.no_grad():  # encoding samples the posterior: compare its deterministic mean
        mu, _ = base.autoencoder.encode(images)
        mu_fast, _ = fast.autoencoder.encode(images.contiguous(memory_format=fmt))
        torch.testing.assert_close(mu_fast, mu, rtol=1e-4, atol=1e-5)
        t = torch.tensor([1, 250, 500, 999])
        torch.testing.assert_close(
            fast.unet(mu_fast, timesteps=t), base.unet(mu, timesteps=t), rtol=1e-4, atol=1e-5
        )
    assert fast.encode(images).is_contiguous(memory_format=fmt)
    assert torch.isfinite(fast.training_step(images, 0))


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_sdpa_attention_matches_the_math_attention(dims: str) -> None:
    spec = tiny_spec("small", dims)
    assert any(spec.unet["attention_levels"]), "the test needs an attention level"
    torch.manual_seed(0)
    unet = build_unet(spec).eval()
    sdpa = _same_weights(unet, build_unet(spec, "sdpa").eval())
    blocks = [m for m in sdpa.modules() if hasattr(m, "use_flash_attention")]
    assert blocks and all(m.use_flash_attention for m in blocks)
    z = torch.randn(2, spec.autoencoder["latent_channels"], *spec.latent_size)
    t = torch.tensor([3, 500])
    with torch.no_grad():
        torch.testing.assert_close(sdpa(z, timesteps=t), unet(z, timesteps=t), rtol=1e-4, atol=1e-5)


def test_fused_adam_takes_the_same_step() -> None:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    fused = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    plain_opt, fused_opt = Speed().adam(weights, 1e-2), Speed(fused_adam=True).adam(fused, 1e-2)
    assert fused_opt.defaults["fused"] is True and not plain_opt.defaults["fused"]
    for _ in range(3):
        for params, opt in ((weights, plain_opt), (fused, fused_opt)):
            opt.zero_grad()
            (params[0] @ params[1]).square().sum().backward()
            opt.step()
    for a, b in zip(fused, weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_is_wired_in_place_without_renaming_parameters() -> None:
    spec = tiny_spec("small", "2d")
    dm = DiffusionModule(spec, build_autoencoder(spec), speed=Speed(compile=True))
    plain = DiffusionModule(spec, build_autoencoder(spec))
    assert dm.unet._compiled_call_impl is not None  # nn.Module.compile: compiled on first call
    assert plain.unet._compiled_call_impl is None
    assert list(dm.state_dict()) == list(plain.state_dict())  # no `_orig_mod.` prefixes
    assert dm._decode is not dm.autoencoder.decode_stage_2_outputs
    assert plain._decode == plain.autoencoder.decode_stage_2_outputs


@pytest.mark.slow
def test_compiled_unet_matches_eager() -> None:
    spec = tiny_spec("small", "2d")
    torch.manual_seed(0)
    unet = build_unet(spec).eval()
    compiled = _same_weights(unet, build_unet(spec).eval())
    compiled.compile()
    z = torch.randn(2, spec.autoencoder["latent_channels"], *spec.latent_size)
    t = torch.tensor([7, 700])
    with torch.no_grad():
        torch.testing.assert_close(compiled(z, timesteps=t), unet(z, timesteps=t), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip


class RecordingLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, metrics))


class CountingLoss(torch.Tensor):
    """A loss that counts how often it is read back to the host."""

    reads = 0

    def item(self) -> Any:
        CountingLoss.reads += 1
        return super().item()


def test_the_loss_is_read_back_only_every_n_steps_and_only_with_a_logger() -> None:
    module = DiffusionModule(tiny_spec("small", "2d"), build_autoencoder(tiny_spec()))
    loss = torch.tensor(0.25).as_subclass(CountingLoss)
    CountingLoss.reads = 0
    module._trainer = SimpleNamespace(loggers=[], global_step=0)
    log_loss(module, "diffusion/loss", loss)
    assert CountingLoss.reads == 0  # no logger: never read
    logger = RecordingLogger()
    for step in range(2 * LOSS_EVERY_N_STEPS + 1):
        module._trainer = SimpleNamespace(loggers=[logger], global_step=step)
        log_loss(module, "diffusion/loss", loss)
    assert [s for s, _ in logger.logged] == [0, LOSS_EVERY_N_STEPS, 2 * LOSS_EVERY_N_STEPS]
    assert CountingLoss.reads == 3
    assert logger.logged[0][1] == {"diffusion/loss": 0.25}


def test_schedulers_take_python_timesteps() -> None:
    # predict_step hands the scheduler Python numbers (no GPU sync per step): every sampler
    # the configs name must accept them.
    for name in ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                 "UniPCMultistepScheduler", "EulerDiscreteScheduler"):  # fmt: skip
        scheduler = make_scheduler(name)
        scheduler.set_timesteps(5)
        x = torch.randn(1, 2, 4, 4, 4)
        for t in scheduler.timesteps.tolist():
            x = scheduler.step(torch.zeros_like(x), t, scheduler.scale_model_input(x, t))
            x = x.prev_sample
        assert torch.isfinite(x).all(), name
