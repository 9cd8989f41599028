"""A latent diffusion model, 2D or 3D: MONAI networks, diffusers schedulers, Lightning phases.

One code path for both dimensionalities: every tensor is (B, C, *spatial) and the networks
take `spatial_dims` from the resolved :class:`~lpm.config.LDMSpec`.
"""

from __future__ import annotations

import math
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


def build_autoencoder(spec: LDMSpec) -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.in_channels,
        norm_num_groups=spec.norm_num_groups,
        **spec.autoencoder,
    )


def build_unet(spec: LDMSpec) -> DiffusionModelUNet:
    channels = spec.autoencoder["latent_channels"]
    return DiffusionModelUNet(
        spatial_dims=spec.spatial_dims,
        in_channels=channels,
        out_channels=channels,
        norm_num_groups=spec.norm_num_groups,
        **spec.unet,
    )


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


class AutoencoderModule(pl.LightningModule):
    """Stage 1: the KL autoencoder, trained with L1 reconstruction plus a KL term.

    The MONAI recipe adds perceptual and adversarial losses; the perceptual one needs downloaded
    weights, so lpm leaves both out (its autoencoder cost is a lower bound).
    """

    def __init__(self, spec: LDMSpec, kl_weight: float = 1e-6, lr: float = 1e-4) -> None:
        super().__init__()
        self.autoencoder = build_autoencoder(spec)
        self.kl_weight, self.lr = kl_weight, lr

    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        recon, mu, sigma = self.autoencoder(images)
        spatial = list(range(1, mu.ndim))
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).sum(spatial).mean()
        loss = F.l1_loss(recon, images) + self.kl_weight * kl
        self.log("autoencoder/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.autoencoder.parameters(), lr=self.lr)


class DiffusionModule(pl.LightningModule):
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
    ) -> None:
        super().__init__()
        self.spec, self.lr, self.seed, self.steps = spec, lr, seed, steps
        self.sample_batch = spec.batch[
            "synthesis"
        ]  # per device; the job sets it for strong scaling
        self.unet = build_unet(spec)
        self.autoencoder = autoencoder  # frozen at fit start, once stage 1 has trained it
        self.train_scheduler = make_scheduler()
        self.sampler = make_scheduler(sampler, **(sampler_kwargs or {}))
        # MONAI LDM recipe: scale latents to unit variance, estimated on the first batch.
        self.register_buffer("scale_factor", torch.tensor(0.0))
        self._scaled = False
        self.latents: torch.Tensor | None = None
        self.chain_steps = 0  # denoising steps the current chain has taken
        self.images: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        # Before DDP wraps the module: frozen parameters are then not expected to get gradients.
        self.autoencoder.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        self.autoencoder.eval()  # Lightning puts every submodule in train mode at fit start

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.autoencoder.encode_stage_2_inputs(images)
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
        self.log("diffusion/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.unet.parameters(), lr=self.lr)

    def on_predict_start(self) -> None:
        # Distinct noise per rank: data-parallel synthesis makes different samples on each GPU.
        self.generator = torch.Generator(self.device).manual_seed(self.seed + self.global_rank)

    def predict_step(self, item: dict[str, Any]) -> None:
        if item["unit"] == "decode":
            self.images = self.autoencoder.decode_stage_2_outputs(self.latents / self.scale_factor)
            return
        if item["step"] == 0:  # a new chain: fresh noise, scheduler state reset
            shape = (
                self.sample_batch,
                self.spec.autoencoder["latent_channels"],
                *self.spec.latent_size,
            )
            self.latents = torch.randn(shape, generator=self.generator, device=self.device)
            self.latents = self.latents * self.sampler.init_noise_sigma
            self.sampler.set_timesteps(self.steps, device=self.device)
            self.chain_steps = 0
        t = self.sampler.timesteps[item["step"]]
        model_input = self.sampler.scale_model_input(self.latents, t)
        t_batch = t.expand(model_input.shape[0]).to(self.device)
        eps = self.unet(model_input, timesteps=t_batch)
        self.latents = self.sampler.step(eps, t, self.latents).prev_sample
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


def chains_for(samples: int, batch: int, world_size: int = 1) -> int:
    """Chains (batches of samples) needed for `samples`, with every rank sampling its own batch."""
    return math.ceil(samples / (batch * world_size))
