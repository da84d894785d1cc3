"""Files a run's samples are written to: sample arrays, PNG grids and trajectory strips."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UserError
from ..files import claim_new, release
from ..images import (
    make_trajectory_grid,
    sample_grid,
    save_npz,
    save_png,
    save_points_npz,
    save_points_png,
    tile_scale,
    to_uint8,
)

if TYPE_CHECKING:  # only an annotation: writing files needs no run
    from .run import Samples

__all__ = ["check_output", "claimed_folder", "write_samples", "write_trajectory"]

CLAIM = ".ddpmkit-writing"  # the marker that claims an existing empty output folder


def check_output(
    path: str | Path,
    force: bool,
    suffixes: tuple[str, ...] = (),
    flag: str = "--out",
    *,
    asks: str | None = None,
    folder: bool = False,
) -> Path:
    """The output path, a file of one of ``suffixes`` (``asks`` names them in the message, when given) or a
    ``folder``, refused before any work when its type, its directory or what is already there is wrong. A file
    not ``force``d is claimed new: should another command write it meanwhile, this one's write is refused."""
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {str(path)!r} is a file, not a directory")
        if path.exists() and any(path.iterdir()) and not force:
            raise UserError(f"output {str(path)!r} already exists (pass --force to overwrite its files)")
    else:
        if path.suffix.lower() not in suffixes:
            raise UserError(f"{flag} {str(path)!r}: give {asks or 'a ' + ' or a '.join(suffixes)} file")
        if path.is_dir():
            raise UserError(f"{flag} {str(path)!r} is a directory")
        if path.exists() and not force:
            raise UserError(f"output {str(path)!r} already exists (pass --force to overwrite)")
    if not path.parent.is_dir():
        raise UserError(f"the directory of output {str(path)!r} does not exist")
    if not os.access(path if folder and path.is_dir() else path.parent, os.W_OK):
        raise UserError(f"the directory of output {str(path)!r} is not writable")
    if not folder:
        (release if force else claim_new)(path)
    return path


@contextlib.contextmanager
def claimed_folder(path: Path, force: bool) -> Iterator[Path]:
    """Hold the output folder ``path`` (checked by ``check_output(folder=True)``) while writing it: an exclusive
    mkdir of a marker in it while it is empty, so of two commands one fails with "exists"; a failure removes what
    this command wrote (the folder itself when it made it). ``force``d, an existing folder is written into
    unclaimed and kept on a failure."""
    try:
        os.mkdir(path)
        made = True
    except FileExistsError:
        made = False
    except OSError as e:
        raise UserError(f"cannot create output {str(path)!r}: {e.strerror or e}") from None
    marker = None if force and not made else _claim_empty(path)  # made, it is claimed too: it is empty meanwhile
    try:
        yield path
    except BaseException:
        if made:
            shutil.rmtree(path, ignore_errors=True)
        elif marker is not None:  # it was empty: everything in it is this command's
            for f in path.iterdir():
                if f.is_dir() and not f.is_symlink():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)
        raise
    if marker is not None:
        marker.rmdir()


def _claim_empty(path: Path) -> Path:
    """The marker claiming the existing folder ``path``, made only while it is empty; UserError otherwise."""
    taken = UserError(f"output {str(path)!r} already exists (another command is writing it)")
    if not path.is_dir() or any(path.iterdir()):
        raise taken
    marker = path / CLAIM
    try:
        os.mkdir(marker)
    except FileExistsError:
        raise taken from None
    except OSError as e:
        raise UserError(f"cannot write output {str(path)!r}: {e.strerror or e}") from None
    if [f.name for f in path.iterdir()] != [CLAIM]:  # another command wrote between the look and the claim
        marker.rmdir()
        raise taken
    return marker


def write_samples(path: str | Path, samples: Samples, levels: int | None = None) -> Path:
    """Samples as a ``.npz`` (images uint8 NHWC or points float32, and labels) or a ``.png`` grid / scatter plot."""
    path = Path(path)
    labels = None if samples.labels is None else samples.labels.numpy().astype(np.int64)
    x = samples.x
    if x.dim() == 4:
        images = to_uint8(x, levels)
        if path.suffix.lower() == ".npz":
            return save_npz(path, images, labels)
        return save_png(path, sample_grid(images, labels))  # one class per row for --labels all
    if path.suffix.lower() == ".npz":
        return save_points_npz(path, x.numpy(), labels)
    return save_points_png(path, x.numpy())


def write_trajectory(path: str | Path, samples: Samples) -> Path:
    """Two rows per kept sample (at most 4): x_t along the way, then the predicted x0 at the same steps."""
    rows = samples.trajectory
    if not rows:
        raise UserError("these samples were drawn without trajectory=True")
    strips = [
        to_uint8(torch.stack([r[part][k].clamp(-1, 1) for r in rows]))
        for k in range(min(rows[0][1].shape[0], 4))
        for part in (1, 2)
    ]
    grid = make_trajectory_grid(strips, padding=1, scale=tile_scale(samples.x.shape[-1]))
    return save_png(path, grid)
