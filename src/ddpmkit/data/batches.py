"""Training batches that are a pure function of (seed, step), shardable across processes.

Global step k takes the global batch of ``batch_size`` examples: with b = N // batch_size
full batches per epoch (the last partial batch is dropped), epoch e = k // b uses the
permutation ``torch.randperm(N)`` of a generator seeded from (seed, e), and step k takes its
items (k % b) * batch_size ... + batch_size. When N < batch_size the epochs' permutations are
concatenated and read on without dropping anything (wrap-around). Rank r of w processes keeps
items r::w of the global batch, so the ranks together see exactly the one-process batch. A
random horizontal flip (``hflip``) is decided per item of the global batch by a generator
seeded from (seed, k). Resuming at ``start_step=k`` gives the same batches as running on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import UserError
from ..images import uint8_to_float
from ..validate import positive_int
from .base import InMemoryDataset

_MASK64 = (1 << 64) - 1
_PERM_STREAM = 1
_FLIP_STREAM = 2


def _mix_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers with the splitmix64 finaliser (stable across versions)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> Tensor:
    """The order of the examples in ``epoch``: randperm from a generator seeded from (seed, epoch)."""
    g = torch.Generator().manual_seed(_mix_seed(seed, _PERM_STREAM, epoch))
    return torch.randperm(num_examples, generator=g)


def batch_indices(num_examples: int, batch_size: int, *, seed: int, step: int) -> Tensor:
    """Example indices (int64 [batch_size]) of the global batch at ``step``."""
    if num_examples >= batch_size:
        per_epoch = num_examples // batch_size
        epoch, offset = divmod(step, per_epoch)
        start = offset * batch_size
        return epoch_permutation(num_examples, seed, epoch)[start : start + batch_size]
    start = step * batch_size  # wrap-around: read on through consecutive epochs
    first, last = start // num_examples, (start + batch_size - 1) // num_examples
    stream = torch.cat([epoch_permutation(num_examples, seed, e) for e in range(first, last + 1)])
    begin = start - first * num_examples
    return stream[begin : begin + batch_size]


def flip_mask(batch_size: int, *, seed: int, step: int) -> Tensor:
    """Which items (bool [batch_size]) of the global batch at ``step`` are flipped horizontally."""
    g = torch.Generator().manual_seed(_mix_seed(seed, _FLIP_STREAM, step))
    return torch.rand(batch_size, generator=g) < 0.5


def _check(dataset: InMemoryDataset, batch_size: int, start_step: int, rank: int, world_size: int, hflip: bool) -> None:
    if len(dataset) < 1:
        raise UserError("the dataset is empty")
    positive_int("batch_size", batch_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not valid for world_size {world_size}")
    if batch_size % world_size:
        raise UserError(f"batch_size {batch_size} is not divisible by the number of processes {world_size}")
    if start_step < 0:
        raise UserError(f"start_step must be non-negative, got {start_step}")
    if hflip and dataset.kind != "image":
        raise UserError("hflip applies to image datasets only")


def batches(
    dataset: InMemoryDataset,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    hflip: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Endless (x, y) batches from ``start_step`` on; x float32 ([-1, 1] for images), y int64 or None."""
    _check(dataset, batch_size, start_step, rank, world_size, hflip)
    n = len(dataset)
    dev = torch.device(device) if device is not None else None
    pin = dev is not None and dev.type == "cuda" and torch.cuda.is_available()
    cached_epoch, cached_perm = -1, torch.empty(0, dtype=torch.int64)
    per_epoch = n // batch_size
    step = start_step
    while True:
        if per_epoch >= 1:
            epoch, offset = divmod(step, per_epoch)
            if epoch != cached_epoch:
                cached_epoch, cached_perm = epoch, epoch_permutation(n, seed, epoch)
            idx = cached_perm[offset * batch_size : (offset + 1) * batch_size]
        else:
            idx = batch_indices(n, batch_size, seed=seed, step=step)
        idx = idx[rank::world_size]
        x = dataset.data.index_select(0, idx)  # much faster than advanced indexing
        if hflip:
            flips = flip_mask(batch_size, seed=seed, step=step)[rank::world_size]
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        y = dataset.labels.index_select(0, idx) if dataset.labels is not None else None
        if dev is not None:
            x = (x.pin_memory() if pin else x).to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True) if y is not None else None
        x = uint8_to_float(x) if dataset.kind == "image" else x.to(torch.float32)
        yield x.contiguous(), y
        step += 1
