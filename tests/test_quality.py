"""Quality beside carbon: the metrics on known pairs, the per-job evaluation on tiny networks,
its config checks, and a job whose evaluation fails keeping its measured record."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SIZE_2D, TINY, compose_cfg, lpm_run, read_record
from omegaconf import DictConfig
from PIL import Image

from lpm.config import ConfigError, check, resolve_spec
from lpm.energy.window import t975
from lpm.job import JobRun
from lpm.quality.evaluate import (
    HOLDOUT_SEED_OFFSET,
    REFERENCE_SCHEDULER,
    evaluate,
    holdout_images,
)
from lpm.quality.metrics import (
    fid,
    kernel_size_for,
    ms_ssim,
    ms_ssim_scales,
    pairwise_ms_ssim,
    psnr,
    ssim,
    summary,
)
from lpm.record.record import Record
from lpm.workload.data import PhantomDataset
from lpm.workload.ldm import DiffusionModule, build_autoencoder

SHAPES = {"2d": (3, 1, 32, 32), "3d": (2, 1, 16, 16, 16)}
TINY_SIZE = {"2d": "[16,16]", "3d": "[16,16,16]"}


def smooth(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random images with structure at several scales (noise upsampled), in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(shape[0], shape[1], *[max(2, s // 4) for s in shape[2:]], generator=g)
    mode = "bilinear" if len(shape) == 4 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=shape[2:], mode=mode)


# --- metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_identical_images_have_infinite_psnr_and_unit_ssim(dims: str) -> None:
    x = smooth(SHAPES[dims])
    assert torch.isinf(psnr(x, x)).all() and psnr(x, x).shape == (x.shape[0],)
    torch.testing.assert_close(ssim(x, x), torch.ones(x.shape[0]))
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(x.shape[0]))


@pytest.mark.parametrize(("sigma", "data_range"), [(0.05, 1.0), (0.1, 1.0), (0.1, 2.0)])
def test_psnr_of_gaussian_noise_on_a_constant_image_is_analytic(
    sigma: float, data_range: float
) -> None:
    x = torch.full((2, 1, 256, 256), 0.5)
    g = torch.Generator().manual_seed(1)
    y = x + sigma * torch.randn(x.shape, generator=g)
    got = psnr(y, x, data_range)
    mse = (y - x).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(got, 10 * torch.log10(data_range**2 / mse))  # exact, empirical MSE
    # and the expected value within the sampling error of 65,536 pixels' MSE (~0.5%: 0.03 dB)
    assert got.tolist() == pytest.approx([10 * math.log10(data_range**2 / sigma**2)] * 2, abs=0.05)


def test_more_noise_means_lower_ssim_and_ms_ssim() -> None:
    x = smooth((2, 1, 64, 64))
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    values = [(ssim(x + s * noise, x), ms_ssim(x + s * noise, x)) for s in (0.02, 0.1, 0.3)]
    for (s_lo, m_lo), (s_hi, m_hi) in zip(values[1:], values[:-1], strict=True):
        assert (s_lo < s_hi).all() and (m_lo < m_hi).all()


@pytest.mark.parametrize(
    ("size", "scales"), [(16, 1), (32, 2), (64, 3), (88, 3), (128, 4), (175, 4), (176, 5), (512, 5)]
)
def test_ms_ssim_takes_the_scales_the_image_size_allows(size: int, scales: int) -> None:
    assert ms_ssim_scales((size, size)) == scales
    assert ms_ssim_scales((size, size, size + 40)) == scales  # the smallest side decides
    x = smooth((2, 1, size, size)) if size <= 176 else None
    if x is not None:  # MONAI accepts that many scales, and no more
        ms_ssim(x, x.flip(-1), scales=scales)
        with pytest.raises(ValueError, match=f"these allow 1 to {scales}"):
            ms_ssim(x, x, scales=scales + 1)


def test_ms_ssim_of_one_scale_is_ssim_floored_at_zero() -> None:
    x, y = smooth((4, 1, 16, 16)), smooth((4, 1, 16, 16), seed=5)
    pairs = torch.cat([x, x]), torch.cat([x + 0.1 * y, y])  # similar, then unrelated pairs
    expected = ssim(*pairs)
    assert (expected > 0).any() and (expected < 0).any()
    torch.testing.assert_close(ms_ssim(*pairs, scales=1), expected.clamp(min=0))


def test_small_images_shrink_the_window_and_tiny_ones_are_refused() -> None:
    assert kernel_size_for((32, 32)) == 11
    assert kernel_size_for((8, 9)) == 7 and kernel_size_for((3, 3)) == 3
    x = smooth((2, 1, 8, 8))
    assert ms_ssim_scales((8, 8)) == 1 and torch.isfinite(ssim(x, x.flip(-1))).all()
    with pytest.raises(ValueError, match="not even one scale fits"):
        ms_ssim_scales((8, 8), kernel_size=11)
    with pytest.raises(ValueError, match="at least 3 pixels a side"):
        ms_ssim(torch.rand(2, 1, 2, 8), torch.rand(2, 1, 2, 8))
    with pytest.raises(ValueError, match="differ"):
        psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_diversity_of_identical_images_is_one_and_of_distinct_ones_less(dims: str) -> None:
    one = smooth((1, *SHAPES[dims][1:]))
    same = pairwise_ms_ssim(one.expand(4, *one.shape[1:]))
    assert same.shape == (6,)  # 4 images: 6 pairs
    torch.testing.assert_close(same, torch.ones(6))
    distinct = pairwise_ms_ssim(torch.cat([smooth(one.shape, seed=s) for s in range(4)]))
    assert (distinct < 0.99).all()
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_ms_ssim(one)


def test_pairwise_ms_ssim_goes_in_triu_order_across_chunks() -> None:
    images = torch.cat([smooth((1, 1, 16, 16), seed=s) for s in range(7)])  # 21 pairs: 2 chunks
    got = pairwise_ms_ssim(images)
    i, j = torch.triu_indices(7, 7, offset=1)
    torch.testing.assert_close(got, ms_ssim(images[i], images[j]))


def test_fid_of_gaussian_features_is_the_frechet_distance() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(400, 3, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, shifted means: FID is the squared distance of the means.
    assert fid(a + shift, a) == pytest.approx(float(shift @ shift), rel=1e-6)
    # Scaled by 2: the covariance term is tr(Σ)(1 + 4 - 2·2) = tr(Σ).
    cov_trace = float(torch.cov(a.T).trace())
    assert fid(2 * a, a) == pytest.approx(cov_trace + float(a.mean(0) @ a.mean(0)), rel=1e-4)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fid(a, a[:, :2])


def test_summary_is_a_t_interval_and_keeps_non_finite_values_out() -> None:
    xs = [1.0, 2.0, 4.0]
    mean, sd = 7 / 3, float(np.std(xs, ddof=1))
    half = t975(2) * sd / math.sqrt(3)
    got = summary(torch.tensor(xs))
    assert got["value"] == pytest.approx(mean) and got["n"] == 3
    assert got["ci95"] == pytest.approx([mean - half, mean + half])
    assert summary([5.0]) == {"value": 5.0, "ci95": None, "n": 1}
    assert summary([1.0, float("inf")]) == {"value": None, "ci95": None, "n": 2, "non_finite": 1}
    json.dumps(summary([float("nan")]), allow_nan=False)  # JSON without NaN or inf
    # MS-SSIM near 0: the t-interval would reach below 0, which the metric cannot take.
    near_zero = summary([0.0, 0.01, 0.12], within=(0.0, 1.0))
    assert near_zero["ci95"][0] == 0.0 and near_zero["ci95"][1] > 0.12


# --- the per-job evaluation ------------------------------------------------------------------


def quality_cfg(dims: str, *extra: str) -> DictConfig:
    return compose_cfg(
        "scale=cpu",
        "gpus=cpu",
        f"dims={dims}",
        f"dims.image_size={TINY_SIZE[dims]}",
        "batch.synthesis=2",
        "quality.holdout=3",
        "quality.samples=3",  # two chains of the synthesis batch: the second one short
        "quality.reference_steps=4",
        *extra,
    )


def tiny_dm(cfg: DictConfig) -> DiffusionModule:
    spec = resolve_spec(cfg, "cpu")
    torch.manual_seed(0)
    dm = DiffusionModule(
        spec,
        build_autoencoder(spec),
        cfg.sampler.scheduler,
        cfg.sampler.steps,
        dict(cfg.sampler.kwargs),
        seed=cfg.seed,
    ).eval()
    with torch.no_grad():
        dm.encode(PhantomDataset(spec.image_size, 2, cfg.seed)[0][None])  # the latent scale
    return dm


def finite_numbers(block: Any) -> list[float]:
    """Every number in a nested block (bools aside); all must be finite."""
    if isinstance(block, dict):
        return [x for v in block.values() for x in finite_numbers(v)]
    if isinstance(block, list):
        return [x for v in block for x in finite_numbers(v)]
    if isinstance(block, (int, float)) and not isinstance(block, bool):
        assert math.isfinite(block)
        return [float(block)]
    return []


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_evaluate_gives_the_record_contract(dims: str) -> None:
    cfg = quality_cfg(dims, "sampler=ddim", "sampler.steps=2")
    q = evaluate(cfg, resolve_spec(cfg, "cpu"), tiny_dm(cfg))
    json.dumps(q, allow_nan=False)
    assert set(q) == {"autoencoder", "sampler", "diversity", "fid", "seconds", "assumptions"}
    ae, s, d = q["autoencoder"], q["sampler"], q["diversity"]
    assert {"psnr_db", "ssim", "images", "data_range", "method"} <= set(ae)
    assert (ae["images"], ae["data_range"], ae["held_out"]) == (3, 1.0, True)
    for metric in (ae["psnr_db"], ae["ssim"], s["psnr_db"], s["ssim"], d["ms_ssim"]):
        assert set(metric) == {"value", "ci95", "n"}
        lo, hi = metric["ci95"]
        assert lo <= metric["value"] <= hi
    assert ae["psnr_db"]["n"] == ae["ssim"]["n"] == 3
    assert s["reference"] == {"scheduler": REFERENCE_SCHEDULER, "steps": 4, "eta": 0.0}
    assert s["chain"] == {"scheduler": "DDIMScheduler", "steps": 2, "precision": "32-true"}
    assert (s["samples"], s["identical"], s["stochastic"]) == (3, False, False)
    assert s["psnr_db"]["n"] == 3 and 0 < s["ssim"]["value"] < 1
    assert (d["pairs"], d["scales"], d["ms_ssim"]["n"]) == (3, 1, 3)
    assert q["fid"] is None and q["seconds"] > 0
    assert len(finite_numbers(q)) > 20
    assert any("projection mode" in a for a in q["assumptions"])


def test_the_reference_sampler_is_identical_to_itself() -> None:
    cfg = quality_cfg("2d", "sampler=ddim", "sampler.steps=4")
    s = evaluate(cfg, resolve_spec(cfg, "cpu"), tiny_dm(cfg))["sampler"]
    assert s["identical"] and not s["stochastic"]
    assert s["psnr_db"] is None
    assert s["ssim"]["value"] == pytest.approx(1.0)
    # The same DDIM on another timestep spacing is another chain: compared, not identical.
    cfg = quality_cfg(
        "2d", "sampler=ddim", "sampler.steps=4", "+sampler.kwargs.timestep_spacing=trailing"
    )
    s = evaluate(cfg, resolve_spec(cfg, "cpu"), tiny_dm(cfg))["sampler"]
    assert not s["identical"] and s["psnr_db"]["value"] is not None


def test_a_sampler_that_draws_noise_is_flagged_stochastic() -> None:
    cfg = quality_cfg("2d", "sampler=ddpm", "sampler.steps=3")
    q = evaluate(cfg, resolve_spec(cfg, "cpu"), tiny_dm(cfg))
    assert q["sampler"]["stochastic"] and not q["sampler"]["identical"]
    assert any("draws noise" in a for a in q["assumptions"])
    before = torch.random.get_rng_state()
    evaluate(cfg, resolve_spec(cfg, "cpu"), tiny_dm(cfg))
    assert torch.equal(torch.random.get_rng_state(), before)  # the job's RNG is left alone


def test_mixed_precision_chain_is_compared_with_a_full_precision_reference() -> None:
    cfg = quality_cfg("2d", "sampler=ddim", "sampler.steps=4")
    autocasts: list[bool] = []
    dm = tiny_dm(cfg)
    dm.unet.register_forward_pre_hook(lambda *_: autocasts.append(torch.is_autocast_enabled("cpu")))
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision="bf16-mixed",
        precision_plugin=SimpleNamespace(
            forward_context=lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        ),
    )
    s = evaluate(cfg, resolve_spec(cfg, "cpu"), dm, trainer)["sampler"]
    # Same scheduler and steps as the reference, but bf16: the precision's own error is measured.
    assert not s["identical"] and s["chain"]["precision"] == "bf16-mixed"
    assert math.isfinite(s["psnr_db"]["value"]) and "fp32" in s["method"]
    chains = 2 * 4  # 3 samples in batches of 2: two chains of 4 steps each, per sampler
    assert autocasts == [True] * chains + [False] * chains


class MeanFeatures(torch.nn.Module):
    """A stand-in feature extractor: per-image means over a 2×2 grid of quarters, (B, 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), 2).flatten(1)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_fid_with_a_scripted_extractor_on_disk(tmp_path: Path, dims: str) -> None:
    weights = tmp_path / "features.pt"
    torch.jit.script(MeanFeatures()).save(str(weights))
    cfg = quality_cfg(dims, "sampler=ddim", "sampler.steps=2", f"quality.fid_weights={weights}")
    check(cfg)
    out = evaluate(cfg, resolve_spec(cfg, "cpu"), tiny_dm(cfg))["fid"]
    assert out["weights"] == str(weights) and (out["samples"], out["reference_images"]) == (3, 3)
    assert out["value"] is not None and out["value"] >= 0 and "error" not in out
    assert ("slices" in out["method"]) == (dims == "3d")
    if dims == "2d":  # 3 images for 4 features; 3D feeds several slices per volume
        assert "3 images for 4 features: singular covariances" in out["method"]


def test_fid_of_identical_sets_is_zero_and_of_shifted_ones_positive(tmp_path: Path) -> None:
    from lpm.quality.evaluate import fid_quality

    weights = tmp_path / "features.pt"
    torch.jit.script(MeanFeatures()).save(str(weights))
    images = torch.cat([smooth((1, 1, 16, 16), seed=s) for s in range(12)])
    same = fid_quality(str(weights), images, images, torch.device("cpu"))
    assert "singular" not in same["method"]  # 12 images for 4 features
    same = same["value"]
    shifted = fid_quality(str(weights), images + 0.2, images, torch.device("cpu"))["value"]
    assert same == pytest.approx(0.0, abs=1e-6)
    assert shifted == pytest.approx(4 * 0.2**2, rel=1e-3)  # 4 features, each mean shifted 0.2


def test_an_extractor_fid_cannot_use_is_an_error_in_the_fid_block(tmp_path: Path) -> None:
    from lpm.quality.evaluate import fid_quality

    class Flat(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean()

    weights = tmp_path / "scalar.pt"
    torch.jit.script(Flat()).save(str(weights))
    out = fid_quality(
        str(weights), torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8), torch.device("cpu")
    )
    assert out["value"] is None and "quality.fid_weights" in out["error"]


def test_held_out_phantoms_are_not_the_training_ones() -> None:
    cfg = quality_cfg("2d")
    spec = resolve_spec(cfg, "cpu")
    held = holdout_images(cfg, spec)
    assert held.images.shape == (3, 1, 16, 16) and held.held_out
    training = PhantomDataset(spec.image_size, 3, cfg.seed)
    assert all(not torch.equal(held.images[i], training[i]) for i in range(3))
    assert f"seed {cfg.seed + HOLDOUT_SEED_OFFSET}" in held.method


def _pngs(root: Path, n: int) -> None:
    for i in range(n):
        ramp = np.linspace(0, 255, 16 * 16).reshape(16, 16) * (i + 1) / n
        Image.fromarray(ramp.astype(np.uint8)).save(root / f"{i:02d}.png")


def test_held_out_folder_images_are_those_beyond_the_pool(folder_root: Path) -> None:
    _pngs(folder_root, 10)
    cfg = quality_cfg("2d", "data=folder", f"data.root={folder_root}", "data.pool=6")
    held = holdout_images(cfg, resolve_spec(cfg, "cpu"))
    assert held.held_out and len(held.images) == 3
    assert "files 8-10 of 10" in held.method and "never loaded" in held.method
    # A pool covering the folder leaves none unseen: the last files, said to be seen.
    cfg = quality_cfg("2d", "data=folder", f"data.root={folder_root}", "data.pool=256")
    held = holdout_images(cfg, resolve_spec(cfg, "cpu"))
    assert not held.held_out and "SEEN in training" in held.method and len(held.images) == 3


# --- config and the job ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("quality.holdout=1", "quality.holdout", ">= 2"),
        ("quality.samples=1", "quality.samples", ">= 2"),
        ("quality.reference_steps=0", "quality.reference_steps", "from 1 to 1000"),
        ("quality.reference_steps=1001", "quality.reference_steps", "from 1 to 1000"),
        ("quality.fid_weights=/no/such/weights.pt", "quality.fid_weights", "downloads nothing"),
    ],
)
def test_quality_config_errors_name_the_field(override: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check(compose_cfg(override))
    assert info.value.key == key


def test_defaults_evaluate_quality_without_fid() -> None:
    q = compose_cfg().quality
    assert (q.enabled, q.holdout, q.samples, q.reference_steps, q.fid_weights) == (
        True, 8, 4, 1000, None,
    )  # fmt: skip


def test_a_failed_evaluation_keeps_the_measured_record(tmp_path: Path) -> None:
    cfg = quality_cfg("2d")
    record = Record(axes={}, status="ok", phases={})
    job = JobRun(cfg, resolve_spec(cfg, "cpu"), record, tmp_path, None, None, None)
    job.evaluate_quality(dm=None, trainer=None)  # no networks: the evaluation fails
    assert record.quality["error"].startswith("AttributeError")
    assert record.status == "ok"
    assert read_record(tmp_path)["quality"] == record.quality


@pytest.mark.slow
def test_a_job_records_its_quality(tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith("quality.")]
    proc = lpm_run(
        *overrides, *SIZE_2D, "sampler=ddim", "sampler.steps=3", "quality.reference_steps=3",
        "quality.samples=2", "quality.holdout=2", out=tmp_path / "run",
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    q = read_record(tmp_path / "run")["quality"]
    assert q["sampler"]["identical"] and q["sampler"]["psnr_db"] is None
    assert q["autoencoder"]["psnr_db"]["n"] == 2 and q["diversity"]["pairs"] == 1
    assert "quality: autoencoder PSNR" in proc.stdout
