"""One sweep job: train the autoencoder, train the diffusion UNet, synthesize; measure each phase.

Heavy imports (torch, Lightning, MONAI, diffusers) happen inside :func:`execute`, after the
config has been checked, so that config mistakes fail in a second.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lpm.config import LDMSpec
from lpm.record.record import PhaseRecord, Record, measured_phase, projected_phase

log = logging.getLogger("lpm")


def axes_of(cfg: DictConfig, spec: LDMSpec | None) -> dict[str, Any]:
    """The sweep axes a record is filed under: what the report groups and compares by."""
    return {
        "model": cfg.model.name,
        "dims": cfg.dims.name,
        "gpus": cfg.gpus.name,
        "sampler": cfg.sampler.name,
        "scheduler": cfg.sampler.scheduler,
        "steps": cfg.sampler.steps,
        "precision": cfg.precision,
        "scale": spec.scale if spec else cfg.scale,
        "image_size": list(spec.image_size) if spec else None,
        "batch_size": spec.batch if spec else None,
        "scaling": cfg.gpus.scaling,
        "data": cfg.data.name,
    }


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _trainer(cfg: DictConfig, phase: str, callbacks: list, logger: Any, **kwargs: Any):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar

    class PhaseProgressBar(TQDMProgressBar):
        """Names the phase instead of Lightning's `Epoch N` (each phase runs one epoch)."""

        def on_train_epoch_start(self, *args: Any) -> None:
            super().on_train_epoch_start(*args)
            self.train_progress_bar.set_description(phase)

        def on_predict_batch_start(self, *args: Any) -> None:
            super().on_predict_batch_start(*args)
            self.predict_progress_bar.set_description(phase)

    bars = sys.stderr.isatty()  # bars are noise in logs, CI and Slurm
    return pl.Trainer(
        accelerator=cfg.gpus.accelerator,
        devices=cfg.gpus.devices,
        strategy=cfg.gpus.strategy,
        num_nodes=cfg.gpus.num_nodes,
        precision=cfg.precision,
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, PhaseProgressBar()] if bars else callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        enable_progress_bar=bars,
        **kwargs,
    )


def execute(cfg: DictConfig, spec: LDMSpec, record: Record, job_dir: Path, price: Any) -> None:
    """Run the three measured phases, rewriting `record` after each one.

    Args:
        price: `price(phases) -> {"carbon", "co2e_kg", "totals"}` for the record's phases.
    """
    import hydra
    import torch
    from torch.utils.data import DataLoader

    from lpm.carbon.projection import project
    from lpm.energy.callback import EnergyCallback
    from lpm.energy.meters import NodeMeters
    from lpm.workload.data import FolderDataset, ImageDataModule, PhantomDataset
    from lpm.workload.images import save_samples_png
    from lpm.workload.ldm import (
        AutoencoderModule,
        DiffusionModule,
        chains_for,
        count_params,
        synthesis_plan,
    )

    torch.manual_seed(cfg.seed)
    if cfg.gpus.accelerator == "cpu" and isinstance(cfg.gpus.devices, int) and cfg.gpus.devices > 1:
        # CPU ranks share the cores; each rank's own full thread pool would oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.gpus.devices))
    logger = hydra.utils.instantiate(cfg.logger) if cfg.logger.get("_target_") else None
    full = cfg.measure.full
    meters = NodeMeters(
        job_dir,
        cfg.site.country_iso3,
        {
            "force_cpu_power_w": cfg.measure.force_cpu_power_w,
            "force_ram_power_w": cfg.measure.force_ram_power_w,
        },
    )
    rank0 = True

    def per_device(phase: str, world: int) -> int:
        return max(1, spec.batch[phase] // (world if cfg.gpus.scaling == "strong" else 1))

    def callback_for(phase: str, counts: dict[str, int]) -> EnergyCallback:
        """The phase's measured windows; `counts`: measured iterations per unit of work."""
        m = cfg.measure[phase]
        # A full run measures its whole budget, warm-up included: that is what it costs.
        warmup = (
            {}
            if full
            else {"step": m.warmup, "unet": m.warmup, "decode": m.get("decode_warmup", 0)}
        )
        size = {u: max(1, math.ceil(n / cfg.measure.windows)) for u, n in counts.items()}
        return EnergyCallback(phase, warmup=warmup, window=size, meters=meters)

    def measured(phase: str, trainer: Any, run: Any, target: dict, budget: dict) -> None:
        """Run a phase; record what it measured even when it fails part-way.

        Args:
            budget: iterations per unit of work the projection scales to.
        """
        nonlocal rank0
        callback = next(c for c in trainer.callbacks if isinstance(c, EnergyCallback))
        finished = False
        try:
            run()
            finished = True
        finally:
            rank0 = trainer.global_rank == 0
            record.hardware = _hardware(trainer, meters.missing)  # meters exist once it ran
            m = callback.measurement
            if m is not None:
                # A phase cut short keeps what it measured; only a finished one is projected.
                record.phases[phase] = PhaseRecord(
                    measured=measured_phase(m),
                    target=target,
                    projected=projected_phase(project(m, budget)) if finished else {},
                )
                priced = price({k: vars(v) for k, v in record.phases.items()})
                record.carbon, record.totals = priced["carbon"], priced["totals"]
                for name, co2e in priced["co2e_kg"].items():
                    record.phases[name].co2e_kg = co2e
                if rank0:
                    record.write(job_dir / "record.json")

    def train(phase: str, module: Any, target: int) -> Any:
        m = cfg.measure[phase]
        steps = target if full else m.warmup + m.iterations
        counts = {"step": target if full else m.iterations}
        trainer = _trainer(cfg, phase, [callback_for(phase, counts)], logger, max_steps=steps)

        def fit() -> None:
            world = trainer.world_size
            batch = per_device(phase, world)
            if cfg.data.name == "folder":
                dataset = FolderDataset(cfg.data.root, spec.image_size, spec.in_channels)
            else:  # one epoch of fresh phantoms covers the whole phase
                dataset = PhantomDataset(
                    spec.image_size, steps * batch * world, cfg.seed, spec.in_channels
                )
            trainer.fit(
                module, datamodule=ImageDataModule(dataset, batch, cfg.data.num_workers, cfg.seed)
            )

        measured(phase, trainer, fit, {"iterations": target}, {"step": target})
        return trainer

    ae = AutoencoderModule(spec)
    dm = DiffusionModule(
        spec,
        ae.autoencoder,
        cfg.sampler.scheduler,
        cfg.sampler.steps,
        dict(cfg.sampler.kwargs),
        seed=cfg.seed,
    )
    record.params = {"autoencoder": count_params(ae.autoencoder), "unet": count_params(dm.unet)}
    log.info(
        "params: autoencoder %s, unet %s",
        f"{record.params['autoencoder']:,}",
        f"{record.params['unet']:,}",
    )
    try:
        train("autoencoder", ae, cfg.target.autoencoder_iterations)
        trainer = train("diffusion", dm, cfg.target.diffusion_iterations)

        # Every rank runs the whole plan on its own chain: data-parallel synthesis.
        world, steps = trainer.world_size, cfg.sampler.steps
        dm.sample_batch = per_device("synthesis", world)
        chains = chains_for(cfg.target.samples, dm.sample_batch, world)
        m = cfg.measure.synthesis
        if full:
            plan = synthesis_plan(steps, None, 0, chains)
            counts = {"unet": chains * steps, "decode": chains}
        else:
            plan = synthesis_plan(steps, m.warmup + m.iterations, m.decode_warmup + m.decodes)
            counts = {"unet": m.iterations, "decode": m.decodes}
        callback = callback_for("synthesis", counts)
        trainer = _trainer(cfg, "synthesis", [callback], logger, use_distributed_sampler=False)

        def predict() -> None:
            with torch.no_grad():
                trainer.predict(dm, DataLoader(plan, batch_size=None), return_predictions=False)

        target = {
            "samples": cfg.target.samples,
            "steps": steps,
            "batch": dm.sample_batch * world,
            "chains": chains,
        }
        measured("synthesis", trainer, predict, target, {"unet": chains * steps, "decode": chains})
        if rank0 and dm.images is not None:
            png = save_samples_png(dm.images, job_dir / "samples.png")
            record.samples = {
                "path": png.name,
                "count": dm.images.shape[0],
                "denoising_steps": dm.chain_steps,
                "of_steps": steps,
                "complete": dm.chain_steps == steps,
            }
    finally:
        meters.close()


def _hardware(trainer: Any, missing_meters: dict[str, str]) -> dict[str, Any]:
    import torch

    device = trainer.strategy.root_device
    return {
        "accelerator": device.type,
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "missing_meters": dict(missing_meters),
    }


def finish_loggers() -> None:
    """Close the W&B run so the next sweep job starts its own (it silently reuses it otherwise)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def reset_distributed() -> None:
    """Leave no process group or rank variables behind for the next job of the sweep."""
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        torch.distributed.destroy_process_group()
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
