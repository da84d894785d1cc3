"""Tests for ddpmkit.data: loaders against independent computations, errors, batching."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data import (
    TOY2D_NAMES,
    InMemoryDataset,
    batch_indices,
    batches,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_mnist,
    load_toy2d,
    sample_toy2d,
)
from ddpmkit.errors import UserError
from ddpmkit.images import uint8_to_float

# ---------------------------------------------------------------- digits


def test_digits_levels_and_mapping_match_sklearn():
    from sklearn.datasets import load_digits as sk

    bunch = sk()
    ds = load_digits("all")
    assert len(ds) == 1797 and ds.shape == (1, 8, 8) and ds.data.dtype == torch.uint8
    expected = np.floor(bunch.images * 255.0 / 16.0 + 0.5).astype(np.uint8)
    assert np.array_equal(ds.data[:, 0].numpy(), expected)
    assert np.array_equal(ds.labels.numpy(), bunch.target)
    assert len(np.unique(ds.data.numpy())) == 17
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    f = uint8_to_float(ds.data)
    assert f.min() == -1.0 and f.max() == 1.0


def test_digits_split_sizes_disjoint_stratified():
    from sklearn.datasets import load_digits as sk
    from sklearn.model_selection import train_test_split

    target = sk().target
    tr, te = load_digits("train"), load_digits("test")
    assert (len(tr), len(te)) == (1437, 360)
    exp_tr, exp_te = train_test_split(np.arange(1797), test_size=360, random_state=0, stratify=target)
    all_data = load_digits("all").data
    assert torch.equal(tr.data, all_data[np.sort(exp_tr)])
    assert torch.equal(te.data, all_data[np.sort(exp_te)])
    assert set(exp_tr.tolist()).isdisjoint(exp_te.tolist())
    counts = np.bincount(te.labels.numpy(), minlength=10)
    props = np.bincount(target, minlength=10) / 1797 * 360
    assert np.all(np.abs(counts - props) <= 1)
    with pytest.raises(UserError):
        load_digits("valid")  # type: ignore[arg-type]


# ---------------------------------------------------------------- toy2d


def test_eight_gaussians_components():
    x = sample_toy2d("8gaussians", 40_000, torch.Generator().manual_seed(1)).double()
    k = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = math.sqrt(2) * torch.stack([k.cos(), k.sin()], 1)
    nearest = torch.cdist(x, centres).argmin(1)
    freq = torch.bincount(nearest, minlength=8).double() / len(x)
    assert torch.allclose(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    resid = x - centres[nearest]
    assert torch.allclose(resid.std(0), torch.full((2,), 0.1, dtype=torch.float64), rtol=0.05)
    assert torch.allclose(x.std(0), torch.full((2,), math.sqrt(1.01), dtype=torch.float64), atol=0.03)


def test_checkerboard_support_and_marginals():
    x = sample_toy2d("checkerboard", 20_000, torch.Generator().manual_seed(2)).double()
    assert x.min() >= -2 and x.max() <= 2
    i, j = torch.floor(x[:, 0] + 2), torch.floor(x[:, 1] + 2)
    assert torch.all((i + j) % 2 == 0)  # only dark squares
    cells = torch.bincount((i * 4 + j).long(), minlength=16).double() / len(x)
    dark = torch.tensor([(a + b) % 2 == 0 for a in range(4) for b in range(4)])
    assert torch.allclose(cells[dark], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    assert torch.allclose(x.std(0), torch.full((2,), 2 / math.sqrt(3), dtype=torch.float64), atol=0.03)


def test_moons_and_swissroll_lie_near_their_curves():
    g = torch.Generator().manual_seed(3)
    m = sample_toy2d("moons", 5000, g).double() / 1.5 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    d_upper = ((m[:, 0] ** 2 + m[:, 1] ** 2).sqrt() - 1).abs()
    d_lower = (((m[:, 0] - 1) ** 2 + (m[:, 1] - 0.5) ** 2).sqrt() - 1).abs()
    assert torch.quantile(torch.minimum(d_upper, d_lower), 0.99) < 0.2  # 0.05/1.5 noise
    assert abs((d_upper < d_lower).double().mean().item() - 0.5) < 0.03
    s = sample_toy2d("swissroll", 5000, g).double() * 7
    r = s.norm(dim=1)
    assert r.min() > 1.5 * math.pi - 1.5 and r.max() < 4.5 * math.pi + 1.5
    assert torch.allclose(s.std(0) / 7, torch.tensor([0.95, 0.99], dtype=torch.float64), atol=0.06)


def test_toy2d_dataset_and_errors():
    ds = load_toy2d("moons", 100, seed=5)
    assert ds.kind == "points" and ds.data.shape == (100, 2) and ds.data.dtype == torch.float32
    assert torch.equal(ds.data, load_toy2d("moons", 100, seed=5).data)
    assert not torch.equal(ds.data, load_toy2d("moons", 100, seed=6).data)
    for name in TOY2D_NAMES:
        assert sample_toy2d(name, 7).shape == (7, 2)
    with pytest.raises(UserError, match="checkerboard"):
        load_toy2d("spiral")


# ---------------------------------------------------------------- folder


def _save(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def test_folder_tree_channels_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "cats" / "a.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    _save(tmp_path / "cats" / "deep" / "b.JPG", np.full((6, 6, 3), 200, np.uint8), quality=95)
    _save(tmp_path / "dogs" / "c.png", np.full((6, 6), 77, np.uint8))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path, 6, class_labels=True)
    assert ds.data.shape == (3, 3, 6, 6) and ds.class_names == ["cats", "dogs"]
    assert ds.labels.tolist() == [0, 0, 1]  # sorted order: cats/a, cats/deep/b, dogs/c
    assert np.array_equal(ds.data[0].permute(1, 2, 0).numpy(), np.asarray(Image.open(tmp_path / "cats" / "a.png")))
    assert torch.all(ds.data[2] == 77)  # grey repeated over 3 channels
    assert (ds.data[1].float() - 200).abs().max() <= 3  # JPEG
    grey = load_image_folder(tmp_path / "dogs", 6)
    assert grey.shape == (1, 6, 6) and grey.labels is None
    assert load_image_folder(tmp_path, 6, channels=1).shape == (1, 6, 6)
    with pytest.raises(UserError, match="directly in"):
        _save(tmp_path / "loose.png", np.zeros((4, 4), np.uint8))
        load_image_folder(tmp_path, 6, class_labels=True)


def test_folder_reads_webp_bmp_and_tiff_losslessly(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for name, kw in [("a.webp", {"lossless": True}), ("b.bmp", {}), ("c.tif", {}), ("d.TIFF", {})]:
        arrays[name] = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        _save(tmp_path / name, arrays[name], **kw)
    (tmp_path / "e.gif").write_bytes(b"GIF89a")  # not a still format we read: ignored, not an error
    ds = load_image_folder(tmp_path, 5)
    assert len(ds) == 4
    for i, name in enumerate(sorted(arrays)):
        assert np.array_equal(ds.data[i].permute(1, 2, 0).numpy(), arrays[name]), name


def test_folder_resize_and_center_crop_geometry(tmp_path):
    img = np.zeros((40, 80, 3), np.uint8)  # 80 wide, 40 high
    img[:, :20] = (255, 0, 0)
    img[:, 20:60] = (0, 255, 0)
    img[:, 60:] = (0, 0, 255)
    _save(tmp_path / "wide.png", img)
    _save(tmp_path / "tall" / "t.png", np.ascontiguousarray(img.transpose(1, 0, 2)))
    ds = load_image_folder(tmp_path, 10)
    wide, tall = ds.data[1].permute(1, 2, 0).numpy(), ds.data[0].permute(1, 2, 0).numpy()
    # shorter side 40 -> 10 (x 1/4): 20 x 10, crop columns 5..14 = source columns 20..59: green
    assert np.all(wide[:, 3:7] == (0, 255, 0))
    assert wide[:, 0, 0].min() > 0 and wide[:, 9, 2].min() > 0  # red bleeds left, blue right
    assert wide[:, 0, 2].max() == 0 and wide[:, 9, 0].max() == 0
    assert np.array_equal(tall, wide.transpose(1, 0, 2))
    ref = Image.fromarray(img).resize((20, 10), Image.Resampling.BICUBIC).crop((5, 0, 15, 10))
    assert np.array_equal(wide, np.asarray(ref))
    up = load_image_folder(tmp_path / "tall", 20)  # upscale: 40 x 80 (w x h) -> 20 x 40, crop rows 10..29
    assert up.shape == (3, 20, 20) and torch.all(up.data[0, 1, 5:15] == 255)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_image_folder(tmp_path / "missing", 8)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not a directory"):
        load_image_folder(tmp_path / "file.png", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        load_image_folder(tmp_path / "empty", 8)
    with pytest.raises(UserError, match="file.png"):
        load_image_folder(tmp_path, 8)  # corrupt file with a .png name
    with pytest.raises(UserError, match="image_size"):
        load_image_folder(tmp_path / "empty", 0)
    trunc = tmp_path / "trunc"
    _save(trunc / "t.jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    raw = (trunc / "t.jpg").read_bytes()
    (trunc / "t.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="t.jpg") as info:
        load_image_folder(trunc, 8)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- CIFAR-10


def _cifar_arrays(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def test_cifar10_binary(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    parts = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = _cifar_arrays(i, 3)
        (d / f"{name}.bin").write_bytes(np.concatenate([y[:, None].astype(np.uint8), x], 1).tobytes())
        parts.append((x, y))
    ds = load_cifar10(tmp_path, "train")
    assert ds.data.shape == (15, 3, 32, 32) and ds.class_names[0] == "airplane"
    exp = np.concatenate([p[0] for p in parts[:5]]).reshape(-1, 3, 32, 32)
    assert np.array_equal(ds.data.numpy(), exp)
    assert np.array_equal(ds.labels.numpy(), np.concatenate([p[1] for p in parts[:5]]))
    te = load_cifar10(d, "test")  # root may be the batches directory itself
    assert np.array_equal(te.data.numpy(), parts[5][0].reshape(-1, 3, 32, 32))
    (d / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(UserError, match="wrong size"):
        load_cifar10(d, "test")
    (d / "data_batch_3.bin").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar10(d, "train")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_python_pickles(tmp_path, protocol):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    x, y = _cifar_arrays(9, 3)
    batch = {"batch_label": "testing batch 1 of 1", "labels": y.tolist(), "data": x, "filenames": ["a", "b", "c"]}
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    names = [f"c{i}".encode() for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    ds = load_cifar10(tmp_path, "test")
    assert np.array_equal(ds.data.numpy(), x.reshape(3, 3, 32, 32))
    assert ds.labels.tolist() == y.tolist() and ds.class_names[3] == "c3"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_cifar10_malicious_pickle_is_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    marker = tmp_path / "pwned"
    (d / "test_batch").write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0]}))
    with pytest.raises(UserError, match="refusing"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()
    (d / "test_batch").write_bytes(b"garbage, not a pickle")
    with pytest.raises(UserError, match="corrupt"):
        load_cifar10(tmp_path, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no CIFAR-10 files"):
        load_cifar10(tmp_path / "empty", "train")
    with pytest.raises(UserError, match="not found"):
        load_cifar10(tmp_path / "missing", "train")


# ---------------------------------------------------------------- MNIST


def _idx(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4).astype(np.uint8)
    files = {"t10k-images-idx3-ubyte": _idx(x, 0x803), "t10k-labels-idx1-ubyte": _idx(y, 0x801)}
    for name, raw in files.items():
        if gz:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (tmp_path / name).write_bytes(raw)
    ds = load_mnist(tmp_path, "test")
    assert ds.data.shape == (4, 1, 28, 28) and np.array_equal(ds.data[:, 0].numpy(), x)
    assert ds.labels.tolist() == y.tolist() and ds.num_classes == 10
    with pytest.raises(UserError, match="train-images"):
        load_mnist(tmp_path, "train")


def test_mnist_bad_magic_and_size(tmp_path):
    x, y = np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(x, 0x801))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(y, 0x801))
    with pytest.raises(UserError, match="magic"):
        load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(x, 0x803)[:-5])
    with pytest.raises(UserError, match="wrong size"):
        load_mnist(tmp_path)


def test_mnist_preset_trains_28x28_digits_padded_to_32_from_idx_files(tmp_path):
    from ddpmkit import Run
    from ddpmkit.config import load_config
    from ddpmkit.runs import train

    rng = np.random.default_rng(2)
    for prefix, n in (("train", 16), ("t10k", 8)):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(
            _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x803)
        )
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(np.arange(n, dtype=np.uint8) % 10, 0x801))
    cfg = load_config(
        "mnist", overrides={"data": {"root": str(tmp_path)}, "train": {"steps": 2, "batch_size": 8, "sample_every": 0}}
    )
    assert cfg.model.initial_pad == 2 and cfg.model.image_size == 28  # 28 -> 32 inside the network
    assert cfg.model.level_resolutions() == [32, 16, 8]
    train(cfg, tmp_path / "run", progress=False, log=None)
    run = Run.load(tmp_path / "run")
    samples = run.sample(3, steps=2, labels="7", seed=1)
    assert samples.x.shape == (3, 1, 28, 28) and samples.labels.tolist() == [7, 7, 7]


# ---------------------------------------------------------------- load_dataset


def test_load_dataset_dispatch_and_errors(tmp_path):
    d = load_dataset("digits", split="test", image_size=16, channels=3)
    assert d.data.shape == (360, 3, 16, 16) and d.labels.shape == (360,)
    t = load_dataset("toy2d", toy2d="8gaussians", num_samples=50)
    assert t.data.shape == (50, 2)
    assert not torch.equal(t.data, load_dataset("toy2d", toy2d="8gaussians", num_samples=50, split="test").data)
    for kw in [
        dict(name="folder"),
        dict(name="cifar10"),
        dict(name="mnist", root=tmp_path / "no"),
        dict(name="imagenet"),
        dict(name="toy2d"),
        dict(name="toy2d", toy2d="moons", image_size=8),
        dict(name="folder", root=tmp_path),
    ]:
        with pytest.raises(UserError):
            load_dataset(**kw)


# ---------------------------------------------------------------- batches


def _images(n: int) -> InMemoryDataset:
    data = torch.arange(n * 2 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 2, 3)
    data[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # pixel (0, 0) identifies the example
    return InMemoryDataset(data, torch.arange(n) % 3, 3, None, "image")


def _ids(x: torch.Tensor) -> list[int]:
    return torch.round((x[:, 0, 0, 0] + 1) * 127.5).long().tolist()


def test_batches_deterministic_epochs_and_resume():
    ds = _images(10)
    it = batches(ds, 4, seed=7)
    got = [next(it) for _ in range(6)]  # 2 full batches per epoch, 3 epochs
    for epoch in range(3):
        seen = _ids(got[2 * epoch][0]) + _ids(got[2 * epoch + 1][0])
        assert len(set(seen)) == 8  # no repeats within an epoch
    orders = [_ids(got[2 * e][0]) + _ids(got[2 * e + 1][0]) for e in range(3)]
    assert orders[0] != orders[1] and orders[1] != orders[2]  # a fresh permutation per epoch
    x0, y0 = got[0]
    assert x0.dtype == torch.float32 and x0.is_contiguous() and y0.dtype == torch.int64
    assert torch.equal(y0, torch.tensor(_ids(x0)) % 3)
    assert torch.equal(x0, ds.data[batch_indices(10, 4, seed=7, step=0)].float() / 127.5 - 1)
    again = batches(ds, 4, seed=7, start_step=3)
    for k in range(3, 6):
        xk, yk = next(again)
        assert torch.equal(xk, got[k][0]) and torch.equal(yk, got[k][1])
    other = next(batches(ds, 4, seed=8))[0]
    assert not torch.equal(other, x0)


def test_batches_cover_each_example_once_per_epoch():
    ds = _images(12)
    it = batches(ds, 4, seed=0)
    for _ in range(2):
        seen = sum((_ids(next(it)[0]) for _ in range(3)), [])
        assert sorted(seen) == list(range(12))


def test_batches_ranks_shard_the_global_batch():
    ds = _images(16)
    one = batches(ds, 8, seed=3, hflip=True)
    r0 = batches(ds, 8, seed=3, rank=0, world_size=2, hflip=True)
    r1 = batches(ds, 8, seed=3, rank=1, world_size=2, hflip=True)
    for _ in range(5):
        (x, y), (a, ya), (b, yb) = next(one), next(r0), next(r1)
        assert a.shape[0] == 4
        assert torch.equal(x[0::2], a) and torch.equal(x[1::2], b)
        assert torch.equal(y[0::2], ya) and torch.equal(y[1::2], yb)
    with pytest.raises(UserError, match="divisible"):
        next(batches(ds, 7, seed=0, world_size=2))


def test_batches_small_dataset_wraps_and_hflip_flips():
    ds = _images(3)
    it = batches(ds, 5, seed=1)
    ids = sum((_ids(next(it)[0]) for _ in range(3)), [])  # 15 draws = 5 epochs of 3
    for e in range(5):
        assert sorted(ids[3 * e : 3 * e + 3]) == [0, 1, 2]
    g = torch.Generator().manual_seed(0)
    big = InMemoryDataset(torch.randint(0, 256, (64, 1, 2, 3), dtype=torch.uint8, generator=g))
    plain, flipped = next(batches(big, 64, seed=4)), next(batches(big, 64, seed=4, hflip=True))
    same = (flipped[0] == plain[0]).flatten(1).all(1)
    mirrored = (flipped[0] == plain[0].flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored) and 16 < mirrored.sum() < 48
    pts = InMemoryDataset(torch.randn(5, 2), kind="points")
    xp, yp = next(batches(pts, 5, seed=0))
    assert yp is None and sorted(xp[:, 0].tolist()) == sorted(pts.data[:, 0].tolist())
    with pytest.raises(UserError):
        next(batches(pts, 5, seed=0, hflip=True))


def test_folder_decodes_the_same_on_any_number_of_threads(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(24):  # colour PNGs, JPEGs and grey images, several sizes
        shape = (int(rng.integers(6, 30)), int(rng.integers(6, 30))) + ((3,) if i % 3 else ())
        _save(
            tmp_path / f"{i % 4}" / f"{i:02d}.{'jpg' if i % 5 == 0 else 'png'}",
            rng.integers(0, 256, shape, dtype=np.uint8),
        )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = load_image_folder(tmp_path, 8, class_labels=True)
        torch.set_num_threads(4)
        parallel = load_image_folder(tmp_path, 8, class_labels=True)
        assert torch.equal(serial.data, parallel.data) and torch.equal(serial.labels, parallel.labels)
        assert serial.data.is_contiguous() and serial.data.shape == (24, 3, 8, 8)
        grey = serial.data[[int(f.stem) % 3 == 0 for f in sorted(tmp_path.rglob("*.*"))]]
        assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
        (tmp_path / "1" / "05b.png").write_bytes(b"broken")  # two bad files: the first in sorted order is named
        (tmp_path / "3" / "zz.png").write_bytes(b"broken")
        with pytest.raises(UserError, match="05b.png"):
            load_image_folder(tmp_path, 8)
    finally:
        torch.set_num_threads(threads)
