"""Samplers over a denoiser: ancestral DDPM, DDIM, DPM-Solver++, UniPC, and the choice of sampling timesteps.

Every sampler is a plain function ``sampler(denoiser, x_T, timesteps, alphas_cumprod, *,
generator=None, callback=None, **opts) -> x_0`` (the k-diffusion style). ``denoiser(x_t, t)``
returns a :class:`Denoised` for int64 timesteps ``t`` of shape [B] (indices of the original
schedule); it is the only way a sampler sees the network, so guidance, clipping and the
prediction type (eps, x0 or v) all live in the caller's closure. Each sampler is an update rule
over coefficients precomputed once, run by the one loop :func:`_run`.

``timesteps`` is the explicit, strictly decreasing array of kept indices (see
:func:`ddpmkit.timestep_grids.sampling_timesteps`). Sampling makes one network call per kept index, from the first
(largest) down to the last, then one final step into clean data (alpha-bar = 1): the returned
sample is the predicted x0 of the last call. Coefficients are computed once in float64 on the
host and applied as Python floats, so ``x`` may be float32 or float64 on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .errors import UserError
from .options import SamplerName, Spacing, UniPCOrder, UniPCVariant, Variance, check_choice, choices
from .schedules import StepCoefficients, step_coefficients
from .timestep_grids import as_abar, sampling_timesteps
from .validate import is_int, number_in_range

__all__ = [
    "Denoised",
    "Denoiser",
    "Spacing",
    "Variance",
    "sampling_timesteps",
    "randn",
    "seeded_generators",
    "ddpm_sample",
    "ddim_sample",
    "ddim_invert",
    "dpmpp_2m_sample",
    "dpmpp_3m_sample",
    "unipc_sample",
    "unipc_bh1_sample",
    "unipc_bh2_sample",
    "UNIPC_ORDER",
    "SAMPLERS",
    "DEFAULT_SPACING",
    "Callback",
    "Generator",
    "Update",
    "chain",
    "ancestral_update",
    "ddim_update",
    "check_eta",
    "check_unipc_order",
    "t_batch",
]


class Denoised(NamedTuple):
    """What a denoiser returns for x_t at timestep t."""

    x0: Tensor  # predicted clean data at this x_t (already clipped when clipping is on)
    eps: Tensor  # noise consistent with x0: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)
    var_frac: Tensor | None  # learned-range variance interpolation in [0, 1] (improved DDPM eq. 15)


Denoiser = Callable[[Tensor, Tensor], Denoised]
Callback = Callable[[int, int, Tensor, Denoised], None]  # (step i, timestep t, x_t, denoised)
Generator = torch.Generator | Sequence[torch.Generator] | None


# --------------------------------------------------------------------------- noise
def randn(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise; with one generator per sample, row i depends only on generator i (EDM)."""
    shape = tuple(shape)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    generators = list(generator)
    if len(shape) == 0 or len(generators) != shape[0]:
        raise UserError(f"got {len(generators)} generators for a batch of {shape[0] if shape else 0} samples")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generators]
    return torch.cat(rows).to(device)


def seeded_generators(seed: int, draws: range, device: torch.device | str) -> list[torch.Generator]:
    """One generator per draw, draw i seeded ``seed + i``: what a draw gets does not depend on the batching."""
    return [torch.Generator(device=device).manual_seed(seed + i) for i in draws]


# --------------------------------------------------------------------------- samplers
Update = Callable[[int, Tensor, Denoised], Tensor]  # (step i, x at ts[i], its Denoised) -> x at ts[i + 1]


def _run(
    denoiser: Denoiser,
    x: Tensor,
    ts: list[int],
    update: Update,
    callback: Callback | None,
    *,
    clean_at_last: bool = True,
) -> Tensor:
    """The one sampler loop: a network call at each timestep of ``ts``, the callback, then ``update``.

    With ``clean_at_last`` the last call's x0 is the result (the step into clean data, alpha-bar = 1);
    without it (inversion) every call is followed by an update and the last update's x is returned.
    """
    last = len(ts) - 1
    for i, t in enumerate(ts):
        d = denoiser(x, t_batch(t, x))
        if callback is not None:
            callback(i, t, x, d)
        if clean_at_last and i == last:
            return d.x0
        x = update(i, x, d)
    return x


def ddpm_sample(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor | Sequence[int],
    alphas_cumprod: Tensor,
    *,
    variance: Variance = "fixed_large",
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2), respaced: beta'_t = 1 - abar_t/abar_s (Nichol & Dhariwal, sec. 4).

    ``variance``: "fixed_large" sigma^2 = beta'_t, "fixed_small" sigma^2 = beta~'_t (Ho et al.
    sec. 3.2), "learned_range" log sigma^2 = v log beta'_t + (1 - v) log beta~'_t with
    v = ``denoised.var_frac`` (Nichol & Dhariwal eq. 15). The mean is the posterior mean with
    the predicted x0 (Ho et al. eq. 7); the last step returns x0 with no noise.
    """
    check_choice("variance", variance, Variance)
    ts, c = chain(timesteps, alphas_cumprod)
    return _run(denoiser, x, ts, ancestral_update(c, variance, generator), callback)


def ancestral_update(c: StepCoefficients, variance: Variance, generator: Generator) -> Update:
    """x_s = mu~(x_t, x0) + sigma z: Ho et al. eq. 7's posterior mean and the chosen variance."""
    log_beta = torch.log(c.beta).tolist()
    log_post = c.posterior_log_variance.tolist()
    coef_x0, coef_xt = c.coef_x0.tolist(), c.coef_xt.tolist()
    fixed_log_var = log_beta if variance == "fixed_large" else log_post
    fixed_std = [math.exp(0.5 * v) for v in fixed_log_var]

    def update(i: int, x: Tensor, d: Denoised) -> Tensor:
        mean = coef_x0[i] * d.x0 + coef_xt[i] * x
        noise = randn(x.shape, generator, x.device, x.dtype)
        if variance != "learned_range":
            return mean + fixed_std[i] * noise
        if d.var_frac is None:
            raise UserError("variance 'learned_range' needs a denoiser that returns var_frac")
        log_var = d.var_frac * log_beta[i] + (1.0 - d.var_frac) * log_post[i]
        return mean + torch.exp(0.5 * log_var) * noise

    return update


def ddim_sample(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor | Sequence[int],
    alphas_cumprod: Tensor,
    *,
    eta: float = 0.0,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with sigma = eta sqrt(beta~'_t) (eq. 16): eta = 0 is deterministic.

    At eta = 1 this is ancestral sampling with the posterior variance ("fixed_small") on the
    same respaced chain, drawing the same noise.
    """
    check_eta(eta)
    ts, c = chain(timesteps, alphas_cumprod)
    return _run(denoiser, x, ts, ddim_update(ts, c, alphas_cumprod, eta, generator), callback)


def check_eta(eta: float) -> float:
    """DDIM's eta, a number in [0, 1]."""
    return number_in_range("eta", eta, 0, 1)


def ddim_update(ts: list[int], c: StepCoefficients, alphas_cumprod, eta: float, generator: Generator) -> Update:
    """x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z (Song et al. 2021, eq. 12 and 16)."""
    check_eta(eta)
    abar_s = _abar_s(ts, alphas_cumprod)
    sigma2 = [eta * eta * v for v in c.posterior_variance.tolist()]
    coef_x0 = [math.sqrt(a) for a in abar_s]
    coef_eps = [math.sqrt(max(1.0 - a - v, 0.0)) for a, v in zip(abar_s, sigma2)]
    sigma = [math.sqrt(v) for v in sigma2]

    def update(i: int, x: Tensor, d: Denoised) -> Tensor:
        x_next = coef_x0[i] * d.x0 + coef_eps[i] * d.eps
        if eta > 0:
            x_next = x_next + sigma[i] * randn(x.shape, generator, x.device, x.dtype)
        return x_next

    return update


def ddim_invert(
    denoiser: Denoiser,
    x0: Tensor,
    timesteps: Tensor | Sequence[int],
    alphas_cumprod: Tensor,
    *,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic DDIM encoding x0 -> x_{t_k}: eq. 12 at eta = 0 run upwards (Song et al. 2021, sec. 4.3).

    ``timesteps`` is strictly increasing (the reverse of the sampler's). Each step from s to t
    uses the prediction at (x_s, s), an explicit Euler step of the probability-flow ODE
    (Dhariwal & Nichol 2021, app. F); the first step starts from clean data, where x0 is known
    and the noise direction is taken from the denoiser at (x0, t_1).
    """
    ts_desc, _ = chain(_reverse_increasing(timesteps), alphas_cumprod)
    ts = ts_desc[::-1]
    abar = as_abar(alphas_cumprod)[torch.tensor(ts)].tolist()
    coef_x0 = [math.sqrt(a) for a in abar]
    coef_eps = [math.sqrt(1.0 - a) for a in abar]

    def update(i: int, x: Tensor, d: Denoised) -> Tensor:  # x at ts[i - 1] (clean data at i = 0) -> x at ts[i]
        return coef_x0[i] * (d.x0 if i > 0 else x) + coef_eps[i] * d.eps

    evaluated_at = ts[:1] + ts[:-1]  # step i uses the prediction at its start, t_1 for the first
    return _run(denoiser, x0, evaluated_at, update, callback, clean_at_last=False)


def dpmpp_2m_sample(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor | Sequence[int],
    alphas_cumprod: Tensor,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) in the data-prediction form (Lu et al. 2022, arXiv 2211.01095, Algorithm 2).

    lambda = log(alpha / sigma); the first step is first order, every later one uses
    D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} with r = h_{i-1} / h_i; the step into clean data
    (sigma = 0) is first order and returns the last x0. Deterministic: ``generator`` is unused.

    The multistep extrapolation wants steps whose log-SNR lengths change gradually, as on the
    "snr_root", "logsnr", "karras", "quadratic" and "trailing" grids. On "linspace" and
    "leading" the last step is some 30 times longer in log-SNR than the one before (r << 1), and
    2M is then less accurate than DDIM on the same timesteps (tests/maths/test_samplers.py).
    """
    ts, _ = chain(timesteps, alphas_cumprod)
    return _run(denoiser, x, ts, _dpmpp_update(ts, alphas_cumprod, 2), callback)


def dpmpp_3m_sample(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor | Sequence[int],
    alphas_cumprod: Tensor,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(3M): third-order multistep exponential integrator in x0 (Lu et al. 2022, sec. 4 and app. B).

    x_t = (sigma_t/sigma_s) x_s + alpha_t [(1 - e^-h) x0 + (h - 1 + e^-h) x0' + (h^2/2 - h + 1 - e^-h) x0'']
    with x0' and x0'' (d/dlambda) from the quadratic through the last three predictions at their
    actual lambdas. Warm-up steps use 1st then 2M order; the last solver step is 2M (lower order
    final steps, Lu et al. 2022 sec. 5) and the step into clean data returns the last x0.

    The x0'' term is the full Taylor term; diffusers' third-order update (like the reference
    DPM-Solver code) has half of it and converges at order 2, this one at order 3 (both checked
    in tests/maths/test_samplers.py and tests/maths/test_samplers_diffusers.py).
    """
    ts, _ = chain(timesteps, alphas_cumprod)
    return _run(denoiser, x, ts, _dpmpp_update(ts, alphas_cumprod, 3), callback)


def _dpmpp_update(ts: list[int], alphas_cumprod, order: int, lower_order_final: bool = True) -> Update:
    """The DPM-Solver++ step x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^-h) D, D from the last ``order`` x0s."""
    alpha, sigma, lam = _alpha_sigma_lambda(ts, alphas_cumprod)
    h = [b - a for a, b in zip(lam, lam[1:])]
    phi1 = [-math.expm1(-v) for v in h]  # 1 - e^-h
    orders = [order] * len(h)  # how many past x0s each step may use
    if lower_order_final and orders:
        orders[-1] = min(order, 2)
    hist: list[tuple[float, Tensor]] = []  # (lambda, x0) of the previous calls, newest first

    def update(i: int, x: Tensor, d: Denoised) -> Tensor:
        hist.insert(0, (lam[i], d.x0))
        del hist[order:]
        D = _dpmpp_data_term(hist[: orders[i]], h[i], phi1[i])
        return (sigma[i + 1] / sigma[i]) * x + (alpha[i + 1] * phi1[i]) * D

    return update


def _dpmpp_data_term(hist: list[tuple[float, Tensor]], h: float, phi1: float) -> Tensor:
    """D of x += alpha_t phi1 D from the (lambda, x0) history, newest first: order len(hist)."""
    if len(hist) == 1:
        return hist[0][1]
    if len(hist) == 2:
        r = (hist[0][0] - hist[1][0]) / h
        return (1.0 + 0.5 / r) * hist[0][1] - (0.5 / r) * hist[1][1]
    (l0, m0), (l1, m1), (l2, m2) = hist[:3]
    h0, h1 = l0 - l1, l1 - l2
    d01, d12 = (m0 - m1) / h0, (m1 - m2) / h1
    d012 = (d01 - d12) / (h0 + h1)
    c2 = h - phi1  # h - 1 + e^-h
    c3 = 0.5 * h * h - c2  # h^2/2 - h + 1 - e^-h
    # x0' = d01 + h0 d012, x0'' = 2 d012, folded into one D with x += alpha_t phi1 D
    return m0 + (c2 / phi1) * (d01 + h0 * d012) + (2.0 * c3 / phi1) * d012


UNIPC_ORDER = 2  # the order of "unipc-bh1" and "unipc-bh2" (measured: docs/samplers.md)


def unipc_sample(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor | Sequence[int],
    alphas_cumprod: Tensor,
    *,
    variant: UniPCVariant = "bh2",
    order: int = UNIPC_ORDER,
    corrector: bool = True,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC (Zhao et al. 2023, arXiv 2302.04867, Algorithms 1-3): UniP-p predictor and UniC corrector in x0.

    Each step predicts with the last ``order`` x0s (UniP, eq. 11); at the next call the new x0,
    evaluated at the predicted point, corrects that point before the next prediction (UniC,
    eq. 12): the corrector costs no network call, so the calls equal the kept timesteps. B(h) is
    h ("bh1") or e^h - 1 ("bh2"). Warm-up steps use orders 1, 2, ..; the last two solver steps
    use at most orders 2 and 1 (``lower_order_final``), and the step into clean data returns the
    last x0 uncorrected (no call is left to correct it), as diffusers' ``UniPCMultistepScheduler``
    with ``final_sigmas_type="zero"``. ``corrector=False`` is plain UniP. Deterministic.
    """
    check_choice("UniPC variant", variant, UniPCVariant)
    check_unipc_order(order)
    ts, _ = chain(timesteps, alphas_cumprod)
    return _run(denoiser, x, ts, _unipc_update(ts, alphas_cumprod, order, variant, corrector), callback)


def check_unipc_order(order: int) -> int:
    """The UniPC order: 1, 2 or 3."""
    if not is_int(order) or order not in choices(UniPCOrder):
        raise UserError(f"the UniPC order must be 1, 2 or 3, got {order!r}")
    return order


def unipc_bh1_sample(denoiser: Denoiser, x: Tensor, timesteps, alphas_cumprod, **opts) -> Tensor:
    """UniPC with B(h) = h (the paper's choice for unconditional sampling at few steps)."""
    return unipc_sample(denoiser, x, timesteps, alphas_cumprod, variant="bh1", **opts)


def unipc_bh2_sample(denoiser: Denoiser, x: Tensor, timesteps, alphas_cumprod, **opts) -> Tensor:
    """UniPC with B(h) = e^h - 1 (the paper's and diffusers' choice for guided sampling)."""
    return unipc_sample(denoiser, x, timesteps, alphas_cumprod, variant="bh2", **opts)


def _unipc_update(ts: list[int], alphas_cumprod, order: int, variant: UniPCVariant, corrector: bool) -> Update:
    """Correct the point just evaluated (UniC, from the previous corrected point), then predict the next (UniP)."""
    alpha, sigma, lam = _alpha_sigma_lambda(ts, alphas_cumprod)
    K = len(ts)
    hist: list[tuple[float, Tensor]] = []  # (lambda, x0) of the previous calls, newest first
    last: dict = {}  # the previous call's corrected x and the order of the prediction that left it

    def update(i: int, x: Tensor, d: Denoised) -> Tensor:
        if corrector and i > 0:  # UniC-q: the nodes of the last prediction plus the new x0 at r = 1
            nodes = hist[: last["order"]]
            x = _unipc_step(last["x"], nodes, (1.0, d.x0), alpha, sigma, lam, i - 1, variant)
        hist.insert(0, (lam[i], d.x0))
        del hist[order:]
        p = min(order, i + 1, K - i)  # warm-up, then lower order in the last steps
        last.update(x=x, order=p)
        return _unipc_step(x, hist[:p], None, alpha, sigma, lam, i, variant)

    return update


def _unipc_step(
    x: Tensor,
    nodes: list[tuple[float, Tensor]],
    new: tuple[float, Tensor] | None,
    alpha: list[float],
    sigma: list[float],
    lam: list[float],
    i: int,
    variant: UniPCVariant,
) -> Tensor:
    """x at ts[i] -> x at ts[i + 1]: x_t = (sigma_t/sigma_s) x + alpha_t (1 - e^-h) m0 - alpha_t B(h) sum_k rho_k D_k.

    ``nodes`` are (lambda, x0) newest first with m0 = nodes[0] at ts[i]; D_k = (m_k - m0) / r_k with
    r_k = (lambda_k - lambda_i) / h; ``new`` adds the corrector's node at r = 1 (x0 at ts[i + 1]).
    rho solves sum_k rho_k r_k^(j-1) = b_j (j = 1..n) with b_j = j! h phi_(j+1)(-h) / B(h) in x0 form
    (eq. 8 and Theorem 3.1); a single node takes rho = 1/2, as the reference code.
    """
    h = lam[i + 1] - lam[i]
    m0 = nodes[0][1]
    diffs = [((lk - lam[i]) / h, mk) for lk, mk in nodes[1:]] + ([new] if new is not None else [])
    out = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * m0  # the DDIM (first order) step
    if not diffs:
        return out
    B = -h if variant == "bh1" else math.expm1(-h)
    rho = _unipc_rho([r for r, _ in diffs], h, B)
    corr = sum(rk * (mk - m0) / r for rk, (r, mk) in zip(rho, diffs))
    return out - (alpha[i + 1] * B) * corr


def _unipc_rho(r: list[float], h: float, B: float) -> list[float]:
    """The weights rho of UniPC's differences at nodes ``r`` (Zhao et al. 2023, eq. 8, with hh = -h)."""
    n = len(r)
    if n == 1:
        return [0.5]
    hh, fact, b = -h, 1.0, []
    g = math.expm1(hh) / hh - 1.0  # hh phi_2(hh); then hh phi_(j+1)(hh) = g_(j-1) / hh - 1/j!
    for j in range(1, n + 1):
        b.append(g * fact / B)
        fact *= j + 1
        g = g / hh - 1.0 / fact
    R = torch.tensor([[rk**j for rk in r] for j in range(n)], dtype=torch.float64)
    return torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()


# --------------------------------------------------------------------------- helpers
def _alpha_sigma_lambda(ts: list[int], alphas_cumprod) -> tuple[list[float], list[float], list[float]]:
    """alpha = sqrt(abar), sigma = sqrt(1 - abar) and lambda = log(alpha / sigma) at the kept steps."""
    abar = as_abar(alphas_cumprod)[torch.tensor(ts)].tolist()
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1.0 - a) for a in abar]
    return alpha, sigma, [math.log(al) - math.log(si) for al, si in zip(alpha, sigma)]


def _as_steps(timesteps) -> list[int]:
    t = torch.as_tensor(timesteps).detach().cpu()
    if t.ndim != 1 or t.numel() < 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise UserError("timesteps must be a non-empty 1-D array of integers")
    return [int(v) for v in t.tolist()]


def chain(timesteps: Tensor | Sequence[int], alphas_cumprod) -> tuple[list[int], StepCoefficients]:
    """Validated decreasing kept steps and each step's coefficients, in sampling order."""
    ts = _as_steps(timesteps)
    abar = as_abar(alphas_cumprod)
    T = abar.numel()
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise UserError(f"sampling timesteps must be strictly decreasing, got {ts[:8]}{'...' if len(ts) > 8 else ''}")
    if ts[0] > T - 1 or ts[-1] < 0:
        raise UserError(f"sampling timesteps must lie in [0, {T - 1}], got {ts[0]} ... {ts[-1]}")
    idx = torch.tensor(ts[::-1])  # increasing t, as step_coefficients wants
    abar_t = abar[idx]
    abar_s = torch.cat([torch.ones(1, dtype=torch.float64), abar_t[:-1]])
    c = step_coefficients(abar_t, abar_s)
    return ts, type(c)(*(v.flip(0) for v in c))


def _abar_s(ts: list[int], alphas_cumprod) -> list[float]:
    """alpha-bar of the step below each kept step: the next kept index, 1.0 after the last."""
    abar = as_abar(alphas_cumprod)
    return [float(abar[s]) for s in ts[1:]] + [1.0]


def _reverse_increasing(timesteps) -> list[int]:
    ts = _as_steps(timesteps)
    if any(a >= b for a, b in zip(ts, ts[1:])):
        raise UserError("inversion timesteps must be strictly increasing")
    return ts[::-1]


def t_batch(t: int, x: Tensor) -> Tensor:
    """Timestep t as the int64 batch [B] a denoiser takes for x."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


SAMPLERS: dict[SamplerName, Callable[..., Tensor]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm++2m": dpmpp_2m_sample,
    "dpm++3m": dpmpp_3m_sample,
    "unipc-bh1": unipc_bh1_sample,
    "unipc-bh2": unipc_bh2_sample,
}
assert tuple(SAMPLERS) == choices(SamplerName), "SAMPLERS must follow options.SamplerName"

# Each sampler's spacing when none is named, chosen by measurement (table and method: docs/samplers.md).
DEFAULT_SPACING: dict[SamplerName, Spacing] = {
    "ddpm": "snr_root",
    "ddim": "quadratic",
    "dpm++2m": "snr_root",
    "dpm++3m": "snr_root",
    "unipc-bh1": "snr_root",
    "unipc-bh2": "snr_root",
}
