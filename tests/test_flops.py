"""Energy per unit of work: FLOPs counted against analytic counts, the peak table, the measured
CPU peak, the efficiency block by hand, and the job filing it for every phase unit."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import SIZE_2D, TINY, compose_cfg, lpm_run, read_record
from torch import nn

from lpm.config import resolve_spec
from lpm.energy.flops import (
    FlopCount,
    Peak,
    count_flops,
    cpu_peak,
    efficiency,
    gpu_peak,
    synthesis_flops,
    training_flops,
)
from lpm.job import JobRun
from lpm.record.record import PhaseRecord, Record
from lpm.workload.ldm import AutoencoderModule, DiffusionModule

# --- single layers against the analytic count (2 FLOPs per multiply-add) ---------------------


def test_linear_forward_and_backward_match_2mnk() -> None:
    m, k, n = 3, 8, 5  # batch, in, out
    layer, x = nn.Linear(k, n), torch.randn(m, k)
    forward = 2 * m * k * n
    assert count_flops(lambda: layer(x)) == forward
    # The input needs no gradient: backward computes the weight's only (one more 2·M·N·K).
    assert count_flops(lambda: layer(x).sum().backward()) == 2 * forward
    x.requires_grad_(True)  # and the input's: a third 2·M·N·K
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * forward


def test_torch_without_stances_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.compiler, "set_stance")  # torch < 2.6
    with pytest.raises(RuntimeError, match=r"needs torch >= 2\.6"):
        count_flops(lambda: nn.Linear(2, 2)(torch.ones(1, 2)))


@pytest.mark.parametrize("dims", [2, 3])
def test_convolution_forward_and_backward_match_the_analytic_count(dims: int) -> None:
    batch, c_in, c_out, kernel, size = 2, 3, 4, 3, 6
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(c_in, c_out, kernel, padding=1)
    x = torch.randn(batch, c_in, *[size] * dims, requires_grad=True)
    # Per output voxel (same padding: size^dims of them) and output channel: c_in·k^dims MACs.
    forward = 2 * batch * c_out * size**dims * c_in * kernel**dims
    assert count_flops(lambda: conv(x)) == forward
    # Input and weight gradients: one forward's worth each.
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_fused_attention_on_a_cpu_counts_its_math() -> None:
    """torch's counter counts the CPU's fused attention as 0; lpm counts it as the two
    products QKᵀ and (softmax)V, as torch does for the CUDA kernels."""
    b, h, s, d = 2, 3, 16, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    products = 2 * (2 * b * h * s * s * d)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == products

    def math_attention() -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v

    assert count_flops(math_attention) == products
    # Backward as torch counts it for the fused CUDA kernels: the scores recomputed, then four
    # products for the gradients of the scores, V, Q and K.
    fused = count_flops(
        lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), [q, k, v])
    )
    assert fused == products + 5 * products // 2


# --- a training step: forward + backward, nothing updated -------------------------------------

C_IN, C_MID, C_OUT, SIZE, BATCH = 2, 4, 3, 8, 2


class Tiny(pl.LightningModule):
    """conv → BatchNorm → ReLU → conv → mean → linear: its FLOPs known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(C_IN, C_MID, 3, padding=1)
        self.norm = nn.BatchNorm2d(C_MID)  # running statistics: buffers a forward changes
        self.conv2 = nn.Conv2d(C_MID, C_MID, 3, padding=1)
        self.head = nn.Linear(C_MID, C_OUT)
        self.trainers_seen: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.norm(self.conv1(x))))
        return self.head(x.mean((2, 3)))

    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.trainers_seen.append(self._trainer)
        return (self(images) - torch.randn(images.shape[0], C_OUT)).pow(2).mean()


def tiny_step_flops() -> int:
    """Forward of every layer; backward: weight gradients of every layer, input gradients of
    all but the first (the images need none)."""
    conv1 = 2 * BATCH * SIZE**2 * C_MID * C_IN * 9
    conv2 = 2 * BATCH * SIZE**2 * C_MID * C_MID * 9
    head = 2 * BATCH * C_MID * C_OUT
    return 2 * conv1 + 3 * conv2 + 3 * head


def test_a_training_step_counts_forward_and_backward_of_its_layers() -> None:
    count = training_flops(Tiny(), (BATCH, C_IN, SIZE, SIZE))
    assert count.per_iteration == {"step": tiny_step_flops()}
    assert "forward+backward" in count.method and "optimizer excluded" in count.method


def test_counting_a_step_changes_no_parameter_gradient_buffer_rng_or_trainer() -> None:
    module = Tiny()
    module._trainer = trainer = SimpleNamespace(global_step=7)  # as a fit leaves it
    for p in module.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    training_flops(module, (BATCH, C_IN, SIZE, SIZE))
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "parameters or buffers changed"
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in module.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    # The counted step saw no trainer (no logging, no collective); the module keeps its own.
    assert module.trainers_seen == [None] and module._trainer is trainer


def test_channels_last_counts_the_same_math() -> None:
    plain = training_flops(Tiny(), (BATCH, C_IN, SIZE, SIZE))
    module = Tiny().to(memory_format=torch.channels_last)
    assert training_flops(module, (BATCH, C_IN, SIZE, SIZE)) == plain


def test_a_compiled_module_is_counted_eagerly_without_compiling() -> None:
    from torch._dynamo.utils import counters

    module = Tiny()
    module.compile()
    counters.clear()
    count = training_flops(module, (BATCH, C_IN, SIZE, SIZE))
    assert count.per_iteration == {"step": tiny_step_flops()}
    assert not counters["frames"], "counting compiled something"


@pytest.mark.slow
def test_counting_a_compiled_module_neither_recompiles_nor_spoils_its_compilation() -> None:
    """Compiling takes ~10 s on 2 cores. Dynamo meeting the counter's dispatch mode would leave
    the code uncompiled for good; counted eagerly, the module compiles on its next call, and a
    compiled module counts as the eager math."""
    from torch._dynamo.utils import counters

    module = Tiny()
    module.compile()
    counters.clear()
    assert training_flops(module, (BATCH, C_IN, SIZE, SIZE)).per_iteration["step"] == (
        tiny_step_flops()
    )
    with torch.no_grad():
        module(torch.rand(BATCH, C_IN, SIZE, SIZE))
    assert counters["frames"]["ok"] >= 1, "the module no longer compiles"
    count = training_flops(module, (BATCH, C_IN, SIZE, SIZE))
    assert count.per_iteration == {"step": tiny_step_flops()}


# --- synthesis units on the real (CPU-sized) networks ------------------------------------------


@pytest.fixture(scope="module")
def diffusion() -> DiffusionModule:
    spec = resolve_spec(compose_cfg("scale=cpu", "model=small", "dims.image_size=[16,16]"), "cpu")
    dm = DiffusionModule(spec, AutoencoderModule(spec).autoencoder, "DPMSolverMultistepScheduler")
    dm.scale_factor.fill_(0.5)
    dm.sample_batch = 2
    return dm


def test_synthesis_counts_one_unet_evaluation_and_one_decode(diffusion: DiffusionModule) -> None:
    dm = diffusion
    sampler = dm.sampler.config, dm.sampler.timesteps.clone()
    count = synthesis_flops(dm)
    latents = torch.randn(2, dm.spec.autoencoder["latent_channels"], *dm.spec.latent_size)
    with torch.no_grad():
        unet = count_flops(lambda: dm.unet(latents, timesteps=torch.full((2,), 999.0)))
        decode = count_flops(lambda: dm.autoencoder.decode_stage_2_outputs(latents))
    # The scheduler's step is elementwise: it adds nothing to the UNet's count.
    assert count.per_iteration == {"unet": unet, "decode": decode}
    assert unet > 0 and decode > 0
    # The job's chain is left as it was: its scheduler was copied, its latents untouched.
    assert (dm.sampler.config, dm.sampler.timesteps.tolist()) == (sampler[0], sampler[1].tolist())
    assert dm.latents is None and dm.images is None


# --- the efficiency block by hand ------------------------------------------------------------


def unit_record(seconds: float, joules: float | None, ci: tuple[float, float]) -> dict[str, Any]:
    """A unit as `phases.<p>.measured.units.<u>` has it (only what efficiency reads)."""
    return {
        "seconds_per_iteration": {"value": seconds, "ci95": [seconds * 0.9, seconds * 1.1]},
        "joules_per_iteration": None if joules is None else {"value": joules, "ci95": list(ci)},
    }


def test_efficiency_by_hand() -> None:
    count = FlopCount({"unet": 2 * 10**12, "decode": 10**12}, "counted")
    units = {
        "unet": unit_record(0.5, 300.0, (280.0, 330.0)),
        "decode": unit_record(2.0, None, (0, 0)),
    }
    out = efficiency(count, units, world_size=2, peak=Peak(1e13, "a datasheet"))
    assert out["flops_per_iteration"] == {"unet": 2e12, "decode": 1e12}
    assert out["method"] == "counted"
    # 2e12 FLOP in 0.5 s per device; 1e12 in 2 s.
    assert out["achieved_flop_per_s"] == {"unet": 4e12, "decode": 5e11}
    # 300 J for 2 devices × 2e12 FLOP = 4e12 FLOP: 75 J per TFLOP, 75,000 J per PFLOP.
    unet = out["joules_per_pflop"]["unet"]
    assert unet["value"] == pytest.approx(75_000)
    assert unet["ci95"] == pytest.approx([70_000, 82_500])
    assert out["joules_per_pflop"]["decode"] is None  # not metered: no joules
    assert out["mfu"] == pytest.approx({"unet": 0.4, "decode": 0.05})
    # Seconds 0.45–0.55 (±10%): 2e12 / 0.55 to 2e12 / 0.45 FLOP/s, over the 1e13 peak.
    assert out["achieved_flop_per_s_ci95"]["unet"] == pytest.approx([2e12 / 0.55, 2e12 / 0.45])
    assert out["mfu_ci95"]["unet"] == pytest.approx([0.2 / 0.55, 0.2 / 0.45])
    assert (out["peak_flop_per_s"], out["peak_source"]) == (1e13, "a datasheet")
    assert "peak_reason" not in out


def test_efficiency_without_a_peak_or_a_measured_unit_says_so() -> None:
    count = FlopCount({"step": 10**9}, "counted")
    out = efficiency(count, {}, world_size=1, peak=Peak(None, reason="unknown GPU"))
    assert out["achieved_flop_per_s"] == {"step": None}
    assert out["joules_per_pflop"] == {"step": None}
    assert out["mfu"] is None and out["peak_flop_per_s"] is None
    assert out["peak_reason"] == "unknown GPU"


def test_a_unit_without_flops_has_no_joules_per_pflop() -> None:
    out = efficiency(
        FlopCount({"step": 0}, "counted"), {"step": unit_record(1.0, 5.0, (4, 6))}, 1, Peak(1e9)
    )
    assert out["joules_per_pflop"] == {"step": None}
    assert out["achieved_flop_per_s"] == {"step": 0.0} and out["mfu"] == {"step": 0.0}


# --- peaks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "precision", "tflops", "part"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989, "H100 SXM5 BF16 tensor"),
        ("NVIDIA H100 PCIe", "bf16-mixed", 756, "H100 PCIe BF16 tensor"),
        ("NVIDIA H100 80GB HBM3", "32-true", 67, "H100 SXM5 FP32 non-tensor"),
        ("NVIDIA H100 PCIe", "16-mixed", 756, "H100 PCIe FP16 tensor"),
        ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312, "A100 SXM4/PCIe BF16"),
        ("NVIDIA A100 80GB PCIe", "32-true", 19.5, "A100 SXM4/PCIe FP32"),
        ("Tesla V100-SXM2-32GB", "16-mixed", 125, "V100 SXM2 FP16 tensor"),
        ("NVIDIA L40S", "bf16-mixed", 362, "L40S BF16"),
        ("NVIDIA H200", "bf16-mixed", 989, "H200 SXM BF16"),
    ],
)
def test_peak_table_matches_the_device_name(
    name: str, precision: str, tflops: float, part: str
) -> None:
    peak = gpu_peak(name, precision)
    assert peak.flop_per_s == pytest.approx(tflops * 1e12)
    assert part in peak.source and "NVIDIA datasheet, via reference.md" in peak.source


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H100 NVL",  # a part of its own (94 GB, lower clocks)
        "NVIDIA H100",  # no form factor: SXM5 and PCIe differ by a third
        "NVIDIA A10G",  # not an A100
        "NVIDIA L40",  # not an L40S
        "NVIDIA GH200 480GB",
        "Tesla V100-PCIE-16GB",
        "NVIDIA H200 NVL",
    ],
)
def test_an_unknown_gpu_has_no_peak_and_a_reason(name: str) -> None:
    peak = gpu_peak(name, "bf16-mixed")
    assert peak.flop_per_s is None and peak.source is None
    assert name in peak.reason and "not in the peak table" in peak.reason


def test_a_precision_without_a_peak_has_a_reason() -> None:
    assert (
        gpu_peak("Tesla V100-SXM2-16GB", "bf16-mixed").reason
        == "V100 SXM2 has no BF16 tensor cores"
    )
    assert "64-true" in gpu_peak("NVIDIA H100 PCIe", "64-true").reason


def test_fp32_peak_notes_tf32() -> None:
    peak = gpu_peak("NVIDIA H100 80GB HBM3", "32-true", tf32=["cuDNN convolutions"])
    assert peak.flop_per_s == 67e12
    assert "TF32 allowed for cuDNN convolutions (TF32 tensor 495 TFLOP/s)" in peak.source
    assert "TF32" not in gpu_peak("NVIDIA H100 80GB HBM3", "32-true").source


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A clock that advances 20 ms at each reading: every matmul takes 20 ms; the cached
    measurements are dropped before and after, so no other test sees them."""
    from lpm.energy import flops

    ticks = iter(range(10**6))
    monkeypatch.setattr(flops, "perf_counter", lambda: 0.02 * next(ticks))
    flops._matmul_flop_per_s.cache_clear()
    yield
    flops._matmul_flop_per_s.cache_clear()


def test_the_cpu_peak_is_a_measured_matmul(clock: None) -> None:
    fp32 = cpu_peak("32-true")
    # 20 ms > 0.4 s / (8 × 5 repeats): n stays at 256; best of every 20 ms product.
    assert fp32.flop_per_s == pytest.approx(2 * 256**3 / 0.02)
    assert "matmul 256², best of " in fp32.source
    threads = torch.get_num_threads()
    assert fp32.source.startswith("measured: fp32 matmul ") and f", {threads} thread" in fp32.source
    bf16 = cpu_peak("bf16-mixed")
    assert bf16.source.startswith("measured: bf16 matmul ") and "(fp32 matmul " in bf16.source
    assert cpu_peak("64-true").flop_per_s is None


# --- the job files it -------------------------------------------------------------------------


def test_a_count_that_fails_keeps_the_measurement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_cfg("scale=cpu")
    record = Record(axes={})
    part = PhaseRecord(measured={"units": {"step": {}}}, target={}, projected={})
    record.phases["diffusion"] = part
    job = JobRun(cfg, resolve_spec(cfg, "cpu"), record, tmp_path, None, None, None)
    trainer = SimpleNamespace(
        precision_plugin=SimpleNamespace(forward_context=None),
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )

    def count(context: Any) -> FlopCount:
        raise RuntimeError("no formula for\n this op")

    with caplog.at_level(logging.WARNING, logger="lpm"):
        job.efficiency("diffusion", trainer, part, nn.Linear(1, 1), count)
    assert part.efficiency == {"error": "RuntimeError: no formula for this op"}
    assert "diffusion: FLOPs not counted" in caplog.text
    written = read_record(tmp_path)["phases"]["diffusion"]
    assert written["measured"] == {"units": {"step": {}}}
    assert written["efficiency"] == part.efficiency


@pytest.mark.slow
def test_a_tiny_job_records_efficiency_for_every_phase_unit(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = lpm_run("model=small", *TINY, *SIZE_2D, "quality.enabled=false", out=out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = read_record(out)
    for name, phase in record["phases"].items():
        e = phase["efficiency"]
        units = set(phase["measured"]["units"])
        assert set(e["flops_per_iteration"]) == units, name
        for unit in units:
            seconds = phase["measured"]["units"][unit]["seconds_per_iteration"]["value"]
            flops = e["flops_per_iteration"][unit]
            assert flops > 0
            assert e["achieved_flop_per_s"][unit] == pytest.approx(flops / seconds)
            assert (
                0
                < e["mfu"][unit]
                == pytest.approx(e["achieved_flop_per_s"][unit] / e["peak_flop_per_s"])
            )
            joules = phase["measured"]["units"][unit]["joules_per_iteration"]["value"]
            assert e["joules_per_pflop"][unit]["value"] == pytest.approx(joules / flops * 1e15)
        assert e["peak_source"].startswith("measured: fp32 matmul"), name
    assert record["phases"]["synthesis"]["efficiency"]["flops_per_iteration"].keys() == {
        "unet",
        "decode",
    }


def test_an_interval_reaching_zero_seconds_has_no_upper_rate() -> None:
    units = {"step": {"seconds_per_iteration": {"value": 0.1, "ci95": [-0.02, 0.22]}}}
    out = efficiency(FlopCount({"step": 10**9}, "counted"), units, 1, Peak(1e11))
    assert out["achieved_flop_per_s_ci95"]["step"] == pytest.approx([1e9 / 0.22, None])
    assert out["mfu_ci95"]["step"][1] is None
    json.dumps(out, allow_nan=False)  # nothing infinite in the record
