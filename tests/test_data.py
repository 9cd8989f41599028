from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from lpm.workload.data import FolderDataset, ImageDataModule, PhantomDataset
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
