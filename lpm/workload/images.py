"""Save generated 2D images or 3D volumes as one greyscale PNG for a quick look."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PAD = 2
MIN_TILE = 64  # px on the shorter side of a tile, so tiny samples stay readable


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = torch.where(hi > lo, 255 / (hi - lo), torch.zeros_like(hi))
    shape = (-1,) + (1,) * (x.ndim - 1)
    return ((x - lo.view(shape)) * scale.view(shape)).round().to(torch.uint8).numpy()


def _mosaic(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Lay out rows of tiles with PAD black pixels around each; a row is as tall as its tallest."""
    heights = [max(t.shape[0] for t in row) for row in rows]
    widths = [sum(t.shape[1] + PAD for t in row) + PAD for row in rows]
    canvas = np.zeros((sum(heights) + PAD * (len(rows) + 1), max(widths)), dtype=np.uint8)
    y = PAD
    for row, h in zip(rows, heights, strict=True):
        x = PAD
        for t in row:
            canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
            x += t.shape[1] + PAD
        y += h + PAD
    return canvas


def save_samples_png(samples: torch.Tensor, path: str | Path, ncol: int | None = None) -> Path:
    """Write the first channel of (B, C, H, W) or (B, C, D, H, W) samples as a greyscale PNG.

    Each sample is min-max scaled on its own. 2D samples form a grid of ``ncol`` columns (default
    ceil(sqrt(B))); 3D samples get one row each with their axial, coronal and sagittal mid-slices.
    """
    if samples.ndim not in (4, 5):
        raise ValueError(f"samples of shape {tuple(samples.shape)}: expected (B, C, *2 or 3 dims)")
    x = _to_uint8(samples.detach()[:, 0].float().cpu())
    if x.ndim == 3:
        ncol = ncol or math.ceil(math.sqrt(len(x)))
        rows = [list(x[i : i + ncol]) for i in range(0, len(x), ncol)]
    else:
        d, h, w = x.shape[1:]
        rows = [[v[d // 2], v[:, h // 2], v[:, :, w // 2]] for v in x]
    f = max(1, math.ceil(MIN_TILE / min(x.shape[1:])))
    rows = [[t.repeat(f, axis=0).repeat(f, axis=1) for t in row] for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_mosaic(rows)).save(path)
    return path
