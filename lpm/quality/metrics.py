"""Image-quality metrics on tensors (B, C, *spatial), 2D and 3D alike, through MONAI's metrics.

Every per-image function returns one value per image (shape (B,)); :func:`summary` turns such
values into the record's `{"value", "ci95", "n"}`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from monai.metrics import FIDMetric, MultiScaleSSIMMetric, PSNRMetric, SSIMMetric

from lpm.energy.window import mean_interval

# Gaussian window of SSIM and MS-SSIM (Wang et al. 2004; MONAI's defaults).
KERNEL_SIZE = 11
KERNEL_SIGMA = 1.5
MIN_KERNEL_SIZE = 3  # a smaller window holds too few pixels for local means and variances
# Per-scale exponents of MS-SSIM, finest scale first (Wang, Simoncelli & Bovik 2003; MONAI's).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PAIR_CHUNK = 16  # image pairs per MS-SSIM call: bounds memory on large volumes


def _spatial_dims(x: torch.Tensor) -> int:
    d = x.ndim - 2
    if d not in (2, 3):
        raise ValueError(
            f"images of shape {tuple(x.shape)}: expected (B, C, H, W) or (B, C, D, H, W)"
        )
    return d


def _pair(x: torch.Tensor, y: torch.Tensor) -> int:
    if x.shape != y.shape:
        raise ValueError(f"images of shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
    return _spatial_dims(x)


def kernel_size_for(spatial: Sequence[int]) -> int:
    """The SSIM window for images of `spatial` size: 11 (the standard) where every side holds
    it, else the largest odd size that fits.

    Raises:
        ValueError: a side shorter than :data:`MIN_KERNEL_SIZE` pixels.
    """
    side = min(spatial)
    if side < MIN_KERNEL_SIZE:
        raise ValueError(
            f"images of size {list(spatial)}: SSIM needs at least {MIN_KERNEL_SIZE} pixels a side"
        )
    return min(KERNEL_SIZE, side if side % 2 else side - 1)


def _scale_fits(side: int, scales: int, kernel_size: int) -> bool:
    # The window must fit the coarsest scale (side halved scales-1 times), and MONAI's own
    # check (side // (scales-1)² > kernel_size-1) must pass: it is stricter at 4 scales.
    return (
        side // 2 ** (scales - 1) >= kernel_size
        and side // max(1, scales - 1) ** 2 > kernel_size - 1
    )


def ms_ssim_scales(spatial: Sequence[int], kernel_size: int | None = None) -> int:
    """The most MS-SSIM scales (at most 5) that images of `spatial` size allow: the standard 5
    with an 11-pixel window need 176 pixels a side (MONAI's check); 32 allow 2, 16 allow 1.

    Raises:
        ValueError: not even one scale fits.
    """
    k = kernel_size or kernel_size_for(spatial)
    side = min(spatial)
    fitting = [s for s in range(1, len(MS_SSIM_WEIGHTS) + 1) if _scale_fits(side, s, k)]
    if not fitting:
        raise ValueError(
            f"images of size {list(spatial)}: MS-SSIM with a {k}-pixel window needs at least "
            f"{k} pixels a side at its coarsest scale; not even one scale fits"
        )
    return fitting[-1]


def ms_ssim_weights(scales: int) -> tuple[float, ...]:
    """Wang et al.'s exponents of the `scales` finest scales, renormalised to sum to 1 (so one
    scale is plain SSIM)."""
    kept = MS_SSIM_WEIGHTS[:scales]
    return tuple(w / sum(kept) for w in kept)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB; inf where the images are identical."""
    _pair(x, y)
    return PSNRMetric(max_val=data_range, reduction="none")(x.float(), y.float()).flatten()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (Gaussian window of :func:`kernel_size_for`)."""
    d = _pair(x, y)
    metric = SSIMMetric(
        spatial_dims=d,
        data_range=data_range,
        win_size=kernel_size_for(x.shape[2:]),
        kernel_sigma=KERNEL_SIGMA,
        reduction="none",
    )
    return metric(x.float(), y.float()).flatten()


def ms_ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, scales: int | None = None
) -> torch.Tensor:
    """Multi-scale SSIM per image over `scales` scales (None: :func:`ms_ssim_scales`).

    Raises:
        ValueError: the images are too small for `scales` scales (or for one).
    """
    d = _pair(x, y)
    spatial = tuple(x.shape[2:])
    kernel = kernel_size_for(spatial)
    most = ms_ssim_scales(spatial, kernel)
    scales = most if scales is None else scales
    if not 1 <= scales <= most:
        raise ValueError(
            f"images of size {list(spatial)}: MS-SSIM scales={scales}; these allow 1 to {most}"
        )
    metric = MultiScaleSSIMMetric(
        spatial_dims=d,
        data_range=data_range,
        kernel_size=kernel,
        kernel_sigma=KERNEL_SIGMA,
        weights=ms_ssim_weights(scales),
        reduction="none",
    )
    return metric(x.float(), y.float()).flatten()


def pairwise_ms_ssim(
    images: torch.Tensor, data_range: float = 1.0, scales: int | None = None
) -> torch.Tensor:
    """MS-SSIM of every pair (i < j) of a batch, in `torch.triu_indices` order: its mean is
    the batch's diversity (1: all alike; lower: more diverse).

    Raises:
        ValueError: fewer than 2 images.
    """
    b = images.shape[0]
    if b < 2:
        raise ValueError(f"a batch of {b} image(s): pairwise MS-SSIM needs at least 2")
    i, j = torch.triu_indices(b, b, offset=1, device=images.device)
    return torch.cat(
        [
            ms_ssim(
                images[i[k : k + PAIR_CHUNK]], images[j[k : k + PAIR_CHUNK]], data_range, scales
            )
            for k in range(0, len(i), PAIR_CHUNK)
        ]
    )


def fid(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Fréchet distance between two sets of feature vectors (N, D) and (M, D) (MONAI's
    FIDMetric: Heusel et al. 2017).

    Raises:
        ValueError: not two matrices of the same width with at least 2 rows each.
    """
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise ValueError(
            f"features of shapes {tuple(features.shape)} and {tuple(reference.shape)}: "
            "expected (N, D) and (M, D)"
        )
    if min(len(features), len(reference)) < 2:
        raise ValueError("FID needs at least 2 feature vectors in each set (a covariance)")
    return float(FIDMetric()(features, reference))


def summary(
    values: torch.Tensor | Iterable[float], within: tuple[float, float] = (-math.inf, math.inf)
) -> dict[str, object]:
    """`{"value": mean, "ci95": [lo, hi], "n": count}` with a Student-t interval over the
    values (ci95 null below 2), cut to the range `within` the metric can take (MS-SSIM is
    in [0, 1]: a t-interval reaching below 0 says nothing more). A non-finite value makes value
    and ci95 null and is counted in `non_finite`: JSON holds no inf or NaN.
    """
    xs = [float(v) for v in (values.flatten().tolist() if torch.is_tensor(values) else values)]
    n = len(xs)
    bad = sum(not math.isfinite(x) for x in xs)
    if bad or not n:
        out: dict[str, object] = {"value": None, "ci95": None, "n": n}
        return out | ({"non_finite": bad} if bad else {})
    e = mean_interval(xs, within)
    return {"value": e.value, "ci95": [e.low, e.high] if n > 1 else None, "n": n}
