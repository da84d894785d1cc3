"""Dropout with a faster random mask on the CPU.

PyTorch's CPU dropout draws one 32-bit Mersenne-Twister number per element through
``bernoulli_``, one element at a time, which is a noticeable part of a small network's CPU
training step (measured in docs/performance.md; benchmarks/dropout_speed.py). Here one
64-bit draw of the same generator gives the random bits of four elements: an element is kept
when its 16-bit uniform integer is at least k - 32768, k = round(p * 65536), so it is dropped
with probability k / 65536 (0.1 becomes 0.100006) and kept values are scaled by
65536 / (65536 - k), which keeps the expectation of every element exactly equal to its input.

On GPUs (where PyTorch's dropout is a fused Philox kernel) and under ``torch.compile``
(which generates its own) the module is plain ``nn.Dropout``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Dropout", "cpu_dropout", "DROP_LEVELS"]

DROP_LEVELS = 1 << 16  # drop probabilities are multiples of 1 / DROP_LEVELS
_INT16_MIN = -(1 << 15)


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x`` covers its memory without gaps in a layout the mask can copy (NCHW or NHWC)."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each element of a dense CPU tensor with probability round(p * 65536) / 65536, scale the rest.

    The random bits come from torch's default generator (so ``torch.manual_seed`` and saved RNG
    states govern them), four elements per 64-bit draw, laid out in ``x``'s own memory order;
    the result has ``x``'s dtype and memory format. Differentiable: the gradient is the same
    mask and scale.
    """
    drop = round(p * DROP_LEVELS)
    if not 0 < drop < DROP_LEVELS:
        raise ValueError(f"cpu_dropout needs 0 < p < 1 with a drop count in (0, 65536), got p={p}")
    if not _dense(x):
        raise ValueError("cpu_dropout needs a contiguous or channels_last tensor")
    n = x.numel()
    # the full int64 range: every one of the 64 bits is uniform (random_() would leave the top one 0)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64)
    bits = words.view(torch.int16)[:n].as_strided(x.shape, x.stride())
    keep = (bits >= _INT16_MIN + drop).view(torch.uint8).to(x.dtype)  # bool -> 0/1: uint8 converts fast
    return x.mul(keep).mul_(DROP_LEVELS / (DROP_LEVELS - drop))


class Dropout(nn.Dropout):
    """nn.Dropout with a faster CPU training pass (see the module's docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout of ``x`` in training mode, ``x`` itself in evaluation mode."""
        if (self.training and not self.inplace and x.device.type == "cpu" and _dense(x)
                and 0 < round(self.p * DROP_LEVELS) < DROP_LEVELS and not torch.compiler.is_compiling()):
            return cpu_dropout(x, self.p)
        return super().forward(x)
