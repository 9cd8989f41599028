"""One sweep job: train the autoencoder, train the diffusion UNet, synthesize; measure each phase.

Heavy imports (torch, Lightning, MONAI, diffusers) happen inside :func:`execute`, after the
config has been checked, so that config mistakes fail in a second.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lpm.carbon.projection import project
from lpm.config import PRECISION_ALIASES, SPEED_SWITCHES, LDMSpec, speed_label, windows_for
from lpm.energy import flops
from lpm.energy.window import RULES, NoiseRules, PhaseMeasurement
from lpm.record.record import (
    PhaseRecord,
    Record,
    coverage,
    error_line,
    measured_phase,
    projected_phase,
)

log = logging.getLogger("lpm")

CPU_SCALE = "networks shrunk for CPU: not the study's networks"


def axes_of(cfg: DictConfig, spec: LDMSpec | None) -> dict[str, Any]:
    """The sweep axes a record is filed under: what the report groups and compares by.

    `precision` is the requested one in Lightning's spelling; the job replaces it with the one
    Lightning runs once a trainer is built.
    """
    return {
        "model": cfg.model.name,
        "dims": cfg.dims.name,
        "gpus": cfg.gpus.name,
        "sampler": cfg.sampler.name,
        "scheduler": cfg.sampler.scheduler,
        "steps": cfg.sampler.steps,
        "precision": PRECISION_ALIASES.get(cfg.precision, cfg.precision),
        "scale": spec.scale if spec else cfg.scale,
        "image_size": list(spec.image_size) if spec else None,
        "batch_size": spec.batch if spec else None,
        "scaling": cfg.gpus.scaling,
        "data": cfg.data.name,
        # Speed-up techniques: `speed` names those on ("baseline": none), then each one.
        "speed": speed_label(cfg.speed),
        **{key: cfg.speed[key] for key in (*SPEED_SWITCHES, "attention")},
    }


@dataclass(frozen=True)
class PhasePlan:
    """What one phase runs, which of it is measured, and the budget it is projected to.

    Attributes:
        warmup: iterations per unit of work run first and not counted.
        measured: iterations per unit that are measured; `measure.windows` splits each.
        budget: iterations per unit over the whole target budget (the projection's scale).
        target: the record's `target` block.
    """

    name: str
    warmup: dict[str, int]
    measured: dict[str, int]
    budget: dict[str, int]
    target: dict[str, Any]

    def runs(self, unit: str) -> int:
        """Iterations of `unit` the phase runs, warm-up included."""
        return self.warmup.get(unit, 0) + self.measured.get(unit, 0)


def training_plan(cfg: DictConfig, phase: str, iterations: int) -> PhasePlan:
    """A training phase of `iterations` steps in the target budget."""
    budget, target = {"step": iterations}, {"iterations": iterations}
    if cfg.measure.full:  # the whole budget, warm-up included: that is what it costs
        return PhasePlan(phase, {}, budget, budget, target)
    m = cfg.measure[phase]
    return PhasePlan(phase, {"step": m.warmup}, {"step": m.iterations}, budget, target)


def synthesis_plan_of(cfg: DictConfig, chains: int, batch: int) -> PhasePlan:
    """Synthesis of `cfg.target.samples` in `chains` chains of `batch` samples (all ranks)."""
    steps = cfg.sampler.steps
    budget = {"unet": chains * steps, "decode": chains}
    target = {"samples": cfg.target.samples, "steps": steps, "batch": batch, "chains": chains}
    if cfg.measure.full:
        return PhasePlan("synthesis", {}, budget, budget, target)
    m = cfg.measure.synthesis
    warmup = {"unet": m.warmup, "decode": m.decode_warmup}
    measured = {"unet": m.iterations, "decode": m.decodes}
    return PhasePlan("synthesis", warmup, measured, budget, target)


def phase_record(
    plan: PhasePlan, m: PhaseMeasurement | None, finished: bool, rules: NoiseRules = RULES
) -> PhaseRecord | None:
    """A phase's record part from what it measured, judged by `rules`; None when it measured
    nothing at all.

    A phase cut short keeps what it measured. Only a finished phase that measured every unit
    of its budget is projected (one that ran fewer batches than warm-up + one window has no
    units: its measurement says why).
    """
    if m is None:
        return None
    m = m.judged_by(rules)
    projectable = finished and set(plan.budget) <= set(m.units)
    return PhaseRecord(
        measured=measured_phase(m),
        target=plan.target,
        projected=projected_phase(project(m, plan.budget)) if projectable else {},
        verdict=m.verdict.to_dict(),
        coverage=coverage(m),
    )


def _ordered_union(*groups: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(a for group in groups for a in group))


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class JobRun:
    """A job's phases as they run: each is measured by :meth:`measure` into the record, which is
    priced and rewritten after every phase, so a job cut short keeps its finished phases.

    Args:
        price: `price(phases, hardware) -> {"carbon", "co2e_kg", "totals", "assumptions"}`
            and, where it prices embodied CO2e, `"embodied_kg"` per phase.
        meters: a `NodeMeters`, shared by the phases' energy callbacks.
    """

    def __init__(
        self,
        cfg: DictConfig,
        spec: LDMSpec,
        record: Record,
        job_dir: Path,
        price: Callable[[dict, dict], dict],
        meters: Any,
        logger: Any,
    ) -> None:
        self.cfg, self.spec, self.record, self.job_dir = cfg, spec, record, job_dir
        self.price, self.meters, self.logger = price, meters, logger
        self.rank0 = True  # known once a trainer has run
        self.meter_assumptions: list[str] = []
        self.fixed_assumptions = [CPU_SCALE] if spec.scale == "cpu" else []
        record.assumptions = list(self.fixed_assumptions)

    def train(self, plan: PhasePlan, module: Any) -> Any:
        """Fit `module` for the plan's steps; return the trainer."""
        steps = plan.runs("step")
        trainer = self.trainer(plan, max_steps=steps)
        world = trainer.world_size
        batch = self._per_device(plan.name, world)
        data = _datamodule(self.cfg, self.spec, steps * batch * world, batch)
        part = self.measure(plan, trainer, lambda: trainer.fit(module, datamodule=data))
        shape = (batch, self.spec.in_channels, *self.spec.image_size)
        count = partial(flops.training_flops, module, shape)
        self.efficiency(plan.name, trainer, part, module, count)
        return trainer

    def synthesize(self, dm: Any, world: int) -> Any:
        """Sample along the sampler's timestep schedule; keep the last images as a PNG. Returns
        the phase's trainer (its device and precision).

        Every rank runs the whole plan on its own chain: data-parallel synthesis.
        """
        import torch

        from lpm.workload.images import samples_caption, save_samples_png
        from lpm.workload.ldm import WorkItems, chains_for, synthesis_plan

        cfg = self.cfg
        dm.sample_batch = self._per_device("synthesis", world)
        chains = chains_for(cfg.target.samples, dm.sample_batch, world)
        plan = synthesis_plan_of(cfg, chains, dm.sample_batch * world)
        steps = cfg.sampler.steps
        if cfg.measure.full:
            items = synthesis_plan(steps, None, 0, chains)
        else:
            items = synthesis_plan(steps, plan.runs("unet"), plan.runs("decode"))
        trainer = self.trainer(plan, use_distributed_sampler=False)

        def predict() -> None:
            with torch.no_grad():
                trainer.predict(dm, WorkItems(items), return_predictions=False)

        trained = dm.global_step  # the fit's: predict attaches a trainer of its own
        part = self.measure(plan, trainer, predict)
        self.efficiency(plan.name, trainer, part, dm, partial(flops.synthesis_flops, dm))
        if self.rank0 and dm.images is not None:
            caption = samples_caption(
                dm.chain_steps, steps, trained, cfg.target.diffusion_iterations
            )
            png = save_samples_png(dm.images, self.job_dir / "samples.png", caption=caption)
            self.record.samples = {
                "path": png.name,
                "count": dm.images.shape[0],
                "denoising_steps": dm.chain_steps,
                "of_steps": steps,
                "complete": dm.chain_steps == steps,
            }
        return trainer

    def evaluate_quality(self, dm: Any, trainer: Any) -> None:
        """The record's `quality` block (:func:`lpm.quality.evaluate.evaluate`), after every
        measured window. A failure is recorded in the block and logged: the measured phases
        stand and the job stays ok."""
        from lpm.quality.evaluate import evaluate

        try:
            quality = evaluate(self.cfg, self.spec, dm, trainer)
            log.info("  quality: %s", _quality_line(quality))
        except Exception as exc:
            quality = {"error": error_line(exc)}
            log.warning("  quality: not evaluated (%s)", quality["error"])
        self.record.quality = quality
        self.record.write(self.job_dir / "record.json")

    def efficiency(
        self,
        name: str,
        trainer: Any,
        part: PhaseRecord | None,
        module: Any,
        count: Callable[[Any], Any],
    ) -> None:
        """`part.efficiency` from the FLOPs `count(forward_context)` finds in `module` (a
        :class:`~lpm.energy.flops.FlopCount`), counted once the phase's measurement is filed,
        by rank 0 alone (every rank runs the same networks); the record is rewritten. A count
        that fails leaves the measurement as it is: `{"error": ...}` and a warning."""
        if part is None or not self.rank0:
            return
        try:
            # Lightning's teardown left the networks on the CPU: count on the device they ran on.
            module.to(trainer.strategy.root_device)
            counted = count(trainer.precision_plugin.forward_context)
            peak = flops.device_peak(trainer.strategy.root_device, str(trainer.precision))
            units, world = part.measured["units"], trainer.world_size
            part.efficiency = flops.efficiency(counted, units, world, peak)
        except Exception as exc:  # an op the counter cannot run, a GPU out of memory: any
            error = error_line(exc)
            part.efficiency = {"error": error}
            log.warning("  %s: FLOPs not counted (%s); the measurement stands", name, error)
        _log_efficiency(name, part.efficiency)
        self.record.write(self.job_dir / "record.json")

    def _per_device(self, phase: str, world: int) -> int:
        """Batch per device: strong scaling splits the configured batch over the devices."""
        strong = self.cfg.gpus.scaling == "strong"
        return max(1, self.spec.batch[phase] // (world if strong else 1))

    def trainer(self, plan: PhasePlan, **kwargs: Any) -> Any:
        """A Lightning trainer for `plan`, its windows metered by an `EnergyCallback`."""
        from lpm.energy.callback import EnergyCallback

        windows = self.cfg.measure.windows
        callback = EnergyCallback(
            plan.name,
            warmup=plan.warmup,
            window={u: windows_for(n, windows)[0] for u, n in plan.measured.items()},
            meters=self.meters,
        )
        planned = sum(plan.runs(unit) for unit in plan.measured)  # batches, warm-up included
        trainer = _trainer(self.cfg, plan.name, planned, [callback], self.logger, **kwargs)
        self._note_precision(trainer)
        return trainer

    def _note_precision(self, trainer: Any) -> None:
        """Record the precision Lightning runs (16-mixed runs as bf16-mixed on a CPU)."""
        asked = self.cfg.precision
        ran = str(trainer.precision)
        self.record.axes["precision"] = ran
        if (
            ran != PRECISION_ALIASES.get(asked, asked)
            and "precision_requested" not in self.record.job
        ):
            self.record.job["precision_requested"] = asked
            log.info("precision: %s asked, Lightning runs %s here", asked, ran)

    def measure(
        self, plan: PhasePlan, trainer: Any, work: Callable[[], None]
    ) -> PhaseRecord | None:
        """Run `work` (the phase's fit or predict on `trainer`) and file its record part, also
        when it fails part-way; return that part."""
        from lpm.energy.callback import EnergyCallback

        callback = next(c for c in trainer.callbacks if isinstance(c, EnergyCallback))
        finished = False
        try:
            work()
            finished = True
        finally:
            rules = NoiseRules(**self.cfg.measure.noise)
            self.record.job["noise_rules"] = dataclasses.asdict(rules)
            part = phase_record(plan, callback.measurement, finished, rules)
            self._file(plan.name, trainer, callback.measurement, part)
        return part

    def _file(
        self, name: str, trainer: Any, m: PhaseMeasurement | None, part: PhaseRecord | None
    ) -> None:
        record = self.record
        self.rank0 = trainer.global_rank == 0
        record.hardware = _hardware(self.cfg, trainer, self.meters.missing)  # meters exist now
        if part is None:
            return
        record.phases[name] = part
        self.meter_assumptions = _ordered_union(self.meter_assumptions, m.assumptions)
        priced = self.price({k: vars(v) for k, v in record.phases.items()}, record.hardware)
        record.carbon, record.totals = priced["carbon"], priced["totals"]
        for phase, co2e in priced["co2e_kg"].items():
            record.phases[phase].co2e_kg = co2e
        for phase, kg in priced.get("embodied_kg", {}).items():
            record.phases[phase].embodied_kg = kg
        record.assumptions = _ordered_union(
            self.meter_assumptions, priced["assumptions"], self.fixed_assumptions
        )
        if self.rank0:
            _log_quality(name, part)
            record.write(self.job_dir / "record.json")


def _quality_line(q: dict[str, Any]) -> str:
    def value(block: dict[str, Any] | None, unit: str = "") -> str:
        v = (block or {}).get("value")
        return "n/a" if v is None else f"{v:.3g}{unit}"

    s = q["sampler"]
    fidelity = "identical" if s["identical"] else value(s["psnr_db"], " dB")
    ref = s["reference"]
    line = (
        f"autoencoder PSNR {value(q['autoencoder']['psnr_db'], ' dB')}, sampler PSNR "
        f"{fidelity} vs {ref['scheduler']}-{ref['steps']}, diversity MS-SSIM "
        f"{value(q['diversity']['ms_ssim'])}"
    )
    if q["fid"] is not None:
        line += f", FID {value(q['fid'])}"
    return f"{line} ({q['seconds']:.1f} s)"


def _log_efficiency(name: str, e: dict[str, Any]) -> None:
    """One line per phase: FLOPs, FLOP/s, MFU and J/PFLOP of each unit."""
    if "error" in e:
        return

    def g(x: float | None, unit: str, factor: float = 1.0) -> str:
        return "n/a" if x is None else f"{x * factor:.3g}{unit}"

    def line(unit: str, count: int) -> str:
        per_pflop = e["joules_per_pflop"][unit] or {}
        return (
            f"{unit} {count:.3g} FLOP at {g(e['achieved_flop_per_s'][unit], ' FLOP/s')}, "
            f"MFU {g((e['mfu'] or {}).get(unit), '%', 100)}, "
            f"{g(per_pflop.get('value'), ' J/PFLOP')}"
        )

    log.info("  %s: %s", name, "; ".join(line(*u) for u in e["flops_per_iteration"].items()))


def _log_quality(name: str, part: PhaseRecord) -> None:
    verdict, cover = part.verdict, part.coverage
    reasons = "; ".join(verdict.get("reasons", []))
    log.info("  %s: %s%s", name, verdict.get("status"), f" ({reasons})" if reasons else "")
    if cover and not cover.get("complete", True):
        meters = ", ".join(
            f"{c} {v['metered']}/{v['expected']}" for c, v in cover.items() if c != "complete"
        )
        log.warning("  %s: incomplete, not every meter reported (%s)", name, meters)


def _trainer(
    cfg: DictConfig, phase: str, planned: int, callbacks: list, logger: Any, **kwargs: Any
):
    """A trainer for one phase of `planned` batches: a progress bar on a terminal, progress
    lines in logs."""
    import lightning.pytorch as pl

    from lpm.progress import PhaseProgressBar, phase_progress

    progress = phase_progress(phase, planned)
    return pl.Trainer(
        accelerator=cfg.gpus.accelerator,
        devices=cfg.gpus.devices,
        strategy=cfg.gpus.strategy,
        num_nodes=cfg.gpus.num_nodes,
        precision=cfg.precision,
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, progress],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        enable_progress_bar=isinstance(progress, PhaseProgressBar),
        **kwargs,
    )


def _datamodule(cfg: DictConfig, spec: LDMSpec, images: int, batch: int) -> Any:
    """Training images for one phase of `images` samples (all ranks), in batches of `batch`.

    At most `data.pool` distinct images are made or loaded, before the measured windows open;
    a longer phase cycles through them.
    """
    from lpm.workload.data import FolderDataset, ImageDataModule, PhantomDataset

    if cfg.data.name == "folder":
        dataset = FolderDataset(cfg.data.root, spec.image_size, spec.in_channels)
    else:  # one epoch covers the whole phase
        dataset = PhantomDataset(spec.image_size, images, cfg.seed, spec.in_channels)
    return ImageDataModule(dataset, batch, cfg.data.num_workers, cfg.seed, pool=cfg.data.pool)


def execute(cfg: DictConfig, spec: LDMSpec, record: Record, job_dir: Path, price: Any) -> None:
    """Run the three measured phases, rewriting `record` after each one.

    Args:
        price: `price(phases, hardware) -> {"carbon", "co2e_kg", "totals", "assumptions"}`
            for the record's phases on its hardware.
    """
    import torch

    from lpm.energy.meters import NodeMeters
    from lpm.record.sinks import job_logger
    from lpm.workload.ldm import AutoencoderModule, DiffusionModule, Speed, count_params

    torch.manual_seed(cfg.seed)
    if cfg.gpus.accelerator == "cpu" and isinstance(cfg.gpus.devices, int) and cfg.gpus.devices > 1:
        # CPU ranks share the cores; each rank's own full thread pool would oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.gpus.devices))
    logger = job_logger(cfg, record.axes, job_dir)
    measure = cfg.measure
    meters = NodeMeters(
        job_dir,
        cfg.site.country_iso3,
        {
            "force_cpu_power_w": measure.force_cpu_power_w,
            "force_ram_power_w": measure.force_ram_power_w,
        },
        tracking_mode=measure.tracking_mode,
    )
    job = JobRun(cfg, spec, record, job_dir, price, meters, logger)

    speed = Speed(**cfg.speed)
    ae = AutoencoderModule(spec, speed=speed)
    dm = DiffusionModule(
        spec,
        ae.autoencoder,
        cfg.sampler.scheduler,
        cfg.sampler.steps,
        dict(cfg.sampler.kwargs),
        seed=cfg.seed,
        speed=speed,
    )
    record.params = {"autoencoder": count_params(ae.autoencoder), "unet": count_params(dm.unet)}
    log.info(
        "params: autoencoder %s, unet %s",
        f"{record.params['autoencoder']:,}",
        f"{record.params['unet']:,}",
    )
    target = cfg.target
    try:
        job.train(training_plan(cfg, "autoencoder", target.autoencoder_iterations), ae)
        trainer = job.train(training_plan(cfg, "diffusion", target.diffusion_iterations), dm)
        synthesis = job.synthesize(dm, trainer.world_size)
    finally:
        meters.close()
    if cfg.quality.enabled and job.rank0:
        job.evaluate_quality(dm, synthesis)


def _hardware(cfg: DictConfig, trainer: Any, missing_meters: dict[str, str]) -> dict[str, Any]:
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
        "tracking_mode": cfg.measure.tracking_mode,
        "missing_meters": dict(missing_meters),
    }


def finish_loggers() -> None:
    """Close the job's W&B run and give back W&B's directories: the next sweep job gets its own
    run in its own directory (see :func:`lpm.record.sinks.close_wandb`)."""
    from lpm.record.sinks import close_wandb

    close_wandb()


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
