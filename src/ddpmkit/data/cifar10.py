"""CIFAR-10 from the standard local files (never downloaded).

Two layouts are read: the binary version ``cifar-10-batches-bin/`` (``data_batch_{1..5}.bin``,
``test_batch.bin``: records of 1 label byte + 3072 pixel bytes, CHW) and the python version
``cifar-10-batches-py/`` (``data_batch_{1..5}``, ``test_batch``: pickled dicts). The pickles
are read with ``NumpyOnlyUnpickler``, which only rebuilds numpy arrays, so a malicious file
cannot run code. ``root`` may be the batches directory itself or its parent; when both
versions are present the binary one is used.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..options import Split, choices
from .base import InMemoryDataset
from .numpy_pickle import NumpyOnlyUnpickler

CIFAR10_CLASS_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_RECORD = 1 + 3 * 32 * 32
_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = ["test_batch"]


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` allowing only numpy arrays and plain containers (UserError otherwise)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return NumpyOnlyUnpickler(io.BytesIO(raw), source="a CIFAR-10 pickle", encoding="latin1").load()
    except UserError as e:
        raise UserError(f"{e} ({path})") from None
    except Exception as e:  # any malformed pickle
        raise UserError(f"corrupt CIFAR-10 pickle {path}: {type(e).__name__}: {e}") from None


def _find_batches_dir(root: Path) -> tuple[Path, bool]:
    """Locate the batches directory; return it and whether it is the binary version."""
    if not root.exists():
        raise UserError(f"CIFAR-10 directory not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    for d in (root / "cifar-10-batches-bin", root):
        if (d / "test_batch.bin").is_file() or (d / "data_batch_1.bin").is_file():
            return d, True
    for d in (root / "cifar-10-batches-py", root):
        if (d / "test_batch").is_file() or (d / "data_batch_1").is_file():
            return d, False
    raise UserError(f"no CIFAR-10 files under {root} (expected cifar-10-batches-bin/ or cifar-10-batches-py/)")


def _read_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if raw.size == 0 or raw.size % _RECORD:
        raise UserError(
            f"wrong size for a CIFAR-10 binary batch ({raw.size} bytes, not a multiple of {_RECORD}): {path}"
        )
    rec = raw.reshape(-1, _RECORD)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def _get(d: dict, key: str) -> Any:
    if key in d:
        return d[key]
    return d.get(key.encode())


def _read_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise UserError(f"not a CIFAR-10 batch (expected a dict): {path}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise UserError(f"not a CIFAR-10 batch (missing 'data' or 'labels'): {path}")
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise UserError(f"wrong shape for a CIFAR-10 batch {tuple(data.shape)} / {labels.shape}: {path}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(batches: Path, binary: bool) -> list[str]:
    """Names from batches.meta(.txt) when present and well formed, else the standard ten."""
    try:
        if binary:
            meta = batches / "batches.meta.txt"
            if meta.is_file():
                names = [s.strip() for s in meta.read_text(encoding="utf-8").splitlines() if s.strip()]
                if len(names) == 10:
                    return names
        else:
            meta = batches / "batches.meta"
            if meta.is_file():
                obj = safe_unpickle(meta)
                found = _get(obj, "label_names") if isinstance(obj, dict) else None
                if isinstance(found, list) and len(found) == 10:
                    return [n.decode() if isinstance(n, bytes) else str(n) for n in found]
    except (OSError, UnicodeDecodeError):
        pass
    return list(CIFAR10_CLASS_NAMES)


def load_cifar10(root: str | Path, split: Split = "train") -> InMemoryDataset:
    """CIFAR-10 ``split`` from local files as uint8 [N, 3, 32, 32] with labels 0-9."""
    if split not in choices(Split):
        raise UserError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    batches, binary = _find_batches_dir(Path(root))
    xs, ys = [], []
    for name in _TRAIN if split == "train" else _TEST:
        path = batches / (name + ".bin" if binary else name)
        if not path.is_file():
            raise UserError(f"missing CIFAR-10 file: {path}")
        x, y = _read_binary(path) if binary else _read_pickle(path)
        if y.size and (y.min() < 0 or y.max() > 9):
            raise UserError(f"CIFAR-10 labels outside 0-9 in {path}")
        xs.append(x)
        ys.append(y)
    data = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)))
    labels = torch.from_numpy(np.concatenate(ys))
    return InMemoryDataset(data, labels, 10, _class_names(batches, binary), "image")
