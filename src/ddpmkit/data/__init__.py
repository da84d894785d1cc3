"""Datasets held in memory as tensors, and deterministic training batches."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..fields import ImageSize
from ..images import uint8_to_float
from ..options import Channels, DataKind, Split, choices
from .base import InMemoryDataset, convert_channels, resize_images, with_data
from .batches import batch_indices, batches, epoch_permutation, flip_mask
from .cifar10 import CIFAR10_CLASS_NAMES, load_cifar10
from .digits import DIGITS_TEST_SIZE, digits_split_indices, load_digits
from .folder import load_image_folder
from .mnist import load_mnist, load_mnist_any
from .toy2d import TOY2D_DEFAULT_SAMPLES, TOY2D_NAMES, load_toy2d, sample_toy2d

DATASET_NAMES = choices(DataKind)
# toy2d "test" points are drawn with seed + TOY2D_TEST_SEED_OFFSET, independent of "train".
TOY2D_TEST_SEED_OFFSET = 1_000_003

__all__ = [
    "CIFAR10_CLASS_NAMES",
    "DATASET_NAMES",
    "DIGITS_TEST_SIZE",
    "InMemoryDataset",
    "TOY2D_DEFAULT_SAMPLES",
    "TOY2D_NAMES",
    "TOY2D_TEST_SEED_OFFSET",
    "batch_indices",
    "batches",
    "convert_channels",
    "digits_split_indices",
    "epoch_permutation",
    "flip_mask",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "load_toy2d",
    "resize_images",
    "sample_toy2d",
    "uint8_to_float",
]


def _refuse(name: str, **unused: object) -> None:
    """Raise UserError for an option that was set but does not apply to dataset ``name``."""
    for key, value in unused.items():
        if value is not None and value is not False:
            raise UserError(f"option {key} does not apply to the {name} dataset")


def _need_root(name: str, root: str | Path | None) -> Path:
    if root is None or str(root) == "":
        raise UserError(f"the {name} dataset needs a root directory (data root)")
    return Path(root)


def _adapt(ds: InMemoryDataset, image_size: ImageSize | None, channels: int | None) -> InMemoryDataset:
    """Resize to S x S or (H, W) (None: native size) and convert channels (None: native) of a built-in dataset."""
    data = ds.data
    if channels is not None:
        data = convert_channels(data, channels)
    if image_size is not None:
        data = resize_images(data, image_size)
    return ds if data is ds.data else with_data(ds, data)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    image_size: ImageSize | None = None,
    split: str = "train",
    toy2d: str | None = None,
    num_samples: int | None = None,
    class_labels: bool = False,
    channels: int | None = None,
    seed: int = 0,
) -> InMemoryDataset:
    """Load dataset ``name`` ("digits", "toy2d", "folder", "cifar10", "mnist") into memory.

    ``image_size``: S (S x S) or (H, W), each image scaled to cover it (aspect kept) and centre-cropped;
    None keeps the native size of digits/cifar10/mnist (required for folder).
    ``class_labels`` reads folder labels from sub-folders; digits, cifar10 and mnist always
    carry their labels whatever it says.
    ``toy2d``/``num_samples``/``seed`` apply to toy2d only; its "test" split uses another seed.
    Options that do not apply to the chosen dataset raise UserError when set.
    """
    if channels not in (None, *choices(Channels)):
        raise UserError(f"channels must be 1 or 3, got {channels!r}")
    if name == "digits":
        _refuse(name, root=root, toy2d=toy2d, num_samples=num_samples)
        return _adapt(load_digits(split), image_size, channels)  # type: ignore[arg-type]
    if name == "toy2d":
        _refuse(name, root=root, image_size=image_size, channels=channels, class_labels=class_labels)
        if toy2d is None:
            raise UserError(f"the toy2d dataset needs a distribution name: one of {', '.join(TOY2D_NAMES)}")
        if split not in choices(Split):
            raise UserError(f"toy2d split must be 'train' or 'test', got {split!r}")
        n = TOY2D_DEFAULT_SAMPLES if num_samples is None else num_samples
        return load_toy2d(toy2d, n, seed if split == "train" else seed + TOY2D_TEST_SEED_OFFSET)
    if name == "folder":
        _refuse(name, toy2d=toy2d, num_samples=num_samples)
        path = _need_root(name, root)
        if image_size is None:
            raise UserError("the folder dataset needs image_size")
        if split != "train":
            raise UserError(f"the folder dataset has no {split!r} split; point root at a separate folder instead")
        return load_image_folder(path, image_size, channels, class_labels)  # type: ignore[arg-type]
    if name == "cifar10":
        _refuse(name, toy2d=toy2d, num_samples=num_samples)
        return _adapt(load_cifar10(_need_root(name, root), split), image_size, channels)  # type: ignore[arg-type]
    if name == "mnist":
        _refuse(name, toy2d=toy2d, num_samples=num_samples)
        return _adapt(load_mnist_any(root, split), image_size, channels)  # type: ignore[arg-type]
    raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
