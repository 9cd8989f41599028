"""A latent diffusion model, 2D or 3D: MONAI networks, diffusers schedulers, Lightning phases.

One code path for both dimensionalities: every tensor is (B, C, *spatial) and the networks
take `spatial_dims` from the resolved :class:`~lpm.config.LDMSpec`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import diffusers
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from lpm.config import TRAIN_TIMESTEPS, LDMSpec

# The MONAI 2D/3D LDM tutorials train with 1,000 timesteps and scaled-linear betas.
TRAIN_SCHEDULE = dict(
    num_train_timesteps=TRAIN_TIMESTEPS,
    beta_schedule="scaled_linear",
    beta_start=0.0015,
    beta_end=0.0195,
    clip_sample=False,  # latents are not in [-1, 1]; clipping them distorts samples
)
# The training loss goes to the trainer's loggers once per this many steps: reading it is a
# host-device sync on a GPU, which every step would pay (Lightning's `self.log` per step with
# `prog_bar=True` did, and cost ~1 ms of Python per step on a CPU besides).
LOSS_EVERY_N_STEPS = 50


@dataclass(frozen=True)
class Speed:
    """Speed-up techniques for the networks and their optimizer: config `speed.*`, each a
    sweep axis of its own (recorded in the record's `axes`).

    Attributes:
        channels_last: networks and their inputs in channels-last memory format
            (`torch.channels_last` in 2D, `torch.channels_last_3d` in 3D).
        compile: `torch.compile` the UNet and the autoencoder's forward, encode and decode.
        fused_adam: Adam as fused kernels over all parameters (`Adam(fused=True)`).
        attention: `math` (MONAI's einsum attention) or `sdpa` (MONAI's
            `use_flash_attention`: `F.scaled_dot_product_attention`, which takes a flash or
            memory-efficient kernel where the device has one). The UNet's attention levels only:
            the autoencoder of the MONAI recipes has none.
    """

    channels_last: bool = False
    compile: bool = False
    fused_adam: bool = False
    attention: str = "math"

    def memory_format(self, spatial_dims: int) -> torch.memory_format:
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d

    def adam(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """Adam, fused when asked (torch 2.13 has the fused kernel for CPU and CUDA
        parameters, fp32, fp16 and bf16); otherwise torch's default implementation (for-each
        on CUDA, one tensor at a time on a CPU)."""
        return torch.optim.Adam(params, lr=lr, fused=True if self.fused_adam else None)

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return torch.compile(fn) if self.compile else fn


def build_autoencoder(spec: LDMSpec) -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.in_channels,
        norm_num_groups=spec.norm_num_groups,
        **spec.autoencoder,
    )


def build_unet(spec: LDMSpec, attention: str = "math") -> DiffusionModelUNet:
    """The diffusion UNet; `attention="sdpa"` runs its attention blocks through
    `F.scaled_dot_product_attention` (see :class:`Speed`)."""
    channels = spec.autoencoder["latent_channels"]
    return DiffusionModelUNet(
        spatial_dims=spec.spatial_dims,
        in_channels=channels,
        out_channels=channels,
        norm_num_groups=spec.norm_num_groups,
        use_flash_attention=attention == "sdpa",
        **spec.unet,
    )


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def log_loss(module: pl.LightningModule, key: str, loss: torch.Tensor) -> None:
    """`loss` to the trainer's loggers every :data:`LOSS_EVERY_N_STEPS` steps; nothing without
    a logger (and so no host-device sync at all)."""
    trainer = module._trainer
    if trainer is None or not trainer.loggers or module.global_step % LOSS_EVERY_N_STEPS:
        return
    metrics = {key: loss.detach().item()}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=module.global_step)


def _is_scheduler(cls: Any) -> bool:
    return (
        isinstance(cls, type)
        and issubclass(cls, diffusers.SchedulerMixin)
        and cls is not diffusers.SchedulerMixin
        and hasattr(cls, "from_config")
    )


def make_scheduler(name: str = "DDPMScheduler", **kwargs: Any) -> diffusers.SchedulerMixin:
    """A diffusers scheduler by class name, on the training noise schedule.

    Raises:
        ValueError: naming `sampler.scheduler` and listing the schedulers diffusers has.
    """
    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if type(cls).__name__ == "DummyObject":  # diffusers' placeholder for a missing dependency
        try:
            cls()
        except ImportError as exc:
            raise ValueError(f"sampler.scheduler={name}: {' '.join(str(exc).split())}") from exc
    if not _is_scheduler(cls):
        known = sorted(
            n
            for n in dir(diffusers)
            if n.endswith("Scheduler") and _is_scheduler(getattr(diffusers, n))
        )
        raise ValueError(f"sampler.scheduler={name}: not a diffusers scheduler; one of {known}")
    base = diffusers.DDPMScheduler(**TRAIN_SCHEDULE)
    return cls.from_config(base.config, **kwargs)


class Module(pl.LightningModule):
    """A LightningModule without two per-batch costs that Lightning's loop adds to it.

    Lightning sets `_current_fx_name` around each hook it calls (~18 times per synthesis item),
    each time through nn.Module's `__setattr__`, which first looks for a parameter, buffer or
    submodule of that name; and it reads the step method's signature with `inspect` at every
    batch. With both gone and synthesis fed by :class:`WorkItems`, Lightning's loop around the
    null workload of `python -m lpm.bench plain` went from 244 to 83–114 µs per synthesis item
    and from 824 to 251–660 µs per training step on a 2-core CPU (README, Benchmarks).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("training_step", "predict_step"):
            step = vars(cls).get(name)
            if step is not None:  # a stored signature turns Lightning's `inspect` into a lookup
                step.__signature__ = inspect.signature(step)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":  # a hook's name or None: never a parameter or module
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


class AutoencoderModule(Module):
    """Stage 1: the KL autoencoder, trained with L1 reconstruction plus a KL term.

    The MONAI recipe adds perceptual and adversarial losses; the perceptual one needs downloaded
    weights, so lpm leaves both out (its autoencoder cost is a lower bound).
    """

    def __init__(
        self, spec: LDMSpec, kl_weight: float = 1e-6, lr: float = 1e-4, speed: Speed = Speed()
    ) -> None:
        super().__init__()
        self.speed, self.memory_format = speed, speed.memory_format(spec.spatial_dims)
        self.autoencoder = build_autoencoder(spec).to(memory_format=self.memory_format)
        if speed.compile:
            self.autoencoder.compile()  # in place: parameter names and state dict unchanged
        self.kl_weight, self.lr = kl_weight, lr

    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        recon, mu, sigma = self.autoencoder(images)
        spatial = list(range(1, mu.ndim))
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).sum(spatial).mean()
        loss = F.l1_loss(recon, images) + self.kl_weight * kl
        log_loss(self, "autoencoder/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.speed.adam(self.autoencoder.parameters(), self.lr)


class DiffusionModule(Module):
    """Stage 2 and synthesis: a diffusion UNet on the frozen autoencoder's scaled latents.

    `predict_step` executes one synthesis work item (see :func:`synthesis_plan`): a UNet
    evaluation plus scheduler step on the current chain, or a decode of its latents, so that
    a callback can time and meter each unit cost on its own.
    """

    def __init__(
        self,
        spec: LDMSpec,
        autoencoder: AutoencoderKL,
        sampler: str = "DDPMScheduler",
        steps: int = 1000,
        sampler_kwargs: dict[str, Any] | None = None,
        lr: float = 2.5e-5,
        seed: int = 0,
        speed: Speed = Speed(),
    ) -> None:
        super().__init__()
        self.spec, self.lr, self.seed, self.steps = spec, lr, seed, steps
        self.speed, self.memory_format = speed, speed.memory_format(spec.spatial_dims)
        # Per device; the job sets it for strong scaling.
        self.sample_batch = spec.batch["synthesis"]
        self.unet = build_unet(spec, speed.attention).to(memory_format=self.memory_format)
        if speed.compile:
            self.unet.compile()  # in place: parameter names and state dict unchanged
        self.autoencoder = autoencoder  # frozen at fit start, once stage 1 has trained it
        self.autoencoder.to(memory_format=self.memory_format)  # a no-op when stage 1 did it
        self._encode = speed.compiled(autoencoder.encode_stage_2_inputs)
        self._decode = speed.compiled(autoencoder.decode_stage_2_outputs)
        self.train_scheduler = make_scheduler()
        self.sampler = make_scheduler(sampler, **(sampler_kwargs or {}))
        # MONAI LDM recipe: scale latents to unit variance, estimated on the first batch.
        self.register_buffer("scale_factor", torch.tensor(0.0))
        self._scaled = False
        self.latents: torch.Tensor | None = None
        self.timesteps: list[float] = []  # the current chain's, as Python numbers
        self.chain_steps = 0  # denoising steps the current chain has taken
        self.images: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        # Before DDP wraps the module: frozen parameters are then not expected to get gradients.
        self.autoencoder.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        self.autoencoder.eval()  # Lightning puts every submodule in train mode at fit start

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self._encode(images.contiguous(memory_format=self.memory_format))
            if not self._scaled:  # a Python flag: testing the buffer would sync the GPU each step
                # Rank 0's first batch sets it for every rank, as the single-GPU recipe does.
                scale = 1.0 / z.float().std().item()
                if self._trainer is not None:
                    scale = self._trainer.strategy.broadcast(scale, src=0)
                self.scale_factor.fill_(scale)
                self._scaled = True
        return z * self.scale_factor

    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        z = self.encode(images)
        noise = torch.randn_like(z)
        t = torch.randint(0, TRAIN_SCHEDULE["num_train_timesteps"], (z.shape[0],), device=z.device)
        pred = self.unet(self.train_scheduler.add_noise(z, noise, t), timesteps=t)
        loss = F.mse_loss(pred.float(), noise.float())
        log_loss(self, "diffusion/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.speed.adam(self.unet.parameters(), self.lr)

    def on_predict_start(self) -> None:
        # Distinct noise per rank: data-parallel synthesis makes different samples on each GPU.
        self.generator = torch.Generator(self.device).manual_seed(self.seed + self.global_rank)

    def initial_noise(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Unit Gaussian latents for a chain of `batch` samples, in the networks' memory format."""
        shape = (batch, self.spec.autoencoder["latent_channels"], *self.spec.latent_size)
        noise = torch.randn(shape, generator=generator, device=self.device)
        return noise.contiguous(memory_format=self.memory_format)

    def start_chain(
        self, scheduler: diffusers.SchedulerMixin, steps: int, noise: torch.Tensor
    ) -> tuple[torch.Tensor, list[float]]:
        """Reset `scheduler` to `steps` steps: the chain's first latents and its timesteps."""
        scheduler.set_timesteps(steps, device=self.device)
        # Python numbers, read once per chain: a timestep tensor on the GPU would make the
        # scheduler's arithmetic (`t > 0`, table look-ups) wait for the GPU at every step.
        # The noise is scaled after `set_timesteps`: some schedulers' (Euler's) scale depends on it.
        return noise * scheduler.init_noise_sigma, scheduler.timesteps.tolist()

    def denoise(
        self, scheduler: diffusers.SchedulerMixin, latents: torch.Tensor, t: float
    ) -> torch.Tensor:
        """One denoising step at timestep `t`: a UNet evaluation plus the scheduler's step."""
        model_input = scheduler.scale_model_input(latents, t)
        t_batch = torch.full((model_input.shape[0],), t, device=self.device)
        eps = self.unet(model_input, timesteps=t_batch)
        return scheduler.step(eps, t, latents).prev_sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode(latents / self.scale_factor)

    def sample(
        self, scheduler: diffusers.SchedulerMixin, steps: int, noise: torch.Tensor
    ) -> torch.Tensor:
        """A whole chain from `noise` in `steps` steps of `scheduler`, decoded: what
        `predict_step` runs item by item, in one call (the quality evaluation's sampler)."""
        latents, timesteps = self.start_chain(scheduler, steps, noise)
        for t in timesteps:
            latents = self.denoise(scheduler, latents, t)
        return self.decode(latents)

    def predict_step(self, item: dict[str, Any]) -> None:
        if item["unit"] == "decode":
            self.images = self.decode(self.latents)
            return
        if item["step"] == 0:  # a new chain: fresh noise, scheduler state reset
            noise = self.initial_noise(self.sample_batch, self.generator)
            self.latents, self.timesteps = self.start_chain(self.sampler, self.steps, noise)
            self.chain_steps = 0
        self.latents = self.denoise(self.sampler, self.latents, self.timesteps[item["step"]])
        self.chain_steps += 1


def synthesis_plan(
    steps: int, unet_evals: int | None, decodes: int, chains: int = 1
) -> list[dict[str, Any]]:
    """The work items of the synthesis phase, in order.

    Args:
        steps: denoising steps of one chain (the sampler's `steps`).
        unet_evals: UNet evaluations to run along the real timestep schedule (a new chain
            starts when one finishes); None runs `chains` whole chains, each followed by a decode.
        decodes: decodes of the final latents (projection mode only).
        chains: whole chains to run when `unet_evals` is None.
    """
    if unet_evals is None:
        chain = [{"unit": "unet", "step": s} for s in range(steps)] + [{"unit": "decode"}]
        return chain * chains
    items = [{"unit": "unet", "step": i % steps} for i in range(unet_evals)]
    return items + [{"unit": "decode"}] * decodes


class WorkItems:
    """Synthesis work items for `Trainer.predict`: an iterable with a length, where a DataLoader
    would add its per-item fetch (a profiler range, a collate of the item's dict) to every
    measured item. Not a list, which Lightning reads as one dataloader per element."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def chains_for(samples: int, batch: int, world_size: int = 1) -> int:
    """Chains (batches of samples) needed for `samples`, with every rank sampling its own batch."""
    return math.ceil(samples / (batch * world_size))
