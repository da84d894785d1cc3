"""A run's sampling options and labels: the user's arguments resolved against its ``sample`` config, checked once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..config import SampleConfig
from ..errors import UserError
from ..options import SamplerName, Spacing
from ..sampling_options import SamplingOptions
from ..validate import check_guidance, check_seed, is_int, positive_int

__all__ = [
    "Labels",
    "SamplingRequest",
    "check_draws",
    "default_steps",
    "check_steps",
    "run_sampling_options",
    "parse_labels",
]

Labels = str | int | Sequence[int | str] | Tensor | None


class SamplingRequest(NamedTuple):
    """The sampling options a caller named, each None where the run's ``sample`` config (or the sampler) decides."""

    sampler: SamplerName | None = None
    steps: int | None = None
    eta: float | None = None
    spacing: Spacing | None = None
    order: int | None = None
    guidance: float | None = None


def check_draws(num: int, seed: int, batch_size: int, name: str = "the number of samples", draws: int = 0) -> None:
    """``num`` (``name`` in messages) and ``batch_size`` positive, ``seed`` valid for ``draws`` (default: ``num``)
    draws seeded seed, seed + 1, ..."""
    positive_int(name, num)
    check_seed(seed, draws or num)
    positive_int("the batch size", batch_size)


def default_steps(sampler: str, sc: SampleConfig) -> int | None:
    """Network calls when none are asked for: the run's own for its sampler, the whole chain for
    ancestral sampling chosen instead, and the run's (or its grids') few-step budget for a fast sampler."""
    if sampler == sc.sampler:
        return sc.steps
    return None if sampler == "ddpm" else sc.steps or sc.grid_steps


def check_steps(steps: int | None, num_timesteps: int) -> int | None:
    """Network calls per sample, 1..T, or None for all T."""
    if steps is not None and (not is_int(steps) or not 1 <= steps <= num_timesteps):
        raise UserError(f"steps must be between 1 and {num_timesteps}, got {steps!r}")
    return steps


def run_sampling_options(sc: SampleConfig, num_timesteps: int, asked: SamplingRequest) -> SamplingOptions:
    """The options ``Run.sample`` uses: each one ``asked`` leaves None takes the run's ``sample`` config ``sc``
    (eta for ddim; spacing and order where the sampler is the config's own)."""
    chosen = asked.sampler or sc.sampler
    steps = check_steps(default_steps(chosen, sc) if asked.steps is None else asked.steps, num_timesteps)
    eta = sc.eta if asked.eta is None and chosen == "ddim" else asked.eta
    order = sc.order if asked.order is None and chosen == sc.sampler else asked.order
    spacing = asked.spacing or (sc.spacing if chosen == sc.sampler else None)
    guidance = sc.guidance if asked.guidance is None else asked.guidance
    options = SamplingOptions(chosen, steps, spacing, eta, order, guidance=guidance)
    check_guidance(options.guidance)  # the maths takes any weight; a run refuses a negative one
    return options


def parse_labels(spec: Labels, num: int, num_classes: int | None, names: list[str] | None = None) -> Tensor | None:
    """Labels -> int64 [num] cycled, or None for an unconditional model.

    ``spec``: None or "all" (every class), an int, a comma list "a,b" or a sequence, where each
    item is a label number or, where the run recorded them, a class name (a name wins: a folder
    run's class "1" may have label 0).
    """
    if num_classes is None:
        if spec is not None:
            raise UserError("labels given, but this model is not class-conditional")
        return None
    if spec is None or (isinstance(spec, str) and spec == "all"):
        values = list(range(num_classes))
    else:
        tokens = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, int) else list(spec)
        index = {name: i for i, name in enumerate(names or [])}
        values = [_label(token, index, names) for token in tokens if str(token).strip()]
        if not values:
            raise UserError(f"labels must name at least one class, got {spec!r}")
        bad = [v for v in values if not 0 <= v < num_classes]
        if bad:
            raise UserError(f"label {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    return torch.tensor([values[i % len(values)] for i in range(num)], dtype=torch.long)


def _label(token, index: dict[str, int], names: list[str] | None) -> int:
    text = str(int(token) if isinstance(token, Tensor) else token).strip()
    if text in index:
        return index[text]
    try:
        return int(text)
    except ValueError:
        known = f" or one of its class names ({', '.join(names)})" if names else ""
        raise UserError(f"labels must be 'all' or a comma list of class numbers{known}, got {text!r}") from None
