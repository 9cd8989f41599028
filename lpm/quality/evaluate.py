"""A job's `quality` block: what its networks and sampler deliver, beside what they cost.

- autoencoder: reconstruction PSNR/SSIM on held-out images;
- sampler: PSNR/SSIM of the job's decoded samples against a deterministic many-step reference
  (DDIM, eta 0) run from the same initial noise with the same trained networks;
- diversity: mean pairwise MS-SSIM of the job's samples;
- FID, only against a TorchScript feature extractor the user points to (never downloaded).

It runs on rank 0 after the synthesis phase, outside every measured window: its wall time is
recorded (`seconds`), never metered or priced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lpm.config import LDMSpec
from lpm.quality.metrics import (
    KERNEL_SIGMA,
    fid,
    kernel_size_for,
    ms_ssim_scales,
    pairwise_ms_ssim,
    psnr,
    ssim,
    summary,
)
from lpm.workload.ldm import DiffusionModule, make_scheduler

# Both datasets scale images to [0, 1] (phantoms are clamped, folder images min-max scaled):
# outputs are clamped to it before they are compared.
DATA_RANGE = 1.0
# Held-out phantoms are drawn with seed `seed + HOLDOUT_SEED_OFFSET`: the training phases draw
# theirs with `seed`, and a phantom depends only on (seed, index).
HOLDOUT_SEED_OFFSET = 1_000_003
REFERENCE_SCHEDULER = "DDIMScheduler"  # eta 0: `DiffusionModule.denoise` passes DDIM's default
FID_BATCH = 64  # images per feature-extractor call


@dataclass(frozen=True)
class Holdout:
    """Real images the training phases did not see (`held_out` false where there are none)."""

    images: torch.Tensor
    method: str
    held_out: bool = True


def holdout_images(cfg: DictConfig, spec: LDMSpec) -> Holdout:
    """`quality.holdout` real images for the autoencoder (and FID's real side).

    Phantoms: a seed the training never uses. Folder: the last files of the sorted list that
    lie beyond `data.pool` (the training loads only the first `data.pool`); where fewer than
    2 lie beyond it, the last files all the same, said to be seen in training.
    """
    from lpm.workload.data import FolderDataset, PhantomDataset

    n = cfg.quality.holdout
    if cfg.data.name == "folder":
        dataset = FolderDataset(cfg.data.root, spec.image_size, spec.in_channels)
        total = len(dataset)
        seen = min(cfg.data.pool, total)
        held_out = total - seen >= 2
        first = max(seen if held_out else 0, total - n)
        images = torch.stack([dataset[i] for i in range(first, total)])
        which = "never loaded by the training" if held_out else "SEEN in training: data.pool"
        method = (
            f"files {first + 1}-{total} of {total} in data.root (sorted), {which} "
            f"(the training loads the first {seen})"
        )
        return Holdout(images, method, held_out)
    seed = cfg.seed + HOLDOUT_SEED_OFFSET
    dataset = PhantomDataset(spec.image_size, n, seed, spec.in_channels)
    images = torch.stack([dataset[i] for i in range(n)])
    return Holdout(images, f"{n} phantoms of seed {seed} (the training's are of seed {cfg.seed})")


def _batches(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _rng_states(device: torch.device) -> list[torch.Tensor]:
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _image(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(0, DATA_RANGE)


def same_chain(dm: DiffusionModule, reference: Any, steps: int) -> bool:
    """Whether the job's sampler is `reference` at `steps` steps: same class and config."""

    def config(s: Any) -> dict[str, Any]:
        return {k: v for k, v in s.config.items() if not k.startswith("_")}

    return (
        type(dm.sampler) is type(reference)
        and config(dm.sampler) == config(reference)
        and dm.steps == steps
    )


def autoencoder_quality(
    dm: DiffusionModule,
    holdout: Holdout,
    batch: int,
    context: Callable[[], AbstractContextManager],
) -> dict[str, Any]:
    """Reconstruction PSNR/SSIM of the held-out images (encoder mean, decoded)."""
    ae = dm.autoencoder
    recon = []
    for chunk in holdout.images.split(batch):
        x = chunk.to(dm.device).contiguous(memory_format=dm.memory_format)
        with context():
            recon.append(_image(ae.reconstruct(x)))
    recon_images = torch.cat(recon)
    real = holdout.images.to(recon_images.device)
    kernel = kernel_size_for(real.shape[2:])
    return {
        "psnr_db": summary(psnr(recon_images, real, DATA_RANGE)),
        "ssim": summary(ssim(recon_images, real, DATA_RANGE), within=(-1.0, 1.0)),
        "images": len(real),
        "data_range": DATA_RANGE,
        "held_out": holdout.held_out,
        "method": (
            f"MONAI PSNRMetric and SSIMMetric ({kernel}-pixel Gaussian window, σ {KERNEL_SIGMA}) "
            "of AutoencoderKL.reconstruct (the encoder's mean, decoded; clamped to "
            f"[0, {DATA_RANGE:g}]) against {holdout.method}"
        ),
    }


def sampler_quality(
    cfg: DictConfig,
    dm: DiffusionModule,
    precision: str,
    context: Callable[[], AbstractContextManager],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The job's decoded samples and their fidelity to the reference chain from the same noise.

    The job's chain runs in the job's precision (`context`); the reference in full precision
    where the weights are (mixed precision), else in the job's too. The job's chain runs with
    the global RNG seeded and forked: a sampler that draws from it is `stochastic`.
    """
    q = cfg.quality
    device = dm.device
    generator = torch.Generator(device).manual_seed(cfg.seed)
    with context():  # "-true" precisions draw the noise in the weights' dtype, as predict does
        noises = [dm.initial_noise(b, generator) for b in _batches(q.samples, dm.sample_batch)]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), context():
        torch.manual_seed(cfg.seed)
        before = _rng_states(device)
        images = _image(torch.cat([dm.sample(dm.sampler, dm.steps, z) for z in noises]))
        after = _rng_states(device)
    stochastic = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

    reference = make_scheduler(REFERENCE_SCHEDULER)
    mixed = not precision.endswith("-true")  # autocast: the weights themselves are fp32
    identical = same_chain(dm, reference, q.reference_steps) and not mixed
    if identical:
        ref_images = images
    else:
        with nullcontext() if mixed else context():
            chains = [dm.sample(reference, q.reference_steps, z) for z in noises]
        ref_images = _image(torch.cat(chains))
    ref_precision = "fp32 (autocast off)" if mixed else precision
    name = type(dm.sampler).__name__
    block = {
        "reference": {"scheduler": REFERENCE_SCHEDULER, "steps": q.reference_steps, "eta": 0.0},
        "chain": {"scheduler": name, "steps": dm.steps, "precision": precision},
        # Identical chains: PSNR is infinite, which JSON does not hold.
        "psnr_db": None if identical else summary(psnr(images, ref_images, DATA_RANGE)),
        "ssim": summary(ssim(images, ref_images, DATA_RANGE), within=(-1.0, 1.0)),
        "samples": len(images),
        "identical": identical,
        "stochastic": stochastic,
        "method": (
            f"{len(images)} samples of the job's {name}-{dm.steps} ({precision}) against "
            f"{REFERENCE_SCHEDULER}-{q.reference_steps}, eta 0, in {ref_precision}: the same "
            f"trained UNet, training noise schedule and initial noise (seed {cfg.seed}), both "
            f"decoded and clamped to [0, {DATA_RANGE:g}]; MONAI PSNRMetric and SSIMMetric in "
            "image space"
        ),
    }
    return images, block


def diversity(images: torch.Tensor) -> dict[str, Any]:
    """Mean pairwise MS-SSIM of the job's samples (1: all alike)."""
    spatial = tuple(images.shape[2:])
    kernel = kernel_size_for(spatial)
    scales = ms_ssim_scales(spatial, kernel)
    values = pairwise_ms_ssim(images, DATA_RANGE, scales)
    return {
        "ms_ssim": summary(values, within=(0.0, 1.0)),  # MONAI's MS-SSIM: relu'd terms
        "pairs": len(values),
        "scales": scales,
        "method": (
            f"mean MONAI MultiScaleSSIMMetric over the {len(values)} pairs of the job's "
            f"{len(images)} samples: {scales} scale(s) (what {list(spatial)} allows with a "
            f"{kernel}-pixel window), Wang et al.'s weights of those scales renormalised; pairs "
            "share samples, so the interval is narrower than it should be"
        ),
    }


def _slices(images: torch.Tensor) -> torch.Tensor:
    """2D images as they are; volumes as the middle half of their slices along the first
    spatial axis, each a (C, H, W) image."""
    if images.ndim == 4:
        return images
    depth = images.shape[2]
    middle = images[:, :, depth // 4 : depth - depth // 4]
    return middle.transpose(1, 2).flatten(0, 1)


def features(extractor: Any, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The extractor's (N, D) features of `images` (N, C, H, W), in batches.

    Raises:
        ValueError: naming `quality.fid_weights` when the output is not (N, D).
    """
    out = []
    for x in images.split(FID_BATCH):
        f = extractor(x.to(device))
        if not torch.is_tensor(f) or f.ndim != 2 or len(f) != len(x):
            got = tuple(f.shape) if torch.is_tensor(f) else type(f).__name__
            raise ValueError(
                f"quality.fid_weights: the extractor maps {len(x)} images of shape "
                f"{tuple(x.shape[1:])} to {got}; it must give (N, D) features"
            )
        out.append(f.float().cpu())  # small; scipy's sqrtm takes them to the CPU anyway
    return torch.cat(out)


def fid_quality(
    weights: str, samples: torch.Tensor, real: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """FID of the job's samples against held-out real images, with the user's extractor.

    An extractor or covariance FID cannot use (a wrong output shape; too few images for the
    feature width, whose covariance square root comes out complex) gives `value` null and its
    `error`, leaving the rest of the quality block standing.
    """
    path = Path(weights).expanduser()
    fake, ref = _slices(samples), _slices(real)
    per = (
        ""
        if samples.ndim == 4
        else ", the middle half of each volume's slices along its first axis"
    )
    out: dict[str, Any] = {
        "value": None,
        "weights": str(path),
        "samples": len(samples),
        "reference_images": len(real),
        "method": (
            f"MONAI FIDMetric of TorchScript features of {len(fake)} sample and {len(ref)} "
            f"held-out images{per}; few images bias FID upwards"
        ),
    }
    try:
        extractor = torch.jit.load(str(path), map_location=device).eval()
        got, held = features(extractor, fake, device), features(extractor, ref, device)
        value = fid(got, held)
    except (ValueError, RuntimeError) as exc:
        return out | {"error": " ".join(str(exc).split())[:500]}
    if (fewest := min(len(got), len(held))) <= (width := got.shape[1]):
        # MONAI then adds ε to the diagonal where the square root fails, and says so only on
        # stdout: this FID compares only with FIDs of the same image counts and extractor.
        out["method"] += (
            f"; {fewest} images for {width} features: singular covariances, comparable only at "
            "the same image counts"
        )
    return out | {"value": value if math.isfinite(value) else None}


def evaluate(cfg: DictConfig, spec: LDMSpec, dm: DiffusionModule, trainer: Any = None) -> dict:
    """The record's `quality` block for a job whose networks `dm` holds (trained).

    Args:
        trainer: the synthesis phase's trainer: its device (Lightning's teardown leaves the
            networks on the CPU) and precision; None: `dm`'s device, full precision.
    """
    t0 = time.perf_counter()
    q = cfg.quality
    if trainer is None:
        device, precision, context = dm.device, "32-true", nullcontext
    else:
        device, precision = trainer.strategy.root_device, str(trainer.precision)
        context = trainer.precision_plugin.forward_context
    dm.to(device).eval()
    with torch.no_grad():
        holdout = holdout_images(cfg, spec)
        autoencoder = autoencoder_quality(dm, holdout, spec.batch["autoencoder"], context)
        samples, sampler = sampler_quality(cfg, dm, precision, context)
        spread = diversity(samples)
        fid_block = (
            fid_quality(q.fid_weights, samples, holdout.images, device) if q.fid_weights else None
        )
    assumptions = [
        f"quality: sampler fidelity is to a {REFERENCE_SCHEDULER}-{q.reference_steps} chain of "
        "the same trained networks, not to real images: it measures the sampler's "
        "discretisation (and precision) error",
    ]
    if not cfg.measure.full:
        assumptions.append(
            "quality: the networks trained only for the measured iterations (projection "
            "mode), not the target budget: compare jobs' quality, do not read it as the "
            "trained model's"
        )
    if sampler["stochastic"]:
        assumptions.append(
            "quality: the job's sampler draws noise at every step: its fidelity to the "
            "deterministic reference reads low by construction"
        )
    if not holdout.held_out:
        assumptions.append("quality: the autoencoder's images were seen in training")
    return {
        "autoencoder": autoencoder,
        "sampler": sampler,
        "diversity": spread,
        "fid": fid_block,
        "seconds": time.perf_counter() - t0,
        "assumptions": assumptions,
    }
