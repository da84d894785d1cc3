"""The training objective: draw t, noise and label dropout, then call the diffusion's loss.

This is the one diffusion-specific piece the trainer calls (style principle 13).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import GaussianDiffusion
from ..timestep_sampling import UniformTimesteps

__all__ = ["DiffusionObjective"]


class DiffusionObjective:
    """loss(model, x0, y) for one batch: the importance-weighted mean of per-example losses.

    Args:
        diffusion: the noise process and its loss.
        timesteps: the timestep sampler (uniform or loss-aware).
        p_uncond: probability of replacing a label by the null class (classifier-free guidance).
        null_class: the label meaning "no class" (the model's ``null_class``).
    """

    def __init__(self, diffusion: GaussianDiffusion, timesteps: UniformTimesteps, p_uncond: float = 0.0,
                 null_class: int | None = None):
        self.diffusion = diffusion
        self.timesteps = timesteps
        self.p_uncond = p_uncond
        self.null_class = null_class

    def draw(self, batch_size: int, sample_shape, device, generator: torch.Generator):
        """The random draws of one GLOBAL batch: t, importance weights, noise, label-drop mask.

        Every process draws the whole global batch from the same generator and keeps its own
        rows, so 1 or N processes see the same numbers.
        """
        t, w = self.timesteps.sample(batch_size, device, generator)
        noise = torch.randn((batch_size, *sample_shape), device=device, generator=generator)
        drop = torch.rand(batch_size, device=device, generator=generator) < self.p_uncond
        return t, w, noise, drop

    def __call__(self, model, x0: Tensor, y: Tensor | None, t: Tensor, weights: Tensor, noise: Tensor,
                 drop: Tensor) -> tuple[Tensor, Tensor]:
        """(scalar loss to back-propagate, per-example losses detached)."""
        if y is not None and self.p_uncond > 0 and self.null_class is not None:
            y = torch.where(drop, torch.full_like(y, self.null_class), y)
        losses = self.diffusion.training_losses(model, x0, t, y, noise)
        return (losses * weights).mean(), losses.detach()
