"""Exact samplers for four 2-D toy distributions, each scaled to roughly unit standard deviation.

Definitions (eps ~ N(0, I) independent of everything else):

- ``moons``: with probability 1/2 the upper arc m = (cos a, sin a), else the lower arc
  m = (1 - cos a, 1/2 - sin a), a ~ U(0, pi); x = 1.5 * (m - (0.5, 0.25)) + 0.05 * eps.
  (Per-axis std about 1.3 and 0.75.)
- ``swissroll``: a = 1.5 pi (1 + 2u), u ~ U(0, 1); x = a * (cos a, sin a) / 7 + 0.05 * eps.
  (Per-axis std about 0.95 and 1.0.)
- ``8gaussians``: equal mixture over k = 0..7 of N(sqrt(2) * (cos(k pi/4), sin(k pi/4)), 0.1^2 I).
  (Per-axis std sqrt(1 + 0.01).)
- ``checkerboard``: uniform on the 8 dark squares of a 4 x 4 board of unit squares covering
  [-2, 2]^2, the square [i-2, i-1) x [j-2, j-1) (i, j in 0..3) being dark when i + j is even.
  (Each marginal is U(-2, 2), std 2/sqrt(3).)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError
from ..options import Toy2DName, choices
from ..validate import positive_int
from .base import InMemoryDataset

TOY2D_NAMES = choices(Toy2DName)
TOY2D_DEFAULT_SAMPLES = 20_000

EIGHT_GAUSSIANS_RADIUS = math.sqrt(2.0)
EIGHT_GAUSSIANS_STD = 0.1
MOONS_SCALE = 1.5
MOONS_SHIFT = (0.5, 0.25)
SWISSROLL_SCALE = 1.0 / 7.0
NOISE_STD = 0.05  # moons and swissroll


def _check_name(name: str) -> None:
    if name not in TOY2D_NAMES:
        raise UserError(f"unknown toy2d distribution {name!r}; valid names: {', '.join(TOY2D_NAMES)}")


def _moons(n: int, g: torch.Generator | None) -> Tensor:
    a = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    x = torch.where(upper, torch.cos(a), 1.0 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    m = torch.stack([x - MOONS_SHIFT[0], y - MOONS_SHIFT[1]], dim=1)
    return MOONS_SCALE * m + NOISE_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _swissroll(n: int, g: torch.Generator | None) -> Tensor:
    a = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64))
    m = torch.stack([a * torch.cos(a), a * torch.sin(a)], dim=1)
    return SWISSROLL_SCALE * m + NOISE_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _eight_gaussians(n: int, g: torch.Generator | None) -> Tensor:
    k = torch.randint(0, 8, (n,), generator=g).to(torch.float64)
    centres = EIGHT_GAUSSIANS_RADIUS * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return centres + EIGHT_GAUSSIANS_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    i = torch.randint(0, 4, (n,), generator=g)
    j = 2 * torch.randint(0, 2, (n,), generator=g) + i % 2  # i + j even: a dark square
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return torch.stack([i, j], dim=1).to(torch.float64) - 2.0 + u


_SAMPLERS = {
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
}


def sample_toy2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw n exact samples (float32 [n, 2]) from the named distribution (see the module doc)."""
    _check_name(name)
    if n < 0:
        raise UserError(f"number of toy2d samples must be non-negative, got {n}")
    return _SAMPLERS[name](int(n), generator).to(torch.float32)


def load_toy2d(name: str, num_samples: int = TOY2D_DEFAULT_SAMPLES, seed: int = 0) -> InMemoryDataset:
    """A fixed set of ``num_samples`` points from the named distribution, drawn with ``seed``."""
    _check_name(name)
    positive_int("toy2d num_samples", num_samples)
    g = torch.Generator().manual_seed(int(seed))
    return InMemoryDataset(sample_toy2d(name, num_samples, g), kind="points")
