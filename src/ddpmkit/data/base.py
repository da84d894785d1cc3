"""The in-memory dataset every loader returns, and shared uint8 image helpers.

Images are stored as uint8 [N, C, H, W] and become floats in [-1, 1] as ``x / 127.5 - 1``
(``ddpmkit.images.uint8_to_float``: 0 -> -1, 255 -> +1, and the 256 levels are evenly spaced 2/255
apart, which is what the discretized decoder of bits/dim assumes). Points (2-D toy data) are
float32 [N, D] and are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import UserError
from ..fields import ImageSize, image_hw
from ..options import Channels, DatasetKind, choices

# ITU-R 601-2 luma weights, the same as PIL's convert("L").
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class InMemoryDataset:
    """A whole dataset held as tensors: uint8 NCHW images or float32 [N, D] points."""

    data: Tensor  # uint8 [N, C, H, W] for images, float32 [N, D] for points
    labels: Tensor | None = None  # int64 [N], or None for an unlabelled dataset
    num_classes: int | None = None  # number of classes when labelled
    class_names: list[str] | None = None  # one name per class when known
    kind: DatasetKind = "image"  # "image" or "points"

    def __post_init__(self) -> None:
        if self.kind == "image":
            if self.data.dtype != torch.uint8 or self.data.dim() != 4:
                got = f"{self.data.dtype} {tuple(self.data.shape)}"
                raise ValueError(f"image data must be uint8 [N, C, H, W], got {got}")
        elif self.kind == "points":
            if not self.data.is_floating_point() or self.data.dim() != 2:
                raise ValueError(f"point data must be float [N, D], got {self.data.dtype} {tuple(self.data.shape)}")
        else:
            raise ValueError(f"kind must be 'image' or 'points', got {self.kind!r}")
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.data),):
                raise ValueError("labels must be int64 [N] matching the data")
            if self.num_classes is None:
                raise ValueError("a labelled dataset needs num_classes")
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ValueError("class_names must have num_classes entries")

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) for images, (D,) for points."""
        return tuple(self.data.shape[1:])


def cover_size(w: int, h: int, height: int, width: int) -> tuple[int, int]:
    """(w', h'): a w x h image scaled, aspect kept, to the smallest size covering height x width."""
    scale = max(height / h, width / w)  # a square target: the shorter side becomes its size
    return max(width, round(w * scale)), max(height, round(h * scale))


def resize_center_crop(img: Image.Image, size: ImageSize) -> Image.Image:
    """Scale (bicubic, antialiased, aspect kept) to cover ``size`` (S or (H, W)), then centre-crop to H x W.

    For a square S that is: the shorter side becomes S. Where an odd number of pixels is cut,
    the extra one comes off the right (bottom) edge.
    """
    height, width = image_hw(size)
    w, h = img.size
    if (w, h) != (width, height):
        new_w, new_h = cover_size(w, h, height, width)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        img = img.crop((left, top, left + width, top + height))
    return img


def resize_images(data: Tensor, size: ImageSize) -> Tensor:
    """Resize (to cover, aspect kept) and centre-crop uint8 NCHW images to S x S or H x W with PIL."""
    height, width = image_hw(size)
    if min(height, width) < 1:
        raise UserError(f"image_size must be at least 1, got {size}")
    n, c, h, w = data.shape
    if (h, w) == (height, width):
        return data
    arr = data.permute(0, 2, 3, 1).numpy()
    out = np.empty((n, height, width, c), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(arr[i, :, :, 0] if c == 1 else arr[i])
        res = np.asarray(resize_center_crop(img, size))
        out[i] = res[:, :, None] if c == 1 else res
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def convert_channels(data: Tensor, channels: int) -> Tensor:
    """Convert uint8 NCHW images to 1 channel (ITU-R 601 luma) or 3 (grey repeated)."""
    c = data.shape[1]
    if channels not in choices(Channels):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    if c == channels:
        return data
    if channels == 3:
        return data.repeat(1, 3, 1, 1)
    w = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    grey = (data.to(torch.float32) * w).sum(dim=1, keepdim=True)
    return grey.round().clamp(0, 255).to(torch.uint8)


def with_data(ds: InMemoryDataset, data: Tensor) -> InMemoryDataset:
    """A copy of ``ds`` holding new data (same labels and class metadata)."""
    return replace(ds, data=data)
