"""Image files: float/uint8 conversion, grids, PNG and NPZ writing, 2-D point plots.

On disk images are uint8 NHWC (C = 1 or 3). ``to_uint8`` maps floats in [-1, 1] back with
round((x + 1) * 127.5) (round half to even) clamped to 0..255, the inverse of ``uint8_to_float``'s
x / 127.5 - 1. Files are written atomically: a temporary file in the same directory is
renamed over the destination, so an interrupted write never leaves a broken file.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .errors import UserError
from .files import atomic_write


def uint8_to_float(x: Tensor) -> Tensor:
    """Map uint8 pixel values to float32 in [-1, 1] as x / 127.5 - 1 (0 -> -1, 255 -> +1, levels 2/255 apart)."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(x: Tensor, levels: int | None = None) -> np.ndarray:
    """Float NCHW in [-1, 1] -> uint8 NHWC numpy: round((x + 1) * 127.5) clamped to 0..255 (NaN as grey).

    With ``levels`` (2..256), values are first snapped to that many evenly spaced grey levels
    v in 0..levels-1 and stored as round(v * 255 / (levels - 1)), half up: the quantisation of
    data such as the 17-level digits, so that samples live on the data's own grid.
    """
    if x.dim() != 4:
        raise ValueError(f"expected NCHW images, got shape {tuple(x.shape)}")
    if levels is not None and not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    y = (torch.nan_to_num(x.detach().to(torch.float32), nan=0.0) + 1.0) * 127.5  # NaN -> grey
    if levels is not None and levels != 256:
        v = (y * ((levels - 1) / 255.0)).round().clamp(0, levels - 1).to(torch.int64)
        y = (v * 255 * 2 + (levels - 1)) // (2 * (levels - 1))  # round half up, exact in integers
    y = y.round().clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def _check_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        raise ValueError(f"expected uint8 NHWC images with 1, 3 or 4 channels, got {images.dtype} {images.shape}")
    return images


def make_grid(
    images: np.ndarray,
    nrow: int | None = None,
    padding: int = 1,
    pad_value: int = 0,
    scale: int = 1,
) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, ``nrow`` per row (default ceil(sqrt(N))).

    Each image is upscaled by ``scale`` (nearest neighbour); image i sits at row i // nrow,
    column i % nrow, with ``padding`` pixels of ``pad_value`` around and between images.
    Greyscale stays 1 channel.
    """
    images = _check_nhwc(images)
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    if scale < 1 or padding < 0:
        raise ValueError("scale must be >= 1 and padding >= 0")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncol = nrow if nrow is not None else math.ceil(math.sqrt(n))
    ncol = max(1, min(ncol, n))
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for i in range(n):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def make_trajectory_grid(rows: list[np.ndarray], padding: int = 1, pad_value: int = 0, scale: int = 1) -> np.ndarray:
    """Stack image sets (each uint8 NHWC, same H, W, C) as the rows of one grid; short rows are blank-padded."""
    if not rows:
        raise ValueError("make_trajectory_grid needs at least one row")
    rows = [_check_nhwc(r) for r in rows]
    ncol = max(len(r) for r in rows)
    shape = rows[0].shape[1:]
    filled = []
    for r in rows:
        if r.shape[1:] != shape:
            raise ValueError(f"all rows need images of one shape, got {r.shape[1:]} and {shape}")
        blank = np.full((ncol - len(r), *shape), pad_value, dtype=np.uint8)
        filled.append(np.concatenate([r, blank]))
    return make_grid(np.concatenate(filled), nrow=ncol, padding=padding, pad_value=pad_value, scale=scale)


GRID_GAP = 2  # pixels between the images of a sample grid (at the enlarged size)
GRID_GAP_VALUE = 255  # white: visible between dark images such as digits
GRID_MIN_WIDTH = 256  # tiny images are enlarged until a grid is at least this wide
GRID_MIN_TILE = 64  # ... and each image about this wide (enlarged GRID_MIN_TILE // width times)


def tile_scale(width: int) -> int:
    """The integer factor that draws images of ``width`` pixels at least about GRID_MIN_TILE pixels wide."""
    return max(1, GRID_MIN_TILE // width)


def grid_scale(width: int, ncol: int) -> int:
    """The integer factor sample grids enlarge images of ``width`` pixels by, ``ncol`` to a row: the larger
    of ``tile_scale(width)`` and the smallest that makes the row at least GRID_MIN_WIDTH pixels wide
    (1 for images that are large already)."""
    return max(tile_scale(width), math.ceil(GRID_MIN_WIDTH / (ncol * width)))


def class_rows(labels: np.ndarray | None) -> list[np.ndarray] | None:
    """Indices of the samples, one array per class in order of first appearance, when the labels cycle
    through two or more classes (``--labels all``: 0, 1, .., K-1, 0, 1, ..) and some class occurs twice;
    else None (the grid is square)."""
    if labels is None or len(labels) == 0:
        return None
    labels = np.asarray(labels)
    k = len(np.unique(labels))
    cycled = len(np.unique(labels[:k])) == k and np.array_equal(labels, labels[np.arange(len(labels)) % k])
    if not cycled or k < 2 or len(labels) <= k:
        return None
    return [np.arange(c, len(labels), k) for c in range(k)]


def sample_grid(images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """The grid that ``ddpmkit sample`` and the training grids draw of uint8 NHWC samples: square (ceil(sqrt(N))
    a row), or one class per row when the labels cycle through the classes; a GRID_GAP-pixel white gap
    between images; tiny images enlarged by an integer factor (nearest neighbour, ``grid_scale``)."""
    images = _check_nhwc(images)
    rows = class_rows(labels)
    if rows is None:
        ncol = max(1, min(math.ceil(math.sqrt(len(images))), len(images)))
        rows = [np.arange(i, min(i + ncol, len(images))) for i in range(0, len(images), ncol)]
    ncol = max(len(r) for r in rows)
    return make_trajectory_grid(
        [images[r] for r in rows], padding=GRID_GAP, pad_value=GRID_GAP_VALUE, scale=grid_scale(images.shape[2], ncol)
    )


def save_png(path: str | Path, array_hwc: np.ndarray) -> Path:
    """Write a uint8 HWC (C = 1, 3 or 4) or HW array as a PNG file, atomically."""
    arr = np.asarray(array_hwc)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected uint8 HW or HWC image, got {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(np.ascontiguousarray(arr))
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_npz(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write ``images`` (uint8 [N, H, W, C], C = 1 or 3) and optional ``labels`` (int64 [N]) atomically."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, H, W, C] with C = 1 or 3, got {images.dtype} {images.shape}")
    arrays: dict[str, Any] = {"images": images}  # Any: savez's own keywords are not array names
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape [{images.shape[0]}], got {labels.dtype} {labels.shape}")
        arrays["labels"] = labels.astype(np.int64)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def save_points_npz(path: str | Path, points: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write 2-D samples as ``points`` (float32 [N, D]) and optional ``labels`` (int64 [N]) atomically."""
    arrays: dict[str, Any] = {"points": np.asarray(points, dtype=np.float32)}  # Any: as in save_npz
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def read_npz(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, never unpickling anything; ``what`` names the file in messages."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except (ValueError, zipfile.BadZipFile, EOFError):  # numpy's own words would suggest unpickling: never
        raise UserError(f"cannot read {what} {path}: not a NumPy .npz of plain arrays, or a damaged one") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_sample_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``images`` and optional ``labels`` arrays of a sample ``.npz`` as stored (``load_npz`` checks them)."""
    arrays = read_npz(path, "sample file")
    if "images" not in arrays:
        raise UserError(f"no 'images' array in {path}")
    return arrays["images"], arrays.get("labels")


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a sample file written by ``save_npz``: (images uint8 NHWC, labels int64 or None)."""
    images, labels = read_sample_arrays(path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise UserError(f"'images' in {path} is not uint8 [N, H, W, C] with C = 1 or 3: {images.dtype} {images.shape}")
    if labels is not None and (labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"'labels' in {path} is not integers of shape [{images.shape[0]}]")
    return images, (labels.astype(np.int64) if labels is not None else None)


def save_points_png(path: str | Path, points: np.ndarray | Tensor, size: int = 512, lim: float | None = None) -> Path:
    """Scatter plot of 2-D points over the square [-lim, lim]^2 (default: fits the data) drawn with PIL."""
    pts = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    pts = pts.astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"expected points of shape [N, 2], got {pts.shape}")
    pts = pts[np.isfinite(pts).all(axis=1)]
    if lim is None:
        lim = float(np.abs(pts).max()) * 1.05 if len(pts) else 1.0
        lim = lim if lim > 0 else 1.0
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    mid = (size - 1) / 2
    draw.line([(0, mid), (size - 1, mid)], fill=(215, 215, 215))
    draw.line([(mid, 0), (mid, size - 1)], fill=(215, 215, 215))
    draw.rectangle([0, 0, size - 1, size - 1], outline=(160, 160, 160))
    # pixel coordinates: x to the right, y upwards
    px = np.rint((pts[:, 0] + lim) / (2 * lim) * (size - 1)).astype(np.int64)
    py = np.rint((lim - pts[:, 1]) / (2 * lim) * (size - 1)).astype(np.int64)
    counts = np.zeros((size, size), dtype=np.float64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            x, y = px + dx, py + dy
            ok = (x >= 0) & (x < size) & (y >= 0) & (y < size)
            np.add.at(counts, (y[ok], x[ok]), 1.0)
    alpha = 1.0 - np.exp(-0.5 * counts)  # darker where points pile up
    base = np.asarray(img, dtype=np.float64)
    ink = np.array([31, 70, 160], dtype=np.float64)
    out = base * (1 - alpha[:, :, None]) + ink * alpha[:, :, None]
    return save_png(path, np.rint(out).astype(np.uint8))
