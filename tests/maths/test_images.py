"""Tests for ddpmkit.images: conversion, grid layout, PNG/NPZ files, point plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.errors import UserError
from ddpmkit.images import (
    load_npz,
    make_grid,
    make_trajectory_grid,
    save_npz,
    save_png,
    save_points_png,
    to_uint8,
)


def test_to_uint8_round_trip_and_rounding():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = u.float() / 127.5 - 1
    back = to_uint8(x)
    assert back.shape == (1, 16, 16, 1) and back.dtype == np.uint8
    assert np.array_equal(back[0, :, :, 0], u[0, 0].numpy())
    vals = torch.tensor([-2.0, -1.0, 1.0, 3.0, 0.5 / 127.5 - 1 + 1e-4, float("nan")]).view(1, 1, 1, 6)
    assert to_uint8(vals)[0, 0, :, 0].tolist() == [0, 0, 255, 255, 1, 128]
    rgb = torch.zeros(2, 3, 4, 5)
    rgb[1, 2] = 1.0
    out = to_uint8(rgb)
    assert out.shape == (2, 4, 5, 3) and np.all(out[1, :, :, 2] == 255) and np.all(out[1, :, :, 0] == 128)


def test_make_grid_positions():
    imgs = np.stack([np.full((2, 3, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    g = make_grid(imgs, nrow=3, padding=1, pad_value=7)
    assert g.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1)
    for i in range(5):
        r, c = divmod(i, 3)
        top, left = 1 + r * 3, 1 + c * 4
        assert np.all(g[top : top + 2, left : left + 3] == 10 * (i + 1))
    assert np.all(g[0] == 7) and np.all(g[:, 0] == 7) and np.all(g[4:6, 9:12] == 7)  # empty slot
    default = make_grid(imgs, padding=0)  # ceil(sqrt(5)) = 3 per row
    assert default.shape == (4, 9, 1)


def test_make_grid_scale_is_nearest_neighbour():
    img = np.array([[[[1], [2]], [[3], [4]]]], np.uint8)  # 1 x 2 x 2 x 1
    g = make_grid(img, padding=0, scale=3)
    assert g.shape == (6, 6, 1)
    assert np.array_equal(g[:, :, 0], np.kron(np.array([[1, 2], [3, 4]]), np.ones((3, 3))).astype(np.uint8))


def test_trajectory_grid_rows():
    a = np.full((3, 2, 2, 3), 50, np.uint8)
    b = np.full((2, 2, 2, 3), 90, np.uint8)
    g = make_trajectory_grid([a, b], padding=0, pad_value=1)
    assert g.shape == (4, 6, 3)
    assert np.all(g[:2] == 50) and np.all(g[2:, :4] == 90) and np.all(g[2:, 4:] == 1)


def test_save_png_reads_back(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    save_png(tmp_path / "sub" / "a.png", arr)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "a.png")), arr)
    assert list(tmp_path.glob(".*")) == []  # no temporary files left behind


def test_npz_round_trip_keys_dtypes(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    save_npz(tmp_path / "s.npz", imgs, np.array([1, 2, 3], np.int32))
    with np.load(tmp_path / "s.npz") as z:
        assert sorted(z.files) == ["images", "labels"]
        assert z["images"].dtype == np.uint8 and z["labels"].dtype == np.int64
    images, labels = load_npz(tmp_path / "s.npz")
    assert np.array_equal(images, imgs) and labels.tolist() == [1, 2, 3]
    save_npz(tmp_path / "s.npz", imgs[:, :, :, :1])  # overwrite, no labels
    images, labels = load_npz(tmp_path / "s.npz")
    assert images.shape == (3, 4, 4, 1) and labels is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    with pytest.raises(ValueError):
        save_npz(tmp_path / "bad.npz", imgs.astype(np.float32))
    assert not (tmp_path / "bad.npz").exists()


def test_load_npz_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_npz(tmp_path / "none.npz")
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="c.npz"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "k.npz", other=np.zeros(3))
    with pytest.raises(UserError, match="images"):
        load_npz(tmp_path / "k.npz")


def test_points_png(tmp_path):
    pts = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    save_points_png(tmp_path / "p.png", pts, size=101, lim=2.0)
    img = np.asarray(Image.open(tmp_path / "p.png")).astype(int)
    assert img.shape == (101, 101, 3)
    assert img[50, 50].sum() < 600  # origin is drawn
    assert img[25, 75].sum() < 600  # (1, 1): right and up
    assert img[75, 25].sum() == 765  # (-1, -1): nothing there
    save_points_png(tmp_path / "q.png", torch.randn(1000, 2))
    assert Image.open(tmp_path / "q.png").size == (512, 512)


def test_to_uint8_levels_snaps_to_the_data_grid():
    from ddpmkit.data import load_digits

    real = load_digits("all").data  # uint8 on the 17-level grid
    x = real.float() / 127.5 - 1.0
    assert np.array_equal(to_uint8(x, levels=17), real.permute(0, 2, 3, 1).numpy())
    grid = {(v * 255 * 2 + 16) // 32 for v in range(17)}
    y = to_uint8(torch.linspace(-1.2, 1.2, 997).reshape(1, 1, 1, -1), levels=17)
    assert set(np.unique(y).tolist()) == grid
    # each value goes to the nearest level: 0.49 of a level step rounds down, 0.51 up
    step = 2.0 / 16
    y = to_uint8(torch.tensor([-1 + 0.49 * step, -1 + 0.51 * step]).reshape(1, 1, 1, 2), levels=17)
    assert y.ravel().tolist() == [0, 16]
    assert np.array_equal(to_uint8(x, levels=256), to_uint8(x))
