"""How training draws timesteps: uniformly (Ho et al. 2020) or by loss-aware importance sampling
of the variational bound (Nichol & Dhariwal 2021, sec. 3.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import UserError
from .options import TimestepSampler

__all__ = ["UniformTimesteps", "LossAwareTimesteps", "make_timestep_sampler"]


class UniformTimesteps:
    """t ~ U{0, ..., T-1}, every weight 1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def probabilities(self) -> Tensor:
        """The distribution over t, float64 [T]."""
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device, generator: torch.Generator | None = None):
        """Draw t (int64 [B]) and the importance weights 1 / (T p(t)) (float32 [B])."""
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)
        return t, torch.ones(batch_size, device=device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossAwareTimesteps(UniformTimesteps):
    """p(t) proportional to sqrt(E[L_t^2]) over the last ``history`` losses of each t (improved DDPM eq. 18).

    Uniform until every t has a full history; ``uniform_prob`` of the mass stays uniform so no t
    starves. The weights 1 / (T p(t)) keep the loss an unbiased estimate of the bound.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise UserError("loss-aware sampling needs history >= 1 and 0 <= uniform_prob <= 1")
        self.history = history
        self.uniform_prob = uniform_prob
        self._losses = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self._counts = torch.zeros(num_timesteps, dtype=torch.int64)

    def probabilities(self) -> Tensor:
        if bool((self._counts < self.history).any()):
            return super().probabilities()
        p = (self._losses**2).mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def sample(self, batch_size: int, device, generator: torch.Generator | None = None):
        p = self.probabilities()
        u = torch.rand(batch_size, dtype=torch.float64, generator=_cpu(generator))
        t = torch.searchsorted(torch.cumsum(p, 0), u).clamp(max=self.num_timesteps - 1)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record the per-example bound terms of timesteps t (call with all ranks' values); a term
        that is not finite (an fp16 forward that overflowed) says nothing about its t and is skipped."""
        for ti, li in zip(t.cpu().tolist(), losses.detach().double().cpu().tolist()):
            if not math.isfinite(li):
                continue
            if self._counts[ti] == self.history:
                self._losses[ti] = torch.roll(self._losses[ti], -1)
                self._losses[ti, -1] = li
            else:
                self._losses[ti, self._counts[ti]] = li
                self._counts[ti] += 1

    def state_dict(self) -> dict:
        return {"losses": self._losses.clone(), "counts": self._counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._losses.copy_(state["losses"])
        self._counts.copy_(state["counts"])


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    # The distribution lives on the CPU; a device generator cannot drive it.
    if generator is not None and generator.device.type != "cpu":
        return None
    return generator


def make_timestep_sampler(name: TimestepSampler, num_timesteps: int) -> UniformTimesteps:
    """Build a timestep sampler by name."""
    if name == "uniform":
        return UniformTimesteps(num_timesteps)
    if name == "loss_aware":
        return LossAwareTimesteps(num_timesteps)
    raise UserError(f"unknown timestep sampler {name!r}; choose 'uniform' or 'loss_aware'")
