"""Consistency functions and ECT's loss, checked against exact answers: the probability-flow ODE of a Gaussian
mixture solved in float64 to a tolerance shown converged (closed form for a single Gaussian), the diffusion's
own conversions at integer timesteps, closed-form values of ECT's pieces, and broken variants of each piece
that the same checks must reject, so none passes vacuously.

Why two kinds of "zero loss" check: shared-noise pairs x0 + t n and x0 + r n lie on ONE probability-flow
trajectory only when the data is a single point, so there the ECT loss of the exact consistency function is
zero at every stage. For a mixture the pair straddles trajectories; what holds exactly is that the conditional
mean E[f(x_t) - f(x_r) | x_t] / (t - r) of the exact f is O(t - r) (E[x_r | x_t] is an Euler step of the ODE),
while a map that is not constant along trajectories (the teacher's one-call DDIM) leaves a residual that does
not shrink. That mean is computed by Gauss-Hermite quadrature over the exact posterior of (x0, n) given x_t.
"""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import ddpmkit
from ddpmkit import GaussianDiffusion, UserError
from ddpmkit import consistency as C
from ddpmkit.oracles import GaussianMixtureOracle, sliced_wasserstein

T = 1000
BETAS = ddpmkit.linear_beta_schedule(T)
ABAR = torch.cumprod(1.0 - BETAS, 0)
LEVELS = C.NoiseLevels(ABAR)
SMIN = LEVELS.sigma_min
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def point():
    """Data that is one point: every probability-flow trajectory is the straight line x0 + sigma n."""
    return GaussianMixtureOracle([1.0], torch.tensor([[0.7, -0.4]], dtype=F64), torch.zeros(1, 2, 2, dtype=F64), ABAR)


# =========================================================================== exact answers
def oracle_x0(oracle, x_sigma, sigma):
    """E[x0 | x_sigma] at continuous levels sigma [B]: the oracle rebuilt on the alpha-bars 1 / (1 + sigma^2)."""
    abar = C.abar_from_sigma(sigma.double())
    at = GaussianMixtureOracle(oracle.weights, oracle.means, oracle.covs, abar)
    return at.x0_prediction(x_sigma.double() * abar.sqrt()[:, None], torch.arange(x_sigma.shape[0]))


def continuous_oracle(oracle):
    """The oracle as a network with fractional time input: model(x_t, t) -> E[eps | x_t] at sigma(t)."""

    def model(x_t, t, y=None):
        sigma = LEVELS.sigma(t)
        a = C.abar_from_sigma(sigma)[:, None]
        x0 = oracle_x0(oracle, C.ve_from_vp(x_t.double(), sigma), sigma)
        return ((x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()).to(x_t.dtype)

    return model


def exact_consistency(oracle, x_sigma, sigma, rtol=1e-10):
    """The PF-ODE dx/dsigma = (x - E[x0 | x]) / sigma from each sigma down to sigma_min (DOP853, float64).

    Each sample runs on its own log-sigma line, log sigma(u) = (1 - u) log sigma_i + u log sigma_min, u in [0, 1].
    """
    B, D = x_sigma.shape
    s0, s1 = torch.log(sigma.double()), math.log(SMIN)

    def rhs(u, y):
        x = torch.from_numpy(y).reshape(B, D)
        s = (1 - u) * s0 + u * s1
        return ((x - oracle_x0(oracle, x, s.exp())) * (s1 - s0)[:, None]).reshape(-1).numpy()

    sol = solve_ivp(rhs, (0.0, 1.0), x_sigma.double().reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=rtol)
    assert sol.success
    return torch.from_numpy(sol.y[:, -1]).reshape(B, D)


def exact_f(oracle, rtol=1e-10):
    """The exact consistency function as an f(x_sigma, sigma, y=None), float64."""
    return lambda x, sigma, y=None: exact_consistency(oracle, x, sigma, rtol).to(x.dtype)


def gaussian_consistency(oracle, x_sigma, sigma):
    """Closed form for N(m, S): x -> m + (S + sigma_min^2)^(1/2) (S + sigma^2)^(-1/2) (x - m), per eigen-axis."""
    lam, U = torch.linalg.eigh(oracle.covs[0])
    m = oracle.means[0]
    z = (x_sigma.double() - m) @ U
    scale = ((lam + SMIN**2) / (lam + sigma.double()[:, None] ** 2)).sqrt()
    return m + (z * scale) @ U.T


def rms(a, b):
    return float((a.double() - b.double()).norm(dim=1).pow(2).mean().sqrt())


def test_exact_consistency_function_is_converged_and_matches_the_gaussian_closed_form(gaussian, mixture):
    g = _gen(0)
    sigma = torch.exp(torch.empty(32, dtype=F64).uniform_(math.log(SMIN), math.log(LEVELS.sigma_max), generator=g))
    for oracle in (gaussian, mixture):
        x = oracle.sample(32, g) + sigma[:, None] * torch.randn(32, 2, generator=g, dtype=F64)
        a, b = exact_consistency(oracle, x, sigma, 1e-10), exact_consistency(oracle, x, sigma, 1e-12)
        assert float((a - b).abs().max()) < 1e-8  # measured 1.1e-10 (gaussian), 9.2e-10 (mixture)
        if oracle is gaussian:
            err = [float((v - gaussian_consistency(gaussian, x, sigma)).abs().max()) for v in (a, b)]
            assert err[0] < 1e-8 and err[1] < 1e-10, err  # measured 1.2e-10 and 8.5e-13
    at_min = torch.full((4,), SMIN, dtype=F64)
    torch.testing.assert_close(exact_consistency(gaussian, x[:4], at_min), x[:4], rtol=0, atol=0)


# =========================================================================== noise levels and conversions
def test_levels_are_the_schedules_sigmas_at_integer_timesteps_and_invert_between_them():
    t = torch.arange(T, dtype=F64)
    torch.testing.assert_close(LEVELS.sigma(t), C.sigma_from_abar(ABAR), rtol=1e-12, atol=0)
    torch.testing.assert_close(LEVELS.timestep(C.sigma_from_abar(ABAR)), t, rtol=0, atol=1e-9)
    frac = torch.rand(1000, generator=_gen(1), dtype=F64) * (T - 1)
    torch.testing.assert_close(LEVELS.timestep(LEVELS.sigma(frac)), frac, rtol=0, atol=1e-9)
    assert SMIN == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-12)
    assert LEVELS.sigma_max == pytest.approx(float(C.sigma_from_abar(ABAR[-1])), rel=1e-12)
    s = torch.exp(torch.linspace(math.log(SMIN), math.log(LEVELS.sigma_max), 500, dtype=F64))
    assert bool((LEVELS.timestep(s)[1:] > LEVELS.timestep(s)[:-1]).all())
    x = torch.randn(5, 3, generator=_gen(2), dtype=F64)
    torch.testing.assert_close(C.ve_from_vp(C.vp_from_ve(x, s[:5]), s[:5]), x, rtol=1e-14, atol=0)
    torch.testing.assert_close(C.abar_from_sigma(C.sigma_from_abar(ABAR)), ABAR, rtol=1e-13, atol=0)
    with pytest.raises(UserError, match="strictly decreasing"):
        C.NoiseLevels(ABAR.flip(0))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_x0_from_output_is_the_diffusions_conversion_at_integer_timesteps(prediction):
    d = GaussianDiffusion(BETAS, prediction=prediction)
    t = torch.tensor([0, 1, 10, 300, 700, 999])
    x_t = torch.randn(6, 2, generator=_gen(3), dtype=F64)
    out = torch.randn(6, 2, generator=_gen(4), dtype=F64)
    sigma = LEVELS.sigma(t.double())
    got = C.x0_from_output(out, C.ve_from_vp(x_t, sigma), sigma, prediction)
    torch.testing.assert_close(got, d.x0_from_prediction(x_t, t, out), rtol=1e-10, atol=1e-12)


def _random_mlp(seed, out_dim=2):
    from ddpmkit.nn import MLPConfig, MLPDenoiser

    torch.manual_seed(seed)
    net = MLPDenoiser(MLPConfig(dim=2, hidden=32, depth=2, time_emb_dim=16, out_dim=out_dim)).double()
    torch.nn.init.normal_(net.out_proj.weight, std=0.3)  # the zero-initialised head would hide the network
    return net


def check_boundary(prediction, learned_range=False):
    f = C.consistency_function(_random_mlp(0, 4 if learned_range else 2), LEVELS, prediction, learned_range)
    x = 3 * torch.randn(16, 2, generator=_gen(5), dtype=F64)
    assert torch.equal(f(x, torch.full((16,), SMIN, dtype=F64)), x)
    away = f(x, torch.full((16,), 2 * SMIN, dtype=F64))
    assert float((away - x).abs().max()) > 1e-4  # the network does act above sigma_min


@pytest.mark.parametrize("prediction, learned_range", [("eps", False), ("x0", False), ("v", False), ("eps", True)])
def test_boundary_condition_is_exact(prediction, learned_range):
    check_boundary(prediction, learned_range)


def edm_c_skip(sigma, sigma_min):  # a broken boundary: EDM's c_skip, not shifted to sigma_min
    return 0.25 / (sigma.double() ** 2 + 0.25)


def test_a_violated_boundary_is_caught(monkeypatch):
    monkeypatch.setattr(C, "c_skip", edm_c_skip)
    with pytest.raises(AssertionError):
        check_boundary("eps")


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_teachers_consistency_function_is_its_one_call_ddim_to_sigma_min(prediction):
    # c_skip = sigma_min / sigma: f(x_t) = sqrt(abar_0) x0 + sqrt(1 - abar_0) eps in VP terms, from the same call
    net, d = _random_mlp(1), GaussianDiffusion(BETAS, prediction=prediction)
    f = C.consistency_function(net, LEVELS, prediction)
    t = torch.tensor([1, 50, 400, 999])
    x_t = torch.randn(4, 2, generator=_gen(6), dtype=F64)
    den = d.denoise(net, x_t, t)
    ddim = ABAR[0].sqrt() * den.x0 + (1 - ABAR[0]).sqrt() * den.eps
    sigma = LEVELS.sigma(t.double())
    got = f(C.ve_from_vp(x_t, sigma), sigma)
    torch.testing.assert_close(got, C.ve_from_vp(ddim, torch.full((4,), SMIN, dtype=F64)), rtol=1e-9, atol=1e-9)


# =========================================================================== ECT's pieces
def test_ect_defaults_are_the_papers():
    p = C.ECTParams()
    assert (p.p_mean, p.p_std, p.q, p.k, p.b, p.distance) == (-1.1, 2.0, 2.0, 8.0, 1.0, "l2")
    with pytest.raises(UserError, match="distance"):
        C.ECTParams(distance="l1")
    for bad in ({"q": 1.0}, {"k": float("nan")}, {"b": float("nan")}, {"p_mean": float("inf")}, {"p_std": 0.0}):
        with pytest.raises(UserError, match="ECT needs"):
            C.ECTParams(**bad)


def test_r_of_t_follows_the_formula_and_delta_t_shrinks_by_q_per_stage():
    t = torch.tensor([0.002, 0.05, 0.3, 1.0, 5.0, 80.0], dtype=F64)
    for stage in range(8):
        want = t * (1 - 2.0 ** -(stage + 1) * (1 + 8 / (1 + torch.exp(t))))
        torch.testing.assert_close(C.r_from_t(t, stage, SMIN), want.clamp(min=SMIN), rtol=1e-14, atol=0)
        nxt = C.r_from_t(t, stage + 1, SMIN)
        free = want > SMIN  # unclamped at this stage: t - r halves at the next
        torch.testing.assert_close(
            (t - nxt)[free] / (t - want)[free], torch.full_like(t[free], 0.5), rtol=1e-12, atol=0
        )
    assert bool((C.r_from_t(t, 0, SMIN) == SMIN).any())  # stage 0 pulls small t to the boundary
    assert C.stage_of(999, 250) == 3
    with pytest.raises(UserError):
        C.r_from_t(t, -1, SMIN)


def test_distances_and_weight():
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=F64)
    b = torch.zeros(2, 2, dtype=F64)
    torch.testing.assert_close(C.distance(a, b, "l2"), torch.tensor([5.0, 0.0], dtype=F64))
    torch.testing.assert_close(C.distance(a, b, "pseudo_huber", 1.0), torch.tensor([math.sqrt(26) - 1, 0.0], dtype=F64))
    c = 0.00054 * math.sqrt(2)
    torch.testing.assert_close(
        C.distance(a, b, "pseudo_huber"), torch.tensor([math.sqrt(25 + c * c) - c, 0.0], dtype=F64)
    )
    torch.testing.assert_close(
        C.ect_weight(torch.tensor([1.0], dtype=F64), torch.tensor([0.75], dtype=F64)), torch.tensor([4.0], dtype=F64)
    )
    x = torch.zeros(2, 2, requires_grad=True)
    C.distance(x, torch.zeros(2, 2)).sum().backward()
    assert torch.equal(x.grad, torch.zeros(2, 2))  # no NaN gradient where prediction and target agree


def drawn_sigmas(n=20000):
    """The sigma_t that ect_loss draws, recorded by a consistency function that only watches."""
    seen = []

    def f(x, sigma, y=None):
        if not seen:
            seen.append(sigma.clone())
        return x

    C.ect_loss(f, torch.zeros(n, 1), LEVELS, 3, generator=_gen(7))
    return seen[0]


def check_lognormal(sigma, p_mean=-1.1, p_std=2.0):
    """Kolmogorov-Smirnov distance to log sigma ~ N(p_mean, p_std^2) truncated to [sigma_min, sigma_max]."""
    s = sigma.sort().values
    lo, hi = (C.lognormal_cdf(torch.tensor(v), p_mean, p_std) for v in (SMIN, LEVELS.sigma_max))
    cdf = (C.lognormal_cdf(s, p_mean, p_std) - lo) / (hi - lo)
    n = s.numel()
    ks = float(torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max())
    assert ks < 2.7 / math.sqrt(n), ks  # p < 1e-6 under the right law (0.019); measured 0.0057, flipped mean 0.41
    assert float(s[0]) > SMIN and float(s[-1]) <= LEVELS.sigma_max


def test_noise_levels_are_the_truncated_lognormal():
    check_lognormal(drawn_sigmas())


def test_a_flipped_lognormal_mean_is_caught(monkeypatch):
    draw = C.sample_noise_levels
    monkeypatch.setattr(C, "sample_noise_levels", lambda n, lv, p_mean, *a, **k: draw(n, lv, -p_mean, *a, **k))
    with pytest.raises(AssertionError):
        check_lognormal(drawn_sigmas())


def check_stop_gradient():
    """ect_loss's parameter gradient equals that of d(f(x_t), constant target) / (t - r)."""
    net = _random_mlp(2)
    f = C.consistency_function(net, LEVELS, "v")
    x0 = torch.randn(32, 2, generator=_gen(8), dtype=F64)
    noise = torch.randn(32, 2, generator=_gen(9), dtype=F64)
    sigma_t = C.sample_noise_levels(32, LEVELS, generator=_gen(10))
    grads = torch.autograd.grad(C.ect_loss(f, x0, LEVELS, 4, sigma_t=sigma_t, noise=noise).sum(), net.parameters())
    sigma_r = C.r_from_t(sigma_t, 4, SMIN)
    x_t, x_r = x0 + sigma_t[:, None] * noise, x0 + sigma_r[:, None] * noise
    with torch.no_grad():
        target = torch.where((sigma_r <= SMIN)[:, None], x_r, f(x_r, sigma_r))
    ref = (C.distance(f(x_t, sigma_t), target) / (sigma_t - sigma_r)).sum()
    for g, r in zip(grads, torch.autograd.grad(ref, net.parameters())):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


def test_gradients_flow_only_through_the_prediction():
    check_stop_gradient()


def test_a_missing_stop_gradient_is_caught(monkeypatch):
    def no_stop(f, x_r, sigma_r, sigma_min, y=None):
        return torch.where((sigma_r <= sigma_min)[:, None], x_r, f(x_r, sigma_r, y))

    monkeypatch.setattr(C, "stop_gradient_target", no_stop)
    with pytest.raises(AssertionError):
        check_stop_gradient()


def check_same_dropout_mask():
    def f(x, sigma, y=None):  # dropout only: equal inputs give equal outputs iff the masks agree
        return torch.nn.functional.dropout(x, 0.5, training=True)

    x0 = torch.ones(64, 8)
    pred, target = C.consistency_pair(
        f, x0, torch.zeros(64, 8), torch.full((64,), 2.0, dtype=F64), torch.full((64,), 1.0, dtype=F64), SMIN
    )
    assert torch.equal(pred, target)
    assert 0 < int((pred == 0).sum()) < pred.numel()  # dropout did drop


def test_the_target_draws_the_same_dropout_mask_on_cpu():
    check_same_dropout_mask()


def test_a_fresh_dropout_mask_is_caught(monkeypatch):
    monkeypatch.setattr(C, "restore_rng", lambda state, device: None)
    with pytest.raises(AssertionError):
        check_same_dropout_mask()


def test_ect_loss_is_per_example_and_refuses_bad_input():
    f = C.consistency_function(_random_mlp(3), LEVELS, "eps")
    loss = C.ect_loss(
        f, torch.randn(10, 2, dtype=F64), LEVELS, 2, C.ECTParams(distance="pseudo_huber"), generator=_gen(11)
    )
    assert loss.shape == (10,) and bool((loss >= 0).all()) and bool(loss.isfinite().all())
    with pytest.raises(UserError, match="prediction"):
        C.consistency_function(f, LEVELS, "score")


# =========================================================================== the loss at the exact function
def separate_noises(x0, noise, sigma_t, sigma_r):  # broken: a fresh noise for x_r
    return x0 + sigma_t[:, None] * noise, x0 + sigma_r[:, None] * torch.randn_like(noise)


def check_zero_loss_on_point_data(point, f, tol, stages=range(10), distances=("l2", "pseudo_huber")):
    """On one-point data the ECT loss of the exact consistency function is zero at every stage, for both distances."""
    x0 = point.means.expand(256, 2).clone()
    for stage in stages:
        for dist in distances:
            p = C.ECTParams(distance=dist, huber_c=0.01)
            sigma_t = C.sample_noise_levels(256, LEVELS, generator=_gen(stage))
            loss = C.ect_loss(f, x0, LEVELS, stage, p, sigma_t=sigma_t, generator=_gen(100 + stage))
            gap = loss / C.ect_weight(sigma_t, C.r_from_t(sigma_t, stage, SMIN))  # d(f(x_t), f(x_r)) itself
            assert float(gap.max()) < tol, (stage, dist, float(gap.max()))


def test_ect_loss_is_zero_at_the_exact_function_on_point_data(point):
    check_zero_loss_on_point_data(point, exact_f(point), 1e-9, (0, 3, 6, 9), ("l2",))  # the ODE solve: measured 2.1e-11
    # the teacher's one-call map is exact here (straight trajectories): zero to rounding
    check_zero_loss_on_point_data(point, C.consistency_function(continuous_oracle(point), LEVELS), 1e-12)  # 5.7e-14


@pytest.mark.parametrize("broken", ["separate noises", "boundary"])
def test_broken_variants_fail_the_point_data_check(point, monkeypatch, broken):
    if broken == "separate noises":
        monkeypatch.setattr(C, "noised_pair", separate_noises)
    else:
        monkeypatch.setattr(C, "c_skip", edm_c_skip)
    with pytest.raises(AssertionError):
        check_zero_loss_on_point_data(point, C.consistency_function(continuous_oracle(point), LEVELS), 1e-12)


def posterior_nodes(oracle, x, sigma, n=6):
    """Gauss-Hermite nodes and weights of p(x0 | x_sigma = x) for a mixture: [P, M, D] and [P, M] (M = K n^2)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    Z = torch.tensor(np.stack(np.meshgrid(z, z), -1).reshape(-1, 2), dtype=F64)
    W = torch.tensor(np.outer(w, w).reshape(-1) / (2 * math.pi), dtype=F64)
    nodes, weights = [], []
    for k in range(oracle.num_components):
        S, m = oracle.covs[k], oracle.means[k]
        Cov = S + sigma**2 * torch.eye(2, dtype=F64)
        gain = S @ torch.linalg.inv(Cov)
        L = torch.linalg.cholesky(S - gain @ S)
        mean = m + (x - m) @ gain.T  # [P, D]
        nodes.append(mean[:, None, :] + Z @ L.T)
        log_r = math.log(float(oracle.weights[k])) + torch.distributions.MultivariateNormal(m, Cov).log_prob(x)
        weights.append(log_r[:, None] + W.log())
    w_all = torch.cat(weights, 1)
    return torch.cat(nodes, 1), (w_all - w_all.logsumexp(1, keepdim=True)).exp()


def cached(f):
    """f that reuses its first answer for the same inputs (the prediction f(x_t) repeats across stages)."""
    first = []

    def g(x, sigma, y=None):
        if first and torch.equal(first[0], x) and torch.equal(first[1], sigma):
            return first[2]
        out = f(x, sigma)
        if not first:
            first.extend([x.clone(), sigma.clone(), out])
        return out

    return g


def conditional_residuals(mixture, f, t, stages, points=8):
    """max over points x_t of |E[f(x_t) - sg f(x_r) | x_t]| / (t - r) at each stage, via consistency_pair.

    The points are those whose component is certain (p(k | x_t) > 0.999): near the separatrix between two
    components the exact map is so steep that t - r reaches its first-order regime only at far later stages.
    """
    x = mixture.sample(8 * points, _gen(20)) + t * torch.randn(8 * points, 2, generator=_gen(21), dtype=F64)
    a = C.abar_from_sigma(torch.tensor([t], dtype=F64))
    at = GaussianMixtureOracle(mixture.weights, mixture.means, mixture.covs, a)
    x = x[at.responsibilities(x * a.sqrt(), torch.zeros(8 * points)).max(1).values > 0.999][:points]
    x0, w = posterior_nodes(mixture, x, t, n=5)
    P, M, D = x0.shape
    noise = ((x[:, None, :] - x0) / t).reshape(-1, D)
    sigma_t = torch.full((P * M,), t, dtype=F64)
    out = []
    for stage in stages:
        sigma_r = C.r_from_t(sigma_t, stage, SMIN)
        pred, target = C.consistency_pair(f, x0.reshape(-1, D), noise, sigma_t, sigma_r, SMIN)
        mean = (w[:, :, None] * ((pred - target) / (sigma_t - sigma_r)[:, None]).reshape(P, M, D)).sum(1)
        out.append(float(mean.norm(dim=1).max()))
    return out


STAGES = list(range(4, 9))


def check_first_order(res):
    """The residual of the exact f halves with t - r at every stage (first order)."""
    ratios = [b / a for a, b in zip(res, res[1:])]
    assert all(0.42 < q < 0.58 for q in ratios), (res, ratios)


def test_ect_residual_of_the_exact_function_vanishes_with_delta_t_and_the_teachers_does_not(mixture):
    exact = conditional_residuals(mixture, cached(exact_f(mixture, 1e-9)), 1.0, STAGES)
    check_first_order(exact)  # measured 0.0040 at stage 4 to 0.00021 at stage 8, ratios 0.46-0.49
    teacher = conditional_residuals(mixture, C.consistency_function(continuous_oracle(mixture), LEVELS), 1.0, STAGES)
    assert min(teacher) > 0.1 and teacher[-1] > 0.8 * teacher[0], teacher  # measured 0.21 to 0.19
    assert exact[-1] < 0.01 * teacher[-1], (exact, teacher)


def test_separate_noises_break_the_vanishing_residual(mixture, monkeypatch):
    monkeypatch.setattr(C, "noised_pair", separate_noises)
    with pytest.raises(AssertionError):
        check_first_order(conditional_residuals(mixture, cached(exact_f(mixture, 1e-9)), 1.0, STAGES[-3:]))


# =========================================================================== the sampler
def test_sampling_levels_and_calls():
    assert C.sampling_sigmas(LEVELS, 1).tolist() == [LEVELS.sigma_max]
    assert C.sampling_sigmas(LEVELS, 2).tolist() == [LEVELS.sigma_max, C.ECT_MID_SIGMA]
    four = C.sampling_sigmas(LEVELS, 4)
    assert four.shape == (4,) and bool((four[1:] < four[:-1]).all()) and float(four[-1]) > SMIN
    for bad in ([0.5, 0.8], [SMIN], [200.0]):
        with pytest.raises(UserError, match="intermediate levels"):
            C.sampling_sigmas(LEVELS, len(bad) + 1, bad)
    calls = []

    def f(x, sigma, y=None):  # the identity: the result is the start plus every re-noising
        calls.append(float(sigma[0]))
        return x

    x_T = torch.randn(3, 2, generator=_gen(1), dtype=F64)
    x = C.consistency_sample(f, x_T, four, SMIN, generator=_gen(0))
    assert calls == four.tolist()
    g, want = _gen(0), x_T * math.sqrt(1 + LEVELS.sigma_max**2)
    for s in four[1:].tolist():
        want = want + math.sqrt(s * s - SMIN**2) * torch.randn(3, 2, generator=g, dtype=F64)
    torch.testing.assert_close(x, want, rtol=1e-14, atol=1e-12)


def test_one_call_of_the_exact_function_samples_the_gaussian(gaussian):
    # from the VP prior N(0, I) at sigma_max, one call of the exact f maps onto N(m, S + sigma_min^2) (closed form)
    x_T = torch.randn(4000, 2, generator=_gen(30), dtype=F64)
    f = lambda x, s, y=None: gaussian_consistency(gaussian, x, s)  # noqa: E731
    x = C.consistency_sample(f, x_T, C.sampling_sigmas(LEVELS, 1), SMIN)
    S = gaussian.covs[0] + SMIN**2 * torch.eye(2, dtype=F64)
    assert float((x.mean(0) - gaussian.means[0]).norm()) < 5 * math.sqrt(float(S.trace()) / 4000)
    torch.testing.assert_close(torch.cov(x.T), S, rtol=0.1, atol=0.01)


def test_edit_levels_start_where_a_diffusion_sdedit_of_that_strength_does():
    assert C.edit_sigmas(LEVELS, 0.0, 2) is None and C.edit_sigmas(LEVELS, 0.0004, 1) is None  # S T rounds to 0
    assert C.edit_sigmas(LEVELS, 1.0, 1).tolist() == pytest.approx([LEVELS.sigma_max], rel=1e-12)
    half = C.edit_sigmas(LEVELS, 0.5, 3)
    assert float(half[0]) == pytest.approx(float(C.sigma_from_abar(ABAR[499])), rel=1e-12)  # t0 = round(S T) - 1
    assert bool((half[1:] < half[:-1]).all()) and float(half[-1]) > SMIN
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match="strength"):
            C.edit_sigmas(LEVELS, bad, 1)


@pytest.mark.parametrize("calls, strength", [(1, 0.3), (2, 0.6), (1, 1.0)])
def test_an_edit_of_data_with_the_exact_function_keeps_the_datas_law(gaussian, calls, strength):
    # x0 ~ N(m, S) noised to sigma is the true marginal there, so the exact map sends it back onto N(m, S + smin^2)
    x0 = gaussian.sample(4000, _gen(40))
    f = lambda x, s, y=None: gaussian_consistency(gaussian, x, s)  # noqa: E731
    sigmas = C.edit_sigmas(LEVELS, strength, calls)
    x = C.consistency_jumps(
        f, x0 + float(sigmas[0]) * torch.randn(x0.shape, generator=_gen(41), dtype=F64), sigmas, SMIN
    )
    S = gaussian.covs[0] + SMIN**2 * torch.eye(2, dtype=F64)
    assert float((x.mean(0) - gaussian.means[0]).norm()) < 5 * math.sqrt(float(S.trace()) / 4000)
    torch.testing.assert_close(torch.cov(x.T), S, rtol=0.1, atol=0.01)
    unnoised = f(x0, C.edit_sigmas(LEVELS, strength, 1)[:1].expand(4000))  # broken: the map without the noising
    assert not torch.allclose(torch.cov(unnoised.T), S, rtol=0.1, atol=0.01)


# =========================================================================== a trained MLP, tuned
def train_teacher(mixture, steps, g):
    from ddpmkit.nn import MLPConfig, MLPDenoiser

    torch.manual_seed(0)
    net = MLPDenoiser(MLPConfig(dim=2, hidden=64, depth=2, time_emb_dim=64))
    d = GaussianDiffusion(BETAS, prediction="v")  # x0 error bounded at sigma_max (eps would multiply it by 157)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = mixture.sample(256, g).float()
        loss = d.training_losses(net, x0, torch.randint(0, T, (256,), generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, d


def ect_tune(teacher, mixture, steps, g, stages=8):
    student = copy.deepcopy(teacher)
    f = C.consistency_function(student, LEVELS, "v")
    opt = torch.optim.Adam(student.parameters(), lr=5e-4)
    for i in range(steps):
        loss = C.ect_loss(f, mixture.sample(256, g).float(), LEVELS, C.stage_of(i, steps // stages), generator=g)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return f


def test_ect_tuned_mlp_is_closer_to_the_exact_map_and_samples_the_mixture_in_one_or_two_calls(mixture):
    # 800 teacher steps, then 800 ECT steps over 8 stages: 9 CPU-seconds on one thread
    g = _gen(40)
    teacher, d = train_teacher(mixture, 800, g)
    f = ect_tune(teacher, mixture, 800, g)
    with torch.no_grad():
        x_T = torch.randn(2000, 2, generator=_gen(41))
        smax = torch.full((2000,), LEVELS.sigma_max, dtype=F64)
        exact = exact_consistency(mixture, C.ve_from_vp(x_T.double(), smax), smax, 1e-8)
        ddim = d.sample(teacher, (2000, 2), sampler="ddim", timesteps=torch.tensor([T - 1]), x_T=x_T)
        ect = f(C.ve_from_vp(x_T, smax), smax)
        assert rms(ect, exact) < 0.5 * rms(ddim, exact), (rms(ect, exact), rms(ddim, exact))  # measured 0.73 vs 2.43
        x_T = torch.randn(4000, 2, generator=_gen(42))
        ref = mixture.sample(4000, _gen(43))
        floor = sliced_wasserstein(ref, mixture.sample(4000, _gen(44)), generator=_gen(0))
        one_ddim = d.sample(teacher, (4000, 2), sampler="ddim", timesteps=torch.tensor([T - 1]), x_T=x_T)
        worst = sliced_wasserstein(one_ddim, ref, generator=_gen(0))
        for calls in (1, 2):
            x = C.consistency_sample(f, x_T, C.sampling_sigmas(LEVELS, calls), SMIN, generator=_gen(45))
            sw, fit = sliced_wasserstein(x, ref, generator=_gen(0)), mixture.compare(x)
            # measured: sw 0.44 (1 call), 0.40 (2 calls), floor 0.21, teacher's one-call DDIM 1.70; mode mass TV 0.05
            assert sw < 3.0 * floor and sw < 0.5 * worst, (calls, sw, floor, worst)
            assert fit.weight_tv < 0.1, (calls, fit)
