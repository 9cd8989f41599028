"""Energy per unit of work: FLOPs per iteration, achieved FLOP/s, joules per PFLOP and model FLOP
utilisation (MFU) against the device's peak.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one iteration of each unit
of a phase, once, after the phase's measurement (never inside a measured window), on the device
the job runs on. The counter counts matrix multiplications, convolutions and attention (2 FLOPs
per multiply-add); normalisation, activations, elementwise arithmetic (so the scheduler's update
and the optimizer) count nothing: the usual "model FLOPs" of MFU.

Torch is imported inside the counting functions: the report and the tests read
:func:`efficiency` and the peak table without it.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from time import perf_counter
from typing import Any

FLOP_PER_PFLOP = 1e15
FLOP_PER_TFLOP = 1e12
DATASHEET = "NVIDIA datasheet, via reference.md"

COUNTED = (
    "torch.utils.flop_counter.FlopCounterMode, eager (torch.compile bypassed: the same math): "
    "matmul, convolution and attention FLOPs, 2 per multiply-add"
)
TRAINING_METHOD = (
    f"{COUNTED}; one step: forward+backward of training_step on one batch per device "
    "(optimizer excluded, no parameter updated)"
)
SYNTHESIS_METHOD = (
    f"{COUNTED}; unet: one UNet evaluation + scheduler step, decode: one decode of a batch of "
    "latents, per device"
)

# Lightning's precision (as `str(trainer.precision)`) -> the number format its math runs in.
PRECISION_FORMAT = {
    "32-true": "fp32",
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
    "16-mixed": "fp16",
    "16-true": "fp16",
}


@dataclass(frozen=True)
class GpuPeaks:
    """Dense peak throughput of one NVIDIA GPU (no sparsity), TFLOP/s, NVIDIA datasheets as
    collected in reference.md.

    Attributes:
        pattern: a regular expression `torch.cuda.get_device_name` matches (case-insensitive).
        fp32: FP32 on the CUDA cores (non-tensor).
        tf32, bf16, fp16: on the tensor cores; None where the GPU has no such tensor core.
    """

    name: str
    pattern: str
    fp32: float
    tf32: float | None
    bf16: float | None
    fp16: float


# SXM and PCIe parts differ by up to a third, and the NVL variants are parts of their own: a
# name is matched on its form factor and never guessed. `get_device_name` reports the H100 SXM5
# as "NVIDIA H100 80GB HBM3" and the H200 SXM as "NVIDIA H200".
GPU_PEAKS = (
    GpuPeaks("V100 SXM2", r"\bV100-SXM2\b", 15.7, None, None, 125),
    GpuPeaks("A100 SXM4/PCIe", r"\bA100\b", 19.5, 156, 312, 312),
    GpuPeaks("L40S", r"\bL40S\b", 91.6, 183, 362, 362),
    GpuPeaks("H100 PCIe", r"^(?!.*\bNVL\b).*\bH100\b.*\bPCIe\b", 51, 378, 756, 756),
    GpuPeaks("H100 SXM5", r"^(?!.*\b(NVL|PCIe)\b).*\bH100\b.*\b(SXM5?|HBM3)\b", 67, 495, 989, 989),
    GpuPeaks("H200 SXM", r"^(?!.*\b(NVL|PCIe)\b).*\bH200\b", 67, 495, 989, 989),
)


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s at the precision that ran, where it comes from, or why there is
    none (then `flop_per_s` is None)."""

    flop_per_s: float | None
    source: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one iteration of each unit of a phase, per device, and how they were counted."""

    per_iteration: dict[str, int]
    method: str


def number_format(precision: str) -> str | None:
    """`fp32`, `bf16` or `fp16` for a Lightning precision; None for one without a peak here."""
    return PRECISION_FORMAT.get(precision)


def gpu_peak(device_name: str, precision: str, tf32: Sequence[str] = ()) -> Peak:
    """The datasheet peak of `device_name` at `precision` (see :data:`GPU_PEAKS`).

    Args:
        device_name: as `torch.cuda.get_device_name` reports it.
        precision: Lightning's, e.g. `32-true`, `bf16-mixed`.
        tf32: the fp32 operations torch lets use TF32 tensor cores (e.g. `matmul`,
            `cuDNN convolutions`): noted with an FP32 peak, which they can exceed.
    """
    row = next((r for r in GPU_PEAKS if re.search(r.pattern, device_name, re.IGNORECASE)), None)
    if row is None:
        known = ", ".join(r.name for r in GPU_PEAKS)
        return Peak(
            None,
            reason=f"GPU {device_name!r} is not in the peak table ({known}); "
            "a name without its form factor (SXM, PCIe, NVL) is not guessed",
        )
    fmt = number_format(precision)
    if fmt is None:
        return Peak(None, reason=f"no peak for precision {precision!r} in the table")
    if fmt == "fp32":
        source = f"{row.name} FP32 non-tensor, {DATASHEET}"
        if tf32 and row.tf32:
            source += (
                f"; TF32 allowed for {' and '.join(tf32)} (TF32 tensor {row.tf32:g} TFLOP/s), "
                "so MFU against FP32 can exceed 1"
            )
        return Peak(row.fp32 * FLOP_PER_TFLOP, source)
    tflops = getattr(row, fmt)
    if tflops is None:
        return Peak(None, reason=f"{row.name} has no {fmt.upper()} tensor cores")
    return Peak(tflops * FLOP_PER_TFLOP, f"{row.name} {fmt.upper()} tensor, {DATASHEET}")


@cache
def _matmul_flop_per_s(
    dtype: Any, threads: int, budget_s: float = 0.4, repeats: int = 5
) -> tuple[float, str]:
    """Best FLOP/s of an n×n matmul in `dtype` on `threads` (torch's, as the job set them), and
    how it was found.

    n doubles from 256 (at most 4096) until a product takes an eighth of a repeat's share of
    `budget_s` (the faster of two, so that one hiccup does not stop it small); then the best
    of up to `repeats` products, all within about `budget_s`. Cached per format and threads: a
    sweep's jobs in one process share a measurement.
    """
    import torch

    def once() -> float:
        start = perf_counter()
        a @ b
        return perf_counter() - start

    deadline = perf_counter() + budget_s
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # the first product allocates and picks its kernel: not timed
        best = min(once(), once())
        if best > budget_s / (8 * repeats) or n >= 4096:
            break
        n *= 2
    timed = 2
    while timed < repeats and perf_counter() + best < deadline:
        best = min(best, once())
        timed += 1
    name = str(dtype).removeprefix("torch.").replace("float", "fp").replace("bfp", "bf")
    on = f"{threads} thread{'s' if threads > 1 else ''}"
    return 2 * n**3 / best, f"{name} matmul {n}², best of {timed}, {on}"


def cpu_peak(precision: str) -> Peak:
    """A measured peak of this CPU at `precision`: fp32 matmul on the threads torch uses, and
    the run's half-precision format too when it ran in one (its peak then)."""
    import torch

    fmt = number_format(precision)
    if fmt is None:
        return Peak(None, reason=f"no matmul peak measured for precision {precision!r}")
    threads = torch.get_num_threads()
    fp32, how = _matmul_flop_per_s(torch.float32, threads)
    if fmt == "fp32":
        return Peak(fp32, f"measured: {how}")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[fmt]
    flop_per_s, half_how = _matmul_flop_per_s(half, threads)
    return Peak(flop_per_s, f"measured: {half_how} ({how}: {fp32:.3g} FLOP/s)")


def device_peak(device: Any, precision: str) -> Peak:
    """The peak of `device` (a `torch.device`) at `precision`: the datasheet's for a known
    NVIDIA GPU, measured on a CPU."""
    import torch

    if device.type == "cpu":
        return cpu_peak(precision)
    if device.type != "cuda":
        return Peak(None, reason=f"no peak for a {device.type} device")
    tf32 = [
        op
        for op, allowed in (
            ("matmul", torch.get_float32_matmul_precision() != "highest"),
            ("cuDNN convolutions", torch.backends.cudnn.allow_tf32),
        )
        if allowed
    ]
    return gpu_peak(torch.cuda.get_device_name(device), precision, tf32)


def _sdpa_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the CPU's fused attention, which torch's counter does not know (it
    would count 0): the same as for the CUDA kernels, whose arguments start alike."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad, query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_backward_flop_count(grad, query, key, value)

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def count_flops(work: Callable[[], Any], device: Any = None) -> int:
    """FLOPs of what `work()` runs, eager, leaving the random number generators as they were.

    A compiled module or function runs eagerly here (`torch.compiler.set_stance("force_eager")`):
    the ops its graph was traced from, counted without compiling anything. (Dynamo meeting the
    counter's dispatch mode would run the code uncompiled and leave it so for good.)

    Raises:
        RuntimeError: torch before 2.6, which has no stances: counting could leave a compiled
            job's next phase uncompiled, so it is not tried (the job records the error).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    stance = getattr(torch.compiler, "set_stance", None)
    if stance is None:
        raise RuntimeError(
            f"FLOP counting needs torch >= 2.6 (set_stance); this is {torch.__version__}"
        )
    eager = stance("force_eager")
    cuda = []
    if device is not None and device.type == "cuda":
        cuda = [torch.cuda.current_device() if device.index is None else device.index]
    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_formulas())
    # The counted iteration draws noise: the job's next phase sees the same random numbers
    # with or without counting.
    with torch.random.fork_rng(devices=cuda), eager, counter:
        work()
    return counter.get_total_flops()


def _detached(module: Any) -> Any:
    """A shallow copy of a LightningModule (the same networks and parameters) without its
    trainer: the counted step logs nothing and talks to no other rank."""
    twin = copy.copy(module)
    twin._trainer = None
    return twin


def training_flops(
    module: Any,
    batch_shape: Sequence[int],
    context: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> FlopCount:
    """FLOPs of one training step of `module` (a LightningModule) on a batch of `batch_shape`
    (values do not change the count): forward and backward of its `training_step`.

    Gradients are taken with `torch.autograd.grad`, so no `.grad` is written, no optimizer
    steps and no parameter changes; buffers (BatchNorm statistics) are restored. Under DDP this
    is the local module: per device.

    Args:
        context: the forward's context, e.g. Lightning's `precision_plugin.forward_context`
            (autocast), so that the count sees the ops that ran.
    """
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    twin = _detached(module)

    def step() -> None:
        images = torch.rand(*batch_shape, device=module.device)
        with context():
            loss = twin.training_step(images, 0)
        if params:  # nothing to train, nothing to differentiate
            torch.autograd.grad(loss, params, allow_unused=True)

    try:
        flops = count_flops(step, module.device)
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                b.copy_(buffers[name])
    return FlopCount({"step": flops}, TRAINING_METHOD)


def synthesis_flops(
    dm: Any, context: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> FlopCount:
    """FLOPs of one synthesis `unet` unit (a UNet evaluation plus the scheduler's step) and one
    `decode` of a batch of latents, for `dm` (a `DiffusionModule`) at its per-device sample
    batch. Its sampler is copied: the job's chain state is left as it was."""
    import torch

    scheduler = copy.deepcopy(dm.sampler)
    generator = torch.Generator(dm.device).manual_seed(0)
    with torch.no_grad():
        noise = dm.initial_noise(dm.sample_batch, generator)
        latents, timesteps = dm.start_chain(scheduler, dm.steps, noise)

    def run(work: Callable[[], Any]) -> int:
        def counted() -> None:
            with torch.no_grad(), context():
                work()

        return count_flops(counted, dm.device)

    unet = run(lambda: dm.denoise(scheduler, latents, timesteps[0]))
    decode = run(lambda: dm.decode(latents))
    return FlopCount({"unet": unet, "decode": decode}, SYNTHESIS_METHOD)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _per_pflop(joules: Mapping[str, Any] | None, flops: float) -> dict[str, Any] | None:
    if not joules or flops <= 0:
        return None
    scale = FLOP_PER_PFLOP / flops
    value = _finite(joules["value"] * scale)
    ci95 = joules.get("ci95")
    bounds = [_finite(b * scale) for b in ci95] if ci95 else None
    return {"value": value, "ci95": bounds if bounds and None not in bounds else None}


def efficiency(
    count: FlopCount, units: Mapping[str, Mapping[str, Any]], world_size: int, peak: Peak
) -> dict[str, Any]:
    """A phase's `efficiency` block of the record.

    Args:
        count: FLOPs per iteration of each unit, per device.
        units: the phase's measured units as the record has them
            (`phases.<p>.measured.units`): `seconds_per_iteration` and `joules_per_iteration`,
            each `{"value", "ci95"}` or None.
        world_size: devices that each ran the counted iteration at once: the recorded energy
            per iteration is all of theirs (summed over ranks, CPU and RAM included).
        peak: the peak FLOP/s of one device at the precision that ran.

    Returns:
        `flops_per_iteration`, `method`, `achieved_flop_per_s` (per device: FLOPs over the
        robust seconds per iteration) and its `_ci95` (from the seconds' interval),
        `joules_per_pflop` (energy per iteration over the FLOPs of
        all devices, with its 95% interval), `peak_flop_per_s`, `peak_source` (or
        `peak_reason`) and `mfu` with `mfu_ci95` (achieved over peak; None without a peak). A
        unit that was not measured, or not metered, has None where its numbers would be; an
        interval whose seconds reach 0 has no upper bound (None).
    """
    achieved: dict[str, float | None] = {}
    achieved_ci: dict[str, list[float | None] | None] = {}
    per_pflop: dict[str, dict[str, Any] | None] = {}
    for unit, flops in count.per_iteration.items():
        measured = units.get(unit) or {}
        seconds = measured.get("seconds_per_iteration") or {}
        achieved[unit] = _finite(flops / seconds["value"]) if seconds.get("value") else None
        # The slowest plausible iteration bounds the rate from below, the fastest from above.
        low_s, high_s = seconds.get("ci95") or (None, None)
        achieved_ci[unit] = (
            [flops / high_s, flops / low_s if low_s > 0 else None]
            if achieved[unit] is not None and high_s
            else None
        )
        per_pflop[unit] = _per_pflop(measured.get("joules_per_iteration"), flops * world_size)
    out: dict[str, Any] = {
        "flops_per_iteration": dict(count.per_iteration),
        "method": count.method,
        "achieved_flop_per_s": achieved,
        "achieved_flop_per_s_ci95": achieved_ci,
        "joules_per_pflop": per_pflop,
        "peak_flop_per_s": peak.flop_per_s,
        "peak_source": peak.source,
        "mfu": None,
    }
    if peak.flop_per_s:
        out["mfu"] = {u: None if a is None else a / peak.flop_per_s for u, a in achieved.items()}
        out["mfu_ci95"] = {
            u: None if ci is None else [None if b is None else b / peak.flop_per_s for b in ci]
            for u, ci in achieved_ci.items()
        }
    else:
        out["peak_reason"] = peak.reason
    return out
