"""UniPC (Zhao et al. 2023): step by step against diffusers' UniPCMultistepScheduler in float64,
its convergence order on an exactly integrable problem, and its samples against exact mixture oracles.

diffusers' scheduler is handed our float64 alpha-bar, timesteps and sigmas (its own are float32);
its conventions matched here: ``final_sigmas_type="zero"`` (the last step goes into clean data),
``lower_order_final=True`` (it lowers the order in the last steps at every step count),
``predict_x0=True`` (the data-prediction form), no thresholding. Its ``step`` corrects the sample
it is given with the new model output before predicting, as ours does at each network call.
"""

import functools
import math

import pytest
import torch
from test_samplers import _observed_orders, exact_flow_output, mixture_mismatches, rms

import ddpmkit
from ddpmkit import GaussianDiffusion
from ddpmkit import samplers as S
from ddpmkit.errors import UserError
from ddpmkit.oracles import GaussianMixtureOracle

T = 1000
BETAS = ddpmkit.linear_beta_schedule(T)
ABAR = torch.cumprod(1.0 - BETAS, 0)
SIGMA = ((1 - ABAR) / ABAR).sqrt()  # diffusers' sigma (variance-exploding scale)
F64 = torch.float64
TIGHT = dict(rtol=1e-11, atol=1e-11)
SHAPE = (3, 2, 4, 4)

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def fake_output(x, t):
    """A deterministic, nonlinear network output that depends on t."""
    t = torch.as_tensor(t, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * torch.sin(2.0 * x + t / 300.0) + 0.1 * x


def denoiser_for(prediction):
    """Our Denoised from the fake output read as eps, v or x0 (what GaussianDiffusion.denoise does)."""

    def denoiser(x, t):
        a = ABAR[t].reshape(-1, *([1] * (x.ndim - 1)))
        out, al, si = fake_output(x, t), a.sqrt(), (1 - a).sqrt()
        x0 = {"epsilon": (x - si * out) / al, "v_prediction": al * x - si * out, "sample": out}[prediction]
        return S.Denoised(x0, (x - al * x0) / si, None)

    return denoiser


def unipc_scheduler(timesteps, order, variant, prediction="epsilon", disable_corrector=()):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=T,
        solver_order=order,
        solver_type=variant,
        prediction_type=prediction,
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
        thresholding=False,
        disable_corrector=list(disable_corrector),
    )
    sched.betas, sched.alphas, sched.alphas_cumprod = BETAS.clone(), 1 - BETAS, ABAR.clone()
    sched.set_timesteps(len(timesteps))
    sched.timesteps = torch.as_tensor(timesteps).clone()
    sched.sigmas = torch.cat([SIGMA[torch.as_tensor(timesteps)], torch.zeros(1, dtype=F64)])  # float64
    return sched


def run_ours(timesteps, prediction="epsilon", **opts):
    states = []
    x_T = torch.randn(SHAPE, generator=_gen(0), dtype=F64)
    out = S.unipc_sample(
        denoiser_for(prediction), x_T, timesteps, ABAR, callback=lambda i, t, x, d: states.append(x), **opts
    )
    return states, out


# =========================================================================== diffusers parity
@pytest.mark.anchors
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing, k", [("snr_root", 10), ("logsnr", 16), ("trailing", 7)])
def test_unipc_steps_match_diffusers_in_float64(variant, order, prediction, spacing, k):
    ts = S.sampling_timesteps(T, k, spacing, ABAR)
    states, out = run_ours(ts, prediction, variant=variant, order=order)
    sched = unipc_scheduler(ts, order, variant, prediction)
    for i, t in enumerate(ts.tolist()[:-1]):  # every transition between two network calls
        x = sched.step(fake_output(states[i], t), t, states[i]).prev_sample
        torch.testing.assert_close(x, states[i + 1], **TIGHT)
    # the step into clean data is first order: x0 of the last call (diffusers' bh1 gives NaN
    # there, B(h) = -inf times a zero correction, so the comparison is with the formula itself)
    last_x0 = denoiser_for(prediction)(states[-1], torch.full((SHAPE[0],), int(ts[-1])))
    torch.testing.assert_close(out, last_x0.x0, **TIGHT)
    if variant == "bh2":
        t = int(ts[-1])
        torch.testing.assert_close(sched.step(fake_output(states[-1], t), t, states[-1]).prev_sample, out, **TIGHT)


@pytest.mark.anchors
@pytest.mark.parametrize("variant, order", [("bh1", 3), ("bh2", 2)])
def test_unipc_without_corrector_is_diffusers_with_the_corrector_disabled(variant, order):
    ts = S.sampling_timesteps(T, 12, "snr_root", ABAR)
    states, _ = run_ours(ts, variant=variant, order=order, corrector=False)
    sched = unipc_scheduler(ts, order, variant, disable_corrector=range(12))
    for i, t in enumerate(ts.tolist()[:-1]):
        torch.testing.assert_close(
            sched.step(fake_output(states[i], t), t, states[i]).prev_sample, states[i + 1], **TIGHT
        )
    with_corrector, _ = run_ours(ts, variant=variant, order=order)
    assert float((with_corrector[3] - states[3]).abs().max()) > 1e-4  # the corrector does change the path


def test_one_step_by_hand():
    # two calls, order 2 at bh2: call 0 predicts with DDIM (first order, nothing to correct);
    # call 1 corrects that prediction with rho = 1/2: x1 = DDIM(x0_0) - alpha_1 B(h) (x0_1 - x0_0) / 2
    ts = [800, 400, 100]
    den = denoiser_for("epsilon")
    x = torch.randn(2, 3, generator=_gen(1), dtype=F64)
    seen = []
    S.unipc_sample(den, x, ts, ABAR, variant="bh2", order=2, callback=lambda i, t, xi, d: seen.append(xi))
    a = ABAR[ts].tolist()
    al, si = [math.sqrt(v) for v in a], [math.sqrt(1 - v) for v in a]
    lam = [math.log(p / q) for p, q in zip(al, si)]
    m0 = den(x, torch.full((2,), 800)).x0
    ddim = (si[1] / si[0]) * x + al[1] * (1 - math.exp(-(lam[1] - lam[0]))) * m0
    torch.testing.assert_close(seen[1], ddim, **TIGHT)
    m1 = den(ddim, torch.full((2,), 400)).x0
    h = lam[1] - lam[0]
    corrected = ddim - al[1] * math.expm1(-h) * 0.5 * (m1 - m0)
    # then call 1 predicts 100 with order min(2, 2, 3 - 1) = 2: r = (lam_0 - lam_1) / h1, rho = 1/2
    h1 = lam[2] - lam[1]
    r = (lam[0] - lam[1]) / h1
    pred = (
        (si[2] / si[1]) * corrected + al[2] * (1 - math.exp(-h1)) * m1 - al[2] * math.expm1(-h1) * 0.5 * (m0 - m1) / r
    )
    torch.testing.assert_close(seen[2], pred, **TIGHT)


# =========================================================================== accuracy
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize(
    "order, corrector, expected",
    [(1, True, 2), (2, True, 3), (3, True, 3), (1, False, 1), (2, False, 2), (3, False, 3)],
)
def test_convergence_order(variant, order, corrector, expected, monkeypatch):
    # UniPC-p converges at order p + 1 (Zhao et al. 2023, Theorem 3.1), up to the order-2 step
    # before the end (lower_order_final): 2, 3, 3 with the corrector; UniP-p alone at order p
    fn = functools.partial(S.unipc_sample, variant=variant, order=order, corrector=corrector)
    monkeypatch.setitem(S.SAMPLERS, "unipc-test", fn)
    observed = _observed_orders("unipc-test")
    assert all(expected - 0.3 < p < expected + 1.0 for p in observed), observed


@pytest.mark.parametrize("sampler", ["unipc-bh1", "unipc-bh2"])
def test_ode_error_falls_as_steps_grow_and_beats_dpmpp(gaussian, sampler):
    x_T = torch.randn(2000, 2, generator=_gen(0), dtype=F64)
    errors, dpm = [], []
    for k in (10, 20, 40, 80):
        ts = S.sampling_timesteps(T, k, S.DEFAULT_SPACING[sampler], ABAR)
        exact = exact_flow_output(gaussian, x_T, ts)
        errors.append(rms(S.SAMPLERS[sampler](gaussian.denoise, x_T, ts, ABAR), exact))
        dpm.append(rms(S.dpmpp_2m_sample(gaussian.denoise, x_T, ts, ABAR), exact))
    assert all(b < 0.6 * a for a, b in zip(errors, errors[1:])), errors
    assert all(e < d for e, d in zip(errors, dpm)), (errors, dpm)  # higher order on the same timesteps


@pytest.mark.parametrize("sampler", ["unipc-bh1", "unipc-bh2"])
@pytest.mark.parametrize("spacing", ["snr_root", "logsnr", "karras", "quadratic", "trailing", "linspace"])
def test_unipc_reproduces_the_mixture_on_every_spacing(mixture, sampler, spacing):
    # linspace needs 200 calls: at 100 its last log-SNR step is ~30 times the one before, and
    # bh1's extrapolation over it leaves a component's std 10% high (measured)
    steps = 200 if spacing == "linspace" else 100
    d = GaussianDiffusion(BETAS)
    x = d.sample(mixture, (8000, 2), sampler=sampler, steps=steps, spacing=spacing, generator=_gen(11), dtype=F64)
    assert mixture_mismatches(mixture, x) == []


def test_unipc_at_10_calls_is_closer_to_the_flow_than_ddim_and_dpmpp_on_a_sharp_ring():
    # deterministic: distance from the same x_T to a converged solution (500-call DPM-Solver++(3M),
    # within 1e-5 of 400-call UniPC-3), each sampler on its default spacing
    ring = GaussianMixtureOracle.ring(ABAR, std=0.05)
    x_T = torch.randn(2000, 2, generator=_gen(3), dtype=F64)
    ref = S.dpmpp_3m_sample(ring.denoise, x_T, S.sampling_timesteps(T, 500, "snr_root", ABAR), ABAR)
    err = {
        s: rms(S.SAMPLERS[s](ring.denoise, x_T, S.sampling_timesteps(T, 10, S.DEFAULT_SPACING[s], ABAR), ABAR), ref)
        for s in ("ddim", "dpm++2m", "unipc-bh1", "unipc-bh2")
    }
    assert err["unipc-bh1"] < 0.6 * err["ddim"] and err["unipc-bh2"] < 0.7 * err["ddim"], err  # measured 0.48, 0.60
    assert err["unipc-bh1"] < 0.8 * err["dpm++2m"] and err["unipc-bh2"] < err["dpm++2m"], err  # 0.72, 0.90


# =========================================================================== plumbing
@pytest.mark.parametrize("sampler", ["unipc-bh1", "unipc-bh2"])
def test_network_calls_equal_steps_and_batches_do_not_matter(mixture, sampler):
    d = GaussianDiffusion(BETAS)
    seen = []
    big = d.sample(
        mixture,
        (6, 2),
        sampler=sampler,
        steps=9,
        dtype=F64,
        generator=[_gen(100 + i) for i in range(6)],
        callback=lambda i, t, x, den: seen.append(t),
    )
    assert seen == S.sampling_timesteps(T, 9, S.DEFAULT_SPACING[sampler], ABAR).tolist()
    small = d.sample(mixture, (3, 2), sampler=sampler, steps=9, dtype=F64, generator=[_gen(100 + i) for i in range(3)])
    torch.testing.assert_close(big[:3], small, rtol=1e-12, atol=1e-12)
    x32 = d.sample(mixture, (6, 2), sampler=sampler, steps=9, generator=[_gen(100 + i) for i in range(6)])
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), big, rtol=0, atol=1e-4)


def test_guided_unipc_makes_one_batched_call_per_step():
    class Toy:
        null_class = 2
        calls = 0

        def __call__(self, x, t, y=None):
            Toy.calls += 1
            return 0.1 * (1 + y[:, None].to(x.dtype)) * x

    d = GaussianDiffusion(BETAS)
    x = d.sample(
        Toy(),
        (4, 2),
        sampler="unipc-bh2",
        steps=8,
        y=torch.tensor([0, 1, 0, 1]),
        guidance_scale=3.0,
        generator=_gen(0),
        dtype=F64,
    )
    assert Toy.calls == 8 and bool(torch.isfinite(x).all())


@pytest.mark.parametrize(
    "opts", [dict(order=4), dict(order=0), dict(order=2.0), dict(variant="bh3"), dict(variant=None)]
)
def test_bad_unipc_options_raise(gaussian, opts):
    with pytest.raises(UserError):
        S.unipc_sample(gaussian.denoise, torch.zeros(2, 2, dtype=F64), [500, 100], ABAR, **opts)


def test_unipc_refuses_eta(mixture):
    with pytest.raises(UserError, match="eta applies to the ddim sampler only; unipc-bh2 is deterministic"):
        GaussianDiffusion(BETAS).sample(mixture, (2, 2), sampler="unipc-bh2", steps=3, eta=0.5)


# =========================================================================== order from the API, config and CLI
def test_the_order_reaches_the_solver(mixture):
    d = GaussianDiffusion(BETAS)
    ts = S.sampling_timesteps(T, 8, S.DEFAULT_SPACING["unipc-bh1"], ABAR)
    x_T = torch.randn(5, 2, generator=_gen(3), dtype=F64)
    for order in (1, 3):
        ours = d.sample(mixture, (5, 2), sampler="unipc-bh1", steps=8, x_T=x_T, order=order)
        direct = S.unipc_sample(lambda x, t: d.denoise(mixture, x, t), x_T, ts, ABAR, variant="bh1", order=order)
        torch.testing.assert_close(ours, direct, rtol=0, atol=0)
    default = d.sample(mixture, (5, 2), sampler="unipc-bh1", steps=8, x_T=x_T)
    assert (default - d.sample(mixture, (5, 2), sampler="unipc-bh1", steps=8, x_T=x_T, order=3)).abs().max() > 1e-6


@pytest.mark.parametrize(
    "sampler, order, words",
    [
        ("dpm++2m", 3, "order applies to the unipc samplers only"),
        ("ddim", 1, "order applies to the unipc samplers only"),
        ("unipc-bh2", 4, "order must be 1, 2 or 3, got 4"),
        ("unipc-bh2", True, "order must be 1, 2 or 3"),
    ],
)
def test_a_wrong_order_is_refused(mixture, sampler, order, words):
    with pytest.raises(UserError, match=words):
        GaussianDiffusion(BETAS).sample(mixture, (2, 2), sampler=sampler, steps=3, order=order)


def test_sample_order_from_the_command_line_and_the_config(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from ddpmkit.cli import main
    from ddpmkit.config import load_config
    from ddpmkit.images import load_npz

    run = str(Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "digits_unet_step3.pt")
    seen = []
    real = S.SAMPLERS["unipc-bh2"]
    monkeypatch.setitem(S.SAMPLERS, "unipc-bh2", lambda *a, **k: seen.append(k.get("order")) or real(*a, **k))

    def sample(sampler: str, order: str, out: Path) -> int:
        return main(
            [
                "sample",
                run,
                "--num",
                "2",
                "--sampler",
                sampler,
                "--steps",
                "5",
                "--order",
                order,
                "--out",
                str(out),
                "--no-progress",
            ]
        )

    for order in ("1", "3"):
        out = tmp_path / f"o{order}.npz"
        assert sample("unipc-bh2", order, out) == 0
        assert load_npz(out)[0].shape[0] == 2
    assert seen == [1, 3]  # the 3-step fixture's saved pixels are too coarse to tell the orders apart
    assert sample("ddim", "2", tmp_path / "x.npz") == 2
    assert "order applies to the unipc samplers only" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(UserError, match="sample.order"):
        load_config("digits", overrides={"sample": {"sampler": "dpm++2m", "order": 3}})
    assert load_config("digits", overrides={"sample": {"sampler": "unipc-bh1", "order": 3}}).sample.order == 3
