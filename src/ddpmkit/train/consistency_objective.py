"""The training objective of a consistency model tuned from a diffusion run: Easy Consistency Tuning's loss.

The trainer sees the same interface as ``DiffusionObjective`` (draws, loss, metric bins, checkpointed state);
the network is the student itself, seen through its consistency function, and the target is its own
stop-gradient output, so no teacher network is needed while tuning (Geng et al. 2024, sec. 3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..consistency import ECTParams, NoiseLevels, consistency_function, ect_loss, sample_noise_levels, stage_of
from ..options import Prediction
from .objective import draw_label_drop, with_null_labels

__all__ = ["ConsistencyObjective"]


class ConsistencyObjective:
    """ECT's loss for one batch: the mean over examples of w(t, r) d(f(x_t, t), sg f(x_r, r)).

    Args:
        levels: the teacher schedule's noise levels (sigma <-> fractional timestep).
        params: ECT's settings (noise-level law, q, r(t), distance).
        stage_steps: optimizer steps per stage (t - r shrinks by q after each).
        prediction, learned_range, clip: how the network's output becomes x0 (as the teacher's diffusion).
        p_uncond, null_class: label dropout as the teacher trained with, so the null class stays meaningful.
        teacher_images: the teacher's steps x batch, for the logged fraction of its training cost.
        batch_size: this run's global batch.
    """

    num_bins = 4  # loss_q0 .. loss_q3: the loss in each quarter of the timesteps, as a diffusion run's

    def __init__(
        self,
        levels: NoiseLevels,
        params: ECTParams,
        stage_steps: int,
        *,
        prediction: Prediction = "eps",
        learned_range: bool = False,
        clip: bool = False,
        p_uncond: float = 0.0,
        null_class: int | None = None,
        teacher_images: int = 0,
        batch_size: int = 1,
    ):
        self.levels, self.params, self.stage_steps = levels, params, stage_steps
        self.prediction, self.learned_range, self.clip = prediction, learned_range, clip
        self.p_uncond, self.null_class = p_uncond, null_class
        self.teacher_images, self.batch_size = teacher_images, batch_size
        self.steps = 0  # batches drawn: the optimizer step the next loss belongs to
        self.stage = 0

    def draw(self, batch_size: int, sample_shape, device, generator: torch.Generator) -> tuple[Tensor, ...]:
        """The draws of one GLOBAL batch (sigma_t, noise, label-drop mask); also moves on to this step's stage."""
        self.stage = stage_of(self.steps, self.stage_steps)
        self.steps += 1
        p = self.params
        sigma = sample_noise_levels(batch_size, self.levels, p.p_mean, p.p_std, generator, device)
        noise = torch.randn((batch_size, *sample_shape), device=device, generator=generator)
        return sigma, noise, draw_label_drop(batch_size, self.p_uncond, device, generator)

    def __call__(
        self, model, x0: Tensor, y: Tensor | None, sigma: Tensor, noise: Tensor, drop: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(scalar loss to back-propagate, per-example losses detached)."""
        y = with_null_labels(y, drop, self.p_uncond, self.null_class)
        f = consistency_function(model, self.levels, self.prediction, self.learned_range, self.clip)
        losses = ect_loss(f, x0, self.levels, self.stage, self.params, y=y, sigma_t=sigma, noise=noise.to(x0.dtype))
        return losses.mean(), losses.detach()

    def bins(self, draws) -> Tensor:
        """The metrics bin (quarter of the timesteps, 0 for the smallest noise) of each example of ``draws``."""
        t = self.levels.timestep(draws[0])
        return (t * self.num_bins / self.levels.num_timesteps).long().clamp(max=self.num_bins - 1)

    def observe(self, draws, losses: Tensor) -> None:
        """Nothing learns from the losses (the noise levels are drawn from a fixed law)."""

    def log_fields(self, step: int) -> dict[str, Any]:
        """The stage of the last step and the fraction of the teacher's training cost spent by ``step`` steps."""
        fields: dict[str, Any] = {"stage": self.stage}
        if self.teacher_images:
            fields["teacher_cost"] = step * self.batch_size / self.teacher_images
        return fields

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the objective (under its ``extra``): the steps drawn, for the stage."""
        return {"ect_steps": self.steps}

    def load_state_dict(self, extra: dict) -> None:
        """Go on from a checkpoint's ``extra``."""
        self.steps = int(extra.get("ect_steps", 0))
        self.stage = stage_of(max(self.steps - 1, 0), self.stage_steps)
