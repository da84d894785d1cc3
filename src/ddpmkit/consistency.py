"""Consistency models over a trained ddpmkit diffusion, and the loss of Easy Consistency Tuning (ECT).

References: Song et al. 2023 (consistency models, arXiv 2303.01469), Song & Dhariwal 2023 (improved
consistency training, arXiv 2310.14189), Geng et al. 2024 (ECT, "Consistency Models Made Easy", arXiv
2406.14548), Karras et al. 2022 (EDM). Consistency models work with continuous VE noise levels sigma,
x_sigma = x0 + sigma n; ddpmkit's diffusion is a discrete VP chain, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n.
The two meet at x_sigma = x_t / sqrt(abar_t) with sigma_t = sqrt((1 - abar_t) / abar_t): :class:`NoiseLevels`
maps any sigma in [sigma_min, sigma_max] (the schedule's smallest and largest) to a fractional timestep by
interpolating log sigma over the schedule, for the network's sinusoidal time embedding.

Everything here takes the network as a callable ``model(x_t, t, y=None)``; the consistency function
``f(x_sigma, sigma, y=None)`` built on it is the only way the loss and the sampler see the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .editing import sdedit_start
from .errors import UserError
from .options import ConsistencyDistance as Distance
from .options import Prediction, check_choice
from .samplers import Generator, randn
from .timestep_grids import karras_sigmas
from .validate import int_in_range, positive_int

__all__ = [
    "Distance",
    "NoiseLevels",
    "ECTParams",
    "ConsistencyFn",
    "sigma_from_abar",
    "abar_from_sigma",
    "vp_from_ve",
    "ve_from_vp",
    "x0_from_output",
    "c_skip",
    "teacher_denoiser",
    "consistency_function",
    "sample_noise_levels",
    "lognormal_cdf",
    "r_from_t",
    "stage_of",
    "noised_pair",
    "capture_rng",
    "restore_rng",
    "consistency_pair",
    "stop_gradient_target",
    "distance",
    "ect_weight",
    "ect_loss",
    "ECT_MID_SIGMA",
    "sampling_sigmas",
    "consistency_sample",
    "edit_sigmas",
    "consistency_jumps",
]

ConsistencyFn = Callable[..., Tensor]  # f(x_sigma, sigma [B], y=None) -> x at sigma_min
Model = Callable[..., Tensor]


# --------------------------------------------------------------------------- noise levels
def sigma_from_abar(abar: Tensor) -> Tensor:
    """sigma = sqrt((1 - abar) / abar): the VE noise level of the VP marginal at alpha-bar (EDM, eq. 4 / table 1)."""
    return ((1.0 - abar) / abar).sqrt()


def abar_from_sigma(sigma: Tensor) -> Tensor:
    """abar = 1 / (1 + sigma^2): the inverse of :func:`sigma_from_abar`."""
    return 1.0 / (1.0 + sigma * sigma)


def _column(v: Tensor, x: Tensor) -> Tensor:
    """Per-example values [B] shaped [B, 1, ...] to broadcast over x, in x's dtype."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def vp_from_ve(x_sigma: Tensor, sigma: Tensor) -> Tensor:
    """x_t = sqrt(abar) x_sigma = x_sigma / sqrt(1 + sigma^2) (VE -> VP, EDM eq. 4 with s = sqrt(abar))."""
    return x_sigma * _column((1.0 + sigma.double() ** 2).rsqrt(), x_sigma)


def ve_from_vp(x_t: Tensor, sigma: Tensor) -> Tensor:
    """x_sigma = x_t / sqrt(abar) = x_t sqrt(1 + sigma^2) (VP -> VE)."""
    return x_t * _column((1.0 + sigma.double() ** 2).sqrt(), x_t)


class NoiseLevels:
    """The VE noise levels sigma_t of a discrete VP schedule and the continuous map sigma <-> fractional t.

    Args:
        alphas_cumprod: [T] alpha-bar of the diffusion, strictly decreasing in (0, 1).

    log sigma is interpolated linearly between neighbouring timesteps, so integer t gives sigma_t exactly;
    values outside [sigma_min, sigma_max] are clamped to the schedule's ends.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).flatten()
        if abar.numel() < 2 or not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise UserError("alphas_cumprod must be a strictly decreasing schedule of at least 2 values in (0, 1)")
        self.num_timesteps = abar.numel()
        self.log_sigmas = 0.5 * (torch.log1p(-abar) - torch.log(abar))  # increasing in t
        self.sigma_min = math.exp(float(self.log_sigmas[0]))  # sigma at t = 0
        self.sigma_max = math.exp(float(self.log_sigmas[-1]))  # sigma at t = T - 1

    def timestep(self, sigma: Tensor) -> Tensor:
        """Fractional t in [0, T-1] with log sigma_t interpolated linearly: the network's time input."""
        table = self.log_sigmas.to(sigma.device)
        s = torch.log(sigma.double()).clamp(float(table[0]), float(table[-1]))
        j = torch.searchsorted(table, s).clamp(1, self.num_timesteps - 1)
        frac = (s - table[j - 1]) / (table[j] - table[j - 1])
        return (j - 1).double() + frac

    def sigma(self, t: Tensor) -> Tensor:
        """sigma at fractional t: exp of log sigma interpolated linearly between neighbouring timesteps."""
        table = self.log_sigmas.to(t.device)
        t = t.double().clamp(0.0, self.num_timesteps - 1.0)
        j = t.floor().long().clamp(max=self.num_timesteps - 2)
        return torch.exp(table[j] + (t - j) * (table[j + 1] - table[j]))


# --------------------------------------------------------------------------- the consistency function
def x0_from_output(out: Tensor, x_sigma: Tensor, sigma: Tensor, prediction: Prediction) -> Tensor:
    """The x0 a network output implies at VE level sigma; GaussianDiffusion.x0_from_prediction at fractional t.

    eps: x0 = x_sigma - sigma eps (Ho et al. eq. 2 divided by sqrt(abar)); x0: the output;
    v: x0 = sqrt(abar) x_t - sqrt(1 - abar) v = (x_sigma - sigma sqrt(1 + sigma^2) v) / (1 + sigma^2).
    """
    s = sigma.double()
    if prediction == "eps":
        return x_sigma - _column(s, x_sigma) * out
    if prediction == "x0":
        return out
    return (x_sigma - _column(s * (1.0 + s * s).sqrt(), x_sigma) * out) * _column(1.0 / (1.0 + s * s), x_sigma)


def c_skip(sigma: Tensor, sigma_min: float) -> Tensor:
    """c_skip = sigma_min / sigma: f = c_skip x + (1 - c_skip) D is one DDIM (Euler) step of the PF-ODE to sigma_min.

    c_skip(sigma_min) = 1 exactly (the boundary condition, Song et al. 2023 eq. 5), and at initialisation from a
    teacher f is the teacher's one-call DDIM to sigma_min, within sigma_min times the predicted noise of its x0.
    """
    return sigma_min / sigma.double()


def teacher_denoiser(
    model: Model, levels: NoiseLevels, prediction: Prediction = "eps", learned_range: bool = False, clip: bool = False
) -> Callable[..., Tensor]:
    """D(x_sigma, sigma, y=None): the network's x0 at continuous level sigma (its time input fractional).

    ``learned_range``: the network also outputs variances (twice the channels); only the prediction is used.
    ``clip``: clamp x0 to [-1, 1] (image data), as the samplers' clip_denoised.
    """
    check_choice("prediction", prediction, Prediction)

    def denoise(x_sigma: Tensor, sigma: Tensor, y: Tensor | None = None) -> Tensor:
        x_t = vp_from_ve(x_sigma, sigma)
        t = levels.timestep(sigma).to(device=x_sigma.device, dtype=x_sigma.dtype)
        out = model(x_t, t) if y is None else model(x_t, t, y)
        if learned_range:
            out = out.chunk(2, dim=1)[0]
        x0 = x0_from_output(out, x_sigma, sigma, prediction)
        return x0.clamp(-1.0, 1.0) if clip else x0

    return denoise


def consistency_function(
    model: Model, levels: NoiseLevels, prediction: Prediction = "eps", learned_range: bool = False, clip: bool = False
) -> ConsistencyFn:
    """f(x_sigma, sigma, y=None) = c_skip x + (1 - c_skip) D(x, sigma), with f(x, sigma_min) = x exactly.

    With an eps-predicting network the x0 error is sigma times the eps error (157 times at sigma_max of the
    linear T = 1000 schedule); x0- and v-prediction keep it bounded, and ``clip`` bounds it for image data.
    """
    denoise = teacher_denoiser(model, levels, prediction, learned_range, clip)

    def f(x_sigma: Tensor, sigma: Tensor, y: Tensor | None = None) -> Tensor:
        skip = _column(c_skip(sigma, levels.sigma_min), x_sigma)
        return skip * x_sigma + (1.0 - skip) * denoise(x_sigma, sigma, y)

    return f


# --------------------------------------------------------------------------- ECT's pieces
@dataclass(frozen=True)
class ECTParams:
    """ECT's settings (Geng et al. 2024, sec. 3 and their code's defaults)."""

    p_mean: float = -1.1  # mean of log sigma_t (lognormal noise levels, EDM sec. 5)
    p_std: float = 2.0  # std of log sigma_t
    q: float = 2.0  # Delta t shrinks by q at every stage
    k: float = 8.0  # r(t)'s sigmoid adjustment: size
    b: float = 1.0  # r(t)'s sigmoid adjustment: steepness in sigma
    distance: Distance = "l2"
    huber_c: float | None = None  # pseudo-Huber's c; None: 0.00054 sqrt(d) (Song & Dhariwal 2023, sec. 3.3)

    def __post_init__(self) -> None:
        check_choice("distance", self.distance, Distance)
        finite = all(math.isfinite(v) for v in (self.p_mean, self.p_std, self.q, self.k, self.b))
        if not finite or not self.p_std > 0 or not self.q > 1 or not self.k >= 0 or not self.b >= 0:  # NaN fails too
            raise UserError(f"ECT needs a finite p_mean, p_std > 0, q > 1, k >= 0 and b >= 0, got {self}")
        if self.huber_c is not None and not self.huber_c > 0:
            raise UserError(f"the pseudo-Huber constant c must be positive, got {self.huber_c}")


def lognormal_cdf(sigma: Tensor, p_mean: float, p_std: float) -> Tensor:
    """P(sigma_t <= sigma) for log sigma_t ~ N(p_mean, p_std^2), untruncated."""
    return torch.special.ndtr((torch.log(sigma.double()) - p_mean) / p_std)


def sample_noise_levels(
    n: int,
    levels: NoiseLevels,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """sigma_t with log sigma_t ~ N(p_mean, p_std^2) truncated to [sigma_min, sigma_max] (EDM eq. 7), float64 [n].

    Drawn by inverting the CDF over the truncated range, so no draw sits on an end (where t - r would vanish).
    """
    lo, hi = (lognormal_cdf(torch.tensor(s), p_mean, p_std) for s in (levels.sigma_min, levels.sigma_max))
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
    u = lo + (hi - lo) * u.clamp(1e-12, 1 - 1e-12)
    sigma = torch.exp(p_mean + p_std * torch.special.ndtri(u))
    return sigma.clamp(levels.sigma_min, levels.sigma_max).to(device or gen_device)


def r_from_t(sigma_t: Tensor, stage: int, sigma_min: float, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), clamped to >= sigma_min (ECT's mapping, sec. 3 eq. 9)."""
    int_in_range("the ECT stage", stage, 0)
    t = sigma_t.double()
    ratio = 1.0 - q ** -(stage + 1) * (1.0 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp(min=sigma_min)


def stage_of(step: int, steps_per_stage: int) -> int:
    """The ECT stage at a tuning step: Delta t shrinks by q every ``steps_per_stage`` steps (ECT's "double")."""
    positive_int("steps per stage", steps_per_stage)
    return step // steps_per_stage


def noised_pair(x0: Tensor, noise: Tensor, sigma_t: Tensor, sigma_r: Tensor) -> tuple[Tensor, Tensor]:
    """x_t = x0 + t n and x_r = x0 + r n with ONE noise n (consistency training, Song et al. 2023 eq. 10)."""
    return x0 + _column(sigma_t, x0) * noise, x0 + _column(sigma_r, x0) * noise


def capture_rng(device: torch.device | str) -> tuple[Tensor, Tensor | None]:
    """The CPU generator's state and, on a CUDA device, that device's: what dropout draws from."""
    device = torch.device(device)
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def restore_rng(state: tuple[Tensor, Tensor | None], device: torch.device | str) -> None:
    """Put back a :func:`capture_rng` state, so the next network call draws the same dropout masks."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], torch.device(device))


def consistency_pair(
    f: ConsistencyFn,
    x0: Tensor,
    noise: Tensor,
    sigma_t: Tensor,
    sigma_r: Tensor,
    sigma_min: float,
    y: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(f(x_t, t), sg f(x_r, r)): the prediction with gradients and the stop-gradient target (ECT eq. 8).

    Both calls draw the same dropout masks (the RNG is restored between them, CPU and CUDA); where r = sigma_min
    the target is x_r itself, the boundary condition, with no call.
    """
    x_t, x_r = noised_pair(x0, noise, sigma_t, sigma_r)
    state = capture_rng(x0.device)
    pred = f(x_t, sigma_t, y)
    restore_rng(state, x0.device)
    return pred, stop_gradient_target(f, x_r, sigma_r, sigma_min, y)


def stop_gradient_target(
    f: ConsistencyFn, x_r: Tensor, sigma_r: Tensor, sigma_min: float, y: Tensor | None = None
) -> Tensor:
    """sg f(x_r, r), and x_r itself where r = sigma_min (f(x, sigma_min) = x): no gradient flows through it."""
    with torch.no_grad():
        target = torch.nan_to_num(f(x_r, sigma_r, y))
    at_boundary = _column(sigma_r <= sigma_min, x_r).bool()
    return torch.where(at_boundary, x_r, target).detach()


def distance(a: Tensor, b: Tensor, kind: Distance = "l2", c: float | None = None) -> Tensor:
    """Per-example ||a - b||_2 (ECT) or sqrt(||a - b||^2 + c^2) - c (pseudo-Huber, Song & Dhariwal 2023 eq. 9), [B]."""
    check_choice("distance", kind, Distance)
    diff = (a - b).reshape(a.shape[0], -1)
    if diff.dtype not in (torch.float32, torch.float64):
        diff = diff.float()  # bf16/fp16 networks: the distance in float32
    if kind == "l2":
        return torch.linalg.vector_norm(diff, dim=1)
    c = 0.00054 * math.sqrt(diff.shape[1]) if c is None else c
    return torch.sqrt((diff * diff).sum(dim=1) + c * c) - c


def ect_weight(sigma_t: Tensor, sigma_r: Tensor) -> Tensor:
    """w(t, r) = 1 / (t - r): ECT's weighting (sec. 3, "weighting function")."""
    return 1.0 / (sigma_t.double() - sigma_r.double())


def ect_loss(
    f: ConsistencyFn,
    x0: Tensor,
    levels: NoiseLevels,
    stage: int,
    params: ECTParams = ECTParams(),
    *,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma_t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """ECT's loss per example [B]: w(t, r) d(f(x_t, t), sg f(x_r, r)) (Geng et al. 2024, eq. 8).

    sigma_t is drawn lognormal (:func:`sample_noise_levels`), r = :func:`r_from_t` at ``stage``, one noise for
    both points; ``sigma_t`` and ``noise`` may be given instead (tests, or a caller's own draws).
    """
    B = x0.shape[0]
    if sigma_t is None:
        sigma_t = sample_noise_levels(B, levels, params.p_mean, params.p_std, generator, x0.device)
    sigma_t = sigma_t.to(x0.device, torch.float64)
    if noise is None:
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
    sigma_r = r_from_t(sigma_t, stage, levels.sigma_min, params.q, params.k, params.b)
    pred, target = consistency_pair(f, x0, noise, sigma_t, sigma_r, levels.sigma_min, y)
    d = distance(pred, target, params.distance, params.huber_c)
    return d * ect_weight(sigma_t, sigma_r).to(d.dtype)


# --------------------------------------------------------------------------- sampling
ECT_MID_SIGMA = 0.821  # the two-call sampler's intermediate level (Song & Dhariwal 2023; ECT's default mid_t)


def sampling_sigmas(levels: NoiseLevels, calls: int, mid: Sequence[float] | None = None) -> Tensor:
    """The levels of a ``calls``-call consistency sampler, float64, starting at sigma_max.

    ``mid`` gives the calls - 1 intermediate levels; by default ECT's 0.821 for two calls and, for more, the
    Karras rho = 7 grid between sigma_max and sigma_min (its first ``calls`` points).
    """
    positive_int("the consistency sampler's calls", calls)
    if mid is None:
        if calls == 2:
            mid = [ECT_MID_SIGMA]
        else:
            at = torch.arange(calls + 1, dtype=torch.float64) / calls
            mid = karras_sigmas(levels.sigma_max, levels.sigma_min, at)[1:calls].tolist()
    sig = torch.tensor([levels.sigma_max, *mid], dtype=torch.float64)
    if len(mid) != calls - 1 or not bool((sig[1:] < sig[:-1]).all()) or float(sig[-1]) <= levels.sigma_min:
        raise UserError(
            f"need {calls - 1} intermediate levels, decreasing from below sigma_max "
            f"{levels.sigma_max:.4g} to above sigma_min {levels.sigma_min:.4g}, got {list(mid)}"
        )
    return sig


def consistency_sample(
    f: ConsistencyFn,
    x_T: Tensor,
    sigmas: Tensor,
    sigma_min: float,
    *,
    y: Tensor | None = None,
    generator: Generator = None,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): one call per level of ``sigmas``.

    ``x_T`` is the VP prior's noise N(0, I) (as every ddpmkit sampler's), so x_sigma_max = x_T sqrt(1 + sigma_max^2);
    then x <- f(x, sigma_i) and, before each later call, x <- x + sqrt(sigma_i^2 - sigma_min^2) z.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    return consistency_jumps(f, ve_from_vp(x_T, sigmas[:1].expand(x_T.shape[0])), sigmas, sigma_min, y, generator)


def edit_sigmas(levels: NoiseLevels, strength: float, calls: int) -> Tensor | None:
    """The levels of a ``calls``-call consistency SDEdit at ``strength`` S, or None when S T rounds to 0 (no edit).

    The first is sigma at t0 = round(S T) - 1, the noisiest timestep a diffusion SDEdit of that strength keeps
    (:func:`ddpmkit.editing.edit_timesteps`); later calls follow the Karras rho = 7 grid from it to sigma_min.
    """
    n0 = sdedit_start(strength, levels.num_timesteps)
    positive_int("the consistency edit's calls", calls)
    if n0 == 0:
        return None
    top = float(levels.sigma(torch.tensor(float(n0 - 1))))
    return karras_sigmas(top, levels.sigma_min, torch.arange(calls, dtype=torch.float64) / calls)


def consistency_jumps(
    f: ConsistencyFn, x: Tensor, sigmas: Tensor, sigma_min: float, y: Tensor | None = None, generator: Generator = None
) -> Tensor:
    """From x at VE level sigmas[0]: x <- f(x, sigma_0); then for each later level, re-noise to it
    (x + sqrt(sigma_i^2 - sigma_min^2) z) and map. SDEdit (Meng et al. 2022) starts it at x0 + sigma_0 z."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    B = x.shape[0]
    for i, s in enumerate(sigmas.tolist()):
        sigma = torch.full((B,), s, dtype=torch.float64, device=x.device)
        if i > 0:
            x = x + math.sqrt(s * s - sigma_min * sigma_min) * randn(x.shape, generator, x.device, x.dtype)
        x = f(x, sigma, y)
    return x
