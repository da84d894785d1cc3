"""The forward process, its posterior, the parameterisations and ancestral sampling, each checked
against an independent computation (direct formulas, Bayes' rule, Monte Carlo, a Gaussian oracle)."""

import math
import re

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit import GaussianDiffusion, UserError


def test_linear_schedule_matches_note():
    betas = ddpmkit.linear_beta_schedule(1000)
    expected = np.linspace(1e-4, 0.02, 1000)  # the note's generate_linear_schedule
    assert betas.dtype == torch.float64
    np.testing.assert_allclose(betas.numpy(), expected, rtol=0, atol=1e-15)


def test_cosine_schedule_matches_alpha_bar_formula():
    T, s = 50, 0.008
    betas = ddpmkit.cosine_beta_schedule(T, s=s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in range(T):
        expected = min(1 - f(t + 1) / f(t), 0.999)
        assert betas[t].item() == pytest.approx(expected, rel=1e-12)
    # alpha-bar follows f(t)/f(0) exactly wherever no clipping happened
    abar = torch.cumprod(1 - betas, 0)
    assert abar[T // 2].item() == pytest.approx(f(T // 2 + 1) / f(0), rel=1e-10)


def test_scaled_linear_schedule_matches_closed_form_and_diffusers():
    from ddpmkit.schedules import make_beta_schedule, scaled_linear_beta_schedule

    T, b0, b1 = 1000, 8.5e-4, 0.012
    betas = scaled_linear_beta_schedule(T, b0, b1)
    assert betas.dtype == torch.float64
    assert torch.equal(betas, make_beta_schedule("scaled_linear", T, beta_start=b0, beta_end=b1))
    for t in (0, 1, 500, T - 1):  # sqrt(beta_t) linear in t
        expected = (math.sqrt(b0) + t / (T - 1) * (math.sqrt(b1) - math.sqrt(b0))) ** 2
        assert betas[t].item() == pytest.approx(expected, rel=1e-12)
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=b0, beta_end=b1).betas.double()
    torch.testing.assert_close(betas, theirs, rtol=1e-6, atol=0)  # float32 on their side
    with pytest.raises(UserError):
        scaled_linear_beta_schedule(10, beta_start=0.1, beta_end=0.05)


@pytest.mark.parametrize("bad", [dict(beta_start=0.0), dict(beta_start=0.1, beta_end=0.05), dict(beta_end=1.0)])
def test_bad_schedule_raises(bad):
    with pytest.raises(UserError):
        ddpmkit.linear_beta_schedule(10, **bad)


@pytest.fixture
def diffusion():
    return GaussianDiffusion(ddpmkit.linear_beta_schedule(1000))


def test_q_sample_moments_match_eq3_by_monte_carlo(diffusion):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    for step in (0, 99, 500, 999):
        t = torch.full((n,), step, dtype=torch.long)
        xt = diffusion.q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
        abar = float(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[: step + 1]))
        se = math.sqrt((1 - abar) / n)
        assert abs(xt.mean().item() - math.sqrt(abar) * 0.7) < 5 * se
        assert xt.var().item() == pytest.approx(1 - abar, rel=0.02)


def test_q_sample_equals_iterating_eq1(diffusion):
    """The closed form (eq. 2) against T single steps x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) z, by moments."""
    g = torch.Generator().manual_seed(1)
    n, steps = 100_000, 300
    betas = diffusion.betas
    x = torch.full((n,), -0.5, dtype=torch.float64)
    for i in range(steps):
        x = torch.sqrt(1 - betas[i]) * x + torch.sqrt(betas[i]) * torch.randn(n, generator=g, dtype=torch.float64)
    t = torch.full((n,), steps - 1, dtype=torch.long)
    closed = diffusion.q_mean_variance(torch.full((n,), -0.5, dtype=torch.float64), t)
    assert x.mean().item() == pytest.approx(closed.mean[0].item(), abs=0.01)
    assert x.var().item() == pytest.approx(closed.var[0].item(), rel=0.02)


@pytest.mark.parametrize(
    "t, error, words",
    [
        ([0, 5, -1], ValueError, "from -1 to 5"),  # -1 would index T - 1 silently
        ([0, 1000], ValueError, "[0, 1000)"),
        ([0.0, 1.0], TypeError, "integer tensor"),
    ],
)
def test_timesteps_outside_the_chain_are_refused(diffusion, t, error, words):
    x0 = torch.zeros(len(t), 3)
    with pytest.raises(error, match=re.escape(words)):
        diffusion.q_sample(x0, torch.tensor(t))
    assert diffusion.q_sample(torch.zeros(2, 3), torch.tensor([0, 999], dtype=torch.int32)).shape == (2, 3)  # the ends


def test_posterior_equals_bayes_rule(diffusion):
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): multiply the two Gaussians directly."""
    betas = diffusion.betas.numpy()
    abar = np.cumprod(1 - betas)
    x0 = torch.tensor([0.3, -0.8, 0.1], dtype=torch.float64)
    xt = torch.tensor([1.2, 0.4, -2.0], dtype=torch.float64)
    for step in (1, 10, 500, 999):
        t = torch.full((3,), step, dtype=torch.long)
        post = diffusion.q_posterior_mean_variance(x0, xt, t)
        a_t = 1 - betas[step]
        # likelihood in x_{t-1}: N(x_t; sqrt(a_t) x_{t-1}, beta_t) -> precision a_t / beta_t
        prec = a_t / betas[step] + 1 / (1 - abar[step - 1])
        mean = (
            math.sqrt(a_t) * xt.numpy() / betas[step] + math.sqrt(abar[step - 1]) * x0.numpy() / (1 - abar[step - 1])
        ) / prec
        np.testing.assert_allclose(post.mean.numpy(), mean, rtol=1e-9)
        np.testing.assert_allclose(post.var.numpy(), 1 / prec, rtol=1e-9)


def test_posterior_at_t0_is_x0(diffusion):
    x0 = torch.randn(4, 3, dtype=torch.float64)
    xt = torch.randn(4, 3, dtype=torch.float64)
    post = diffusion.q_posterior_mean_variance(x0, xt, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(post.mean, x0)
    assert torch.isfinite(post.log_var).all()


def test_parameterisations_round_trip(diffusion):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 400, 998, 999])
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(diffusion.eps_from_x0(xt, t, x0), eps)
    v = diffusion.v_from_x0_eps(x0, eps, t)
    torch.testing.assert_close(diffusion.x0_from_v(xt, t, v), x0)
    # v by its definition with the angle phi: alpha = cos phi, sigma = sin phi
    abar = diffusion.alphas_cumprod[t].unsqueeze(1)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_perfect_prediction_gives_zero_loss(prediction):
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(100), prediction=prediction)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    noise = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 20, 50, 99])
    target = {"eps": noise, "x0": x0, "v": d.v_from_x0_eps(x0, noise, t)}[prediction]
    loss = d.training_losses(lambda x, tt, y=None: target, x0, t, noise=noise)
    assert loss.shape == (5,)
    assert torch.all(loss == 0)
    off = d.training_losses(lambda x, tt, y=None: target + 0.5, x0, t, noise=noise)
    torch.testing.assert_close(off, torch.full((5,), 0.25, dtype=off.dtype))


def test_l1_loss_is_the_notes_l1():
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(100), loss="l1")
    x0 = torch.randn(4, 8)
    noise = torch.randn(4, 8)
    t = torch.tensor([1, 2, 3, 4])
    out = torch.randn(4, 8)
    loss = d.training_losses(lambda x, tt, y=None: out, x0, t, noise=noise)
    torch.testing.assert_close(loss, (out - noise).abs().mean(1))


def test_min_snr_weight_for_eps():
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(1000), min_snr_gamma=5.0)
    x0 = torch.zeros(2, 4, dtype=torch.float64)
    noise = torch.zeros(2, 4, dtype=torch.float64)
    t = torch.tensor([0, 999])
    loss = d.training_losses(lambda x, tt, y=None: torch.ones_like(x), x0, t, noise=noise)
    abar = d.alphas_cumprod[t]
    snr = abar / (1 - abar)
    torch.testing.assert_close(loss.double(), torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr)


def gaussian_eps_oracle(diffusion, mu, cov):
    """E[eps | x_t] for x0 ~ N(mu, cov), written out independently of the library."""
    abar_all = diffusion.alphas_cumprod

    def model(x, t, y=None):
        a = abar_all[t].to(x.dtype)  # [B]
        eye = torch.eye(len(mu), dtype=x.dtype)
        c = a[:, None, None] * cov + (1 - a)[:, None, None] * eye  # Cov(x_t)
        centred = x - a.sqrt()[:, None] * mu
        sol = torch.linalg.solve(c, centred.unsqueeze(-1)).squeeze(-1)
        return (1 - a).sqrt()[:, None] * sol  # Cov(eps, x_t) = sqrt(1 - a) I

    return model


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_sampling_reproduces_gaussian(variance):
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(1000), variance=variance)
    mu = torch.tensor([0.5, -0.3], dtype=torch.float64)
    cov = torch.tensor([[0.30, 0.12], [0.12, 0.10]], dtype=torch.float64)
    model = gaussian_eps_oracle(d, mu, cov)
    n = 20_000
    g = torch.Generator().manual_seed(3)
    x = d.sample(model, (n, 2), sampler="ddpm", generator=g, dtype=torch.float64)
    se = (cov.diagonal() / n).sqrt()
    assert torch.all((x.mean(0) - mu).abs() < 5 * se)
    emp = torch.cov(x.T)
    # relative standard error of a variance estimate is sqrt(2/n) ~ 1%
    torch.testing.assert_close(emp, cov, atol=0.01, rtol=0.06)


def test_p_sample_adds_no_noise_at_t0():
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(100))
    x = torch.randn(3, 2)
    t = torch.zeros(3, dtype=torch.long)
    model = lambda x, t, y=None: torch.zeros_like(x)  # noqa: E731
    a = d.p_sample(model, x, t, generator=torch.Generator().manual_seed(0))
    b = d.p_sample(model, x, t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, d.p_mean_variance(model, x, t).mean)


def test_p_mean_variance_fixed_variances():
    betas = ddpmkit.linear_beta_schedule(100)
    x = torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor([5, 50])
    model = lambda x, t, y=None: torch.zeros_like(x)  # noqa: E731
    large = GaussianDiffusion(betas, variance="fixed_large").p_mean_variance(model, x, t)
    small = GaussianDiffusion(betas, variance="fixed_small").p_mean_variance(model, x, t)
    torch.testing.assert_close(large.var[:, 0], betas[t])
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(small.var[:, 0], betas[t] * (1 - abar[t - 1]) / (1 - abar[t]))


def test_clip_denoised_clips_x0():
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(100), clip_denoised=True)
    x = torch.full((2, 3), 5.0)
    t = torch.tensor([10, 90])
    out = d.p_mean_variance(lambda x, t, y=None: torch.zeros_like(x), x, t)
    assert out.pred_x0.abs().max() <= 1.0
    unclipped = d.p_mean_variance(lambda x, t, y=None: torch.zeros_like(x), x, t, clip_denoised=False)
    assert unclipped.pred_x0.abs().max() > 1.0


def test_guidance_combines_conditional_and_unconditional_in_one_call():
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(100))
    calls = []

    class Model:
        null_class = 3

        def __call__(self, x, t, y=None):
            calls.append(x.shape[0])
            return torch.where((y == 3)[:, None], torch.zeros_like(x), torch.ones_like(x) * (y[:, None] + 1))

    x = torch.randn(4, 2)
    t = torch.full((4,), 10)
    y = torch.tensor([0, 1, 2, 0])
    pred, _ = d.model_output(Model(), x, t, y, guidance_scale=3.0)
    assert calls == [8]
    torch.testing.assert_close(pred, 3.0 * (y[:, None].float() + 1).expand(4, 2))


@pytest.mark.parametrize(
    "kw",
    [
        dict(prediction="noise"),
        dict(variance="learned"),
        dict(loss="huber"),
        dict(loss="hybrid"),
        dict(min_snr_gamma=-1.0),
    ],
)
def test_bad_options_raise(kw):
    with pytest.raises(UserError):
        GaussianDiffusion(ddpmkit.linear_beta_schedule(10), **kw)


def test_coefficients_follow_device_and_dtype(diffusion):
    x = torch.randn(2, 3, dtype=torch.float32)
    t = torch.tensor([1, 2])
    out = diffusion.q_sample(x, t, torch.zeros_like(x))
    assert out.dtype == torch.float32
    abar = diffusion.alphas_cumprod[t].float().sqrt()[:, None]
    torch.testing.assert_close(out, abar * x)


def test_unconditional_model_may_take_two_arguments():
    """An unconditional call is model(x_t, t): a plain two-argument callable samples and trains."""
    d = GaussianDiffusion(ddpmkit.linear_beta_schedule(100))
    seen = []

    def model(x, t):
        seen.append(x.shape[0])
        return 0.1 * x

    for sampler in ("ddpm", "ddim", "dpm++2m", "dpm++3m"):
        x = d.sample(model, (4, 2), sampler=sampler, steps=5, generator=torch.Generator().manual_seed(0))
        assert x.shape == (4, 2) and torch.isfinite(x).all()
    loss = d.training_losses(model, torch.zeros(4, 2), torch.tensor([0, 10, 50, 99]))
    assert loss.shape == (4,)
    assert len(seen) == 4 * 5 + 1
    with pytest.raises(TypeError):  # labels are still passed to a model that needs them
        d.sample(model, (4, 2), sampler="ddim", steps=5, y=torch.zeros(4, dtype=torch.long))
