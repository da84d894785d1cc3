"""Samplers and sampling timesteps, checked against exact answers: the closed-form timestep
formulas, the exact noise predictor of a Gaussian mixture (``GaussianMixtureOracle``), the
analytic probability-flow map of a Gaussian, direct step-by-step computations, and the plain
one-step-at-a-time ancestral loop of ``GaussianDiffusion``.

Everything runs in float64 on 2-D data. Statistical tolerances are Z standard errors of the
estimate at the test's sample size (Z = 5: a false alarm has odds below 1e-6 per check); each
such check is paired with a run that the same check must reject, so none passes vacuously.
"""

import math
import re
from typing import get_args

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit import GaussianDiffusion, UserError
from ddpmkit import samplers as S
from ddpmkit.options import SamplerName, choices
from ddpmkit.oracles import GaussianMixtureOracle

T = 1000
BETAS = ddpmkit.linear_beta_schedule(T)
ABAR = torch.cumprod(1.0 - BETAS, 0)
SPACINGS = get_args(S.Spacing)
Z = 5.0  # standard errors allowed by every statistical check
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def exact_flow_output(oracle, x_T, timesteps):
    """What an exact ODE solver over ``timesteps`` returns for Gaussian data N(m, C): the flow
    x~_s - m = (C + s^2)^(1/2) (C + s_T^2)^(-1/2) (x~_T - m) in x~ = x / sqrt(abar),
    s^2 = (1 - abar) / abar, from the first kept index to the last, then E[x0 | x] there."""
    m, lam, U = oracle.means[0], oracle._lam[0], oracle._U[0]
    a_T, a_0 = ABAR[timesteps[0]], ABAR[timesteps[-1]]
    s2_T, s2_0 = (1 - a_T) / a_T, (1 - a_0) / a_0
    z = (x_T / a_T.sqrt() - m) @ U
    return m + (z * lam / ((lam + s2_0) * (lam + s2_T)).sqrt()) @ U.T


def rms(a, b):
    return float((a - b).norm(dim=1).pow(2).mean().sqrt())


# =========================================================================== timesteps
CASES = [(1000, 2), (1000, 10), (1000, 20), (1000, 50), (1000, 999), (50, 7), (37, 36), (10, 3)]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("T_, k", CASES)
def test_timesteps_are_strictly_decreasing_in_range_with_documented_ends(spacing, T_, k):
    abar = torch.cumprod(1 - ddpmkit.linear_beta_schedule(T_), 0)
    t = S.sampling_timesteps(T_, k, spacing, abar)
    assert t.dtype == torch.int64 and t.shape == (k,)
    assert bool((t[1:] < t[:-1]).all())
    assert 0 <= int(t[-1]) and int(t[0]) <= T_ - 1
    if spacing in ("linspace", "trailing", "logsnr", "karras", "snr_root"):
        assert int(t[0]) == T_ - 1
    if spacing in ("linspace", "leading", "quadratic", "logsnr", "karras", "snr_root"):
        assert int(t[-1]) == 0
    if spacing == "trailing":
        assert int(t[-1]) == round(T_ / k) - 1
    if spacing == "leading":
        assert int(t[0]) == (k - 1) * (T_ // k)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_all_steps_is_the_full_chain(spacing):
    assert S.sampling_timesteps(T, T, spacing, ABAR).tolist() == list(range(T - 1, -1, -1))
    assert S.sampling_timesteps(T, 1, spacing, ABAR).numel() == 1


def _np_log_snr_grid(grid_in_log_snr, k):
    """Independent numpy version of the log-SNR based spacings: grid -> t by np.interp, rounded, made distinct."""
    a = ABAR.numpy()
    lam = np.log(a) - np.log1p(-a)
    target = grid_in_log_snr(lam[-1], lam[0], np.arange(k) / (k - 1))
    t = np.interp(target, lam[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))
    t[0], t[-1] = T - 1, 0
    return _np_distinct(np.round(t).astype(np.int64)[::-1])[::-1]


def _np_distinct(increasing):
    """Equal neighbours pushed up by one (the documented collision rule)."""
    u = list(increasing)
    for j in range(1, len(u)):
        u[j] = max(u[j], u[j - 1] + 1)
    return u


REFERENCE = {
    # the note / diffusers / DDIM-repo formulas, written independently with numpy
    "linspace": lambda k: np.linspace(0, T - 1, k).round()[::-1].astype(int).tolist(),
    "leading": lambda k: (np.arange(k) * (T // k))[::-1].tolist(),
    "trailing": lambda k: (np.round(np.arange(T, 0, -T / k)).astype(int) - 1).tolist(),
    # the DDIM repository's formula; it repeats 0 from k = 37 on, where ours keeps 0, 1, ...
    "quadratic": lambda k: _np_distinct([int(s) for s in (np.linspace(0, np.sqrt(T * 0.8), k) ** 2)])[::-1],
    "logsnr": lambda k: _np_log_snr_grid(lambda lo, hi, u: lo + u * (hi - lo), k),
    "karras": lambda k: _np_log_snr_grid(
        lambda lo, hi, u: -2 * 7 * np.log(np.exp(-lo / 14) + u * (np.exp(-hi / 14) - np.exp(-lo / 14))), k
    ),
    "snr_root": lambda k: _np_log_snr_grid(
        lambda lo, hi, u: 8 * np.log(np.exp(lo / 8) + u * (np.exp(hi / 8) - np.exp(lo / 8))), k
    ),
}


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("k", [10, 20, 37])
def test_timesteps_match_independent_formulas(spacing, k):
    assert S.sampling_timesteps(T, k, spacing, ABAR).tolist() == REFERENCE[spacing](k)


def test_known_timesteps():
    assert S.sampling_timesteps(T, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert S.sampling_timesteps(T, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert S.sampling_timesteps(T, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert S.sampling_timesteps(T, 10, "quadratic").tolist() == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]


@pytest.mark.parametrize("spacing", ["quadratic", "logsnr", "karras", "snr_root"])
def test_rounding_collisions_are_resolved(spacing):
    # at 300 of 1000 steps these grids round several kept indices near t = 0 to the same integer
    t = S.sampling_timesteps(T, 300, spacing, ABAR)
    assert t.unique().numel() == 300 and bool((t[1:] < t[:-1]).all())


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_timesteps=1000, steps=0),
        dict(num_timesteps=1000, steps=1001),
        dict(num_timesteps=1000, steps=2.5),
        dict(num_timesteps=1000, steps=True),
        dict(num_timesteps=0, steps=1),
        dict(num_timesteps=10.0, steps=2),
        dict(num_timesteps=1000, steps=10, spacing="cosine"),
        dict(num_timesteps=1000, steps=10, spacing="logsnr"),  # needs alphas_cumprod
        dict(num_timesteps=1000, steps=10, spacing="snr_root"),
        dict(num_timesteps=1000, steps=10, spacing="karras"),
        dict(num_timesteps=1000, steps=10, spacing="logsnr", alphas_cumprod=ABAR[:500]),
        dict(num_timesteps=1000, steps=10, spacing="logsnr", alphas_cumprod=ABAR.flip(0)),
    ],
)
def test_bad_timestep_requests_raise(bad):
    with pytest.raises(UserError):
        S.sampling_timesteps(**bad)


@pytest.mark.parametrize("bad", [[5, 5, 0], [3, 7], [1000, 0], [2, -1], [[3, 2]], [], [3.0, 1.0]])
def test_samplers_reject_bad_timesteps(gaussian, bad):
    with pytest.raises(UserError):
        S.ddim_sample(gaussian.denoise, torch.zeros(2, 2, dtype=F64), torch.tensor(bad), ABAR)


def test_default_spacing_names_every_sampler():
    assert set(S.DEFAULT_SPACING) == set(S.SAMPLERS)
    assert all(v in SPACINGS for v in S.DEFAULT_SPACING.values())


# =========================================================================== sampler accuracy
# The discrete samplers converge to slightly biased limits: ancestral sampling with a fixed
# reverse variance is not the exact reverse process even at T steps (Ho et al. 2020, sec. 3.2:
# beta and beta~ are the extremes; measured on this mixture at T = 1000: stds 2% low with
# fixed_small), and the ODE solvers keep the integer grid's coarse steps near t = 0. Measured
# with 60 000 samples at the step counts used below: means within 0.036 and stds within 0.022
# of exact (in units of each axis's std), weights within 0.008. Hence the allowances.
MEAN_ALLOWANCE = STD_ALLOWANCE = 0.04  # in units of the axis's std (means) and as a ratio (stds)
WEIGHT_ALLOWANCE = 0.01


def mixture_mismatches(oracle, x):
    """Checks of component weights, means and stds (along the true principal axes) that fail
    beyond Z standard errors for this sample size plus the allowance; returns the failing ones."""
    n = x.shape[0]
    k = oracle.component_of(x)
    bad = []
    for j in range(oracle.num_components):
        w = float(oracle.weights[j])
        xs = x[k == j]
        freq = xs.shape[0] / n
        if abs(freq - w) > Z * math.sqrt(w * (1 - w) / n) + WEIGHT_ALLOWANCE:
            bad.append(f"weight {j}: {freq:.4f} vs {w:.4f}")
        if xs.shape[0] < 10:
            continue
        z = (xs - oracle.means[j]) @ oracle._U[j] / oracle._lam[j].sqrt()  # standardised coordinates
        se_mean = 1 / math.sqrt(xs.shape[0])  # per axis, in units of that axis's std
        se_std = 1 / math.sqrt(2 * (xs.shape[0] - 1))  # relative standard error of a std estimate
        for ax in range(z.shape[1]):
            if abs(float(z[:, ax].mean())) > Z * se_mean + MEAN_ALLOWANCE:
                bad.append(f"mean {j}/{ax}: {float(z[:, ax].mean()):+.4f} std units (tol {Z * se_mean:.4f} + allow.)")
            if abs(float(z[:, ax].std()) - 1) > Z * se_std + STD_ALLOWANCE:
                bad.append(f"std {j}/{ax}: ratio {float(z[:, ax].std()):.4f} (tol {Z * se_std:.4f} + allowance)")
    return bad


ACCURATE = [  # (sampler, options, steps): enough steps for the allowances above
    ("ddpm", dict(variance="fixed_large"), 250),
    ("ddpm", dict(variance="fixed_small"), 250),
    ("ddim", dict(eta=0.0), 400),
    ("ddim", dict(eta=1.0), 250),
    ("dpm++2m", {}, 100),
    ("dpm++3m", {}, 100),
]


@pytest.mark.parametrize("sampler, opts, steps", ACCURATE, ids=lambda v: str(v))
def test_sampler_reproduces_the_mixture(mixture, sampler, opts, steps):
    d = GaussianDiffusion(BETAS, variance=opts.get("variance", "fixed_large"))
    x = d.sample(mixture, (8000, 2), sampler=sampler, steps=steps, eta=opts.get("eta"), generator=_gen(11), dtype=F64)
    assert mixture_mismatches(mixture, x) == []


@pytest.mark.parametrize("sampler, steps", [("ddpm", 10), ("ddim", 10), ("dpm++2m", 8)])
def test_the_mixture_check_rejects_a_coarse_sampler(mixture, sampler, steps):
    # the same check and sample size must see the error of a too-coarse chain
    d = GaussianDiffusion(BETAS)
    x = d.sample(mixture, (8000, 2), sampler=sampler, steps=steps, spacing="linspace", generator=_gen(11), dtype=F64)
    assert len(mixture_mismatches(mixture, x)) >= 2


def test_exact_samples_pass_the_mixture_check(mixture):
    assert mixture_mismatches(mixture, mixture.sample(8000, _gen(5))) == []


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "dpm++3m"])
def test_ode_error_falls_as_steps_grow(gaussian, sampler):
    x_T = torch.randn(2000, 2, generator=_gen(0), dtype=F64)
    errors = []
    for k in (20, 40, 80, 160):
        ts = S.sampling_timesteps(T, k, S.DEFAULT_SPACING[sampler], ABAR)
        errors.append(rms(S.SAMPLERS[sampler](gaussian.denoise, x_T, ts, ABAR), exact_flow_output(gaussian, x_T, ts)))
    assert all(b < 0.8 * a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.02  # data std is about 0.4


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ancestral_error_falls_as_steps_grow(mixture, variance):
    d = GaussianDiffusion(BETAS, variance=variance)
    errors = []
    for k in (5, 10, 25, 100):
        fit = mixture.compare(d.sample(mixture, (8000, 2), sampler="ddpm", steps=k, generator=_gen(2), dtype=F64))
        errors.append(fit.mean_error + fit.std_error)
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:])), errors
    # at 100 steps within a few times the error that exact samples of the same size show
    noise = np.mean([sum(mixture.compare(mixture.sample(8000, _gen(s)))[1:]) for s in range(3)])
    assert errors[-1] < 3 * noise, (errors, noise)


def _observed_orders(sampler):
    """Global convergence order on a uniform log-SNR grid, for a denoiser whose x0 prediction is a
    known smooth function of lambda only: the exact solution is the exponential integral
    x(lam) = (sigma/sigma_s) x_s + alpha int e^-(lam - l) x0(l) dl (Lu et al. 2022, eq. 9)."""
    n = 2561
    lam = torch.linspace(-3, 3, n, dtype=F64).flip(0)  # lambda = log(alpha / sigma), decreasing in t
    abar = torch.sigmoid(2 * lam)
    c = torch.tensor([[0.3, -0.7]], dtype=F64)

    def x0_of(l):
        return torch.tanh(l)[:, None] * c + 0.2 * torch.sin(2 * l)[:, None]

    def den(x, t):
        x0, a = x0_of(lam[t]), abar[t][:, None]
        return S.Denoised(x0, (x - a.sqrt() * x0) / (1 - a).sqrt(), None)

    x_T = torch.randn(4, 2, generator=_gen(0), dtype=F64)
    grid = torch.linspace(float(lam[-1]), float(lam[0]), 400001, dtype=F64)
    integral = torch.trapezoid(torch.exp(-(lam[0] - grid))[:, None] * x0_of(grid), grid, dim=0)
    exact = (1 - abar[0]).sqrt() / (1 - abar[-1]).sqrt() * x_T + abar[0].sqrt() * integral
    errors = []
    for k in (41, 81, 161):  # (n - 1) / (k - 1) is an integer: exactly uniform steps in lambda
        seen = {}
        S.SAMPLERS[sampler](
            den, x_T, S.sampling_timesteps(n, k, "linspace"), abar, callback=lambda i, t, x, d: seen.__setitem__("x", x)
        )
        errors.append(float((seen["x"] - exact).abs().max()))  # the state at the last network call
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpm++2m", 2), ("dpm++3m", 3)])
def test_convergence_order(sampler, order):
    observed = _observed_orders(sampler)
    assert all(order - 0.3 < p < order + 0.8 for p in observed), observed


def test_dpmpp_beats_ddim_at_20_steps(gaussian):
    ring = GaussianMixtureOracle.ring(ABAR, std=0.05)
    d = GaussianDiffusion(BETAS)
    err = {}
    for s in ("ddim", "dpm++2m", "dpm++3m"):
        fit = ring.compare(d.sample(ring, (10000, 2), sampler=s, steps=20, generator=_gen(3), dtype=F64))
        err[s] = fit.mean_error + fit.std_error
    assert err["dpm++2m"] < 0.5 * err["ddim"] and err["dpm++3m"] < 0.5 * err["ddim"], err
    # and on the very same timesteps, against the exact flow of a Gaussian. Not on "linspace" or
    # "leading": their last log-SNR step is ~30 times the one before it, where the multistep
    # extrapolation (1 + 1/(2r)) x0_i - x0_{i-1}/(2r) with r << 1 loses to DDIM.
    x_T = torch.randn(2000, 2, generator=_gen(0), dtype=F64)
    for spacing in ("trailing", "quadratic", "logsnr", "karras", "snr_root"):
        ts = S.sampling_timesteps(T, 20, spacing, ABAR)
        exact = exact_flow_output(gaussian, x_T, ts)
        e_ddim = rms(S.ddim_sample(gaussian.denoise, x_T, ts, ABAR), exact)
        e_2m = rms(S.dpmpp_2m_sample(gaussian.denoise, x_T, ts, ABAR), exact)
        assert e_2m < 0.5 * e_ddim, (spacing, e_2m, e_ddim)


# =========================================================================== identities
def test_ddim_eta_one_is_respaced_ancestral_with_posterior_variance(mixture):
    ts = S.sampling_timesteps(T, 15, "snr_root", ABAR)
    x_T = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    a = S.ddim_sample(mixture.denoise, x_T, ts, ABAR, eta=1.0, generator=_gen(9))
    b = S.ddpm_sample(mixture.denoise, x_T, ts, ABAR, variance="fixed_small", generator=_gen(9))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    c = S.ddpm_sample(mixture.denoise, x_T, ts, ABAR, variance="fixed_large", generator=_gen(9))
    assert float((a - c).abs().max()) > 1e-3  # the identity is specific to fixed_small
    gens = [_gen(i) for i in range(64)]
    a = S.ddim_sample(mixture.denoise, x_T, ts, ABAR, eta=1.0, generator=gens)
    b = S.ddpm_sample(mixture.denoise, x_T, ts, ABAR, variance="fixed_small", generator=[_gen(i) for i in range(64)])
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_ddim_inversion_round_trip(gaussian):
    x0 = gaussian.sample(2000, _gen(1))
    errors = []
    for k in (100, 200):
        ts = S.sampling_timesteps(T, k, "linspace")
        x_T = S.ddim_invert(gaussian.denoise, x0, ts.flip(0), ABAR)
        errors.append(rms(S.ddim_sample(gaussian.denoise, x_T, ts, ABAR), x0))
        # the encoding is (close to) the standard normal prior
        assert float(x_T.mean(0).abs().max()) < 0.1 and abs(float(x_T.std(0).mean()) - 1) < 0.1
    assert errors[0] < 0.05 and errors[1] < 0.6 * errors[0], errors  # first order: halves with twice the steps
    with pytest.raises(UserError):
        S.ddim_invert(gaussian.denoise, x0, ts, ABAR)  # decreasing timesteps


def _learned_variance_model(oracle):
    """eps from the oracle and a variance output v in (-1, 1) that depends on x and t."""

    def model(x, t, y=None):
        v = torch.tanh(x.sum(1, keepdim=True) + t[:, None].to(x.dtype) / 500 - 1).expand_as(x)
        return torch.cat([oracle(x, t), v], dim=1)

    return model


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small", "learned_range"])
def test_all_steps_equals_the_plain_p_sample_loop(variance):
    betas = ddpmkit.linear_beta_schedule(50, beta_end=0.2)
    d = GaussianDiffusion(betas, variance=variance)
    oracle = GaussianMixtureOracle.ring(d.alphas_cumprod, num=4, radius=1.0, std=0.2)
    model = _learned_variance_model(oracle) if variance == "learned_range" else oracle
    spacing = "snr_root"  # any spacing: k == T is the full chain
    a = d.sample(model, (32, 2), sampler="ddpm", steps=50, spacing=spacing, generator=_gen(4), dtype=F64)
    g = _gen(4)
    x = S.randn((32, 2), g, dtype=F64)
    for t in range(49, -1, -1):
        x = d.p_sample(model, x, torch.full((32,), t), generator=g)
    torch.testing.assert_close(a, x, rtol=1e-12, atol=1e-12)
    # a respaced chain is a different chain
    b = d.sample(model, (32, 2), sampler="ddpm", steps=25, generator=_gen(4), dtype=F64)
    assert float((a - b).abs().max()) > 1e-3


def test_respaced_learned_range_variance_is_interpolated_in_log_space():
    ts = [999, 700, 420, 150, 30, 0]
    x_T = torch.randn(16, 3, generator=_gen(0), dtype=F64)

    def den(x, t):  # an arbitrary x0, its consistent eps and a variance fraction in (0, 1)
        a = ABAR[t][:, None]
        x0 = torch.sin(x) * 0.7
        return S.Denoised(x0, (x - a.sqrt() * x0) / (1 - a).sqrt(), torch.sigmoid(x + t[:, None] / 300))

    states = []
    out = S.ddpm_sample(
        den, x_T, ts, ABAR, variance="learned_range", generator=_gen(8), callback=lambda i, t, x, d: states.append(x)
    )
    g = _gen(8)
    x = x_T
    for i, (t, s) in enumerate(zip(ts, ts[1:])):
        torch.testing.assert_close(states[i], x, rtol=1e-12, atol=1e-12)
        a_t, a_s = float(ABAR[t]), float(ABAR[s])
        beta = 1 - a_t / a_s  # beta'_t of the respaced chain
        beta_tilde = (1 - a_s) / (1 - a_t) * beta
        d = den(x, torch.full((16,), t))
        mean = math.sqrt(a_s) * beta / (1 - a_t) * d.x0 + math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t) * x
        log_var = d.var_frac * math.log(beta) + (1 - d.var_frac) * math.log(beta_tilde)
        x = mean + torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=g, dtype=F64)
    torch.testing.assert_close(states[-1], x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, den(x, torch.full((16,), 0)).x0)
    with pytest.raises(UserError):  # learned_range needs a variance output
        S.ddpm_sample(lambda x, t: den(x, t)._replace(var_frac=None), x_T, ts, ABAR, variance="learned_range")


def test_learned_range_through_the_diffusion_uses_the_model_variance_output():
    d = GaussianDiffusion(BETAS, variance="learned_range")
    oracle = GaussianMixtureOracle.ring(ABAR, std=0.2)
    model = _learned_variance_model(oracle)
    ts = S.sampling_timesteps(T, 6, "snr_root", ABAR)
    a = d.sample(model, (16, 2), sampler="ddpm", steps=6, generator=_gen(1), dtype=F64)

    def den(x, t):
        v = model(x, t)[:, 2:]
        return S.Denoised(oracle.x0_prediction(x, t), oracle(x, t), (v + 1) / 2)

    g = _gen(1)
    b = S.ddpm_sample(den, S.randn((16, 2), g, dtype=F64), ts, ABAR, variance="learned_range", generator=g)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "sampler, eta", [("ddpm", None), ("ddim", 1.0), ("ddim", 0.0), ("dpm++2m", None), ("dpm++3m", None)]
)
def test_per_sample_generators_make_samples_independent_of_batch_size(mixture, sampler, eta):
    d = GaussianDiffusion(BETAS)
    big = d.sample(
        mixture, (6, 2), sampler=sampler, steps=12, eta=eta, dtype=F64, generator=[_gen(100 + i) for i in range(6)]
    )
    small = d.sample(
        mixture, (3, 2), sampler=sampler, steps=12, eta=eta, dtype=F64, generator=[_gen(100 + i) for i in range(3)]
    )
    torch.testing.assert_close(big[:3], small, rtol=1e-12, atol=1e-12)
    assert float((big[0] - big[1]).abs().max()) > 1e-3  # different seeds, different samples
    with pytest.raises(UserError):
        d.sample(mixture, (4, 2), sampler=sampler, steps=3, generator=[_gen(0)] * 3)


def test_samplers_accept_float32(mixture):
    d = GaussianDiffusion(BETAS)
    x_T = torch.randn(500, 2, generator=_gen(0), dtype=F64)
    for s in S.SAMPLERS:
        x32 = d.sample(mixture, (500, 2), sampler=s, steps=20, generator=_gen(0), x_T=x_T.float())
        x64 = d.sample(mixture, (500, 2), sampler=s, steps=20, generator=_gen(0), x_T=x_T)
        assert x32.dtype == torch.float32 and x64.dtype == F64
        if s != "ddpm":  # deterministic from the same x_T: float32 rounding only
            torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)
        assert bool(torch.isfinite(x32).all())


def test_callback_sees_every_network_call(mixture):
    d = GaussianDiffusion(BETAS)
    for s in S.SAMPLERS:
        seen = []
        d.sample(mixture, (4, 2), sampler=s, steps=7, dtype=F64, callback=lambda i, t, x, den: seen.append((i, t)))
        ts = S.sampling_timesteps(T, 7, S.DEFAULT_SPACING[s], ABAR).tolist()
        assert seen == list(enumerate(ts))


def test_bad_sampler_options_raise(mixture):
    d = GaussianDiffusion(BETAS)
    for kw in (
        dict(sampler="euler"),
        dict(sampler="ddim", eta=1.5),
        dict(sampler="ddim", eta=-0.1),
        dict(sampler="ddpm", spacing="cosine"),
        dict(sampler="ddpm", steps=0),
    ):
        with pytest.raises(UserError):
            d.sample(mixture, (2, 2), **{"steps": 5, **kw})
    with pytest.raises(UserError):
        S.ddpm_sample(mixture.denoise, torch.zeros(2, 2, dtype=F64), [9, 0], ABAR, variance="large")


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m", "dpm++3m"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_eta_is_refused_by_samplers_that_do_not_take_it(mixture, sampler, eta):
    d = GaussianDiffusion(BETAS)
    with pytest.raises(UserError, match=f"eta applies to the ddim sampler only; {re.escape(sampler)} is "):
        d.sample(mixture, (2, 2), sampler=sampler, steps=3, eta=eta, dtype=F64)


def test_eta_none_is_ddims_deterministic_default(mixture):
    d = GaussianDiffusion(BETAS)
    x_T = torch.randn(4, 2, generator=_gen(0), dtype=F64)
    a = d.sample(mixture, (4, 2), sampler="ddim", steps=5, x_T=x_T)
    b = d.sample(mixture, (4, 2), sampler="ddim", steps=5, x_T=x_T, eta=0.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["euler", "DDIM", "dpm++", "", None, 3])
def test_unknown_sampler_names_are_refused(mixture, name):
    d = GaussianDiffusion(BETAS)
    with pytest.raises(
        UserError, match="unknown sampler .*; choose one of 'ddpm', 'ddim', 'dpm\\+\\+2m', 'dpm\\+\\+3m'"
    ):
        d.sample(mixture, (2, 2), sampler=name, steps=3)


def test_samplers_are_the_declared_sampler_names():
    assert tuple(S.SAMPLERS) == choices(SamplerName)
    assert tuple(S.DEFAULT_SPACING) == choices(SamplerName)
    assert set(S.DEFAULT_SPACING.values()) <= set(choices(S.Spacing))


# =========================================================================== guidance
class ToyConditional:
    """eps = 0.1 (1 + y) x + t / 1000, with class 3 as the null (unconditional) class; counts calls."""

    null_class = 3

    def __init__(self, learned_variance=False):
        self.calls = []
        self.learned_variance = learned_variance

    def predict(self, x, t, y):
        return 0.1 * (1 + y[:, None].to(x.dtype)) * x + t[:, None].to(x.dtype) / 1000

    def __call__(self, x, t, y=None):
        self.calls.append((x.shape[0], y.clone()))
        eps = self.predict(x, t, y)
        if self.learned_variance:
            return torch.cat([eps, torch.tanh(y[:, None].to(x.dtype) - 1).expand_as(x)], dim=1)
        return eps


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 7.0])
def test_classifier_free_guidance_combines_one_batched_call(w):
    d = GaussianDiffusion(BETAS)
    model = ToyConditional()
    x = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    t = torch.tensor([999, 500, 10, 0, 250])
    y = torch.tensor([0, 1, 2, 0, 1])
    out = d.denoise(model, x, t, y, guidance_scale=w)
    cond, uncond = model.predict(x, t, y), model.predict(x, t, torch.full_like(y, 3))
    expected = uncond + w * (cond - uncond) if w != 1.0 else cond
    torch.testing.assert_close(out.eps, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.x0, d.x0_from_eps(x, t, expected), rtol=1e-12, atol=1e-12)
    assert len(model.calls) == 1
    batch, labels = model.calls[0]
    if w == 1.0:  # plain conditional: no unconditional half
        assert batch == 5 and labels.tolist() == y.tolist()
    else:
        assert batch == 10 and labels.tolist() == y.tolist() + [3] * 5


def test_guided_sampling_makes_one_call_per_step_and_keeps_the_conditional_variance():
    d = GaussianDiffusion(BETAS, variance="learned_range")
    model = ToyConditional(learned_variance=True)
    y = torch.tensor([0, 1, 2, 1])
    x = torch.randn(4, 2, generator=_gen(0), dtype=F64)
    t = torch.full((4,), 400)
    den = d.denoise(model, x, t, y, guidance_scale=3.0)
    torch.testing.assert_close(den.var_frac, (torch.tanh(y[:, None].to(F64) - 1).expand(4, 2) + 1) / 2)
    model.calls.clear()
    d.sample(model, (4, 2), sampler="dpm++2m", steps=9, y=y, guidance_scale=3.0, generator=_gen(0), dtype=F64)
    assert [b for b, _ in model.calls] == [8] * 9


def test_guidance_needs_a_null_class():
    d = GaussianDiffusion(BETAS)
    oracle = GaussianMixtureOracle.ring(ABAR, std=0.1)  # conditional (y = component) but no null class
    with pytest.raises(UserError):
        d.sample(oracle, (4, 2), steps=3, y=torch.tensor([0, 1, 2, 3]), guidance_scale=2.0)


def test_guidance_without_labels_is_refused():
    d = GaussianDiffusion(BETAS)
    oracle = GaussianMixtureOracle.ring(ABAR, std=0.1)
    with pytest.raises(UserError, match="guidance_scale 2.0 needs class labels y"):
        d.sample(oracle, (4, 2), steps=3, guidance_scale=2.0)
    assert d.sample(oracle, (4, 2), steps=3, guidance_scale=1.0).shape == (4, 2)


def test_conditional_oracle_samples_its_component():
    d = GaussianDiffusion(BETAS)
    ring = GaussianMixtureOracle.ring(ABAR, std=0.1)
    y = torch.arange(8).repeat_interleave(250)
    x = d.sample(ring, (2000, 2), sampler="dpm++2m", steps=50, y=y, generator=_gen(0), dtype=F64)
    assert ring.component_of(x).tolist() == y.tolist()
    per = x.reshape(8, 250, 2)
    se = 0.1 / math.sqrt(250)
    assert float((per.mean(1) - ring.means).abs().max()) < Z * se


def test_karras_sigmas_run_from_sigma_max_to_sigma_min_evenly_in_sigma_to_the_one_seventh():
    from ddpmkit.timestep_grids import karras_sigmas

    at = torch.linspace(0, 1, 9, dtype=torch.float64)
    sigmas = karras_sigmas(80.0, 0.002, at)
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([80.0, 0.002], dtype=torch.float64), rtol=1e-12, atol=0)
    root = sigmas ** (1 / 7)
    torch.testing.assert_close(
        root[1:] - root[:-1], torch.full((8,), (0.002 ** (1 / 7) - 80.0 ** (1 / 7)) / 8, dtype=torch.float64)
    )
    assert bool((sigmas[1:] < sigmas[:-1]).all())
