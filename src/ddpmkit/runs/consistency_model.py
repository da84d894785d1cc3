"""A run that is a consistency model (its config has a ``distill`` section): its consistency function, its ECT
objective, its teacher's weights to start from, and its multistep sampler."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..config import DistillConfig, ExperimentConfig, SampleConfig
from ..consistency import (
    ConsistencyFn,
    ECTParams,
    NoiseLevels,
    consistency_function,
    consistency_jumps,
    consistency_sample,
    edit_sigmas,
    sampling_sigmas,
)
from ..diffusion import GaussianDiffusion
from ..errors import UserError
from ..samplers import Generator, randn
from ..timestep_grids import karras_sigmas
from ..train.checkpoint import read_checkpoint
from ..train.consistency_objective import ConsistencyObjective
from ..validate import positive_int
from .build import check_state_dict
from .sampling import SamplingRequest

__all__ = [
    "is_consistency",
    "noise_levels",
    "run_consistency_function",
    "ect_params",
    "consistency_objective",
    "teacher_weights",
    "sample_consistency",
    "edit_consistency",
    "run_sampling_sigmas",
    "check_consistency_options",
]


# the two-call sampler's level between its calls: the best of 0.3-3 on the digits (docs/consistency.md), above
# ECT's 0.821 (0.992 against 0.983 class accuracy)
TWO_CALL_MID_SIGMA = 1.5


def is_consistency(cfg: ExperimentConfig) -> bool:
    """True when the run is a consistency model tuned from a teacher."""
    return cfg.distill is not None


def noise_levels(diffusion: GaussianDiffusion) -> NoiseLevels:
    """The continuous noise levels of the teacher's schedule."""
    return NoiseLevels(diffusion.alphas_cumprod)


def _output_kind(cfg: ExperimentConfig) -> dict:
    """How the network's output becomes x0: the teacher's prediction; clipped to [-1, 1] for images."""
    d = cfg.diffusion
    clip = cfg.model.kind == "unet" and d.clip_denoised
    return {"prediction": d.prediction, "learned_range": d.variance == "learned_range", "clip": clip}


def run_consistency_function(cfg: ExperimentConfig, model: nn.Module, diffusion: GaussianDiffusion) -> ConsistencyFn:
    """f(x_sigma, sigma, y=None) of the run's network, with f(x, sigma_min) = x exactly."""
    return consistency_function(model, noise_levels(diffusion), **_output_kind(cfg))


def ect_params(dc: DistillConfig) -> ECTParams:
    """The maths' ECT settings from the config's distill section."""
    return ECTParams(dc.p_mean, dc.p_std, dc.q, dc.k, dc.b, dc.distance, dc.huber_c)


def consistency_objective(
    cfg: ExperimentConfig, diffusion: GaussianDiffusion, null_class: int | None
) -> ConsistencyObjective:
    """The ECT objective the trainer runs for a consistency run."""
    dc = cfg.distill
    assert dc is not None
    return ConsistencyObjective(
        noise_levels(diffusion),
        ect_params(dc),
        dc.stage_steps,
        **_output_kind(cfg),
        p_uncond=cfg.diffusion.p_uncond,
        null_class=null_class,
        teacher_images=dc.teacher_images,
        batch_size=cfg.train.batch_size,
    )


def teacher_weights(cfg: ExperimentConfig) -> dict:
    """The EMA weights of the teacher checkpoint the config names (its raw weights if it kept no EMA)."""
    dc = cfg.distill
    assert dc is not None
    ckpt = read_checkpoint(dc.teacher)
    state = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    check_state_dict(cfg.model, state, f"the teacher {dc.teacher!r}")
    return state


def check_consistency_options(sc: SampleConfig, asked: SamplingRequest) -> int:
    """The network calls of a consistency run's sample: ``asked.steps``, else its ``sample`` config's ``sc.steps``,
    else 2; samplers and guidance do not apply."""
    named = (("--sampler", asked.sampler), ("--eta", asked.eta), ("--spacing", asked.spacing), ("--order", asked.order))
    for name, value in named:
        if value is not None:
            raise UserError(
                f"{name} does not apply to a consistency model: it samples with its own multistep "
                f"sampler (choose the calls with --steps)"
            )
    if asked.guidance is not None and asked.guidance != 1.0:
        raise UserError("guidance does not apply to a consistency model: it was tuned at guidance 1 (labels work)")
    calls = sc.steps if asked.steps is None else asked.steps
    calls = 2 if calls is None else calls
    return positive_int("steps (network calls)", calls)


def sample_consistency(
    cfg: ExperimentConfig,
    model: nn.Module,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    calls: int,
    *,
    y: Tensor | None = None,
    generator: Generator = None,
    device: torch.device | str = "cpu",
    x_T: Tensor | None = None,
) -> Tensor:
    """``calls``-call consistency samples (Song et al. 2023, Algorithm 1) from the VP prior's noise (``x_T``, or
    drawn from ``generator``)."""
    levels = noise_levels(diffusion)
    f = run_consistency_function(cfg, model, diffusion)
    x_T = randn(shape, generator, device) if x_T is None else x_T
    sigmas = run_sampling_sigmas(levels, calls, cfg.distill.mid_sigmas if cfg.distill else ())
    return consistency_sample(f, x_T, sigmas, levels.sigma_min, y=y, generator=generator)


def edit_consistency(
    cfg: ExperimentConfig,
    model: nn.Module,
    diffusion: GaussianDiffusion,
    x0: Tensor,
    strength: float,
    calls: int,
    y: Tensor | None,
    gen: Generator,
) -> tuple[Tensor, int]:
    """SDEdit of images ``x0`` at ``strength`` in ``calls`` consistency calls (labels ``y``, generators ``gen``): the
    edits and the calls made (0 when the strength rounds to no noise: the images come back unchanged)."""
    levels = noise_levels(diffusion)
    sigmas = edit_sigmas(levels, strength, calls)
    if sigmas is None:
        return x0.clone(), 0
    x = x0 + float(sigmas[0]) * randn(x0.shape, gen, x0.device, x0.dtype)  # the noising of SDEdit
    f = run_consistency_function(cfg, model, diffusion)
    return consistency_jumps(f, x, sigmas, levels.sigma_min, y, gen), len(sigmas)


def run_sampling_sigmas(levels: NoiseLevels, calls: int, mid: Sequence[float] = ()) -> Tensor:
    """The sampler's levels: ``mid`` when it has calls - 1 of them (the run's distill.mid_sigmas); else, for two
    calls, TWO_CALL_MID_SIGMA where the schedule reaches above it, else the middle of the Karras rho = 7 grid between
    sigma_max and sigma_min (a short schedule: sigma_max 0.81 at T = 50); for more, the Karras grid."""
    if mid and len(mid) == calls - 1:
        return sampling_sigmas(levels, calls, list(mid))
    if calls == 2 and levels.sigma_min < TWO_CALL_MID_SIGMA < levels.sigma_max:
        return sampling_sigmas(levels, 2, [TWO_CALL_MID_SIGMA])
    if calls == 2:
        half_way = karras_sigmas(levels.sigma_max, levels.sigma_min, torch.tensor(0.5, dtype=torch.float64))
        return sampling_sigmas(levels, 2, [float(half_way)])
    return sampling_sigmas(levels, calls)
