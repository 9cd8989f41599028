"""Training images for the 2D/3D latent diffusion workload: synthetic brain phantoms or a folder."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch.nn.functional import interpolate
from torch.utils.data import DataLoader, Dataset

PNG_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Head semi-axes in object coordinates (D, H, W) = (superior, anterior, left-right); 2D uses (H, W).
HEAD_RADII = (0.80, 0.88, 0.72)


def _axis(n: int) -> torch.Tensor:
    """Pixel centres of an axis of n pixels in normalised coordinates [-1, 1]."""
    return (torch.arange(n) + 0.5) * (2 / n) - 1


def _check_size(image_size: Sequence[int]) -> tuple[int, ...]:
    if len(image_size) not in (2, 3):
        raise ValueError(
            f"data.image_size={list(image_size)}: give 2 sizes (H, W) for 2D or 3 (D, H, W) for 3D"
        )
    return tuple(int(s) for s in image_size)


class PhantomDataset(Dataset):
    """Synthetic brain-like MR phantoms drawn on the fly at any 2D or 3D resolution.

    Item ``i`` depends only on ``(seed, i)``, so shuffling and worker layout never change the data.
    """

    def __init__(
        self, image_size: Sequence[int], length: int, seed: int = 0, in_channels: int = 1
    ) -> None:
        self.image_size = _check_size(image_size)
        self.length = length
        self.seed = seed
        self.in_channels = in_channels

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} phantoms")
        # SeedSequence mixes (seed, index) so that nearby pairs never share a stream.
        state = np.random.SeedSequence([self.seed, index]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state))
        d = len(self.image_size)

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(shape, generator=g)

        # Random pose: small rotation in every axis plane, anisotropic scale, shift.
        rot = torch.eye(d)
        for i, j in itertools.combinations(range(d), 2):
            a = uniform(-0.15, 0.15).item()
            givens = torch.eye(d)
            givens[i, i] = givens[j, j] = math.cos(a)
            givens[i, j], givens[j, i] = -math.sin(a), math.sin(a)
            rot = rot @ givens
        shift, scale = uniform(-0.05, 0.05, d), uniform(0.9, 1.05, d)
        # Object coordinates p = (x - shift) @ rot / scale, built channel-first by broadcasting 1D
        # axes: a trailing (..., d) layout is several times slower on large volumes.
        axes = [
            (_axis(n) - shift[i]).view([-1] + [1] * (d - 1 - i))
            for i, n in enumerate(self.image_size)
        ]
        p = torch.stack(
            [sum(ax * rot[i, k] for i, ax in enumerate(axes)) / scale[k] for k in range(d)]
        )

        def col(v: torch.Tensor) -> torch.Tensor:
            return v.view(-1, *[1] * d)

        sharpness = min(self.image_size)  # about one pixel of soft edge, so no aliasing
        img = torch.zeros(self.image_size)

        def paint(centre: torch.Tensor, radii: torch.Tensor, *layers: tuple[float, float]) -> None:
            """Blend each (k, value) of layers into the ellipsoid with radii k * radii."""
            # Only the bounding box (with the sigmoid's tail) is touched: small shapes cost little.
            outer = max(k for k, _ in layers)
            reach = outer * radii.max() * scale.max() * (1 + 8 / (radii.min() * sharpness))
            mid = (centre * scale) @ rot.T + shift
            box = tuple(
                slice(
                    max(0, math.floor((c - reach + 1) * n / 2 - 0.5)),
                    min(n, math.ceil((c + reach + 1) * n / 2 - 0.5) + 1),
                )
                for c, n in zip(mid.tolist(), self.image_size, strict=True)
            )
            q = ((p[(slice(None), *box)] - col(centre)) / col(radii)).square().sum(0).sqrt()
            region = img[box]
            for k, value in layers:
                region += torch.sigmoid((k - q) * (radii.min() * sharpness)) * (value - region)

        head = torch.tensor(HEAD_RADII[-d:]) * uniform(0.95, 1.05, d)
        paint(torch.zeros(d), head, (1.0, 0.85), (0.88, 0.15), (0.85, 0.55))  # skull, CSF, brain
        lr_offset = uniform(0.12, 0.16).item() * head[-1].item()
        for side in (-1, 1):
            centre = torch.tensor([0.05, uniform(-0.05, 0.1).item(), side * lr_offset][-d:])
            radii = torch.tensor([0.18, 0.28, 0.09][-d:]) * head * uniform(0.85, 1.15, d)
            paint(centre, radii, (1.0, 0.1))  # ventricle
        for _ in range(int(torch.randint(0, 4, (), generator=g))):
            centre = uniform(-0.45, 0.45, d) * head
            paint(centre, uniform(0.04, 0.09, d), (1.0, uniform(0.8, 0.95).item()))  # lesion

        # Smooth multiplicative field along the image axes, like an MR coil bias; separable so that
        # it costs one broadcast instead of a cosine per voxel.
        field = 1.0
        for i, n in enumerate(self.image_size):
            wave = 0.05 * torch.cos(uniform(0.5, 2.5) * _axis(n) + uniform(0, 2 * math.pi))
            field = field + wave.view([-1] + [1] * (d - 1 - i))
        img *= field
        noise = 0.02 * torch.randn((self.in_channels, *self.image_size), generator=g)
        return (img + noise).clamp_(0, 1)


class FolderDataset(Dataset):
    """Real images under ``root``: PNG/JPEG (2D only) and NIfTI, resized and scaled to [0, 1].

    NIfTI arrays keep their stored axis order; a 4D file contributes its first volume.
    """

    def __init__(self, root: str | Path, image_size: Sequence[int], in_channels: int = 1) -> None:
        self.image_size = _check_size(image_size)
        self.in_channels = in_channels
        root = Path(root)
        if not root.is_dir():
            raise ValueError(
                f"data.root={root}: no such directory (point data.root at a folder of images)"
            )
        suffixes = NIFTI_SUFFIXES + (PNG_SUFFIXES if len(self.image_size) == 2 else ())
        self.files = sorted(
            p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)
        )
        if not self.files:
            if len(self.image_size) == 2:
                raise ValueError(f"data.root={root}: no .png/.jpg/.nii/.nii.gz files found")
            raise ValueError(
                f"data.root={root}: no .nii/.nii.gz files found "
                "(3D data uses only NIfTI files; PNG/JPEG are only for 2D)"
            )

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> np.ndarray:
        if path.name.lower().endswith(PNG_SUFFIXES):
            with Image.open(path) as im:
                return np.asarray(im.convert("L"), dtype=np.float32)
        arr = nib.load(path).get_fdata(dtype=np.float32)
        if arr.ndim == 4:
            arr = arr[..., 0]
        if len(self.image_size) == 2 and arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != len(self.image_size):
            raise ValueError(
                f"{path}: array of shape {arr.shape} does not match "
                f"data.image_size={list(self.image_size)}; use {arr.ndim} sizes or other files"
            )
        return np.nan_to_num(arr)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self._read(self.files[index])))[None, None]
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        x = interpolate(x, size=self.image_size, mode=mode, align_corners=False)[0]
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
        return x.expand(self.in_channels, *self.image_size).contiguous()


class CachedDataset(Dataset):
    """The first `pool` items of `dataset`, made once by :meth:`fill`; item ``i`` is item
    ``i % pool`` of `dataset`, so a phase longer than the pool cycles through it.

    Filling before the measured windows open (``ImageDataModule.setup``) keeps making the data
    (a paper-scale 3D phantom takes ~100 ms) out of the training windows. Items must share one
    shape: they are stacked into one tensor.
    """

    def __init__(self, dataset: Dataset, pool: int) -> None:
        if pool < 1:
            raise ValueError(f"data.pool={pool}: give the number of distinct images, >= 1")
        self.dataset = dataset
        self.pool = min(pool, len(dataset))
        self.items: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def fill(self) -> None:
        """Make or load the pool; a no-op once done, so one cache can serve several phases."""
        if self.items is None:
            self.items = torch.stack([self.dataset[i] for i in range(self.pool)])

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        if self.items is None:
            # Filling here would put it inside whatever window is measuring this batch.
            raise RuntimeError("CachedDataset.fill() must run before its items are read")
        return self.items[index % self.pool]


class ImageDataModule(pl.LightningDataModule):
    """Shuffled training batches of `dataset`.

    Args:
        pool: when given, at most `pool` distinct images are made (or loaded) in `setup`, which
            Lightning runs before training starts and so before any measured window, and the
            batches cycle through them (:class:`CachedDataset`). None reads `dataset` per batch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        pool: int | None = None,
    ) -> None:
        super().__init__()
        if pool is not None and not isinstance(dataset, CachedDataset):
            dataset = CachedDataset(dataset, pool)
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def setup(self, stage: str) -> None:
        if isinstance(self.dataset, CachedDataset):
            self.dataset.fill()

    def train_dataloader(self) -> DataLoader:
        if isinstance(self.dataset, CachedDataset):
            self.dataset.fill()  # also when used without a Trainer; a no-op after `setup`
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=len(self.dataset) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
