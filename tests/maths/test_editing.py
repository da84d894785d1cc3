"""Editing against exact answers: RePaint's schedule and Algorithm 1, the Gaussian conditional, SDEdit, slerp,
inversion.

With Gaussian data N(mu, Sigma) the oracle's noise prediction is exact, so the distributions the
edits should produce are known in closed form (Gaussian conditioning).
"""

import math

import pytest
import torch

from ddpmkit import GaussianDiffusion, GaussianMixtureOracle, UserError, linear_beta_schedule, sampling_timesteps
from ddpmkit.editing import edit_timesteps, repaint_schedule, slerp, slerp_frames

F64 = torch.float64
# four strongly correlated pixels [1, 2, 2]: the top row is known, the bottom row generated
CHOL = torch.tensor([[1, 0, 0, 0], [0.9, 0.4, 0, 0], [0.8, 0.3, 0.4, 0], [0.7, 0.5, 0.2, 0.3]], dtype=F64)
COV = CHOL @ CHOL.T * 0.25
MU = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=F64)
MASK = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64).view(1, 1, 2, 2)


def gaussian(T: int, variance: str = "fixed_large"):
    """A diffusion of T steps (the linear schedule stretched to T, beta at most 0.5) and the exact oracle of
    N(MU, COV)."""
    diffusion = GaussianDiffusion(linear_beta_schedule(T, 0.1 / T, min(20.0 / T, 0.5)), variance=variance)
    return diffusion, GaussianMixtureOracle([1.0], MU[None], COV[None], diffusion.alphas_cumprod)


# --------------------------------------------------------------------------- the RePaint schedule
def algorithm_1_levels(K: int, R: int) -> list[int]:
    """Lugmayr et al. 2022, Algorithm 1 written out: each step t -> t-1 done U = R times, re-noised between, t >= 2.

    At t = 1 nothing is re-noised, so the U repeats recompute x_0 from the same x_1: one step.
    """
    levels = [K]
    for t in range(K, 0, -1):
        for u in range(1, (R if t > 1 else 1) + 1):
            levels.append(t - 1)
            if u < R and t > 1:
                levels.append(t)
    return levels


def jump_levels(K: int, J: int, R: int) -> list[int]:
    """Sec. 4.2 built from its jump points: go down to each point p = 1 + kJ (p + J <= K), bounce J up and down
    R - 1 times."""
    points = [p for p in range(1, K + 1, J) if p + J <= K][::-1]
    levels, n = [K], K
    for p in points:
        levels += list(range(n - 1, p - 1, -1))
        for _ in range(R - 1):
            levels += list(range(p + 1, p + J + 1)) + list(range(p + J - 1, p - 1, -1))
        n = p
    return levels + list(range(n - 1, -1, -1))


@pytest.mark.parametrize("K", [1, 2, 5, 13])
@pytest.mark.parametrize("R", [1, 2, 4])
def test_repaint_schedule_with_jump_1_is_algorithm_1(K, R):
    assert repaint_schedule(K, 1, R) == algorithm_1_levels(K, R)


@pytest.mark.parametrize("K, J, R", [(5, 2, 2), (10, 3, 3), (25, 5, 4), (20, 10, 2), (9, 10, 3), (250, 10, 10)])
def test_repaint_schedule_jumps_j_levels_r_minus_1_times_at_every_jth_level(K, J, R):
    levels = repaint_schedule(K, J, R)
    assert levels == jump_levels(K, J, R)
    assert levels[0] == K and levels[-1] == 0 and min(levels) == 0 and max(levels) == K
    assert all(abs(b - a) == 1 for a, b in zip(levels, levels[1:]))
    down = [a for a, b in zip(levels, levels[1:]) if b < a]  # the level each network call starts from
    resampled = {n for p in range(1, K + 1, J) if p + J <= K for n in range(p + 1, p + J + 1)}
    assert all(down.count(n) == (R if n in resampled else 1) for n in range(1, K + 1))
    assert 0 not in levels[:-1]  # clean data is reached once, at the end


def test_repaint_schedule_of_the_paper_250_steps_j10_r10():
    levels = repaint_schedule(250, 10, 10)
    down = sum(b < a for a, b in zip(levels, levels[1:]))
    assert levels[:5] == [250, 249, 248, 247, 246]
    assert down == 250 + 24 * 9 * 10 and len(levels) - 1 - down == 24 * 9 * 10  # 24 jump points 1, 11, ..., 231
    assert repaint_schedule(5, 2, 2) == [5, 4, 3, 4, 5, 4, 3, 2, 1, 2, 3, 2, 1, 0]


def test_repaint_schedule_refuses_bad_counts():
    for args in [(0, 1, 1), (5, 0, 1), (5, 1, 0), (5, 1, 1.5), (5, True, 1)]:
        with pytest.raises(UserError, match="must be a positive integer"):
            repaint_schedule(*args)


# --------------------------------------------------------------------------- inpainting
def reference_repaint(diffusion, model, x0, mask, R: int, seed: int):
    """Algorithm 1 of Lugmayr et al. 2022 on the full chain, from GaussianDiffusion's own posterior and q_sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x0.shape, generator=g, dtype=F64)
    for t in range(diffusion.num_timesteps - 1, -1, -1):
        tt = torch.full((x0.shape[0],), t)
        for u in range(1, (R if t >= 1 else 1) + 1):  # the last step's repeats would recompute one x0
            out = diffusion.p_mean_variance(model, x, tt)
            if t == 0:
                x_new = mask * x0 + (1 - mask) * out.pred_x0
            else:
                known = diffusion.q_sample(x0, tt - 1, torch.randn(x0.shape, generator=g, dtype=F64))
                unknown = out.mean + torch.exp(0.5 * out.log_var) * torch.randn(x0.shape, generator=g, dtype=F64)
                x_new = mask * known + (1 - mask) * unknown
            if u < R and t >= 1:  # back up: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
                beta = float(diffusion.betas[t])
                x = math.sqrt(1 - beta) * x_new + math.sqrt(beta) * torch.randn(x0.shape, generator=g, dtype=F64)
            else:
                x = x_new
    return x


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_inpaint_is_algorithm_1_step_for_step(variance):
    diffusion, oracle = gaussian(12, variance)
    x0 = oracle.sample(6, torch.Generator().manual_seed(3)).view(6, 1, 2, 2)
    for R in (1, 3):
        ours = diffusion.inpaint(oracle, x0, MASK, resample=R, generator=torch.Generator().manual_seed(5))
        ref = reference_repaint(diffusion, oracle, x0, MASK, R, 5)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
        assert torch.equal(ours.view(6, 4)[:, :2], x0.view(6, 4)[:, :2])  # known pixels exactly kept


def conditional_error(x, x_known) -> tuple[float, float]:
    """Mean error in conditional standard deviations (Mahalanobis) and covariance error (whitened, max entry)."""
    k, u = [0, 1], [2, 3]
    s_kk, s_uk, s_uu = COV[k][:, k], COV[u][:, k], COV[u][:, u]
    mean = MU[u] + s_uk @ torch.linalg.solve(s_kk, x_known - MU[k])
    cond = s_uu - s_uk @ torch.linalg.solve(s_kk, s_uk.T)
    xu = x.reshape(len(x), 4)[:, u]
    L = torch.linalg.cholesky(cond)
    e = torch.linalg.solve(L, xu.mean(0) - mean)
    W = torch.linalg.solve(L, torch.linalg.solve(L, torch.cov(xu.T)).T)
    return float(e.norm()), float((W - torch.eye(2, dtype=F64)).abs().max())


def test_inpaint_approaches_the_exact_gaussian_conditional_as_resampling_grows(one_thread):
    """Plain replacement (R = 1) is biased by over two conditional stds; resampling shrinks the error (J = 1)."""
    diffusion, oracle = gaussian(100)
    n, x_known = 1500, torch.tensor([0.8, 0.9], dtype=F64)
    x0 = torch.zeros(n, 1, 2, 2, dtype=F64)
    x0.view(n, 4)[:, :2] = x_known
    errors = []
    for R in (1, 4, 16):
        x = diffusion.inpaint(oracle, x0, MASK, resample=R, generator=torch.Generator().manual_seed(0))
        errors.append(conditional_error(x, x_known))
    (m1, c1), (m4, c4), (m16, c16) = errors
    assert m1 > 2.0 and c1 > 0.6  # measured 2.49 and 0.87 (Monte Carlo error about 0.04)
    assert m1 > 2 * m4 > 4 * m16 and c1 > 2 * c4 > 4 * c16  # measured R = 4: 1.03, 0.30
    assert m16 < 0.6 and c16 < 0.2  # measured 0.47 and 0.11 at R = 16: approaching, not yet exact


def test_inpaint_with_ddim_and_checks():
    diffusion, oracle = gaussian(20)
    x0 = oracle.sample(4, torch.Generator().manual_seed(1)).view(4, 1, 2, 2)
    x = diffusion.inpaint(
        oracle,
        x0,
        MASK,
        sampler="ddim",
        steps=8,
        eta=0.5,
        resample=2,
        jump_length=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(x.view(4, 4)[:, :2], x0.view(4, 4)[:, :2]) and torch.isfinite(x).all()
    calls = []
    diffusion.inpaint(oracle, x0, MASK, steps=8, resample=3, jump_length=2, callback=lambda *a: calls.append(a[1]))
    ts = sampling_timesteps(20, 8, "snr_root", diffusion.alphas_cumprod).tolist()
    levels = repaint_schedule(8, 2, 3)
    assert calls == [ts[8 - a] for a, b in zip(levels, levels[1:]) if b < a]  # each call at its level's timestep
    with pytest.raises(UserError, match="multistep"):
        diffusion.inpaint(oracle, x0, MASK, sampler="dpm++2m", steps=5)
    with pytest.raises(UserError, match="only 0 .generate. and 1"):
        diffusion.inpaint(oracle, x0, MASK * 0.5)
    with pytest.raises(UserError, match="does not fit"):
        diffusion.inpaint(oracle, x0, torch.ones(1, 1, 3, 3))
    with pytest.raises(UserError, match="eta applies to the ddim sampler only"):
        diffusion.inpaint(oracle, x0, MASK, eta=0.3)


# --------------------------------------------------------------------------- SDEdit
def test_edit_timesteps_cut_the_chain_at_strength_t():
    abar = linear_beta_schedule(1000).neg().add(1).cumprod(0)
    assert edit_timesteps(1000, 0.0, 50, "snr_root", abar) is None
    assert edit_timesteps(1000, 0.0004, 50, "snr_root", abar) is None  # round(0.4) = 0 steps of noise
    assert torch.equal(edit_timesteps(1000, 1.0, 50, "snr_root", abar), sampling_timesteps(1000, 50, "snr_root", abar))
    ts = edit_timesteps(1000, 0.5, 50, "snr_root", abar)
    assert ts[0] == 499 and ts[-1] == 0 and len(ts) == 25
    assert len(edit_timesteps(1000, 0.002, 50, "linspace", abar)) == 1  # at least one call, at most n0
    assert edit_timesteps(1000, 0.3, 1000, "linspace", abar).tolist() == list(range(299, -1, -1))
    for bad in (-0.1, 1.01, float("nan"), "0.5", True):
        with pytest.raises(UserError, match="strength must be a number in"):
            edit_timesteps(1000, bad, 50, "snr_root", abar)


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 10), ("dpm++2m", 10)])
def test_edit_at_strength_0_is_the_input_and_at_1_is_sampling(sampler, steps):
    diffusion, oracle = gaussian(40)
    x = oracle.sample(5, torch.Generator().manual_seed(1)).view(5, 1, 2, 2)
    assert torch.equal(diffusion.edit(oracle, x, 0.0, sampler=sampler, steps=steps), x)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(5)]
    edited = diffusion.edit(oracle, x, 1.0, sampler=sampler, steps=steps, generator=gens)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(5)]
    sampled = diffusion.sample(oracle, x.shape, sampler=sampler, steps=steps, generator=gens, dtype=F64)
    assert torch.equal(edited, sampled)


@pytest.mark.parametrize("strength", [0.3, 0.7])
def test_edit_with_the_exact_predictor_maps_the_data_distribution_to_itself(strength, one_thread):
    """Marginal N(MU, COV) kept; and Cov(x, edit(x)) = a Sigma (a Sigma + (1 - a) I)^-1 Sigma, a = abar(t0)."""
    diffusion, oracle = gaussian(1000)
    n = 4000
    x = oracle.sample(n, torch.Generator().manual_seed(1)).view(n, 1, 2, 2)
    out = diffusion.edit(oracle, x, strength, generator=torch.Generator().manual_seed(2)).view(n, 4)
    L = torch.linalg.cholesky(COV)
    assert float(torch.linalg.solve(L, out.mean(0) - MU).norm()) < 0.08  # Monte Carlo error about 0.03
    W = torch.linalg.solve(L, torch.linalg.solve(L, torch.cov(out.T)).T)
    assert float((W - torch.eye(4, dtype=F64)).abs().max()) < 0.1  # measured 0.02 and 0.05
    a = float(diffusion.alphas_cumprod[round(strength * 1000) - 1])
    cross = torch.cov(torch.cat([x.view(n, 4), out], 1).T)[:4, 4:]
    expected = a * COV @ torch.linalg.solve(a * COV + (1 - a) * torch.eye(4, dtype=F64), COV)
    assert float((cross - expected).abs().max()) < 0.01  # the input's weight in the edit is what t0 says
    assert not torch.equal(out, x.view(n, 4))


# --------------------------------------------------------------------------- interpolation
def test_slerp_keeps_the_norm_and_angle_and_the_line_does_not():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1, 8, 8, generator=g, dtype=F64), torch.randn(3, 1, 8, 8, generator=g, dtype=F64)
    b = b * (a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).view(3, 1, 1, 1)  # equal norms
    theta = torch.arccos((a.flatten(1) * b.flatten(1)).sum(1) / (a.flatten(1).norm(dim=1) ** 2))
    for w in (0.0, 0.25, 0.5, 0.9, 1.0):
        s = slerp(a, b, w).flatten(1)
        torch.testing.assert_close(s.norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
        angle = torch.arccos(((s * a.flatten(1)).sum(1) / (s.norm(dim=1) * a.flatten(1).norm(dim=1))).clamp(-1, 1))
        torch.testing.assert_close(angle, w * theta, rtol=1e-6, atol=1e-6)
    assert torch.equal(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b, rtol=0, atol=1e-12)
    line = (0.5 * (a + b)).flatten(1).norm(dim=1)
    assert bool((line < 0.8 * a.flatten(1).norm(dim=1)).all())  # a straight line leaves the shell (about 1/sqrt 2)
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: falls back to the line
    frames = slerp_frames(a[:1], b[:1], 5)
    assert frames.shape == (5, 1, 8, 8) and torch.equal(frames[0], a[0])
    with pytest.raises(UserError, match="frames must be an integer >= 2"):
        slerp_frames(a[:1], b[:1], 1)


def test_ddim_inversion_round_trip_converges_and_gives_standard_normal_noise(one_thread):
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    oracle = GaussianMixtureOracle([1.0], MU[None], COV[None], diffusion.alphas_cumprod)
    x = oracle.sample(2000, torch.Generator().manual_seed(1)).view(2000, 1, 2, 2)
    errors = []
    for steps in (10, 50, 200):
        z = diffusion.invert(oracle, x, steps)
        back = diffusion.sample(oracle, x.shape, sampler="ddim", steps=steps, x_T=z)
        errors.append(float((back - x).pow(2).mean().sqrt()))
    assert errors[0] > 2 * errors[1] > 4 * errors[2] and errors[2] < 0.01  # measured 0.13, 0.027, 0.0068
    cov = torch.cov(z.view(2000, 4).T)  # the probability-flow ODE carries the data to N(0, I)
    assert float((cov - torch.eye(4, dtype=F64)).abs().max()) < 0.12 and float(z.mean().abs()) < 0.05
