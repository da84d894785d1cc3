"""Our samplers against the corresponding ``diffusers`` schedulers, step by step, on identical
inputs, with a deterministic fake denoiser.

Each of our samplers is run once with a callback that records the state x at every network
call; then every transition x_i -> x_{i+1} (and the last call -> the output) is recomputed by
the diffusers scheduler from our x_i and the same model output. diffusers builds its schedule in
float32; the tests hand it our float64 alpha-bar (and sigmas) so that both sides compute with the
same numbers, and match to float64 precision unless stated.

Conventions matched explicitly: ``steps_offset=0``, ``clip_sample=False``, ``set_alpha_to_one=True``
(DDIM's last step goes to alpha-bar = 1, like ours), ``final_sigmas_type="zero"`` and
``lower_order_final=True`` (DPM-Solver++'s last step is first order into clean data, like ours),
prediction_type="epsilon". Differences that are legitimate, each pinned down by a test below:

- DDIMScheduler steps from t to t - T // k whatever its timestep list says, so it follows our
  chain only when the kept indices are evenly spaced by T // k ("leading", or "trailing" with
  k dividing T); with "linspace" it evaluates the model at 888 after stepping to 899.
- DDPMScheduler adds noise in the last step when the last kept index is above 0 ("trailing"):
  sqrt(1 - abar_last) z with fixed_large; we return x0 there (no noise into clean data, Ho et
  al. Algorithm 2).
- DPMSolverMultistepScheduler's own "linspace"/"leading" grids use k + 1 points and drop t = 0;
  we pass our timesteps explicitly. Its ``step`` casts the sample to float32 (so whole steps
  agree to float32 rounding; the update formulas, called directly, agree to float64).
- DPMSolverMultistepScheduler's third-order update (as the reference DPM-Solver code) weights
  its second difference D2 = (D1_0 - D1_1) / (r0 + r1), which approximates h^2 x0''/2, by the
  coefficient of h^2 x0''; it misses half of the second-derivative term and converges at order
  about 2 (ours: 3, see tests/test_samplers.py::test_convergence_order). With 3M at 15 or more
  steps it also keeps third order in the second-to-last step, where we use 2M.
"""

import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import ddpmkit  # noqa: E402
from ddpmkit import samplers as S  # noqa: E402

T = 1000
BETAS = ddpmkit.linear_beta_schedule(T)
ABAR = torch.cumprod(1 - BETAS, 0)
SIGMA = ((1 - ABAR) / ABAR).sqrt()  # diffusers' DPM-Solver sigma (variance-exploding scale)
F64 = torch.float64
SHAPE = (3, 2, 4, 4)
TIGHT = dict(rtol=1e-11, atol=1e-11)


pytestmark = [pytest.mark.anchors, pytest.mark.usefixtures("one_thread")]


def fake_eps(x, t):
    """A deterministic, nonlinear noise prediction that depends on t."""
    t = torch.as_tensor(t, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * torch.sin(2.0 * x + t / 300.0) + 0.1 * x


def fake_var(x, t):
    """A learned-range variance output v in (-1, 1)."""
    t = torch.as_tensor(t, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x - t / 700.0)


def denoiser(x, t):
    a = ABAR[t].reshape(-1, *([1] * (x.ndim - 1)))
    eps = fake_eps(x, t)
    return S.Denoised((x - (1 - a).sqrt() * eps) / a.sqrt(), eps, (fake_var(x, t) + 1) / 2)


def x_T():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)


def run_ours(sampler, timesteps, **opts):
    """Our sampler's state at every network call, and its output."""
    states = []
    out = S.SAMPLERS[sampler](denoiser, x_T(), timesteps, ABAR, callback=lambda i, t, x, d: states.append(x), **opts)
    return states, out


def float64_schedule(sched):
    sched.betas, sched.alphas, sched.alphas_cumprod = BETAS.clone(), 1 - BETAS, ABAR.clone()
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    if hasattr(sched, "one"):
        sched.one = torch.tensor(1.0, dtype=F64)
    return sched


# =========================================================================== timesteps
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("k", [10, 20, 50, 250])
def test_spacings_match_diffusers(spacing, k):
    ours = S.sampling_timesteps(T, k, spacing).tolist()
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler):
        sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=0)
        sched.set_timesteps(k)
        assert sched.timesteps.tolist() == ours, cls.__name__
    if spacing == "trailing":
        sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing="trailing")
        sched.set_timesteps(k)
        assert sched.timesteps.tolist() == ours
    if spacing == "linspace":  # DPM-Solver's linspace: k + 1 points, t = 0 dropped
        sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing="linspace")
        sched.set_timesteps(k)
        assert sched.timesteps.tolist() == S.sampling_timesteps(T, k + 1, "linspace").tolist()[:-1]


@pytest.mark.parametrize("k", [10, 20, 30])
def test_karras_spacing_matches_diffusers_karras_timesteps(k):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, use_karras_sigmas=True)
    float64_schedule(sched)
    sched.set_timesteps(k)
    assert sched.timesteps.tolist() == S.sampling_timesteps(T, k, "karras", ABAR).tolist()


# =========================================================================== DDPM
def ddpm_scheduler(variance, timesteps):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=T, variance_type=variance, clip_sample=False, prediction_type="epsilon", steps_offset=0
    )
    float64_schedule(sched)
    sched.set_timesteps(timesteps=[int(t) for t in timesteps])
    return sched


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small", "learned_range"])
@pytest.mark.parametrize("spacing, k", [("linspace", 10), ("leading", 20), ("snr_root", 12), ("linspace", 1000)])
def test_ddpm_steps_match_diffusers(variance, spacing, k):
    ts = S.sampling_timesteps(T, k, spacing, ABAR)
    states, out = run_ours("ddpm", ts, variance=variance, generator=torch.Generator().manual_seed(5))
    sched = ddpm_scheduler(variance, ts)
    g = torch.Generator().manual_seed(5)  # diffusers draws its noise in the same order from the same seed
    targets = states[1:] + [out]
    for i, t in enumerate(ts.tolist()):
        model_out = fake_eps(states[i], t)
        if variance == "learned_range":
            model_out = torch.cat([model_out, fake_var(states[i], t)], dim=1)
        step = sched.step(model_out, t, states[i], generator=g)
        torch.testing.assert_close(step.prev_sample, targets[i], **TIGHT)


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ddpm_last_step_differs_from_diffusers_only_by_its_final_noise(variance):
    ts = S.sampling_timesteps(T, 10, "trailing")  # last kept index 99 > 0
    states, out = run_ours("ddpm", ts, variance=variance, generator=torch.Generator().manual_seed(5))
    sched = ddpm_scheduler(variance, ts)
    g = torch.Generator().manual_seed(5)
    for i, t in enumerate(ts.tolist()[:-1]):
        torch.testing.assert_close(
            sched.step(fake_eps(states[i], t), t, states[i], generator=g).prev_sample, states[i + 1], **TIGHT
        )
    g_noise = torch.Generator().set_state(g.get_state())
    last = sched.step(fake_eps(states[-1], 99), 99, states[-1], generator=g).prev_sample
    z = torch.randn(SHAPE, generator=g_noise, dtype=F64)
    # fixed_large: beta' = 1 - abar_99; fixed_small: the posterior variance into abar = 1, which is 0
    # (diffusers clamps it to 1e-20)
    var = 1 - float(ABAR[99]) if variance == "fixed_large" else 1e-20
    torch.testing.assert_close(last, out + math.sqrt(var) * z, **TIGHT)


# =========================================================================== DDIM
def ddim_scheduler(k, spacing):
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        timestep_spacing=spacing,
        steps_offset=0,
        set_alpha_to_one=True,
        clip_sample=False,
        prediction_type="epsilon",
    )
    float64_schedule(sched)
    sched.set_timesteps(k)
    return sched


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.3])
@pytest.mark.parametrize(
    "spacing, k", [("leading", 10), ("leading", 7), ("trailing", 10), ("trailing", 25), ("leading", 50)]
)
def test_ddim_steps_match_diffusers(spacing, k, eta):
    sched = ddim_scheduler(k, spacing)
    ts = S.sampling_timesteps(T, k, spacing)
    assert sched.timesteps.tolist() == ts.tolist()
    states, out = run_ours("ddim", ts, eta=eta, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    targets = states[1:] + [out]
    for i, t in enumerate(ts.tolist()):
        step = sched.step(fake_eps(states[i], t), t, states[i], eta=eta, generator=g)
        torch.testing.assert_close(step.prev_sample, targets[i], **TIGHT)


def test_ddim_with_linspace_steps_to_t_minus_T_over_k_in_diffusers():
    sched = ddim_scheduler(10, "linspace")
    assert sched.timesteps.tolist()[:2] == [999, 888]
    x = x_T()
    step = sched.step(fake_eps(x, 999), 999, x, eta=0.0).prev_sample
    # diffusers' first step lands on 999 - 1000 // 10 = 899, not on the next kept index 888
    states, _ = run_ours("ddim", [999, 899])
    torch.testing.assert_close(step, states[1], **TIGHT)
    states, _ = run_ours("ddim", [999, 888])
    assert float((step - states[1]).abs().max()) > 1e-4


# =========================================================================== DPM-Solver++
def dpm_scheduler(timesteps, order):
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        algorithm_type="dpmsolver++",
        solver_order=order,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        prediction_type="epsilon",
        thresholding=False,
    )
    float64_schedule(sched)
    sched.set_timesteps(timesteps=[int(t) for t in timesteps])
    sched.sigmas = torch.cat([SIGMA[torch.as_tensor(timesteps)], torch.zeros(1, dtype=F64)])  # float64
    return sched


def dpm_case(order, spacing, k):
    """Our dpm++ sampler's grid, diffusers' scheduler on it, and the state each of our steps must reach."""
    ts = S.sampling_timesteps(T, k, spacing, ABAR)
    states, out = run_ours(f"dpm++{order}m", ts)
    return ts, states, dpm_scheduler(ts, order), states[1:] + [out]


def missing_half_of_d2_term(sched, hist, i):
    """alpha_t phi_3 D2 of diffusers' third-order update at step i: the half it leaves out."""

    def lam(s):
        a = 1 / math.sqrt(s * s + 1)
        return math.log(a) - math.log(s * a)

    s_t, s0, s1, s2 = (float(sched.sigmas[j]) for j in (i + 1, i, i - 1, i - 2))
    h, h0, h1 = lam(s_t) - lam(s0), lam(s0) - lam(s1), lam(s1) - lam(s2)
    r0, r1 = h0 / h, h1 / h
    m0, m1, m2 = hist[-1], hist[-2], hist[-3]
    d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
    phi_3 = (math.expm1(-h) / h + 1) / h - 0.5
    return -(1 / math.sqrt(s_t * s_t + 1)) * phi_3 * d2


def our_order(i, k, order):
    """The order of our multistep update from call i of k: warm-up, then lower order in the last step."""
    if i == k - 1:
        return 1  # into clean data: the last x0
    q = min(i + 1, order)
    return min(q, 2) if i == k - 2 else q


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize(
    "spacing, k", [("snr_root", 10), ("logsnr", 10), ("trailing", 20), ("snr_root", 20), ("quadratic", 25)]
)
def test_dpmpp_updates_match_diffusers_in_float64(order, spacing, k):
    ts, states, sched, targets = dpm_case(order, spacing, k)
    hist = []
    for i, t in enumerate(ts.tolist()):
        sched._step_index = i
        hist.append(sched.convert_model_output(fake_eps(states[i], t), sample=states[i]))
        q = our_order(i, k, order)
        if q == 1:
            x = sched.dpm_solver_first_order_update(hist[-1], sample=states[i])
        elif q == 2:
            x = sched.multistep_dpm_solver_second_order_update(hist[-2:], sample=states[i])
        else:
            x = sched.multistep_dpm_solver_third_order_update(hist[-3:], sample=states[i])
            x = x + missing_half_of_d2_term(sched, hist, i)
        torch.testing.assert_close(x, targets[i], **TIGHT)
    assert sum(our_order(i, k, order) == order for i in range(k)) == k - 2 * order + 2  # all but warm-up and end


@pytest.mark.parametrize(
    "order, spacing, k",
    [(2, "snr_root", 10), (2, "logsnr", 20), (2, "trailing", 16), (3, "snr_root", 10), (3, "logsnr", 14)],
)
def test_dpmpp_scheduler_steps_match_ours(order, spacing, k):
    """diffusers' own step(): its order bookkeeping (warm-up, lower_order_final) against ours,
    to float32 rounding (step casts the sample to float32)."""
    ts, states, sched, targets = dpm_case(order, spacing, k)
    hist = []
    for i, t in enumerate(ts.tolist()):
        x = sched.step(fake_eps(states[i], t), t, states[i]).prev_sample
        hist.append(sched.model_outputs[-1])
        if our_order(i, k, order) == 3:
            x = x + missing_half_of_d2_term(sched, hist, i)
        scale = float(targets[i].abs().max())
        torch.testing.assert_close(x, targets[i], rtol=1e-6, atol=1e-6 * scale)
    assert sched.step_index == k


def test_missing_half_of_d2_term_is_not_negligible():
    # the correction the 3M tests add is real: without it the third-order steps differ
    ts = S.sampling_timesteps(T, 10, "snr_root", ABAR)
    states, _ = run_ours("dpm++3m", ts)
    sched = dpm_scheduler(ts, 3)
    hist = []
    for i, t in enumerate(ts.tolist()[:3]):
        sched._step_index = i
        hist.append(sched.convert_model_output(fake_eps(states[i], t), sample=states[i]))
    x = sched.multistep_dpm_solver_third_order_update(hist, sample=states[2])
    assert float((x - states[3]).abs().max()) > 1e-6
    torch.testing.assert_close(x + missing_half_of_d2_term(sched, hist, 2), states[3], **TIGHT)
    assert np.isfinite(float(x.abs().max()))
