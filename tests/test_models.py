from __future__ import annotations

import ast
import re

import pytest
import torch
from conftest import CONF, compose_cfg, options

from lpm.config import LDMSpec, resolve_spec
from lpm.workload.ldm import (
    DiffusionModule,
    Module,
    WorkItems,
    build_autoencoder,
    build_unet,
    chains_for,
    count_params,
    make_scheduler,
    synthesis_plan,
)

TINY_SIZE = {"2d": "[16,16]", "3d": "[16,16,16]"}


def tiny_spec(model: str = "small", dims: str = "2d", *extra: str) -> LDMSpec:
    cfg = compose_cfg(
        f"model={model}", f"dims={dims}", f"dims.image_size={TINY_SIZE[dims]}", *extra
    )
    return resolve_spec(cfg, "cpu")


@pytest.mark.parametrize("dims", options("dims"))
@pytest.mark.parametrize("model", options("model"))
@torch.no_grad()
def test_networks_forward_shapes(model: str, dims: str) -> None:
    spec = tiny_spec(model, dims)
    ae, unet = build_autoencoder(spec).eval(), build_unet(spec).eval()
    x = torch.rand(2, spec.in_channels, *spec.image_size)
    recon, mu, sigma = ae(x)
    assert recon.shape == x.shape
    assert mu.shape == sigma.shape
    z = ae.encode_stage_2_inputs(x)
    assert z.shape == (2, spec.autoencoder["latent_channels"], *spec.latent_size)
    assert ae.decode_stage_2_outputs(z).shape == x.shape
    out = unet(z, timesteps=torch.tensor([0, 999]))
    assert out.shape == z.shape


# `paper 2D: 0.99M + 2.91M` in conf/model/<size>.yaml: autoencoder + UNet parameters.
STATED = re.compile(r"(paper|cpu)\s+(2D|3D):\s*([\d.]+)M\s*\+\s*([\d.]+)M")


def stated_params(model: str) -> dict[tuple[str, str], tuple[str, str]]:
    text = (CONF / "model" / f"{model}.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    return {(s, d.lower()): (ae, unet) for s, d, ae, unet in STATED.findall(comments)}


def _matches(count: int, text: str) -> bool:
    """`count` rounds to `text` millions at the precision `text` is written with."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(count / 1e6 - float(text)) <= 0.5 * 10**-decimals + 1e-9


def _param_cases() -> list:
    cases = []
    for model in options("model"):
        stated = stated_params(model)
        for dims in options("dims"):
            for scale in ("paper", "cpu"):
                # Building a net of several hundred million parameters takes > 3 s on a CPU.
                big = sum(float(v) for v in stated.get((scale, dims), ("0", "0"))) > 300
                marks = [pytest.mark.slow] if big else []
                cases.append(pytest.param(model, dims, scale, marks=marks))
    return cases


@pytest.mark.parametrize(("model", "dims", "scale"), _param_cases())
def test_parameter_counts_match_the_model_comments(model: str, dims: str, scale: str) -> None:
    stated = stated_params(model)
    assert (scale, dims) in stated, f"conf/model/{model}.yaml states no {scale} {dims} count"
    ae_text, unet_text = stated[scale, dims]
    spec = resolve_spec(compose_cfg(f"model={model}", f"dims={dims}"), scale)
    ae, unet = count_params(build_autoencoder(spec)), count_params(build_unet(spec))
    assert _matches(ae, ae_text), f"autoencoder {ae:,} vs stated {ae_text}M"
    assert _matches(unet, unet_text), f"unet {unet:,} vs stated {unet_text}M"


def test_count_params() -> None:
    assert count_params(torch.nn.Linear(3, 2)) == 3 * 2 + 2


@pytest.mark.parametrize(
    "name", ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"]
)
def test_make_scheduler_uses_the_training_schedule(name: str) -> None:
    scheduler = make_scheduler(name)
    assert type(scheduler).__name__ == name
    config = scheduler.config
    assert config.num_train_timesteps == 1000
    if "clip_sample" in config:
        assert config.clip_sample is False
    # Every sampler shares the noise schedule the UNet is trained on.
    reference = make_scheduler()
    assert config.beta_schedule == reference.config.beta_schedule == "scaled_linear"
    betas = (
        torch.linspace(config.beta_start**0.5, config.beta_end**0.5, 1000, dtype=torch.float64) ** 2
    )
    expected = torch.cumprod(1 - betas, 0).float()
    assert torch.allclose(scheduler.alphas_cumprod, expected, atol=1e-6)
    assert torch.allclose(scheduler.alphas_cumprod, reference.alphas_cumprod)


def test_make_scheduler_passes_kwargs_and_sets_steps() -> None:
    scheduler = make_scheduler("DDIMScheduler", timestep_spacing="trailing")
    assert scheduler.config.timestep_spacing == "trailing"
    scheduler.set_timesteps(50)
    assert len(scheduler.timesteps) == 50
    assert int(scheduler.timesteps.min()) >= 0 and int(scheduler.timesteps.max()) < 1000


@pytest.mark.parametrize("name", ["NoSuchScheduler", "UNet2DModel", "SchedulerMixin"])
def test_make_scheduler_rejects_non_schedulers(name: str) -> None:
    with pytest.raises(ValueError, match=rf"sampler\.scheduler={name}") as info:
        make_scheduler(name)
    assert "DDIMScheduler" in str(info.value)  # lists what it accepts


def test_make_scheduler_accepts_every_scheduler_it_lists() -> None:
    with pytest.raises(ValueError) as info:
        make_scheduler("NoSuchScheduler")
    listed = ast.literal_eval(str(info.value).split("one of ", 1)[1])
    assert {"DDPMScheduler", "DDIMScheduler", "PNDMScheduler"} <= set(listed)
    contradictions = []
    for name in listed:
        try:
            make_scheduler(name)
        except ValueError as exc:  # a listed name may still need kwargs or a beta schedule
            if "not a diffusers scheduler" in str(exc):
                contradictions.append(name)
        except TypeError:  # needs arguments of its own (sampler.kwargs)
            pass
    assert contradictions == [], "listed as accepted, then rejected as not a scheduler"


def test_synthesis_plan_projection_mode() -> None:
    plan = synthesis_plan(steps=4, unet_evals=6, decodes=2)
    assert [i["unit"] for i in plan] == ["unet"] * 6 + ["decode"] * 2
    # UNet evaluations follow the real schedule and restart it when a chain ends.
    assert [i["step"] for i in plan[:6]] == [0, 1, 2, 3, 0, 1]
    assert synthesis_plan(steps=1000, unet_evals=3, decodes=0) == [
        {"unit": "unet", "step": s} for s in range(3)
    ]


def test_synthesis_plan_full_mode_runs_whole_chains() -> None:
    plan = synthesis_plan(steps=3, unet_evals=None, decodes=5, chains=2)
    chain = [*({"unit": "unet", "step": s} for s in range(3)), {"unit": "decode"}]
    assert plan == chain * 2  # `decodes` only applies to projection mode
    assert synthesis_plan(steps=3, unet_evals=None, decodes=0) == chain


@pytest.mark.parametrize(
    ("samples", "batch", "world", "chains"),
    [(10_000, 16, 1, 625), (10_000, 80, 1, 125), (10_000, 3, 1, 3334), (10_000, 16, 4, 157),
     (1, 80, 1, 1), (80, 80, 1, 1), (81, 80, 1, 2), (160, 80, 2, 1), (161, 80, 2, 2)],
)  # fmt: skip
def test_chains_for(samples: int, batch: int, world: int, chains: int) -> None:
    assert chains_for(samples, batch, world) == chains
    # enough chains for the samples, and not one more than needed
    assert chains * batch * world >= samples > (chains - 1) * batch * world


@torch.no_grad()
def test_diffusion_module_synthesis_by_hand() -> None:
    spec = tiny_spec("small", "2d", "batch.synthesis=2")
    torch.manual_seed(0)
    dm = DiffusionModule(spec, build_autoencoder(spec), "DDIMScheduler", steps=3, seed=0).eval()
    dm.encode(torch.rand(4, spec.in_channels, *spec.image_size))  # estimates the latent scale
    assert dm.scale_factor > 0
    timesteps: list[torch.Tensor] = []
    dm.unet.register_forward_pre_hook(
        lambda _m, _a, kw: timesteps.append(kw["timesteps"].clone()), with_kwargs=True
    )

    def sample(plan: list[dict]) -> torch.Tensor:
        dm.on_predict_start()
        for item in plan:
            dm.predict_step(item)
        assert dm.images is not None
        return dm.images.clone()

    images = sample(synthesis_plan(3, 3, 1))
    assert dm.chain_steps == 3
    assert images.shape == (2, spec.in_channels, *spec.image_size)
    assert torch.isfinite(images).all()
    schedule = dm.sampler.timesteps
    assert len(schedule) == 3
    assert [t.tolist() for t in timesteps] == [[int(t)] * 2 for t in schedule]
    assert torch.equal(sample(synthesis_plan(3, 3, 1)), images)  # seeded noise

    timesteps.clear()
    sample(synthesis_plan(3, 5, 1))
    assert dm.chain_steps == 2  # a second chain started after 3 steps
    assert [int(t[0]) for t in timesteps] == [int(schedule[i]) for i in (0, 1, 2, 0, 1)]


class _Steps(Module):
    """Records what Lightning passes each step and the hook name it sets while stepping."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.seen: list[tuple[str, int]] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append((self._current_fx_name, batch_idx))
        loss = self.lin(batch).square().mean()
        self.log("loss", loss)  # Lightning files it under the hook name it set
        return loss

    def predict_step(self, item: dict) -> None:
        self.seen.append((self._current_fx_name, item["step"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kwargs: object) -> object:
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


def test_module_base_keeps_lightning_hooks_arguments_and_logging() -> None:
    from torch.utils.data import DataLoader

    module = _Steps()
    stored = vars(_Steps.training_step)["__signature__"]  # what Lightning's `inspect` now reads
    assert list(stored.parameters) == ["self", "batch", "batch_idx"]
    trainer = _trainer(max_steps=3)
    trainer.fit(module, DataLoader(torch.randn(6, 2), batch_size=2))
    assert module.seen == [("training_step", i) for i in range(3)]
    assert "loss" in trainer.callback_metrics
    assert module._current_fx_name is None  # reset after each hook, as Lightning leaves it
    module.seen.clear()
    items = [{"unit": "unet", "step": s} for s in range(4)]
    _trainer().predict(module, WorkItems(items), return_predictions=False)
    assert module.seen == [("predict_step", s) for s in range(4)]


def test_module_base_sets_the_hook_name_directly_and_registers_the_rest() -> None:
    module = _Steps()
    module.extra = torch.nn.Linear(3, 3)
    module.scale = torch.nn.Parameter(torch.ones(1))
    names = {n for n, _ in module.named_parameters()}
    assert {"extra.weight", "extra.bias", "scale", "lin.weight"} <= names

    def spy(self: torch.nn.Module, name: str, value: object) -> None:
        seen.append(name)
        setattr_(self, name, value)

    seen: list[str] = []
    setattr_ = torch.nn.Module.__setattr__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Module, "__setattr__", spy)
        module._current_fx_name = "training_step"  # Lightning's per-hook write skips it
        module.other = 1
    assert seen == ["other"] and module._current_fx_name == "training_step"
