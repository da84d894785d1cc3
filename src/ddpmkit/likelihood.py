"""Gaussian KL divergences and the discretised Gaussian decoder of the variational bound.

These are the pieces of the DDPM bound (Ho et al. 2020, eq. 5 and sec. 3.3) measured in nats;
divide by log(2) and by the number of dimensions for bits/dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "mean_flat"]


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first (the batch)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, num_bins: int = 256) -> Tensor:
    """log P(x) of data on ``num_bins`` evenly spaced levels over [-1, 1] under N(mean, e^(2 log_scale)).

    Each level owns the interval half a bin either side; the two end levels own the tails
    (Ho et al. 2020, eq. 13). Computed in float64 with the normal CDF taken in whichever
    tail keeps it accurate. Returns elementwise log-probabilities in nats.
    """
    dtype = x.dtype
    x, mean, log_scale = (v.to(torch.float64) for v in (x, mean, log_scale))
    half_bin = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-log_scale)
    lo = (x - half_bin - mean) * inv_std  # standardised lower edge
    hi = (x + half_bin - mean) * inv_std  # standardised upper edge
    # P(lo < Z < hi), from the upper tail when the bin lies above the mean (no cancellation).
    upper = lo > 0
    mass = torch.where(
        upper,
        torch.special.ndtr(-lo) - torch.special.ndtr(-hi),
        torch.special.ndtr(hi) - torch.special.ndtr(lo),
    )
    log_mid = torch.log(mass.clamp(min=1e-300))
    log_first = torch.special.log_ndtr(hi)  # x = -1 owns (-inf, -1 + half_bin]
    log_last = torch.special.log_ndtr(-lo)  # x = +1 owns [1 - half_bin, inf)
    edge = 1.0 - 1e-3 * half_bin
    out = torch.where(x < -edge, log_first, torch.where(x > edge, log_last, log_mid))
    return out.to(dtype)


LOG2 = math.log(2.0)
