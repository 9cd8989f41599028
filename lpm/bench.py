"""Benchmarks: every row a ratio measured side by side in one run, with its target.

  python -m lpm.bench                  the CPU benchmarks -> bench/bench.json, bench/bench.md
  python -m lpm.bench --quick          fewer repeats and iterations: for iterating, not quoting
  python -m lpm.bench overhead plain   some of them
  python -m lpm.bench gpu --out bench/gpu    the GPU check (scripts/gpu_check.sh)

  overhead    the EnergyCallback and its meters on the lightest real step (target <= 0.5%)
  plain       lpm's training and synthesis steps against a plain PyTorch loop, 2D and 3D (>= 1.0)
  projection  lpm.carbon.projection.project() against fully measured runs; per-job fixed cost
  steps       synthesis time and energy against sampler steps: linear (R² >= 0.99), decode cost
  speedups    each speed-up technique's time and energy against the baseline
  robustness  robust estimate, interval coverage and verdicts under simulated and real noise
  counter     NVML energy counter against power sampled over the same window (a GPU; <= 2%)
  profile     where a training and a synthesis step spend their time (not in the default set)
  gpu         plain, counter and speedups at scale=paper on one GPU (not in the default set)

Timings on a shared machine are noisy: the arms of a comparison are interleaved, the comparison
repeated, and each ratio is the median of the per-repeat ratios (their range is in bench.json).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lpm.energy.window import J_PER_KWH, PhaseMeasurement, UnitMeasurement, Window

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
CPU_BENCHMARKS = (
    "overhead", "plain", "projection", "steps", "speedups", "robustness", "counter",
)  # fmt: skip
BENCHMARKS = (*CPU_BENCHMARKS, "profile", "gpu")
WARMUP = 3  # iterations every arm runs before its measured ones (a job's default warm-up)
# The techniques of conf/speedup/ the speedups benchmark runs, each alone on the baseline.
TECHNIQUES = ("channels_last", "sdpa", "fused_adam", "bf16", "fp16", "compile")
TRAINING_ONLY = ("fused_adam",)  # an optimizer: nothing of synthesis to compare
SAMPLERS = ("ddim", "dpmpp", "unipc")  # against the baseline's DDPM, 1,000 steps
OUT_OF_TIME = "skipped: out of time"
# Seconds a first compilation of the UNet and the encoder may take (training and inference
# graphs): ~3.5 min here (2 cores, one torch thread, cold inductor cache; ~10 s cached). Under a
# deadline compile starts only with this much time left.
COMPILE_NEEDS_S = 180.0
COMPILE_WARM_S = 30.0  # the same with inductor's cache of an earlier run (~10 s compiling)
# `make bench` finishes within 10 minutes on 2 cores: no new work starts after this many
# seconds, save the time kept for what follows (robustness, ~30 s, runs after speedups).
CPU_BUDGET_S = 570.0
RESERVED_S = {"speedups": 45.0}


def _compose(*overrides: str) -> Any:
    """The config a job would get from `overrides`; logger, devices and scale default to a
    CPU job without a logger."""
    from hydra import compose, initialize_config_dir

    import lpm.config  # noqa: F401  (registers the structured schema)

    given = {o.split("=", 1)[0] for o in overrides}
    defaults = [f"{k}={v}" for k, v in (("logger", "none"), ("gpus", "cpu"), ("scale", "cpu"))]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=[d for d in defaults if d.split("=")[0] not in given] + [*overrides]
        )


NOISE = "within noise"  # a row's `ok`: the median misses, its 95% interval reaches the target


def median_ci(values: Sequence[float]) -> tuple[float, float]:
    """A distribution-free interval of at least 95% (93.75% for 5 values, fewer: the range)
    around the median of `values`, from their order statistics: the k-th smallest and k-th
    largest, k the largest with P(Binomial(n, ½) < k) ≤ 2.5%."""
    x = sorted(values)
    n, k, below = len(x), 0, 0.0
    while n and below + math.comb(n, k) / 2**n <= 0.025 and k < n // 2:
        below += math.comb(n, k) / 2**n
        k += 1
    return x[max(k - 1, 0)], x[n - max(k, 1)]


def judged(values: Sequence[float], meets: Callable[[float], bool], ideal: float) -> bool | str:
    """True when the median of `values` meets the target; :data:`NOISE` when it does not but
    its 95% interval (:func:`median_ci`) reaches the target (the interval's point nearest
    `ideal`, the value the target is built around, meets it), so that the machine's noise
    cannot tell; False when the whole interval misses."""
    if meets(statistics.median(values)):
        return True
    low, high = median_ci(values)
    return NOISE if meets(min(max(ideal, low), high)) else False


def _row(
    name: str,
    value: float | None,
    target: str,
    ok: bool | str | None,
    spread: Sequence[float] = (),
    note: str = "",
) -> dict[str, Any]:
    """A table row. `ok` None: reported, no target; :data:`NOISE`: see :func:`judged`;
    `spread`: the values behind a median (their range and median's 95% interval are kept)."""
    out: dict[str, Any] = {
        "name": name,
        "value": None if value is None else round(value, 4),
        "target": target,
        "ok": ok,
    }
    if spread:
        out["range"] = [round(min(spread), 4), round(max(spread), 4)]
        out["median_ci95"] = [round(v, 4) for v in median_ci(spread)]
    if note:
        out["note"] = note
    return out


def _best_of(a: Sequence[Sample], b: Sequence[Sample]) -> float:
    """The fastest repeat of `a` over the fastest of `b`: contention only ever slows a run
    down, so the fastest repeats are the least disturbed ones."""
    return min(s.seconds for s in a) / min(s.seconds for s in b)


def _median_range(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- measuring one arm ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One arm's measured iterations, per iteration: wall seconds, CPU seconds of this process
    (every thread) and joules per component from lpm's meters (empty without meters)."""

    seconds: float
    cpu_seconds: float
    joules_by: dict[str, float] = field(default_factory=dict)

    @property
    def joules(self) -> float | None:
        return sum(self.joules_by.values()) if self.joules_by else None


Mark = tuple[float, float, dict[str, float]]


def _sample(start: Mark, end: Mark, iterations: int) -> Sample:
    (w0, c0, j0), (w1, c1, j1) = start, end
    return Sample(
        (w1 - w0) / iterations,
        (c1 - c0) / iterations,
        {k: (j1[k] - j0[k]) / iterations for k in j1.keys() & j0.keys()},
    )


def _ratios(
    a: Sequence[Sample], b: Sequence[Sample], quantity: Callable[[Sample], float | None]
) -> list[float]:
    """Per repeat: quantity(a) / quantity(b), where both are known."""
    out = []
    for x, y in zip(a, b, strict=True):
        qx, qy = quantity(x), quantity(y)
        if qx is not None and qy:
            out.append(qx / qy)
    return out


def _interleave(
    arms: Mapping[str, Callable[[], Any]], repeats: int, deadline: float = math.inf
) -> dict[str, list[Any]]:
    """Each arm once unmeasured (kernels, allocator, caches, compilation), then `repeats`
    rounds with the order rotated each round, so that drift and other tenants' load hit every
    arm alike. After `deadline` (time.monotonic) no new round starts, the first excepted."""
    names = list(arms)
    for name in names:
        arms[name]()
    out: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(repeats):
        if r and time.monotonic() > deadline:
            break
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name].append(arms[name]())
    return out


def _timer(first: int, last: int, mark: Callable[[], Mark]) -> Any:
    """A Lightning callback that marks the start of batch `first` and the end of batch `last`,
    in fit and in predict; put first among the callbacks."""
    import lightning.pytorch as pl

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.start: Mark | None = None
            self.end: Mark | None = None
            self.active = False

        def _begin(self, index: int) -> None:
            if index == first:
                self.start, self.active = mark(), True

        def _finish(self, index: int) -> None:
            if index == last:
                self.end, self.active = mark(), False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._begin(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._finish(batch_idx)

        def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self._begin(batch_idx)

        def on_predict_batch_end(
            self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
        ):
            self._finish(batch_idx)

    return Timer()


def _time_hooks(callback: Any, timer: Any) -> list[float]:
    """Wrap every `on_*` hook of `callback` to add the seconds it spends while `timer` is
    active; returns the one-element accumulator."""
    spent = [0.0]

    def timed(hook: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if not timer.active:
                return hook(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0

        return run

    for name in dir(type(callback)):
        if name.startswith("on_"):
            setattr(callback, name, timed(getattr(callback, name)))
    return spent


@contextlib.contextmanager
def _node_meters(tracking_mode: str = "process") -> Iterator[Any]:
    """lpm's meters, as a job builds them (CodeCarbon for CPU and RAM, NVML for a GPU). By
    default in CodeCarbon's `process` mode: another tenant's load on a shared machine is then
    not charged to whichever arm happens to run beside it."""
    from lpm.energy.meters import NodeMeters

    meters = NodeMeters(tempfile.mkdtemp(prefix="lpm-bench-"), "DEU", tracking_mode=tracking_mode)
    try:
        yield meters
    finally:
        meters.close()


def _unpriced(phases: dict, hardware: dict) -> dict[str, Any]:
    return {"carbon": {}, "co2e_kg": {}, "totals": {}, "assumptions": []}


class Workload:
    """A model built as a job builds it (`lpm.job.execute`), run through lpm's production
    trainers (`JobRun.trainer`: the EnergyCallback and its meters, the progress callback) or
    through a plain PyTorch loop over the same networks and the same batches.

    Args:
        overrides: the job's config overrides (CPU, scale=cpu and no logger unless given).
        meters: a NodeMeters shared by every workload of a benchmark.
        device: `cpu` or `cuda`.
    """

    def __init__(self, overrides: Sequence[str], meters: Any, device: str = "cpu") -> None:
        import torch

        from lpm.config import check, resolve_scale, resolve_spec
        from lpm.job import JobRun
        from lpm.record.record import Record
        from lpm.workload.ldm import AutoencoderModule, DiffusionModule, Speed

        cuda = device == "cuda"
        self.cfg = _compose(*overrides)
        check(self.cfg, cuda=cuda)
        self.spec = resolve_spec(self.cfg, resolve_scale(self.cfg, cuda=cuda))
        self.device = torch.device(device)
        self.meters = meters
        torch.manual_seed(self.cfg.seed)
        speed, sampler = Speed(**self.cfg.speed), self.cfg.sampler
        self.ae = AutoencoderModule(self.spec, speed=speed)
        self.dm = DiffusionModule(
            self.spec,
            self.ae.autoencoder,
            sampler.scheduler,
            sampler.steps,
            dict(sampler.kwargs),
            seed=self.cfg.seed,
            speed=speed,
        )
        job_dir = Path(tempfile.mkdtemp(prefix="lpm-bench-"))
        self.job = JobRun(self.cfg, self.spec, Record(axes={}), job_dir, _unpriced, meters, None)
        self._data: dict[tuple[str, int], Any] = {}
        self.last: PhaseMeasurement | None = None  # the latest training run's measurement

    def mark(self) -> Mark:
        """Clocks and meters now, the device's queued work done first."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        joules: dict[str, float] = {}
        for meter in self.meters.for_device(self.device, 0) if self.meters else ():
            joules.update(meter.read_j())
        return time.perf_counter(), time.process_time(), joules

    def data(self, phase: str, batches: int) -> Any:
        """The job's training data for `batches` batches (pooled once, reused by every arm)."""
        from lpm.job import _datamodule

        key = (phase, batches)
        if key not in self._data:
            batch = self.spec.batch[phase]
            self._data[key] = _datamodule(self.cfg, self.spec, batches * batch, batch)
        return self._data[key]

    def lpm_train(
        self, steps: int, energy_callback: bool = True, hook_share: list[float] | None = None
    ) -> Sample:
        """Diffusion training through lpm's trainer; `energy_callback` False removes it;
        `hook_share` gets the share of the measured time spent inside the callback's hooks."""
        from lpm.energy.callback import EnergyCallback
        from lpm.job import PhasePlan

        plan = PhasePlan("diffusion", {"step": WARMUP}, {"step": steps}, {"step": steps}, {})
        trainer = self.job.trainer(plan, max_steps=WARMUP + steps)
        timer = _timer(WARMUP, WARMUP + steps - 1, self.mark)
        kept = [
            c for c in trainer.callbacks if energy_callback or not isinstance(c, EnergyCallback)
        ]
        trainer.callbacks = [timer, *kept]
        spent = [_time_hooks(c, timer) for c in trainer.callbacks if isinstance(c, EnergyCallback)]
        trainer.fit(self.dm, datamodule=self.data("diffusion", WARMUP + steps))
        self.last = next(
            (c.measurement for c in trainer.callbacks if isinstance(c, EnergyCallback)), None
        )
        sample = _sample(timer.start, timer.end, steps)
        if hook_share is not None and spent:
            hook_share.append(spent[0][0] / (sample.seconds * steps))
        return sample

    def plain_train(self, steps: int) -> Sample:
        """The same diffusion training step written as a plain PyTorch loop (fp32)."""
        import torch
        import torch.nn.functional as F

        from lpm.config import TRAIN_TIMESTEPS

        dm = self.dm.to(self.device)
        unet, autoencoder, schedule = dm.unet, dm.autoencoder, dm.train_scheduler
        unet.train()
        autoencoder.eval()
        optimizer = torch.optim.Adam(unet.parameters(), lr=dm.lr)
        start = None
        for i, images in enumerate(self.data("diffusion", WARMUP + steps).train_dataloader()):
            if i == WARMUP:
                start = self.mark()
            images = images.to(self.device, non_blocking=True)
            with torch.no_grad():
                z = autoencoder.encode_stage_2_inputs(images) * dm.scale_factor
            noise = torch.randn_like(z)
            t = torch.randint(0, TRAIN_TIMESTEPS, (z.shape[0],), device=self.device)
            pred = unet(schedule.add_noise(z, noise, t), timesteps=t)
            loss = F.mse_loss(pred.float(), noise.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return _sample(start, self.mark(), steps)

    def scaled(self, steps: int) -> None:
        """The latent scale, estimated as a job's diffusion training does, on one batch of the
        training data (a workload that only samples has no training to set it)."""
        import torch

        if not self.dm._scaled:
            images = next(iter(self.data("diffusion", WARMUP + steps).train_dataloader()))
            with torch.no_grad():
                self.dm.to(self.device).encode(images.to(self.device))

    def lpm_synthesis(self, steps: int, decodes: int = 0) -> tuple[Sample, PhaseMeasurement]:
        """UNet evaluations (then `decodes` decodes after one unmeasured decode) along the
        sampler's schedule, through lpm's trainer as `JobRun.synthesize` runs them; the sample
        covers the UNet evaluations, the measurement every unit."""
        import torch

        from lpm.energy.callback import EnergyCallback
        from lpm.job import PhasePlan
        from lpm.workload.ldm import WorkItems, synthesis_plan

        self.scaled(steps)
        warm, measured = {"unet": WARMUP}, {"unet": steps}
        if decodes:
            warm["decode"], measured["decode"] = 1, decodes
        plan = PhasePlan("synthesis", warm, measured, measured, {})
        items = synthesis_plan(self.dm.steps, WARMUP + steps, decodes + bool(decodes))
        trainer = self.job.trainer(plan, use_distributed_sampler=False)
        timer = _timer(WARMUP, WARMUP + steps - 1, self.mark)
        trainer.callbacks = [timer, *trainer.callbacks]
        with torch.no_grad():
            trainer.predict(self.dm, WorkItems(items), return_predictions=False)
        callback = next(c for c in trainer.callbacks if isinstance(c, EnergyCallback))
        return _sample(timer.start, timer.end, steps), callback.measurement

    def plain_synthesis(self, steps: int) -> Sample:
        """The same UNet evaluations as a plain loop, as diffusers and MONAI pipelines write it:
        the scheduler's timestep tensors passed along, under `torch.no_grad()`."""
        import torch

        from lpm.workload.ldm import make_scheduler

        self.scaled(steps)
        dm = self.dm.to(self.device)
        unet = dm.unet.eval()
        sampler = make_scheduler(self.cfg.sampler.scheduler, **self.cfg.sampler.kwargs)
        n = dm.steps
        shape = (dm.sample_batch, self.spec.autoencoder["latent_channels"], *self.spec.latent_size)
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        start, latents = None, None
        with torch.no_grad():
            for i in range(WARMUP + steps):
                k = i % n
                if k == 0:
                    noise = torch.randn(shape, generator=generator, device=self.device)
                    latents = noise * sampler.init_noise_sigma
                    sampler.set_timesteps(n, device=self.device)
                if i == WARMUP:
                    start = self.mark()
                t = sampler.timesteps[k]
                eps = unet(sampler.scale_model_input(latents, t), timesteps=t.expand(shape[0]))
                latents = sampler.step(eps, t, latents).prev_sample
        return _sample(start, self.mark(), steps)

    def fetch_seconds(self, batches: int, pin_memory: bool | None = None) -> float:
        """Seconds per training batch taken from the job's DataLoader and onto the device,
        with its pinning (`pin_memory` None) or the one given."""
        import torch
        from torch.utils.data import DataLoader

        loader = self.data("diffusion", batches).train_dataloader()
        if pin_memory is not None:
            loader = DataLoader(
                loader.dataset,
                batch_size=loader.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(self.cfg.seed),
                drop_last=loader.drop_last,
                num_workers=loader.num_workers,
                pin_memory=pin_memory,
            )
        start = self.mark()
        for images in loader:
            images.to(self.device, non_blocking=True)
        return _sample(start, self.mark(), batches).seconds

    def release(self) -> None:
        """Give the device memory back before the next workload."""
        import torch

        self.ae = self.dm = self.job = None
        self._data.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# --- overhead -----------------------------------------------------------------------------


def overhead(quick: bool = False) -> dict[str, Any]:
    """lpm's lightest real workload (small 2D diffusion training, scale=cpu) through lpm's
    trainer with and without the EnergyCallback and its real meters, interleaved; and the
    time spent inside the callback's hooks, a bound that needs no subtraction of noisy runs,
    with CodeCarbon in a job's default `machine` mode and in `process` mode.
    """
    steps, repeats = (40, 3) if quick else (60, 5)
    shares: dict[str, list[float]] = {"machine": [], "process": []}
    with _node_meters("machine") as machine, _node_meters("process") as process:
        w = Workload(["model=small", "dims=2d"], machine)
        by_process = Workload(["model=small", "dims=2d"], process)
        runs = _interleave(
            {
                "with": lambda: w.lpm_train(steps, hook_share=shares["machine"]),
                "without": lambda: w.lpm_train(steps, energy_callback=False),
                "process": lambda: by_process.lpm_train(steps, hook_share=shares["process"]),
            },
            repeats,
        )
        methods = {k: v for m in machine.meters or [] for k, v in m.methods.items()}
    shares = {mode: got[1:] for mode, got in shares.items()}  # the unmeasured first runs
    wall = [r - 1 for r in _ratios(runs["with"], runs["without"], lambda s: s.seconds)]
    best = _best_of(runs["with"], runs["without"]) - 1
    cpu = [r - 1 for r in _ratios(runs["with"], runs["without"], lambda s: s.cpu_seconds)]
    rows = [
        _row(
            f"callback + meters: step time with ÷ without − 1 ({repeats} interleaved pairs)",
            statistics.median(wall),
            "<= 0.005",
            judged(wall, lambda v: v <= 0.005, 0.0),
            wall,
            f"fastest ÷ fastest − 1: {best:.4f}",
        )
    ]
    for mode, got in shares.items():
        share = statistics.median(got)
        label = f"callback + meters ({mode} mode): time inside its hooks ÷ step time"
        rows.append(_row(label, share, "<= 0.005", judged(got, lambda v: v <= 0.005, 0.0), got))
    return {
        "workload": f"diffusion training step, model=small dims=2d scale=cpu, {steps} steps",
        "step_ms_with": [s.seconds * 1e3 for s in runs["with"]],
        "step_ms_without": [s.seconds * 1e3 for s in runs["without"]],
        "overhead_wall": _median_range(wall),
        "overhead_cpu": _median_range(cpu),
        "hook_share": {mode: _median_range(got) for mode, got in shares.items()},
        "meters": methods,
        "rows": rows,
    }


def _null_overhead(meters: Any, steps: int = 1000) -> dict[str, float]:
    """Microseconds per iteration of lpm's trainer (its callbacks included) and of a plain loop
    around a null workload (a 4×4 linear layer on lpm's module base, fed as a job feeds its
    phases): the loop's own cost, free of model noise."""
    import torch
    from torch.utils.data import DataLoader

    from lpm.config import resolve_spec
    from lpm.job import JobRun, PhasePlan
    from lpm.record.record import Record
    from lpm.workload.ldm import Module, WorkItems

    class Null(Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.lin(batch).square().mean()

        def predict_step(self, item: dict[str, Any]) -> None:
            self.lin(item["x"])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    cfg = _compose()
    job_dir = Path(tempfile.mkdtemp(prefix="lpm-bench-"))
    job = JobRun(cfg, resolve_spec(cfg, "cpu"), Record(axes={}), job_dir, _unpriced, meters, None)
    data = torch.randn(WARMUP + steps, 1, 4)
    items = [{"unit": "unet", "x": x} for x in data]

    def clocks() -> Mark:
        return time.perf_counter(), time.process_time(), {}

    def lpm(predict: bool, bare: bool = False) -> float:
        """lpm's trainer; `bare`: the same Lightning trainer without lpm's callbacks."""
        unit = "unet" if predict else "step"
        plan = PhasePlan("null", {unit: WARMUP}, {unit: steps}, {unit: steps}, {})
        extra = {"use_distributed_sampler": False} if predict else {"max_steps": WARMUP + steps}
        trainer = job.trainer(plan, **extra)
        timer = _timer(WARMUP, WARMUP + steps - 1, clocks)
        trainer.callbacks = [timer] if bare else [timer, *trainer.callbacks]
        if predict:
            with torch.no_grad():
                trainer.predict(Null(), WorkItems(items), return_predictions=False)
        else:
            trainer.fit(Null(), DataLoader(data, batch_size=None))
        return _sample(timer.start, timer.end, steps).seconds

    def plain(predict: bool) -> float:
        module = Null()
        optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
        start = None
        for i, x in enumerate(items if predict else DataLoader(data, batch_size=None)):
            if i == WARMUP:
                start = clocks()
            if predict:
                with torch.no_grad():
                    module.predict_step(x)
                continue
            loss = module.lin(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return _sample(start, clocks(), steps).seconds

    out = {}
    for kind, predict in (("training", False), ("synthesis", True)):
        runs = _interleave(
            {
                "lpm": lambda p=predict: lpm(p),
                "lightning": lambda p=predict: lpm(p, bare=True),
                "plain": lambda p=predict: plain(p),
            },
            3,
        )
        for arm, seconds in runs.items():
            out[f"{kind}_{arm}_us"] = statistics.median(seconds) * 1e6
    return out


def plain(
    quick: bool = False,
    device: str = "cpu",
    scale: str = "cpu",
    models: Sequence[str] = ("small",),
    dims: Sequence[str] = ("2d", "3d"),
    extra: Sequence[str] = (),
    repeats: int | None = None,
    deadline: float = math.inf,
) -> dict[str, Any]:
    """lpm's diffusion training step and synthesis step (a UNet evaluation and a scheduler
    step) against a plain PyTorch loop over the same networks and batches at 32-true,
    interleaved; each row the plain loop's time per iteration over lpm's (>= 1: lpm is as
    fast). Also how long a batch takes to load, and the loop's own cost on a null workload.
    """
    repeats = repeats or (2 if quick else 9)  # 9: the median's 95% interval drops the extremes
    gpus = "1gpu" if device == "cuda" else "cpu"
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"device": device, "scale": scale, "repeats": repeats}
    # A job's default mode: `process` mode's CodeCarbon reads cost ~8× more at each window edge.
    with _node_meters("machine") as meters:
        # First, so that each lpm-vs-plain row can say what the loop alone costs there.
        null = _null_overhead(meters) if device == "cpu" else None
        for model in models:
            for d in dims:
                name = f"{model} {d}"
                if time.monotonic() > deadline:
                    rows.append(_skipped(f"lpm vs plain loop, {name}", ">= 1.0"))
                    continue
                steps = _steps_for(model, d, scale, quick)
                overrides = [f"model={model}", f"dims={d}", f"scale={scale}", f"gpus={gpus}"]
                if scale == "paper":  # a paper-scale 3D phantom takes ~0.1 s to make
                    overrides.append(f"data.pool={2 * steps}")
                w = Workload([*overrides, *extra], meters, device)
                details[name] = _against_plain(w, steps, repeats, name, rows, deadline, null)
                w.release()
        if null is not None:
            details["null_step_us"] = null
            for kind in ("training", "synthesis"):
                lightning_us = null[f"{kind}_lightning_us"] - null[f"{kind}_plain_us"]
                callbacks_us = null[f"{kind}_lpm_us"] - null[f"{kind}_lightning_us"]
                where = f"per {kind} iteration, null workload, µs"
                rows.append(
                    _row(
                        f"Lightning's loop {where}: Lightning − plain",
                        lightning_us,
                        "reported",
                        None,
                    )
                )
                rows.append(
                    _row(
                        f"lpm's callbacks {where}: lpm − Lightning", callbacks_us, "reported", None
                    )
                )
    return {**details, "rows": rows}


def _loop_note(null: dict[str, float], kind: str, plain_s: float) -> str:
    """What lpm's loop alone costs a `kind` iteration whose plain step takes `plain_s`: its
    extra time per iteration on the null workload, and the ratio that leaves. A noise-free
    estimate of the lpm-vs-plain row, where its repeats cannot resolve a few percent."""
    extra_s = (null[f"{kind}_lpm_us"] - null[f"{kind}_plain_us"]) * 1e-6
    share = extra_s / plain_s
    return (
        f"loop's own cost, null workload: {extra_s * 1e6:.0f} µs = {share:.1%} of a plain step, "
        f"i.e. {1 / (1 + share):.3f}"
    )


def _against_plain(
    w: Workload,
    steps: int,
    repeats: int,
    name: str,
    rows: list[dict[str, Any]],
    deadline: float = math.inf,
    null: dict[str, float] | None = None,
) -> dict[str, Any]:
    """`plain`'s comparisons for one workload: rows appended to `rows`, details returned;
    `null`, the null workload's times (:func:`_null_overhead`), adds :func:`_loop_note`."""
    train = _interleave(
        {"lpm": lambda: w.lpm_train(steps), "plain": lambda: w.plain_train(steps)},
        repeats,
        deadline,
    )
    synthesis = _interleave(
        {"lpm": lambda: w.lpm_synthesis(steps)[0], "plain": lambda: w.plain_synthesis(steps)},
        repeats,
        deadline,
    )
    entry: dict[str, Any] = {"steps": steps, "batch": w.spec.batch}
    cuda = w.device.type == "cuda"
    for kind, runs in (("training", train), ("synthesis", synthesis)):
        lpm, loop = runs["lpm"], runs["plain"]
        entry[kind] = {
            "lpm_ms": [s.seconds * 1e3 for s in lpm],
            "plain_ms": [s.seconds * 1e3 for s in loop],
            "lpm_j": [s.joules_by for s in lpm],
            "plain_j": [s.joules_by for s in loop],
            "cpu_time_ratio": _median_range(_ratios(loop, lpm, lambda s: s.cpu_seconds)),
        }
        for quantity, of in (("time", lambda s: s.seconds), ("J", lambda s: s.joules)):
            ratio = _ratios(loop, lpm, of)
            if not ratio or (quantity == "J" and not cuda):  # CPU joules: time × a model
                continue
            value = statistics.median(ratio)
            label = f"lpm vs plain loop, {kind} {name}: plain {quantity} ÷ lpm {quantity}"
            note = ""
            if quantity == "time":
                note = f"fastest ÷ fastest {_best_of(loop, lpm):.3f}"
                if null is not None:
                    plain_s = statistics.median(s.seconds for s in loop)
                    note += f"; {_loop_note(null, kind, plain_s)}"
            rows.append(
                _row(label, value, ">= 1.0", judged(ratio, lambda v: v >= 1.0, 1.0), ratio, note)
            )
    # Repeated like the arms: one load of a few ms is a single draw of this machine's noise.
    fetches = [w.fetch_seconds(WARMUP + steps) for _ in range(repeats)]
    entry["fetch_ms"] = [f * 1e3 for f in fetches]
    step_s = statistics.median(s.seconds for s in train["lpm"])
    shares = [f / step_s for f in fetches]
    rows.append(
        _row(
            f"data loading, {name}: batch load ÷ training step",
            statistics.median(shares),
            "<= 0.01",
            judged(shares, lambda v: v <= 0.01, 0.0),
            shares,
        )
    )
    if cuda:
        pinned, unpinned = (w.fetch_seconds(WARMUP + steps, pin) for pin in (True, False))
        entry["fetch_ms_pinned"], entry["fetch_ms_unpinned"] = pinned * 1e3, unpinned * 1e3
        label = f"data loading, {name}: pinned ÷ unpinned batch load to the GPU"
        rows.append(_row(label, pinned / unpinned, "reported (the job pins on a GPU)", None))
    return entry


def _skipped(name: str, target: str) -> dict[str, Any]:
    return _row(name, None, target, None, note=OUT_OF_TIME)


def _steps_for(model: str, dims: str, scale: str, quick: bool) -> int:
    """Measured iterations per arm: about a second of work each on this CPU, a few on a GPU."""
    if scale == "paper":
        return 3 if quick else 6
    base = {"2d": 40, "3d": 12}[dims] // (1 if model == "small" else 3)
    return max(6, base // 2 if quick else base)


# --- projection and per-job fixed cost -----------------------------------------------------


def _within_run(
    per_window: Mapping[str, Sequence[Sequence[float]]],
    warmup: Mapping[str, int],
    measured: Mapping[str, int],
) -> tuple[float, float]:
    """(energy, seconds) of the projection made from the start of a fully measured run, each
    over the run's measured total.

    Per unit, the leading windows that hold `warmup[unit]` iterations are taken as its
    warm-up (a fixed cost added once), the next ones that hold `measured[unit]` (at least
    three windows) as its measured sample, and `lpm.carbon.projection.project` scales them to
    the unit's whole run, as a job does.

    Args:
        per_window: per unit, the record's `per_window` rows: [iterations, seconds, joules].
    """
    from lpm.carbon.projection import project

    units, warm, budget = {}, {}, {}
    total_s = total_j = 0.0
    for unit, rows in per_window.items():
        windows = [Window(unit, int(n), s, {"total": j}) for n, s, j in rows]
        head = _leading(windows, warmup.get(unit, 0), 0)
        sample = _leading(windows[head:], measured[unit], 3)
        warm[unit] = UnitMeasurement(unit, tuple(windows[:head]))
        units[unit] = UnitMeasurement(unit, tuple(windows[head : head + sample]))
        budget[unit] = sum(w.iterations for w in windows)
        total_s += sum(w.seconds for w in windows)
        total_j += sum(w.total_j for w in windows)
    projected = project(
        PhaseMeasurement("bench", units, warmup={u: m for u, m in warm.items() if m.windows}),
        budget,
    )
    assert projected.energy_j is not None
    return projected.energy_j.value / total_j, projected.seconds.value / total_s


def _leading(windows: Sequence[Window], iterations: int, at_least: int) -> int:
    """How many leading windows hold `iterations` iterations, and at least `at_least` windows."""
    held = count = 0
    for w in windows:
        if held >= iterations and count >= at_least:
            break
        held, count = held + w.iterations, count + 1
    return count


def _timed_sweep(out: str, *overrides: str) -> None:
    """`python -m lpm.run -m overrides` in this process, noting for every job the wall-clock
    time it started and ended, of its first batch, of its first measured batch and of its last
    batch end; written to `out` as JSON. Run in a fresh process by `projection`."""
    import lpm.run
    from lpm.energy.callback import WARMUP as WARMUP_PREFIX
    from lpm.energy.callback import EnergyCallback

    jobs: list[dict[str, float]] = []
    batch_start, batch_end, run = (
        EnergyCallback._batch_start,
        EnergyCallback._batch_end,
        lpm.run.run,
    )

    def timed_batch_start(self: Any, batch: Any) -> None:
        now = time.time()
        batch_start(self, batch)
        jobs[-1].setdefault("first_step", now)
        if not self._open.unit.startswith(WARMUP_PREFIX):
            jobs[-1].setdefault("first_measured", now)

    def timed_batch_end(self: Any, batch: Any) -> None:
        batch_end(self, batch)
        jobs[-1]["last_step"] = time.time()

    def timed_run(cfg: Any) -> str:
        jobs.append({"start": time.time()})
        try:
            return run(cfg)
        finally:
            jobs[-1]["end"] = time.time()

    EnergyCallback._batch_start, EnergyCallback._batch_end = timed_batch_start, timed_batch_end
    lpm.run.run = timed_run
    sys.argv = ["lpm.run", "-m", *overrides]
    try:
        lpm.run.main()
    finally:
        Path(out).write_text(json.dumps({"jobs": jobs}))


PROJECTION_JOB = (
    "logger=none", "gpus=cpu", "scale=cpu", "model=small", "dims=2d", "sampler=ddim",
    "sampler.steps=20", "batch.synthesis=4", "target.autoencoder_iterations=150",
    "target.diffusion_iterations=150", "target.samples=48", "measure.windows=15",
    "quality.enabled=false",  # its chains run after the phases: not what this bench times
)  # fmt: skip


def projection(quick: bool = False) -> dict[str, Any]:
    """A projected job and the same job measured in full (150 training steps per phase, 12
    DDIM-20 chains and decodes), as a 2-job sweep in a fresh process, `repeats` times with the
    order alternated:

    - within run: the projection (`project()`) from the start of each full run, with the job's
      warm-up (3) and measured iterations (30, 5 decodes), against the run's whole total: the
      error of the method alone;
    - across runs: the projected job's projection against the full job's total, next to the
      spread of the full runs themselves (max ÷ min), the machine's own run-to-run variation;
    - per-job fixed cost: process start → first step of the sweep's first job, and last step of
      job N → first step of job N+1.

    Each within-run row notes how much the full runs' own windows vary (the coefficient of
    variation of their time per iteration, median over repeats): the floor that other tenants
    of a shared machine put under any projection's error.
    """
    repeats = 2 if quick else 5
    ratios: dict[str, dict[str, list[float]]] = {}
    full_totals: dict[str, list[float]] = {}
    first, between = [], []
    for r in range(repeats):
        order = "measure.full=true,false" if r % 2 else "measure.full=false,true"
        sweep = Path(tempfile.mkdtemp(prefix="lpm-bench-"))
        timing = sweep / "timing.json"
        spawned = time.time()
        code = "import sys; from lpm.bench import _timed_sweep; _timed_sweep(*sys.argv[1:])"
        subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(timing),
                *PROJECTION_JOB,
                order,
                f"hydra.sweep.dir={sweep}",
            ],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        jobs = json.loads(timing.read_text())["jobs"]
        first.append(jobs[0]["first_step"] - spawned)
        between += [b["first_step"] - a["last_step"] for a, b in itertools.pairwise(jobs)]
        records = {}
        for path in sweep.glob("*/record.json"):
            record = json.loads(path.read_text())
            # The sweep writes the value as Hydra parsed it: measure.full=True.
            full_job = "measure.full=true" in map(str.lower, record["job"]["overrides"])
            records[full_job] = record["phases"]
        projected, full = records[False], records[True]
        for phase, p in projected.items():
            measured = full[phase]["measured"]
            full_j = measured["energy_j"]["total"]
            full_totals.setdefault(phase, []).append(full_j)
            got = ratios.setdefault(phase, {})
            got.setdefault("across_runs_energy", []).append(
                p["projected"]["energy_kwh"] * J_PER_KWH / full_j
            )
            got.setdefault("across_runs_seconds", []).append(
                p["projected"]["seconds"] / measured["seconds"]
            )
            shape = {u: w["per_window"] for u, w in measured["units"].items()}
            warm = {"step": 3, "unet": 3, "decode": 1}
            sample = {"step": 30, "unet": 30, "decode": 5}
            energy, seconds = _within_run(shape, warm, sample)
            got.setdefault("within_run_energy", []).append(energy)
            got.setdefault("within_run_seconds", []).append(seconds)
            main = "unet" if "unet" in shape else "step"
            rates = [s / n for n, s, _ in shape[main]]
            got.setdefault("window_cv", []).append(
                statistics.stdev(rates) / statistics.fmean(rates)
            )
    rows = []
    for phase, got in ratios.items():
        spread = max(full_totals[phase]) / min(full_totals[phase])
        noise = f"full runs' window CV {statistics.median(got['window_cv']):.1%}"
        for quantity in ("energy", "seconds"):
            within = got[f"within_run_{quantity}"]
            value = statistics.median(within)
            rows.append(
                _row(
                    f"projection within a run, {phase} {quantity}: projected ÷ full",
                    value,
                    "within 1 ± 0.03",
                    judged(within, lambda v: abs(v - 1) <= 0.03, 1.0),
                    within,
                    noise,
                )
            )
        across = got["across_runs_energy"]
        value = statistics.median(across)
        rows.append(
            _row(
                f"projection across runs, {phase} energy: projected ÷ full (full runs spread "
                f"{spread:.3f}×)",
                value,
                "within the full runs' spread",
                # Both ratios are multiplicative: 0.9 is as far from 1 as 1.11.
                judged(across, lambda v, s=spread: max(v, 1 / v) <= s, 1.0),
                across,
            )
        )
    rows.append(
        _row(
            "fixed cost: process start → first step of job 1, s",
            statistics.median(first),
            "reported",
            None,
            first,
        )
    )
    rows.append(
        _row(
            "fixed cost: job N → job N+1 in a sweep (last step → first step), s",
            statistics.median(between),
            "reported",
            None,
            between,
        )
    )
    return {
        "job": " ".join(PROJECTION_JOB),
        "repeats": repeats,
        **{
            phase: {k: _median_range(v) for k, v in got.items()}
            | {"full_run_spread": max(full_totals[phase]) / min(full_totals[phase])}
            for phase, got in ratios.items()
        },
        "first_job_s": first,
        "next_job_s": between,
        "rows": rows,
    }


# --- synthesis against steps -------------------------------------------------------------


def _linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least squares y = intercept + slope × x, and its R²."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - intercept - slope * a) ** 2 for a, b in zip(x, y, strict=True))
    ss_tot = sum((b - my) ** 2 for b in y)
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def steps(quick: bool = False) -> dict[str, Any]:
    """Whole synthesis chains (DDIM, model=small 2D, scale=cpu, a batch of 16) of 10 to 200
    steps, each followed by its decode, through lpm's trainer; time and energy per chain
    against steps, fitted by a line. Its intercept is the fixed cost of a chain, next to the
    decode measured alone."""
    counts = (5, 10, 20, 40) if quick else (10, 25, 50, 100, 200)
    repeats = 2 if quick else 5  # medians of 5: one burst of the host's noise moves no point
    per: dict[int, list[tuple[float, float, float]]] = {n: [] for n in counts}
    with _node_meters() as meters:
        w = Workload(["model=small", "dims=2d", "sampler=ddim"], meters)
        w.scaled(6)

        def chain(n: int) -> tuple[float, float, float]:
            from lpm.workload.ldm import synthesis_plan

            w.dm.steps = n
            m = _chain(w, synthesis_plan(n, None, 0))
            return m.seconds, sum(m.energy_j.values()), m.units["decode"].seconds

        chain(counts[0])  # warm
        for r in range(repeats):
            for n in counts if r % 2 == 0 else counts[::-1]:
                per[n].append(chain(n))
    x = list(counts)
    seconds = [statistics.median(s for s, _, _ in per[n]) for n in counts]
    joules = [statistics.median(j for _, j, _ in per[n]) for n in counts]
    decode_s = statistics.median(d for n in counts for _, _, d in per[n])
    fit_s, fit_j = _linear_fit(x, seconds), _linear_fit(x, joules)
    return {
        "workload": "DDIM chains of a batch of 16, model=small dims=2d scale=cpu, + decode",
        "steps": x,
        "seconds_per_chain": seconds,
        "joules_per_chain": joules,
        "fit_seconds": fit_s,
        "fit_joules": fit_j,
        "decode_seconds": decode_s,
        "rows": [
            _row(
                "synthesis time vs steps: R² of a linear fit",
                fit_s["r2"],
                ">= 0.99",
                fit_s["r2"] >= 0.99,
            ),
            _row(
                "synthesis energy vs steps: R² of a linear fit",
                fit_j["r2"],
                ">= 0.99",
                fit_j["r2"] >= 0.99,
            ),
            _row(
                "synthesis fixed cost per chain (fit intercept), s",
                fit_s["intercept"],
                "reported",
                None,
            ),
            _row("decode of a chain's latents, measured, s", decode_s, "reported", None),
            _row(
                "UNet evaluation + scheduler step (fit slope), ms",
                fit_s["slope"] * 1e3,
                "reported",
                None,
            ),
        ],
    }


def _chain(w: Workload, items: list[dict[str, Any]]) -> PhaseMeasurement:
    """`items` through lpm's synthesis trainer, every unit measured in one window each."""
    import torch

    from lpm.energy.callback import EnergyCallback
    from lpm.job import PhasePlan
    from lpm.workload.ldm import WorkItems

    unets = sum(i["unit"] == "unet" for i in items)
    measured = {"unet": unets, "decode": len(items) - unets}
    trainer = w.job.trainer(
        PhasePlan("synthesis", {}, measured, measured, {}), use_distributed_sampler=False
    )
    with torch.no_grad():
        trainer.predict(w.dm, WorkItems(items), return_predictions=False)
    return next(c for c in trainer.callbacks if isinstance(c, EnergyCallback)).measurement


# --- speed-up techniques -------------------------------------------------------------------


def speedups(
    quick: bool = False,
    device: str = "cpu",
    scale: str = "cpu",
    model: str = "small",
    dims: str = "2d",
    techniques: Sequence[str] = TECHNIQUES,
    samplers: Sequence[str] = SAMPLERS,
    extra: Sequence[str] = (),
    repeats: int | None = None,
    deadline: float = math.inf,
) -> dict[str, Any]:
    """Each technique of conf/speedup/ alone on the baseline, through lpm's trainers, every
    arm interleaved with the baseline in each round: diffusion training step and UNet
    evaluation, time and energy per iteration ÷ the baseline's in the same round; for compile
    also its first run's warm-up (the compilation). Samplers: the time and energy of one
    sample, projected (`project()`) from measured UNet evaluations and decodes, ÷ DDPM's at
    1,000 steps.
    """
    repeats = repeats or (2 if quick else 3)
    if quick and device == "cpu":  # a cold compilation takes minutes on a CPU
        techniques = [t for t in techniques if t != "compile"]
    gpus = "1gpu" if device == "cuda" else "cpu"
    steps = _steps_for(model, dims, scale, quick)
    base = [f"model={model}", f"dims={dims}", f"scale={scale}", f"gpus={gpus}", *extra]
    if scale == "paper":
        base.append(f"data.pool={2 * steps}")
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"workload": " ".join(base), "steps": steps, "repeats": repeats}
    built: dict[str, Workload] = {}
    warmups: dict[str, list[float]] = {}  # per arm and run: seconds of its warm-up iterations

    with _node_meters() as meters:

        def workload(name: str) -> Workload:
            if name not in built:
                overrides = [] if name in ("baseline", "ddpm") else [f"speedup={name}"]
                built[name] = Workload([*base, *overrides], meters, device)
            return built[name]

        def both(name: str) -> tuple[Sample, Sample]:
            w = workload(name)
            train = w.lpm_train(steps)
            assert w.last is not None
            synthesis, m = w.lpm_synthesis(steps)
            warmups.setdefault(name, []).append(
                w.last.warmup["step"].seconds + m.warmup["unet"].seconds
            )
            return train, synthesis

        details["samplers"] = _samplers(workload, ("ddpm", *samplers), steps, rows, deadline)
        for name in ("ddpm", *samplers):
            if name in built:
                built.pop(name).release()
        arms: dict[str, Callable[[], Any]] = {"baseline": lambda: both("baseline")}
        for technique in techniques:
            note = _unavailable(technique, device, deadline)
            if note:
                rows.append(_row(f"speed-up {technique}", None, "reported", None, note=note))
            else:
                arms[technique] = lambda t=technique: both(t)
        runs = _interleave(arms, repeats, deadline)
        for technique in arms:
            if technique == "baseline":
                continue
            details[technique] = {
                "precision_ran": workload(technique).job.record.axes.get("precision"),
                "warmup_s": warmups[technique],
            }
            rows += _technique_rows(technique, runs[technique], runs["baseline"], details)
            if technique == "compile":
                extra_s = warmups[technique][0] - statistics.median(warmups["baseline"])
                label = "speed-up compile: first run's warm-up − baseline's, s (compilation)"
                rows.append(_row(label, extra_s, "reported", None))
        for w in built.values():
            w.release()
    return {**details, "rows": rows}


def _technique_rows(
    technique: str,
    ours: Sequence[tuple[Sample, Sample]],
    baseline: Sequence[tuple[Sample, Sample]],
    details: dict[str, Any],
) -> list[dict[str, Any]]:
    """Time and energy ratios of one technique's runs to the baseline's of the same rounds."""
    rows = []
    for k, kind in enumerate(("training step", "UNet evaluation")):
        if technique in TRAINING_ONLY and k:
            continue
        mine, theirs = [r[k] for r in ours], [r[k] for r in baseline]
        details[technique][kind] = {
            "ms": [s.seconds * 1e3 for s in mine],
            "baseline_ms": [s.seconds * 1e3 for s in theirs],
        }
        for quantity, of in (("time", lambda s: s.seconds), ("energy", lambda s: s.joules)):
            ratio = _ratios(mine, theirs, of)
            if ratio:
                label = f"speed-up {technique}: {kind} {quantity} ÷ baseline"
                rows.append(_row(label, statistics.median(ratio), "reported", None, ratio))
    return rows


def _samplers(
    workload: Callable[[str], Workload],
    names: Sequence[str],
    steps: int,
    rows: list[dict[str, Any]],
    deadline: float,
) -> dict[str, Any]:
    """Per sampler (the first is the reference): one sample's time and energy, projected from
    measured UNet evaluations and decodes; ratio rows appended to `rows`."""
    from lpm.carbon.projection import project

    per_sample: dict[str, dict[str, Any]] = {}
    for name in names:
        if time.monotonic() > deadline:
            rows.append(_row(f"sampler {name}", None, "reported", None, note=OUT_OF_TIME))
            continue
        w = workload(name)
        _, m = w.lpm_synthesis(steps, decodes=3)
        n = w.cfg.sampler.steps
        chain = project(replace(m, warmup={}), {"unet": n, "decode": 1})
        batch = w.dm.sample_batch
        per_sample[name] = {
            "steps": n,
            "seconds_per_sample": chain.seconds.value / batch,
            "joules_per_sample": chain.energy_j.value / batch if chain.energy_j else None,
        }
    reference = per_sample.get(names[0])
    for name, got in per_sample.items():
        if name == names[0] or reference is None:
            continue
        against = f"{names[0].upper()} {reference['steps']}"
        for quantity, key in (("time", "seconds_per_sample"), ("energy", "joules_per_sample")):
            if got[key] is not None and reference[key]:
                label = f"sampler {name} {got['steps']} steps: {quantity} per sample ÷ {against}"
                rows.append(_row(label, got[key] / reference[key], "reported", None))
    return per_sample


def _compile_needs_s() -> float:
    """Seconds the compile arm needs: :data:`COMPILE_NEEDS_S` cold, ~30 s when inductor's
    cache holds an earlier run's kernels (it is keyed by graph: a cache of other graphs makes
    this an underestimate, and the run then ends late rather than skipping compile)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    warm = Path(cache_dir()).is_dir() and any(Path(cache_dir()).iterdir())
    return COMPILE_WARM_S if warm else COMPILE_NEEDS_S


def _unavailable(technique: str, device: str, deadline: float = math.inf) -> str:
    """Why `technique` is not measured on `device` now, or ''."""
    if technique == "fp16" and device == "cpu":
        return "16-mixed runs as bf16-mixed on a CPU (Lightning): see bf16; GPU only"
    left = deadline - time.monotonic()
    if technique == "compile" and left < (needs := _compile_needs_s()):
        return f"skipped: compiling needs ~{needs:.0f} s, {max(left, 0):.0f} s left"
    if left < 0:
        return OUT_OF_TIME
    return ""


# --- where a step's time goes --------------------------------------------------------------

# Who owns a profiled function, by its file: lpm's own code, the libraries it calls, torch's
# operators (C++ kernels, cProfile's `{built-in method torch.*}` / `{method '...' of
# 'torch._C...'}` entries) and the rest of Python.
OWNERS = (
    ("lpm (callbacks, modules, progress)", ("/lpm/",)),
    ("lightning loop", ("/lightning/", "/lightning_utilities/", "/lightning_fabric/")),
    ("monai networks (Python)", ("/monai/", "/einops/")),
    ("diffusers scheduler", ("/diffusers/",)),
    ("torch (Python)", ("/torch/",)),
)


def _owner(filename: str, function: str) -> str:
    if filename == "~":  # a built-in: torch's C++ operators, or Python's own
        return "torch operators (C++)" if "torch" in function else "Python built-ins"
    for owner, parts in OWNERS:
        if any(part in filename for part in parts) and "/lpm/bench.py" not in filename:
            return owner
    return "other Python"


def _shares(stats: Any) -> dict[str, float]:
    """Each owner's share of the profiled time (cProfile's own time per function)."""
    by_owner: dict[str, float] = {}
    for (filename, _, function), (_, _, own_s, _, _) in stats.stats.items():
        owner = _owner(filename, function)
        by_owner[owner] = by_owner.get(owner, 0.0) + own_s
    total = sum(by_owner.values()) or 1.0
    return {k: v / total for k, v in sorted(by_owner.items(), key=lambda kv: -kv[1])}


def profile(quick: bool = False) -> dict[str, Any]:
    """Where lpm's training step and synthesis step spend their time (small 2D, scale=cpu):
    cProfile over lpm's measured iterations, each function's own time attributed to its owner
    (lpm, Lightning, MONAI, diffusers, torch's operators). cProfile slows Python code, not the
    operators, so Python's shares are upper bounds. Not in the default set: it explains the
    `plain` rows, it does not measure against a target."""
    import cProfile
    import pstats

    steps = 20 if quick else 60
    out: dict[str, Any] = {"workload": "model=small dims=2d scale=cpu", "steps": steps}
    rows = []
    with _node_meters("machine") as meters:
        w = Workload(["model=small", "dims=2d"], meters)
        for kind, run in (
            ("training step", lambda: w.lpm_train(steps)),
            ("synthesis step", lambda: w.lpm_synthesis(steps)),
        ):
            run()  # warm: the profile holds the steady state and the trainer set-up only
            profiler = cProfile.Profile()
            profiler.runcall(run)
            shares = _shares(pstats.Stats(profiler))
            out[kind] = shares
            for owner, share in shares.items():
                rows.append(_row(f"{kind}: share of time in {owner}", share, "reported", None))
        w.release()
    return {**out, "rows": rows}


# --- NVML counter against sampled power ----------------------------------------------------


class _PowerOnly:
    """An NVML module without the energy counter: an `NvmlMeter` over it samples power."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self.NVMLError = nvml.NVMLError

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nvml, name)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:  # noqa: N802
        # pynvml maps the code to its NVMLError_NotSupported subclass.
        raise self.NVMLError(getattr(self._nvml, "NVML_ERROR_NOT_SUPPORTED", 3))


def counter(
    nvml: Any = None,
    handle: Any = None,
    work: Callable[[], Any] | None = None,
    interval_s: float = 0.1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """GPU energy over one window two ways at once: NVML's total-energy counter (lpm's method)
    and NVML power sampled every `interval_s` and integrated (the fallback, and what
    Carbontracker does); the row is sampled ÷ counter.

    Args:
        nvml: the `pynvml` module (or a fake with its calls); None loads pynvml and takes CUDA
            device 0.
        work: what runs inside the window; None: 20 s of large matmuls on the GPU.
    """
    from lpm.energy.meters import NvmlMeter, cuda_identity, nvml_handle

    name = "NVML: sampled power ÷ energy counter, same window"
    if nvml is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            nvml, handle = pynvml, nvml_handle(pynvml, 0, *cuda_identity(0))
        except Exception as exc:  # no library, no driver, no device: no GPU here
            note = f"no GPU here ({type(exc).__name__}); scripts/gpu_check.sh runs it"
            return {"rows": [_row(name, None, "within 1 ± 0.02", None, note=note)]}
    work = work or _matmuls
    by_counter = NvmlMeter(handle, nvml, clock=clock)
    sampled = NvmlMeter(handle, _PowerOnly(nvml), interval_s=interval_s, clock=clock)
    try:
        (c0, s0), t0 = (by_counter.read_j()["gpu"], sampled.read_j()["gpu"]), clock()
        work()
        (c1, s1), t1 = (by_counter.read_j()["gpu"], sampled.read_j()["gpu"]), clock()
    finally:
        sampled.close()
    ratio = (s1 - s0) / (c1 - c0)
    return {
        "window_s": t1 - t0,
        "counter_j": c1 - c0,
        "sampled_j": s1 - s0,
        "interval_s": interval_s,
        "rows": [_row(name, ratio, "within 1 ± 0.02", abs(ratio - 1) <= 0.02)],
    }


def _matmuls(seconds: float = 20.0) -> None:
    import torch

    a = torch.randn(8192, 8192, device="cuda")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(10):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


# --- the GPU check -------------------------------------------------------------------------


def gpu(
    quick: bool = False,
    device: str = "cuda",
    scale: str = "paper",
    models: Sequence[str] = ("small", "base"),
    dims: Sequence[str] = ("2d", "3d"),
    extra: Sequence[str] = (),
    budget_s: float = 360.0,
    nvml: Any = None,
    handle: Any = None,
    out: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """scripts/gpu_check.sh's Python part: on one GPU, at `scale`, lpm vs the plain loop (time
    and NVML counter energy) for every model × dims; the counter against sampled power over a
    window of the base 3D (else the last) model's plain training; the speed-up techniques for
    that model. Starts no new work once `budget_s` is spent (rows say what was skipped).
    `device="cpu"` with `scale="cpu"` runs the same code here.

    Args:
        out: filled in place as each part finishes, so that a run stopped part-way keeps the
            parts it finished (`main` writes them).
    """
    start = time.monotonic()
    deadline = start + budget_s
    out = {} if out is None else out
    repeats = 1 if quick else 2
    out["plain"] = plain(quick, device, scale, models, dims, extra, repeats, deadline)
    model = "base" if "base" in models else models[-1]
    d = "3d" if "3d" in dims else dims[-1]
    overrides = [f"model={model}", f"dims={d}", f"scale={scale}", *extra]
    overrides.append("gpus=1gpu" if device == "cuda" else "gpus=cpu")
    if time.monotonic() < deadline:
        with _node_meters() as meters:
            steps = _steps_for(model, d, scale, quick)
            w = Workload([*overrides, f"data.pool={2 * steps}"], meters, device)
            w.plain_train(steps)  # warm: the window opens on a busy, steady GPU
            window = 10 if quick else 20  # training steps: >= 10 s on a GPU at paper scale
            out["counter"] = counter(nvml, handle, lambda: w.plain_train(window))
            w.release()
    else:
        out["counter"] = {"rows": [_row("NVML counter", None, "within 1 ± 0.02", None,
                                        note=OUT_OF_TIME)]}  # fmt: skip
    out["speedups"] = speedups(
        quick, device, scale, model, d, extra=extra, repeats=1, deadline=deadline
    )
    out["seconds"] = time.monotonic() - start
    return out


# --- robustness (simulation against a known truth, and a real CPU hog) --------------------


@dataclass
class _FakeNode:
    """A fake clock and a fake cumulative meter driven by a known true cost per iteration."""

    seconds: float = 0.0
    joules: float = 0.0

    def iterate(self, cost_s: float, power_w: float) -> None:
        self.seconds += cost_s
        self.joules += cost_s * power_w


def _simulated_unit(
    rng: random.Random,
    windows: int,
    per_window: int,
    true_s: float,
    power_w: float,
    slow_share: float,
    slow_factor: float,
    noise: float = 0.03,
    correlation: float = 0.9,
    drift: float = 0.04,
) -> tuple[UnitMeasurement, bool]:
    """One measured unit as the EnergyCallback sees it: the node is read at window edges only.

    Each iteration costs `true_s` × (1 + a linear drift of ±`drift` over the run, mean zero)
    × (1 + AR(1) noise, `noise` standard deviation, `correlation` between iterations), and a
    window hit by contention (probability `slow_share`) runs `slow_factor` times slower and
    charges that time at the same power (machine-mode attribution of another tenant's load).
    """
    node, e, total = _FakeNode(), rng.gauss(0, noise), windows * per_window
    slope = rng.uniform(-drift, drift)
    measured, hit = [], False
    for w in range(windows):
        slow = rng.random() < slow_share
        hit |= slow
        t0, j0 = node.seconds, node.joules
        for i in range(per_window):
            e = correlation * e + math.sqrt(1 - correlation**2) * rng.gauss(0, noise)
            position = (w * per_window + i) / (total - 1) - 0.5
            cost = true_s * (1 + 2 * slope * position) * (1 + e) * (slow_factor if slow else 1)
            node.iterate(cost, power_w)
        measured.append(Window("step", per_window, node.seconds - t0, {"cpu": node.joules - j0}))
    return UnitMeasurement("step", tuple(measured)), hit


def robustness(
    runs: int = 400,
    windows: int = 5,
    per_window: int = 6,
    slow_share: float = 0.1,
    slow_factor: float = 10.0,
    seed: int = 0,
    contention: bool = True,
    quick: bool = False,
) -> dict[str, Any]:
    """The robust estimate, its interval and the verdict against a known truth, over `runs`
    simulated runs with and without injected slow windows; then, unless `contention` is off
    (or `quick`), one real small job on a quiet machine next to the same job under a CPU hog.

    Projection goes through the production `project()` (150,000 iterations).
    """
    from lpm.carbon.projection import project

    rng = random.Random(seed)
    true_s, power_w, budget = 0.02, 100.0, 150_000
    true_kwh = true_s * power_w * budget / J_PER_KWH
    scenarios: dict[str, dict[str, list[float]]] = {}
    for name, share in (("quiet", 0.0), ("slow windows", slow_share)):
        stats: dict[str, list[float]] = {k: [] for k in ("robust", "plain", "covered", "noisy")}
        done = 0
        while done < runs:
            unit, hit = _simulated_unit(
                rng, windows, per_window, true_s, power_w, share, slow_factor
            )
            if share and not hit:  # a run the contention missed is not a slow-window run
                continue
            done += 1
            projected = project(PhaseMeasurement("sim", {"step": unit}), {"step": budget})
            kwh = projected.energy_j.scaled(1 / J_PER_KWH)
            plain_kwh = unit.joules_per_iteration.mean * budget / J_PER_KWH
            stats["robust"].append(abs(kwh.value / true_kwh - 1))
            stats["plain"].append(abs(plain_kwh / true_kwh - 1))
            stats["covered"].append(float(kwh.low <= true_kwh <= kwh.high))
            stats["noisy"].append(float(unit.verdict.status == "noisy"))
        scenarios[name] = stats
    quiet, slow = scenarios["quiet"], scenarios["slow windows"]
    rows = [
        _row("robust estimate error, slow windows (median)", statistics.median(slow["robust"]),
             "<= 0.05", statistics.median(slow["robust"]) <= 0.05),
        _row("plain mean error, slow windows (median)", statistics.median(slow["plain"]),
             "> 0.5 (what the robust estimate fixes)", statistics.median(slow["plain"]) > 0.5),
        _row("robust estimate error, quiet (median)", statistics.median(quiet["robust"]),
             "<= 0.05", statistics.median(quiet["robust"]) <= 0.05),
        _row("interval covers the truth, quiet", statistics.fmean(quiet["covered"]), ">= 0.90",
             statistics.fmean(quiet["covered"]) >= 0.90),
        _row("interval covers the truth, slow windows", statistics.fmean(slow["covered"]),
             ">= 0.90", statistics.fmean(slow["covered"]) >= 0.90),
        _row("verdict noisy, slow windows", statistics.fmean(slow["noisy"]), ">= 0.95",
             statistics.fmean(slow["noisy"]) >= 0.95),
        _row("verdict noisy, quiet", statistics.fmean(quiet["noisy"]), "<= 0.10",
             statistics.fmean(quiet["noisy"]) <= 0.10),
    ]  # fmt: skip
    result: dict[str, Any] = {
        "simulation": {
            "runs_per_scenario": runs,
            "windows": windows,
            "iterations_per_window": per_window,
            "noise": "AR(1) 3% sd, 0.9 between iterations; linear drift up to ±4%",
            "slow_windows": f"{slow_share:.0%} of windows {slow_factor:g}× slower (runs hit)",
            "rows": rows,
        }
    }
    if contention and not quick:
        result["contention"] = _contention_run()
    return result


def _hog(stop_after_s: float, busy_s: float = 0.3, idle_s: float = 0.9) -> None:
    """Busy-loop in bursts: another tenant's load arriving and leaving while a job runs."""
    end = time.monotonic() + stop_after_s
    while time.monotonic() < end:
        until = time.monotonic() + busy_s
        while time.monotonic() < until:
            pass
        time.sleep(idle_s)


def _contention_run() -> dict[str, Any]:
    """The same small job on a quiet machine and beside a bursty CPU hog (one per core)."""
    job = ["logger=none", "gpus=cpu", "scale=cpu", "model=small", "dims=2d"]
    job.append("quality.enabled=false")  # its chains run after the phases: not what is timed

    def run(hogs: int) -> dict[str, Any]:
        job_dir = Path(tempfile.mkdtemp(prefix="lpm-bench-"))
        code = f"from lpm.bench import _hog; _hog({120.0})"
        hog = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(hogs)]
        try:
            command = [sys.executable, "-m", "lpm.run", *job, f"hydra.run.dir={job_dir}"]
            subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        finally:
            for p in hog:
                p.kill()
                p.wait()
        record = json.loads((job_dir / "record.json").read_text())
        out = {}
        for phase, p in record["phases"].items():
            unit = "unet" if phase == "synthesis" else "step"
            j = p["measured"]["units"][unit]["joules_per_iteration"]
            out[phase] = {
                "unit": unit,
                "joules_per_iteration": j["value"],
                "ci95": j["ci95"],
                "plain_mean": j["mean"],
                "outliers": p["measured"]["units"][unit]["outliers"],
                "verdict": p["verdict"]["status"],
                "reasons": p["verdict"]["reasons"],
            }
        return out

    return {"job": " ".join(job), "quiet": run(0), "cpu hog": run(os.cpu_count() or 1)}


# --- output --------------------------------------------------------------------------------


def _rows(result: Any) -> Iterator[dict[str, Any]]:
    """Every row of a benchmark's result, sections included, in order."""
    if not isinstance(result, dict):
        return
    yield from result.get("rows", [])
    for key, value in result.items():
        if key != "rows" and isinstance(value, dict):
            yield from _rows(value)


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0 or 0.001 <= abs(value) < 10_000:
        return f"{value:.4g}"
    return f"{value:.3g}"


OK_MARKS = {True: "yes", False: "NO", None: "–", NOISE: NOISE}


def table(results: Mapping[str, Any]) -> str:
    """Every row with its target as a Markdown table."""
    lines = [
        "| benchmark | measured | median's 95% CI over repeats | target | ok |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        for row in _rows(result):
            spread = row.get("median_ci95")
            text = f"{_number(spread[0])}–{_number(spread[1])}" if spread else ""
            value = _number(row["value"]) + (f" ({row['note']})" if row.get("note") else "")
            lines.append(
                f"| {name}: {row['name']} | {value} | {text} | {row['target']} "
                f"| {OK_MARKS[row['ok']]} |"
            )
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average_1_5_15": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _quiet() -> None:
    """Lightning's per-trainer banners and hints and CodeCarbon's lines out of the output: the
    benchmarks build dozens of trainers, and the table is what they are for."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (its import resets its loggers to INFO)

    os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
    for name in ("lightning.pytorch", "lightning.fabric", "codecarbon"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric|lightning.fabric|torch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lpm.bench",
        description=__doc__.split("\n")[0],
        epilog="\n".join(__doc__.split("\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "which",
        nargs="*",
        metavar="BENCH",
        help=f"any of {', '.join(BENCHMARKS)} (default: {', '.join(CPU_BENCHMARKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and iterations")
    parser.add_argument(
        "--out", type=Path, default=Path("bench"), help="directory for bench.json and bench.md"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per process, jobs started by the benchmarks included (default 1: on "
        "a shared host two OpenMP threads stall whenever another process holds a core; "
        "0: torch's default)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds after which no new work starts; its rows say 'skipped: out of time' "
        f"(default: {CPU_BUDGET_S:.0f} for the CPU benchmarks, make bench's 10 minutes; "
        "360 for gpu)",
    )
    args = parser.parse_args(argv)
    unknown = [w for w in args.which if w not in BENCHMARKS]
    if unknown:  # argparse's choices reject a list default, so names are checked here
        parser.error(f"BENCH: unknown {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.threads > 0:  # before torch loads; the jobs the benchmarks start inherit it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    _quiet()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    began = time.monotonic()
    stopped = None
    for name in args.which or CPU_BENCHMARKS:
        print(f"lpm.bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            if name == "gpu":  # filled part by part: a run stopped midway keeps what finished
                results[name] = {}
                gpu(args.quick, budget_s=args.budget_s or 360.0, out=results[name])
            elif name == "counter":
                results[name] = counter()
            elif name in ("plain", "speedups"):  # the ones that can stop part-way
                left = (args.budget_s or CPU_BUDGET_S) - RESERVED_S.get(name, 0.0)
                results[name] = globals()[name](quick=args.quick, deadline=began + left)
            else:
                results[name] = globals()[name](quick=args.quick)
        except KeyboardInterrupt:  # Ctrl-C, or gpu_check.sh's time limit: keep what finished
            stopped = name
            break
        finally:
            seconds[name] = time.monotonic() - t0
        print(f"lpm.bench: {name} done in {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    total = time.monotonic() - began
    document = {
        "machine": _machine() | {"torch_threads": threads},
        "quick": args.quick,
        "stopped_in": stopped,
        "seconds": {**seconds, "total": total},
        "results": results,
    }
    text = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    command = " ".join(["python -m lpm.bench", *(["--quick"] if args.quick else []), *args.which])
    load = ", ".join(f"{x:.1f}" for x in _machine()["load_average_1_5_15"] or ())
    footer = (
        f"\n\n`{command}`: {total:.0f} s on {os.cpu_count()} CPUs, {threads} torch thread(s) per "
        f"process (load average 1/5/15 min at the end: {load})."
        + (f" Stopped during {stopped}: its rows are missing or partial." if stopped else "")
        + " Ratios are medians of interleaved repeats, with a distribution-free 95% interval"
        " of the median (up to 7 repeats: their range); ok 'within noise': the median misses"
        " the target, the interval reaches it. CPU energy is "
        "CodeCarbon's estimate from load and TDP (no RAPL here), RAM a constant."
    )
    (args.out / "bench.md").write_text(text + footer + "\n")
    print(f"lpm.bench: wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    print(text + footer)
    return 130 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
