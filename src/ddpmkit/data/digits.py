"""scikit-learn's bundled 8x8 handwritten digits, with a fixed train/test split.

The 1797 images have 17 grey levels v in {0, ..., 16}; each is stored as the uint8 value
round(v * 255 / 16) (rounding half up), so the levels sit on the 0..255 scale that bits/dim
counts in (bits/dim of digits is therefore measured against 256 bins, as for any image).
Labels are the digits 0-9. The split is sklearn's ``train_test_split`` of the indices
0..1796 with ``test_size=360, random_state=0, stratify=labels`` (1437 train, 360 test),
each split's indices sorted ascending. It never changes between versions of ddpmkit.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..options import DigitsSubset, choices
from .base import InMemoryDataset

DIGITS_SIZE = 1797
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_CLASS_NAMES = [str(d) for d in range(10)]


def digits_split_indices(split: DigitsSubset = "train") -> np.ndarray:
    """Sorted example indices of the fixed digits split (``"all"`` is 0..1796)."""
    # lazy: scikit-learn takes seconds to import, and only the digits need it
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in choices(DigitsSubset):
        raise UserError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    idx = np.arange(DIGITS_SIZE)
    if split == "all":
        return idx
    labels = sk_load_digits().target
    train, test = train_test_split(idx, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=labels)
    return np.sort(train if split == "train" else test)


def load_digits(split: DigitsSubset = "train") -> InMemoryDataset:
    """The bundled 8x8 digits as uint8 [N, 1, 8, 8] with labels 0-9 (see the module doc)."""
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: scikit-learn is slow to import

    idx = digits_split_indices(split)
    bunch = sk_load_digits()
    levels = bunch.images[idx].astype(np.int64)  # [N, 8, 8], values 0..16
    pixels = (levels * 255 * 2 + 16) // 32  # round half up of v * 255 / 16, exact in integers
    data = torch.from_numpy(pixels.astype(np.uint8)).unsqueeze(1).contiguous()
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return InMemoryDataset(data, labels, 10, list(DIGITS_CLASS_NAMES), "image")
