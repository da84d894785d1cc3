"""The training objective: everything diffusion-specific the trainer calls.

It draws t, noise and label dropout, calls the diffusion's loss, bins per-example losses by t for
the metrics, and feeds the loss-aware timestep sampler (with its own all-gather across processes,
as improved-diffusion's resample.py does), so the loop itself stays generic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from ..diffusion import GaussianDiffusion
from ..timestep_sampling import LossAwareTimesteps, UniformTimesteps
from .distributed import DistInfo, all_gather_cat

__all__ = ["DiffusionObjective", "Objective", "draw_label_drop", "with_null_labels"]


class Objective(Protocol):
    """What the trainer calls: the draws of a global batch, the loss, metric bins and fields, its state."""

    num_bins: int

    def draw(self, batch_size: int, sample_shape, device, generator: torch.Generator) -> tuple[Tensor, ...]: ...

    @property
    def __call__(self) -> Callable[..., tuple[Tensor, Tensor]]:
        """loss(model, x0, y, *draws) -> (mean loss, per-example losses); each objective names its draws."""
        ...

    def bins(self, draws) -> Tensor: ...

    def observe(self, draws, losses: Tensor) -> None: ...

    def log_fields(self, step: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, extra: dict) -> None: ...


def draw_label_drop(batch_size: int, p_uncond: float, device, generator: torch.Generator) -> Tensor:
    """Which examples of a global batch learn unconditionally (classifier-free guidance's label dropout)."""
    return torch.rand(batch_size, device=device, generator=generator) < p_uncond


def with_null_labels(y: Tensor | None, drop: Tensor, p_uncond: float, null_class: int | None) -> Tensor | None:
    """``y`` with the ``drop``ped examples' labels replaced by the null class (unchanged without label dropout)."""
    if y is None or p_uncond <= 0 or null_class is None:
        return y
    return torch.where(drop, torch.full_like(y, null_class), y)


class DiffusionObjective:
    """loss(model, x0, y, *draws) for one batch: the importance-weighted mean of per-example losses.

    Args:
        diffusion: the noise process and its loss.
        timesteps: the timestep sampler (uniform or loss-aware).
        p_uncond: probability of replacing a label by the null class (classifier-free guidance).
        null_class: the label meaning "no class" (the model's ``null_class``).
        dist: this process's place among torchrun processes (the loss-aware sampler sees every one's losses).
    """

    num_bins = 4  # the metrics' loss_q0 .. loss_q3: the loss of each quarter of the timesteps (improved DDPM's)

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        timesteps: UniformTimesteps,
        p_uncond: float = 0.0,
        null_class: int | None = None,
        dist: DistInfo | None = None,
    ):
        self.diffusion = diffusion
        self.timesteps = timesteps
        self.p_uncond = p_uncond
        self.null_class = null_class
        self.dist = dist or DistInfo()

    def draw(self, batch_size: int, sample_shape, device, generator: torch.Generator):
        """The random draws of one GLOBAL batch: t, importance weights, noise, label-drop mask.

        Every process draws the whole global batch from the same generator and keeps its own
        rows, so 1 or N processes see the same numbers.
        """
        t, w = self.timesteps.sample(batch_size, device, generator)
        noise = torch.randn((batch_size, *sample_shape), device=device, generator=generator)
        return t, w, noise, draw_label_drop(batch_size, self.p_uncond, device, generator)

    def __call__(
        self, model, x0: Tensor, y: Tensor | None, t: Tensor, weights: Tensor, noise: Tensor, drop: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(scalar loss to back-propagate, per-example losses detached)."""
        y = with_null_labels(y, drop, self.p_uncond, self.null_class)
        losses = self.diffusion.training_losses(model, x0, t, y, noise)
        return (losses * weights).mean(), losses.detach()

    def bins(self, draws) -> Tensor:
        """The metrics bin (quarter of the timesteps, 0 for the smallest t) of each example of ``draws``."""
        return draws[0] * self.num_bins // self.diffusion.num_timesteps

    def observe(self, draws, losses: Tensor) -> None:
        """After a step: the loss-aware sampler learns this step's losses, every process's."""
        if isinstance(self.timesteps, LossAwareTimesteps):
            self.timesteps.update(all_gather_cat(draws[0], self.dist), all_gather_cat(losses, self.dist))

    def log_fields(self, step: int) -> dict[str, Any]:
        """Nothing beyond the trainer's own metrics."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the objective (under its ``extra``)."""
        return {"timesteps": self.timesteps.state_dict()}

    def load_state_dict(self, extra: dict) -> None:
        """Go on from a checkpoint's ``extra``."""
        if "timesteps" in extra:
            self.timesteps.load_state_dict(extra["timesteps"])
