"""Noise schedules and the Gaussian coefficients derived from them, all in float64.

Index ``t`` in ``{0, ..., T-1}`` holds beta_{t+1} of Ho et al. (2020): ``t = 0`` is the first
noising step. Everything here is computed once in float64; callers cast at use.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .errors import UserError
from .options import Schedule
from .validate import positive_int

__all__ = [
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "scaled_linear_beta_schedule",
    "make_beta_schedule",
    "StepCoefficients",
    "step_coefficients",
]


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas rising linearly from ``beta_start`` to ``beta_end`` (Ho et al. 2020, sec. 4)."""
    _check_T(T)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise UserError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Betas whose alpha-bar follows cos^2 (Nichol & Dhariwal 2021, eq. 17), clipped at ``max_beta``."""
    _check_T(T)
    if s < 0 or not 0.0 < max_beta < 1.0:
        raise UserError(f"need s >= 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def scaled_linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas whose square roots rise linearly from sqrt(``beta_start``) to sqrt(``beta_end``) (diffusers'
    ``scaled_linear``, the latent diffusion models' schedule)."""
    _check_T(T)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise UserError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2


def make_beta_schedule(name: Schedule, T: int, **kwargs) -> Tensor:
    """Build a schedule by name: ``"linear"``, ``"cosine"`` or ``"scaled_linear"``."""
    if name == "linear":
        return linear_beta_schedule(T, **kwargs)
    if name == "cosine":
        return cosine_beta_schedule(T, **kwargs)
    if name == "scaled_linear":
        return scaled_linear_beta_schedule(T, **kwargs)
    raise UserError(f"unknown beta schedule {name!r}; choose 'linear', 'cosine' or 'scaled_linear'")


class StepCoefficients(NamedTuple):
    """Coefficients of one reverse step from x_t to x_s (s < t), given alpha-bar at both."""

    beta: Tensor  # beta'_t = 1 - abar_t / abar_s: the forward variance of the (respaced) step
    posterior_variance: Tensor  # beta~'_t = (1 - abar_s) / (1 - abar_t) * beta'_t
    posterior_log_variance: Tensor  # log beta~'_t, with the zero at the last step replaced
    coef_x0: Tensor  # mean of q(x_s | x_t, x0) = coef_x0 * x0 + coef_xt * x_t (Ho et al. eq. 7)
    coef_xt: Tensor


def step_coefficients(abar_t: Tensor, abar_s: Tensor) -> StepCoefficients:
    """The Gaussian posterior q(x_s | x_t, x0) of each step of a chain (Ho et al. 2020, eqs. 6-7).

    ``abar_t`` and ``abar_s`` are 1-D, ordered by increasing t, with ``abar_s[i]`` the alpha-bar
    of the step below ``abar_t[i]`` (1.0 for the step into clean data). With the previous index
    this is the plain one-step posterior; with the alpha-bar of an earlier kept index it is the
    posterior of a respaced chain (Nichol & Dhariwal 2021, sec. 4). The first step's posterior
    variance is zero; its log takes the value of the second step, as in the DDPM code.
    """
    abar_t = torch.as_tensor(abar_t, dtype=torch.float64)
    abar_s = torch.as_tensor(abar_s, dtype=torch.float64)
    beta = 1.0 - abar_t / abar_s
    post_var = (1.0 - abar_s) / (1.0 - abar_t) * beta
    log_var = torch.log(post_var.clamp(min=torch.finfo(torch.float64).tiny))
    if post_var.numel() > 1 and post_var[0] == 0:
        log_var[0] = log_var[1]
    coef_x0 = abar_s.sqrt() * beta / (1.0 - abar_t)
    coef_xt = (1.0 - beta).sqrt() * (1.0 - abar_s) / (1.0 - abar_t)
    return StepCoefficients(beta, post_var, log_var, coef_x0, coef_xt)


def _check_T(T: int) -> None:
    positive_int("the number of timesteps", T)
