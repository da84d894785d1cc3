"""The sampling timestep grids: which indices of the T-step chain a K-call sampler visits."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import UserError
from .options import Spacing, check_choice
from .validate import int_in_range, positive_int

__all__ = ["sampling_timesteps", "as_abar", "log_snr", "interp", "karras_sigmas", "KARRAS_RHO", "SNR_ROOT"]

KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5: the sigma grid's curvature
SNR_ROOT = 8.0  # "snr_root" is uniform in SNR^(1/SNR_ROOT) (measured: docs/samplers.md)


def karras_sigmas(sigma_max: float, sigma_min: float, at: Tensor) -> Tensor:
    """The noise levels at fractions ``at`` (0: sigma_max, 1: sigma_min) of Karras et al.'s grid, uniform in
    sigma^(1/rho) (2022, eq. 5)."""
    hi, lo = sigma_max ** (1 / KARRAS_RHO), sigma_min ** (1 / KARRAS_RHO)
    return (hi + at * (lo - hi)) ** KARRAS_RHO


def sampling_timesteps(
    num_timesteps: int,
    steps: int,
    spacing: Spacing = "linspace",
    alphas_cumprod: Tensor | None = None,
) -> Tensor:
    """The kept timesteps of a ``steps``-call sampler, strictly decreasing int64 in {0..T-1}.

    Spacings (``T = num_timesteps``, ``k = steps``; ``k == T`` always gives T-1, ..., 0):

    - ``"linspace"``: round(linspace(T-1, 0, k)) (half to even, as numpy): both ends kept.
    - ``"leading"``: arange(k) * (T // k), reversed: 0 is kept, the top is T - T//k (DDIM
      paper's uniform skip; diffusers' "leading" with steps_offset = 0).
    - ``"trailing"``: round(T - i T/k) - 1 for i < k: starts at T-1, the last kept index is
      about T/k - 1 (Lin et al. 2024, "Common diffusion noise schedules are flawed", table 2).
    - ``"quadratic"``: floor(linspace(0, sqrt(0.8 T), k)^2) (Song et al. 2021, DDIM's CIFAR-10
      choice): starts at about 0.8 T, dense near 0.
    - ``"logsnr"``: uniform in log-SNR log(abar / (1 - abar)) between t = T-1 and t = 0
      (Lu et al. 2022, DPM-Solver sec. 3.3), mapped back to t by linear interpolation and
      rounded; needs ``alphas_cumprod``.
    - ``"karras"``: sigma = sqrt((1 - abar) / abar) on Karras et al. 2022's grid (eq. 5, rho = 7)
      from sigma(T-1) to sigma(0), mapped back to t by linear interpolation in log sigma and
      rounded; needs ``alphas_cumprod``.
    - ``"snr_root"``: uniform in SNR^(1/8) = (abar / (1 - abar))^(1/8) between t = T-1 and
      t = 0, mapped back like "logsnr" (the Karras grid with rho = -4: denser than "logsnr" at
      low noise, where karras is sparser); needs ``alphas_cumprod``. The default of the
      ancestral and DPM-Solver++ samplers, chosen by measurement (docs/samplers.md).

    The first kept index is T-1 and the last 0 for every spacing except "leading" (top
    T - T//k), "trailing" (last about T/k - 1) and "quadratic" (top about 0.8 T).

    Where rounding makes two kept indices equal (quadratic, logsnr, karras, snr_root at many
    steps), the later ones are pushed up by one until all are distinct (and back down from T-1
    if needed).
    """
    T, k = num_timesteps, steps
    alphas_cumprod = _checked(T, k, spacing, alphas_cumprod)
    if k == T:
        return torch.arange(T - 1, -1, -1, dtype=torch.long)
    i = torch.arange(k, dtype=torch.float64)
    if spacing == "linspace":
        if k == 1:
            return torch.tensor([T - 1], dtype=torch.long)
        t = i * ((T - 1) / (k - 1))  # numpy's linspace formula (and diffusers'), last set exactly
        t[-1] = T - 1
        t = torch.round(t).flip(0)
    elif spacing == "leading":
        t = (torch.arange(k) * (T // k)).flip(0)
    elif spacing == "trailing":
        t = torch.round(T - i * (T / k)) - 1
    elif spacing == "quadratic":
        base = i * (math.sqrt(0.8 * T) / (k - 1)) if k > 1 else i
        t = _distinct(torch.floor(base**2).long(), T).flip(0)
    else:  # logsnr, karras, snr_root
        assert alphas_cumprod is not None  # _checked refuses these spacings without it
        t = _log_snr_spaced(spacing, alphas_cumprod, k)
    return t.long()


def _checked(T: int, steps: int, spacing: Spacing, alphas_cumprod: Tensor | None) -> Tensor | None:
    """The arguments of :func:`sampling_timesteps` checked; alphas_cumprod as float64, where given."""
    positive_int("the number of timesteps", T)
    int_in_range("sampling steps", steps, 1, T)
    check_choice("spacing", spacing, Spacing)
    if alphas_cumprod is not None:
        alphas_cumprod = as_abar(alphas_cumprod)
        if alphas_cumprod.numel() != T:
            raise UserError(f"alphas_cumprod has {alphas_cumprod.numel()} entries, expected {T}")
    if spacing in ("logsnr", "karras", "snr_root") and alphas_cumprod is None:
        raise UserError(f"spacing {spacing!r} needs the schedule's alphas_cumprod")
    return alphas_cumprod


def _log_snr_spaced(spacing: Spacing, alphas_cumprod: Tensor, k: int) -> Tensor:
    """The "logsnr", "karras" and "snr_root" timesteps: a grid in log SNR, mapped back to t (k < T)."""
    T = alphas_cumprod.numel()
    i = torch.arange(k, dtype=torch.float64)
    lam = log_snr(alphas_cumprod)
    if not bool((lam[1:] < lam[:-1]).all()):
        raise UserError(f"spacing {spacing!r} needs a strictly decreasing alphas_cumprod")
    lo, hi = float(lam[-1]), float(lam[0])  # log SNR at t = T-1 and t = 0
    if k == 1:
        target = lam[-1:]
    elif spacing == "logsnr":
        target = torch.linspace(lo, hi, k, dtype=torch.float64)
    elif spacing == "karras":  # sigma = SNR^(-1/2), uniform in sigma^(1/rho)
        rho = KARRAS_RHO
        s_max, s_min = math.exp(-0.5 * lo / rho), math.exp(-0.5 * hi / rho)
        target = -2.0 * rho * torch.log(s_max + i / (k - 1) * (s_min - s_max))
    else:  # snr_root: uniform in SNR^(1/n)
        n = SNR_ROOT
        u_lo, u_hi = math.exp(lo / n), math.exp(hi / n)
        target = n * torch.log(u_lo + i / (k - 1) * (u_hi - u_lo))
    t_cont = interp(target, lam.flip(0), torch.arange(T - 1, -1, -1, dtype=torch.float64))
    t_cont[0] = T - 1
    if k > 1:
        t_cont[-1] = 0
    return _distinct(torch.round(t_cont).long().flip(0), T).flip(0)


def _distinct(t: Tensor, T: int) -> Tensor:
    """Nondecreasing ints in [0, T-1] -> strictly increasing ints in [0, T-1], moved as little as needed."""
    u = t.tolist()
    for j in range(1, len(u)):
        u[j] = max(u[j], u[j - 1] + 1)
    u[-1] = min(u[-1], T - 1)
    for j in range(len(u) - 2, -1, -1):
        u[j] = min(u[j], u[j + 1] - 1)
    return torch.tensor(u, dtype=torch.long)


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation (numpy's interp) for increasing ``xp``."""
    j = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[j - 1], xp[j], fp[j - 1], fp[j]
    return f0 + (f1 - f0) * ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)


def log_snr(abar: Tensor) -> Tensor:
    """lambda = log(abar / (1 - abar)), the log signal-to-noise ratio of each timestep."""
    return torch.log(abar) - torch.log1p(-abar)


def as_abar(alphas_cumprod) -> Tensor:
    """alphas_cumprod as a 1-D float64 CPU tensor, the precision every coefficient is computed in."""
    abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    if abar.ndim != 1 or abar.numel() < 1:
        raise UserError(f"alphas_cumprod must be a 1-D tensor, got shape {tuple(abar.shape)}")
    return abar
