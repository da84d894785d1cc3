"""Load a directory tree of PNG/JPEG/WebP/BMP/TIFF images into memory, resized and centre-cropped.

Files are found recursively (the extensions of IMAGE_EXTENSIONS, in any case; names and folders
starting with "." are skipped) and decoded in sorted order of their path relative to the
root, so the result is deterministic. Each image is turned upright from its EXIF orientation,
scaled with its aspect ratio kept (bicubic, antialiased) to the smallest size that covers
``image_size`` (S: S x S, the shorter side becomes S; (H, W): H x W) and centre-cropped to it.
Alpha is dropped. 16-bit greyscale is scaled to 8 bits (v * 255 / 65535).
Large JPEGs are decoded at a reduced DCT scale (still at least twice that cover size) for speed,
in parallel threads, then copied into one uint8 array (two copies of the data at the peak).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import UserError
from ..fields import ImageSize, image_hw
from ..options import Channels, choices
from .base import InMemoryDataset, resize_center_crop

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # still images Pillow reads
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
MAX_PIXELS = 64 * 2**20  # larger images are refused before decoding (a 17 KB PNG can hold 144 MP)


def scan_folder(root: Path) -> tuple[list[Path], list[Path], list[str]]:
    """(image files in sorted order, GIF files, folders that could not be read); hidden entries skipped."""
    images, gifs, unreadable = [], [], []
    for folder, dirs, names in os.walk(root, onerror=lambda e: unreadable.append(e.filename), followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in (n for n in names if not n.startswith(".")):
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                images.append(path)
            elif path.suffix.lower() == ".gif":
                gifs.append(path)
    return sorted(images, key=lambda p: p.relative_to(root).as_posix()), gifs, unreadable


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring 1-bit, 16/32-bit and float greyscale to mode L; leave other modes unchanged."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            arr = arr * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    return img


def _conversion(img: Image.Image) -> str | None:
    """What reading ``img`` as 8-bit L or RGB changes, in a few words, or None."""
    if img.mode == "CMYK":
        return "CMYK to RGB"
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return "16/32-bit to 8 bits (v * 255 / 65535)"
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (img.mode == "P" and "transparency" in img.info):
        return "alpha dropped"
    return None


def _decode(path: Path, image_size: ImageSize, channels: int | None) -> tuple[np.ndarray, bool, str | None]:
    """Decode one file to a uint8 HWC array: (array, is_grey, what was converted or None)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UserError(
                    f"image {path} is {w}x{h} ({w * h / 2**20:.0f} MP), over the "
                    f"{MAX_PIXELS // 2**20} MP ddpmkit decodes: shrink it first"
                )
            converted = _conversion(img)
            if img.format == "JPEG":
                height, width = image_hw(image_size)
                scale = max(2 * height / img.size[1], 2 * width / img.size[0])  # S x S: 2 * S / the shorter side
                img.draft(img.mode, (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))))
            img.load()
            img = ImageOps.exif_transpose(img)
            grey = img.mode in GREY_MODES
            img = _to_8bit(img)
            img = img.convert("L" if (channels or (1 if grey else 3)) == 1 else "RGB")
            img = resize_center_crop(img, image_size)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    return (arr[:, :, None] if arr.ndim == 2 else arr), grey, converted


def _decode_all(
    files: list[Path], image_size: ImageSize, channels: int | None
) -> list[tuple[np.ndarray, bool, str | None]]:
    """``_decode`` of every file, in order, on torch's number of CPU threads (at most 32).

    Pillow releases the GIL while it decodes and resizes, so threads decode in parallel; the
    first unreadable file (in sorted order) raises its UserError as before.
    """
    workers = max(1, min(len(files), torch.get_num_threads(), 32))
    with warnings.catch_warnings():  # Pillow's multi-line bomb warning: MAX_PIXELS refuses such files itself
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if workers == 1:
            return [_decode(f, image_size, channels) for f in files]
        pool = ThreadPoolExecutor(workers, thread_name_prefix="ddpmkit-decode")
        try:
            return list(pool.map(lambda f: _decode(f, image_size, channels), files))
        finally:
            pool.shutdown(cancel_futures=True)  # after an error, decode no more


def load_image_folder(
    root: str | Path,
    image_size: ImageSize,
    channels: Channels | None = None,
    class_labels: bool = False,
) -> InMemoryDataset:
    """Every image under ``root`` as uint8 [N, C, H, W] (``image_size`` S or (H, W)); labels from
    first-level sub-folders."""
    root = Path(root)
    if not _valid_size(image_size):
        raise UserError(f"image_size must be a positive integer or a pair (H, W) of them, got {image_size!r}")
    height, width = image_hw(image_size)
    if channels not in (None, *choices(Channels)):
        raise UserError(f"channels must be 1, 3 or unset, got {channels!r}")
    if not root.exists():
        raise UserError(f"image folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    files, gifs, unreadable = scan_folder(root)
    _note_skipped(root, gifs, unreadable)
    if not files:
        raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")

    labels = class_names = None
    if class_labels:
        for f in files:
            if f.parent == root:
                raise UserError(
                    f"class_labels needs every image inside a class sub-folder, but {f} is directly in {root}"
                )
        class_names = sorted({f.relative_to(root).parts[0] for f in files})
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in files], dtype=torch.int64)

    decoded: list = _decode_all(files, image_size, channels)
    _note_conversions(Counter(c for _, _, c in decoded if c), len(files), root)
    out_channels = channels or (1 if all(grey for _, grey, _ in decoded) else 3)
    data = np.empty((len(files), out_channels, height, width), dtype=np.uint8)
    for i, (arr, _, _) in enumerate(decoded):
        data[i] = arr.transpose(2, 0, 1)  # a grey image broadcasts to RGB
        decoded[i] = None  # free as we go: at most two copies of the data are ever held
    num_classes = len(class_names) if class_names is not None else None
    return InMemoryDataset(torch.from_numpy(data), labels, num_classes, class_names, "image")


def _valid_size(size) -> bool:
    """Whether ``size`` is a positive int or a pair of them (bools are not sizes)."""
    pair = isinstance(size, (tuple, list)) and len(size) == 2
    parts = list(size) if pair else [size]
    return all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in parts)


def _note_conversions(counts: Counter, total: int, root: Path) -> None:
    """One line on stderr saying how many images were converted, and how."""
    if counts:
        parts = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        print(f"note: converted {sum(counts.values())} of {total} images under {root}: {parts}", file=sys.stderr)


def _note_skipped(root: Path, gifs: list[Path], unreadable: list[str]) -> None:
    """One line on stderr for what is left out: GIFs (ddpmkit reads still images) and unreadable folders."""
    if gifs:
        print(
            f"note: skipped {len(gifs)} GIF file(s) under {root} (still images only: convert them to PNG)",
            file=sys.stderr,
        )
    if unreadable:
        print(
            f"note: skipped {len(unreadable)} folder(s) under {root} that could not be read, first {unreadable[0]}",
            file=sys.stderr,
        )
