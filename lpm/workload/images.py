"""Save generated 2D images or 3D volumes as one greyscale PNG for a quick look, with a caption
strip saying how far the samples got."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 2
MIN_TILE = 64  # px on the shorter side of a tile, so tiny samples stay readable
CAPTION_PX = 11  # PIL's bundled default font at this size: no font file to find or download
MIN_CAPTION_WIDTH = 300  # px: a caption wraps to the image, but never to fewer than ~55 chars


def samples_caption(
    denoising_steps: int, of_steps: int, trained_steps: int | None, planned_steps: int | None
) -> list[str]:
    """What a samples PNG shows: '33 of 1,000 denoising steps: not a finished sample' (the chain
    was cut) and 'trained 33 of 150,000 diffusion steps'."""
    cut = ": not a finished sample" if denoising_steps < of_steps else ""
    lines = [f"{denoising_steps:,} of {of_steps:,} denoising steps{cut}"]
    if trained_steps is not None:
        planned = f" of {planned_steps:,}" if planned_steps else ""
        lines.append(f"trained {trained_steps:,}{planned} diffusion steps")
    return lines


def _captioned(canvas: np.ndarray, caption: Sequence[str]) -> Image.Image:
    """The mosaic over a white strip holding `caption`, one line each (wrapped to the width)."""
    font = ImageFont.load_default(CAPTION_PX)
    image = Image.fromarray(canvas)
    width = max(image.width, MIN_CAPTION_WIDTH)
    chars = max(10, int((width - 2 * PAD) / (font.getlength("denoising ") / 10)))
    lines = [part for line in caption for part in textwrap.wrap(line, chars) or [""]]
    line_px = CAPTION_PX + 3
    out = Image.new("L", (width, image.height + line_px * len(lines) + 2 * PAD), 255)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((PAD, image.height + PAD + i * line_px), line, fill=0, font=font)
    return out


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


def save_samples_png(
    samples: torch.Tensor,
    path: str | Path,
    ncol: int | None = None,
    caption: Sequence[str] = (),
) -> Path:
    """Write the first channel of (B, C, H, W) or (B, C, D, H, W) samples as a greyscale PNG.

    Each sample is min-max scaled on its own. 2D samples form a grid of ``ncol`` columns (default
    ceil(sqrt(B))); 3D samples get one row each with their axial, coronal and sagittal mid-slices.
    ``caption`` lines (see `samples_caption`) go on a white strip under the images.
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
    canvas = _mosaic(rows)
    (_captioned(canvas, caption) if caption else Image.fromarray(canvas)).save(path)
    return path
