"""Editing with a trained DDPM: inpainting (RePaint), image-to-image (SDEdit) and interpolation.

Like the samplers, every function works over a denoiser ``denoiser(x_t, t) -> Denoised`` and
the schedule's ``alphas_cumprod``; the network, labels and guidance live in the caller's closure
(``GaussianDiffusion.inpaint`` / ``edit`` / ``invert`` build it).

- :func:`inpaint`: Lugmayr et al. 2022 (RePaint), Algorithm 1 with the jump schedule of their
  sec. 4.2 (:func:`repaint_schedule`): the known region is replaced by its forward-noised copy
  after every reverse step, and the chain is walked back up ``jump_length`` steps ``resample - 1``
  times at every ``jump_length``-th level so the generated region can agree with the known one.
- :func:`sdedit`: Meng et al. 2022 (SDEdit): noise the input to t0 = strength T, then run any
  sampler from t0 down.
- :func:`slerp`: spherical interpolation of two noises (Shoemake 1985), the interpolation that
  keeps a Gaussian noise's norm; :func:`ddim_invert` (in ``samplers``) maps an image to its noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import UserError
from .options import SamplerName, Spacing, Variance, check_choice
from .samplers import SAMPLERS, Callback, Denoiser, Generator, ancestral_update, chain, ddim_update, randn, t_batch
from .timestep_grids import as_abar, sampling_timesteps
from .validate import int_in_range, number_in_range, positive_int

__all__ = [
    "repaint_schedule",
    "sdedit_start",
    "inpaint",
    "check_mask",
    "check_inpaint_sampler",
    "INPAINT_SAMPLERS",
    "edit_timesteps",
    "sdedit",
    "slerp",
    "slerp_frames",
]

INPAINT_SAMPLERS = ("ddpm", "ddim")  # the multistep DPM-Solver++ samplers are refused (see inpaint)


# --------------------------------------------------------------------------- RePaint
def repaint_schedule(num_levels: int, jump_length: int = 1, resample: int = 1) -> list[int]:
    """The levels RePaint visits, from ``num_levels`` (the first kept timestep) down to 0 (clean data).

    Level n in 1..K (K = ``num_levels``) is x at the n-th smallest kept timestep, level 0 the
    clean image. Each move is one level: down is a reverse step (a network call), up a forward
    re-noising step. Lugmayr et al. 2022, sec. 4.2: at every level n = 1, 1 + J, 1 + 2J, ... with
    n + J <= K (J = ``jump_length``), the chain, having just come down to n, goes back up J levels
    and down again, ``resample - 1`` times; so the reverse steps from the J levels above each such
    n run ``resample`` times in all. With J = 1 this is their Algorithm 1 (U = ``resample``: every
    step x_t -> x_{t-1} with t >= 2 repeated U times; the last step into clean data once).
    """
    for name, v in (("num_levels", num_levels), ("jump_length", jump_length), ("resample", resample)):
        positive_int(name, v)
    jumps_left = {n: resample - 1 for n in range(1, num_levels - jump_length + 1, jump_length)}
    levels, n = [num_levels], num_levels
    while n > 0:
        n -= 1
        levels.append(n)
        if jumps_left.get(n, 0) > 0:
            jumps_left[n] -= 1
            levels.extend(range(n + 1, n + jump_length + 1))
            n += jump_length
    return levels


def check_mask(mask: Tensor, x: Tensor) -> Tensor:
    """The mask (1 = known pixel, 0 = to generate) as x's dtype, broadcast to x; refused unless 0/1 and it fits."""
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise UserError("the mask must hold only 0 (generate) and 1 (known)")
    try:
        return torch.broadcast_to(mask.to(x.device, x.dtype), x.shape)
    except RuntimeError:
        raise UserError(f"the mask's shape {tuple(mask.shape)} does not fit the images' {tuple(x.shape)}") from None


def inpaint(
    denoiser: Denoiser,
    x_known: Tensor,
    mask: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    resample: int = 1,
    jump_length: int = 1,
    sampler: SamplerName = "ddpm",
    variance: Variance = "fixed_large",
    eta: float = 0.0,
    generator: Generator = None,
    x_T: Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1 with jumps): sample x0 given x_known where ``mask`` is 1.

    The kept ``timesteps`` (strictly decreasing) are the chain's levels (see :func:`repaint_schedule`).
    A reverse step from level n: x_unknown ~ p(x_{n-1} | x_n) (ancestral with ``variance``, or DDIM
    with ``eta``), x_known ~ q(x_{n-1} | x0) (eq. 8), merged as m x_known + (1 - m) x_unknown (eq. 9);
    into clean data the model's x0 is taken for the unknown pixels and x_known itself for the known.
    A step up re-noises with q(x_n | x_{n-1}) = N(sqrt(abar_n / abar_{n-1}) x, (1 - abar_n / abar_{n-1}) I).

    The DPM-Solver++ samplers are refused: their multistep extrapolation assumes one smooth
    trajectory, which the replaced pixels and the jumps back up break.
    """
    check_inpaint_sampler(sampler)
    check_choice("variance", variance, Variance)
    ts, c = chain(timesteps, alphas_cumprod)
    K = len(ts)
    m = check_mask(mask, x_known)
    levels = repaint_schedule(K, jump_length, resample)
    abar = as_abar(alphas_cumprod)
    abar_lv = [1.0] + [float(abar[ts[K - n]]) for n in range(1, K + 1)]  # alpha-bar of level n
    step = (
        ancestral_update(c, variance, generator)
        if sampler == "ddpm"
        else ddim_update(ts, c, alphas_cumprod, eta, generator)
    )
    x = randn(x_known.shape, generator, x_known.device, x_known.dtype) if x_T is None else x_T
    calls = 0
    for n, to in zip(levels, levels[1:]):
        if to > n:  # forward: q(x_to | x_n)
            r = abar_lv[to] / abar_lv[n]
            x = math.sqrt(r) * x + math.sqrt(1.0 - r) * randn(x.shape, generator, x.device, x.dtype)
            continue
        i = K - n  # this level's index in the sampling order
        d = denoiser(x, t_batch(ts[i], x))
        if callback is not None:
            callback(calls, ts[i], x, d)
        calls += 1
        if to == 0:
            return m * x_known + (1.0 - m) * d.x0
        a = abar_lv[to]
        known = math.sqrt(a) * x_known + math.sqrt(1.0 - a) * randn(x.shape, generator, x.device, x.dtype)
        x = m * known + (1.0 - m) * step(i, x, d)
    return x  # not reached: the schedule ends at level 0


def check_inpaint_sampler(sampler: SamplerName) -> SamplerName:
    """A sampler RePaint can run: the multistep solvers' history of predictions breaks at every replacement."""
    if sampler not in INPAINT_SAMPLERS:
        raise UserError(
            f"inpainting supports the samplers {', '.join(INPAINT_SAMPLERS)}; {sampler} is a multistep "
            "solver whose history of predictions the replaced pixels and RePaint's jumps invalidate"
        )
    return sampler


# --------------------------------------------------------------------------- SDEdit
def sdedit_start(strength: float, num_timesteps: int) -> int:
    """n0 = round(S T): how many of the chain's first timesteps an SDEdit at ``strength`` S in [0, 1] keeps
    (t0 = n0 - 1 is the noisiest; 0: no edit)."""
    number_in_range("strength", strength, 0, 1)
    return round(strength * num_timesteps)


def edit_timesteps(
    num_timesteps: int, strength: float, steps: int, spacing: Spacing, alphas_cumprod: Tensor
) -> Tensor | None:
    """The kept timesteps of an SDEdit at ``strength`` S, or None when S T rounds to 0 (no edit).

    The chain is cut to its first n0 = round(S T) timesteps (t0 = n0 - 1 is the noisiest) and the
    sampler's ``spacing`` spreads max(1, round(S steps)) calls over it (at most n0): a strength-S
    edit costs about S of a full sampling, and S = 1 keeps exactly the sampler's own timesteps.
    """
    abar = as_abar(alphas_cumprod)
    n0 = sdedit_start(strength, num_timesteps)
    if n0 == 0:
        return None
    calls = min(n0, max(1, round(strength * steps)))
    return sampling_timesteps(n0, calls, spacing, abar[:n0])


def sdedit(
    denoiser: Denoiser,
    x: Tensor,
    strength: float,
    timesteps: Tensor | None,
    alphas_cumprod: Tensor,
    *,
    sampler: SamplerName = "ddpm",
    generator: Generator = None,
    callback: Callback | None = None,
    **options,
) -> Tensor:
    """SDEdit (Meng et al. 2022, Algorithm 1): x_t0 ~ q(x_t0 | x) at the first of ``timesteps``, then ``sampler``.

    ``timesteps`` come from :func:`edit_timesteps` (None: the input is returned unchanged). At
    strength 1 the start is pure noise N(0, I), drawn as the sampler itself draws it, so the edit
    is exactly unconditional sampling with the same generator.
    """
    if timesteps is None:
        return x.clone()
    check_choice("sampler", sampler, SamplerName)
    noise = randn(x.shape, generator, x.device, x.dtype)
    if strength == 1:
        x_t0 = noise
    else:
        a = float(as_abar(alphas_cumprod)[int(timesteps[0])])
        x_t0 = math.sqrt(a) * x + math.sqrt(1.0 - a) * noise
    return SAMPLERS[sampler](
        denoiser, x_t0, timesteps, alphas_cumprod, generator=generator, callback=callback, **options
    )


# --------------------------------------------------------------------------- interpolation
def slerp(a: Tensor, b: Tensor, w: float | Tensor) -> Tensor:
    """Spherical interpolation per sample: sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b.

    theta is the angle between a[i] and b[i] (flattened). Where the two have equal norms the
    result keeps that norm for every w (a Gaussian noise stays on its typical shell; a straight
    line would cut inside it); nearly parallel pairs (sin theta < 1e-6) fall back to the line.
    """
    if a.shape != b.shape:
        raise UserError(f"slerp needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp(min=1e-300)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]
    w = torch.as_tensor(w, dtype=torch.float64, device=fa.device).reshape(-1, 1)
    s = torch.sin(theta)
    near = s < 1e-6
    ca = torch.where(near, 1.0 - w, torch.sin((1.0 - w) * theta) / s.clamp(min=1e-300))
    cb = torch.where(near, w, torch.sin(w * theta) / s.clamp(min=1e-300))
    return (ca * fa + cb * fb).reshape(a.shape).to(a.dtype)


def slerp_frames(a: Tensor, b: Tensor, frames: int) -> Tensor:
    """``frames`` points from a to b (both [1, ...]) at w = 0, 1/(frames-1), ..., 1, stacked as [frames, ...]."""
    int_in_range("frames", frames, 2)
    w = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    return slerp(a.expand(frames, *a.shape[1:]), b.expand(frames, *b.shape[1:]), w)
