from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from lpm.workload.data import CachedDataset, FolderDataset, ImageDataModule, PhantomDataset
from lpm.workload.images import save_samples_png


@pytest.mark.parametrize("size", [(24, 32), (16, 20, 12), (8, 8)])
def test_phantom_shape_range_dtype(size):
    x = PhantomDataset(size, length=4, in_channels=2)[3]
    assert x.shape == (2, *size)
    assert x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1


def test_phantom_is_deterministic_per_seed_and_index():
    a, b = PhantomDataset((32, 32), 8, seed=1), PhantomDataset((32, 32), 8, seed=1)
    assert torch.equal(a[5], b[5])
    assert not torch.equal(a[5], a[6])
    assert not torch.equal(a[5], PhantomDataset((32, 32), 8, seed=2)[5])
    with pytest.raises(IndexError):
        a[8]


@pytest.mark.parametrize("size", [(64, 48), (32, 40, 36)])
def test_phantom_looks_like_a_head(size):
    ds = PhantomDataset(size, 4)
    for i in range(len(ds)):
        x = ds[i][0]
        centre = x[tuple(slice(n // 4, 3 * n // 4) for n in size)]
        corner = x[tuple(slice(0, max(1, n // 8)) for n in size)]
        assert centre.mean() > 0.3
        assert corner.mean() < 0.05
        assert x.max() > centre.mean() + 0.1  # bright skull around mid-grey brain


def test_phantom_rejects_bad_size():
    with pytest.raises(ValueError, match=r"data\.image_size"):
        PhantomDataset((16,), 1)


def _write_png(path, h, w):
    ramp = np.linspace(0, 255, h * w, dtype=np.float32).reshape(h, w)
    Image.fromarray(ramp.astype(np.uint8)).convert("RGB").save(path)


def _write_nifti(path, shape):
    data = np.random.default_rng(0).random(shape, dtype=np.float32) * 1000 - 200
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def test_folder_2d_png_and_nifti(tmp_path):
    (tmp_path / "sub").mkdir()
    _write_png(tmp_path / "a.png", 30, 40)
    _write_png(tmp_path / "sub" / "b.JPG", 17, 9)
    _write_nifti(tmp_path / "c.nii.gz", (20, 22, 1))
    _write_nifti(tmp_path / "d.nii", (10, 12, 1, 3))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = FolderDataset(tmp_path, (16, 24), in_channels=3)
    assert [p.name for p in ds.files] == ["a.png", "c.nii.gz", "d.nii", "b.JPG"]
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 16, 24) and x.dtype == torch.float32
        assert x.min() == 0 and x.max() == 1
        assert torch.equal(x[0], x[2])


def test_folder_3d_nifti_skips_png(tmp_path):
    _write_png(tmp_path / "a.png", 8, 8)
    _write_nifti(tmp_path / "vol.nii.gz", (20, 18, 14))
    _write_nifti(tmp_path / "series.nii", (10, 10, 10, 2))
    ds = FolderDataset(tmp_path, (16, 12, 8))
    assert len(ds) == 2
    for x in (ds[0], ds[1]):
        assert x.shape == (1, 16, 12, 8)
        assert x.min() == 0 and x.max() == 1


def test_folder_constant_image_is_zeros(tmp_path):
    Image.new("L", (10, 10), 128).save(tmp_path / "flat.png")
    assert torch.equal(FolderDataset(tmp_path, (8, 8))[0], torch.zeros(1, 8, 8))


def test_folder_errors(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=r"data\.root=.*missing: no such directory"):
        FolderDataset(missing, (8, 8))
    with pytest.raises(ValueError, match=r"data\.root=.*no \.png/\.jpg/\.nii/\.nii\.gz files"):
        FolderDataset(tmp_path, (8, 8))
    _write_png(tmp_path / "a.png", 8, 8)
    with pytest.raises(ValueError, match=r"data\.root=.*only NIfTI.*PNG.*only for 2D"):
        FolderDataset(tmp_path, (8, 8, 8))
    with pytest.raises(ValueError, match=r"data\.image_size"):
        FolderDataset(tmp_path, (8, 8, 8, 8))


def test_folder_volume_for_2d_size_is_rejected(tmp_path):
    _write_nifti(tmp_path / "vol.nii", (8, 8, 8))
    with pytest.raises(ValueError, match=r"data\.image_size"):
        FolderDataset(tmp_path, (8, 8))[0]


def test_datamodule_batches():
    dm = ImageDataModule(PhantomDataset((16, 12, 8), 10), batch_size=4, seed=3)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # drop_last
    assert batches[0].shape == (4, 1, 16, 12, 8)
    again = next(
        iter(ImageDataModule(PhantomDataset((16, 12, 8), 10), 4, seed=3).train_dataloader())
    )
    assert torch.equal(batches[0], again)
    small = ImageDataModule(PhantomDataset((8, 8), 3), batch_size=4).train_dataloader()
    assert [b.shape[0] for b in small] == [3]


def test_save_samples_png_2d(tmp_path):
    samples = torch.randn(5, 2, 16, 24) * 7 + 3
    path = save_samples_png(samples, tmp_path / "out" / "grid.png")
    im = Image.open(path)
    assert im.mode == "L"
    ncol, f = math.ceil(math.sqrt(5)), 4  # 16 px upscaled to 64
    assert im.size == (ncol * (24 * f + 2) + 2, 2 * (16 * f + 2) + 2)
    pixels = np.asarray(im)
    assert pixels.min() == 0 and pixels.max() == 255
    assert save_samples_png(samples, tmp_path / "row.png", ncol=5)
    assert Image.open(tmp_path / "row.png").size == (5 * (24 * f + 2) + 2, 16 * f + 2 + 2)


def test_save_samples_png_3d(tmp_path):
    d, h, w = 16, 20, 12
    samples = torch.stack([PhantomDataset((d, h, w), 2)[i] for i in range(2)])
    path = save_samples_png(samples, tmp_path / "vol.png")
    im = Image.open(path)
    assert im.mode == "L"
    f = math.ceil(64 / min(d, h, w))
    width = (w + w + h) * f + 4 * 2  # axial (h, w), coronal (d, w), sagittal (d, h)
    height = 2 * (max(h, d) * f + 2) + 2
    assert im.size == (width, height)


class Counting(torch.utils.data.Dataset):
    """Item i is a tensor holding i; counts how many items were made."""

    def __init__(self, length: int) -> None:
        self.length, self.made = length, 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        self.made += 1
        return torch.full((1, 2, 2), float(index))


def test_cached_dataset_makes_the_pool_once_and_cycles_through_it():
    source = Counting(10)
    cached = CachedDataset(source, pool=4)
    assert len(cached) == 10 and source.made == 0
    with pytest.raises(RuntimeError, match=r"fill\(\)"):
        cached[0]  # never made silently inside a measured batch
    cached.fill()
    cached.fill()
    assert source.made == 4
    assert [int(cached[i][0, 0, 0]) for i in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert source.made == 4
    with pytest.raises(IndexError):
        cached[10]
    assert CachedDataset(Counting(3), pool=256).pool == 3
    with pytest.raises(ValueError, match=r"data\.pool=0"):
        CachedDataset(source, pool=0)


def test_cached_phantoms_are_the_phantoms_of_their_index():
    phantoms = PhantomDataset((16, 16), 12, seed=4)
    cached = CachedDataset(phantoms, pool=5)
    cached.fill()
    for i in (0, 4, 5, 11):
        assert torch.equal(cached[i], phantoms[i % 5])


def test_folder_images_are_read_once(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        _write_png(tmp_path / f"{name}.png", 12, 10)
    folder = FolderDataset(tmp_path, (8, 8))
    reads = []
    read = folder._read
    monkeypatch.setattr(folder, "_read", lambda path: reads.append(path.name) or read(path))
    dm = ImageDataModule(folder, batch_size=2, pool=256)
    dm.setup("fit")
    assert reads == ["a.png", "b.png", "c.png"]
    for _ in range(3):
        list(dm.train_dataloader())
    assert len(reads) == 3


def test_datamodule_pool_is_made_in_setup_and_batches_are_reproducible():
    source = Counting(40)
    dm = ImageDataModule(source, batch_size=4, seed=1, pool=8)
    assert source.made == 0
    dm.setup("fit")  # Lightning calls it before training starts: before any window opens
    assert source.made == 8
    batches = list(dm.train_dataloader())
    assert len(batches) == 10 and source.made == 8
    values = torch.cat(batches).flatten().unique()
    assert set(values.tolist()) <= set(range(8))
    again = ImageDataModule(Counting(40), batch_size=4, seed=1, pool=8)
    assert torch.equal(next(iter(again.train_dataloader())), batches[0])
