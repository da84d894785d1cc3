"""Power-function EMA: widths, the update against its closed-form profile, post-hoc reconstruction, resume."""

from __future__ import annotations

import copy
import functools
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpmkit.errors import UserError
from ddpmkit.power_ema import (
    GAMMA_PEAK,
    SIGMA_REL_MAX,
    PowerEMA,
    PowerProfile,
    gamma_from_sigma_rel,
    posthoc_coefficients,
    power_ema_beta,
    power_ema_weight,
    power_profile,
    power_profile_weights,
    profile_fit_error,
    profile_inner_product,
    reconstruct_state_dict,
    reconstruct_tensor,
    sigma_rel_from_gamma,
)
from helpers import perturb, tiny_model

STORED = (0.05, 0.10)  # the widths a run keeps, as in EDM2
STEPS = 2000  # length of the synthetic run
SNAPSHOT_EVERY = 100
EXACT_TOL = 1e-12  # stored widths come back to float64 precision (measured <= 3e-15 on weights of size ~5)
INSIDE_TOL = 2e-3  # other widths between the stored ones, read at a snapshot step >= 1000
EARLY_TOL = 6e-3  # read early, from few snapshots
OUTSIDE_TOL = 1e-2  # widths beyond the stored ones (0.03, 0.15, 0.2)
BETWEEN_TOL = 4e-2  # read between two snapshot steps: the reachable read times are the snapshots' ones


# --- widths ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_rel", [0.005, 0.03, 0.05, 0.1, 0.2, 0.25, 0.2887, 0.3, 0.30028])
def test_gamma_from_sigma_rel_inverts_eq_3_and_solves_the_cubic(sigma_rel):
    g = gamma_from_sigma_rel(sigma_rel)
    s = sigma_rel**-2
    assert abs(sigma_rel_from_gamma(g) - sigma_rel) <= 1e-15
    assert abs(((g + 7) * g + 16 - s) * g + 12 - s) <= 1e-9 * s * max(1.0, g)
    assert g >= GAMMA_PEAK


def test_known_widths_and_the_widest_profile():
    assert sigma_rel_from_gamma(0.0) == pytest.approx(1 / math.sqrt(12), abs=1e-16)  # uniform profile
    assert gamma_from_sigma_rel(0.3) == pytest.approx(-1 / 3, abs=1e-14)  # (2/3) / ((5/3)**2 (8/3)) = 0.09
    assert sigma_rel_from_gamma(GAMMA_PEAK) == pytest.approx(SIGMA_REL_MAX, abs=1e-16)
    assert sigma_rel_from_gamma(GAMMA_PEAK - 1e-3) < SIGMA_REL_MAX > sigma_rel_from_gamma(GAMMA_PEAK + 1e-3)
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("bad", [0, -0.1, SIGMA_REL_MAX, 0.31, float("nan"), True, "0.1"])
def test_sigma_rel_out_of_range_is_a_user_error(bad):
    with pytest.raises(UserError, match="sigma_rel"):
        gamma_from_sigma_rel(bad)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 6.94])
def test_sigma_rel_is_the_relative_std_of_the_profile(gamma):
    t = 7.0
    tau = (np.arange(400_000) + 0.5) / 400_000 * t  # midpoint rule on (0, t]
    p = power_profile(gamma, t, tau) * (t / len(tau))
    mean = (p * tau).sum()
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    assert math.sqrt((p * (tau - mean) ** 2).sum()) / t == pytest.approx(sigma_rel_from_gamma(gamma), rel=1e-7)


# --- profile and update -----------------------------------------------------------------------------------------------


def test_beta_and_weight():
    g = gamma_from_sigma_rel(0.1)
    assert power_ema_beta(g, 1) == 0.0 and power_ema_weight(g, 1) == 1.0  # the first update copies
    assert power_ema_beta(g, 4, 4) == 0.0 and power_ema_weight(g, 4, 4) == 1.0
    for step, k in [(2, 1), (10, 1), (12, 4), (1000, 10)]:
        assert power_ema_beta(g, step, k) == pytest.approx((1 - k / step) ** (g + 1), rel=1e-15)
        assert power_ema_weight(g, step, k) == pytest.approx(1 - power_ema_beta(g, step, k), rel=1e-13)
    # late in training 1 - beta ~ (gamma + 1) / t; the weight keeps its digits where 1 - beta would lose them
    t = 10**12
    assert power_ema_weight(g, t) == pytest.approx((g + 1) / t * (1 - g / (2 * t)), rel=1e-14)
    with pytest.raises(ValueError):
        power_ema_beta(g, 3, 4)


@pytest.mark.parametrize("t,k", [(1, 1), (17, 1), (1000, 1), (1000, 4), (1003, 4), (40, 40)])
@pytest.mark.parametrize("sigma_rel", [0.03, 0.1, 0.25, 0.3])
def test_profile_weights_sum_to_one(t, k, sigma_rel):
    w = power_profile_weights(gamma_from_sigma_rel(sigma_rel), t, np.arange(0, t + 5), k)
    assert abs(w.sum() - 1) <= 1e-14 and np.all(w >= 0)
    assert np.all(w[np.arange(0, t + 5) % k != 0] == 0) and np.all(w[t + 1 :] == 0)


@pytest.mark.parametrize("a,b", [((6.94, 1000.0), (16.97, 700.0)), ((0.0, 5.0), (2.0, 5.0)), ((1.5, 3.0), (1.5, 9.0))])
def test_inner_product_matches_quadrature(a, b):
    a, b = PowerProfile(*a), PowerProfile(*b)
    t = min(a.t, b.t)  # the product vanishes beyond the earlier end; a grid up to it keeps the midpoint rule smooth
    tau = (np.arange(1_000_000) + 0.5) / 1_000_000 * t
    numeric = (power_profile(a.gamma, a.t, tau) * power_profile(b.gamma, b.t, tau)).sum() * t / len(tau)
    assert profile_inner_product(a, b) == pytest.approx(numeric, rel=1e-6)
    assert profile_inner_product(a, b) == profile_inner_product(b, a)


class Weights(nn.Module):
    """A 'network' whose weights the test sets by hand: one vector and one matrix, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        self.m = nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))

    def set(self, values: np.ndarray) -> None:
        """Load 16 numbers: 4 into w, 12 into m."""
        with torch.no_grad():
            self.w.copy_(torch.from_numpy(values[:4]))
            self.m.copy_(torch.from_numpy(values[4:].reshape(3, 4)))


def flat(state) -> np.ndarray:
    """The 16 numbers of a Weights state dict."""
    return np.concatenate([state["w"].numpy(), state["m"].numpy().reshape(-1)])


@functools.lru_cache(maxsize=1)
def trajectory() -> np.ndarray:
    """Synthetic weights after steps 1..STEPS: offset, drift, a slow oscillation, a random walk and noise."""
    rng = np.random.default_rng(0)
    t = np.arange(1, STEPS + 1)[:, None] / STEPS
    return (
        2 * rng.normal(size=16)
        + t * rng.normal(size=16)
        + 0.5 * np.sin(6 * np.pi * t + rng.uniform(0, 6, 16))
        + np.cumsum(rng.normal(size=(STEPS, 16)), axis=0) / math.sqrt(STEPS)
        + 0.1 * rng.normal(size=(STEPS, 16))
    )


def assert_average_follows_profile(average: np.ndarray, history: np.ndarray, weights: np.ndarray) -> None:
    """The average equals sum_tau weights[tau] history[tau], and the weights are a normalised profile."""
    assert abs(weights.sum() - 1) <= 1e-12, f"profile sums to {weights.sum()!r}, not 1"
    np.testing.assert_allclose(average, weights @ history, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_update_matches_the_closed_form_profile(k):
    traj = trajectory()[:300]
    model = Weights()
    ema = PowerEMA(model, sigma_rels=(0.03, 0.1, 0.25), update_every=k)
    for step in range(1, len(traj) + 1):
        model.set(traj[step - 1])
        ema.update(model, step)
        assert ema.step == k * (step // k)
        if step in (1, 2, 3, 7, 50, 299, 300) and step >= k:  # before its first update the average is the start
            taus = np.arange(1, step + 1)
            for g, shadow in zip(ema.gammas, ema.models):
                weights = power_profile_weights(g, step, taus, k)
                assert_average_follows_profile(flat(shadow.state_dict()), traj[:step], weights)


def test_profile_check_catches_a_wrong_normalisation_or_wrong_times():
    """The check above is not vacuous: an unnormalised profile or weights a step off fail it."""
    traj = trajectory()[:200]
    model = Weights()
    ema = PowerEMA(model, sigma_rels=(0.1,))
    for step in range(1, 201):
        model.set(traj[step - 1])
        ema.update(model, step)
    g, taus, average = ema.gammas[0], np.arange(1, 201), flat(ema.models[0].state_dict())
    weights = power_profile_weights(g, 200, taus)
    assert_average_follows_profile(average, traj, weights)
    wrong = {
        "scaled": weights * 1.001,
        "density, not integrated": power_profile(g, 200, taus),
        "read at t + 1": power_profile_weights(g, 201, taus),
        "shifted a step": power_profile_weights(g, 200, taus + 1),
        "renormalised after a shift": power_profile_weights(g, 200, taus + 1)
        / power_profile_weights(g, 200, taus + 1).sum(),
    }
    for name, w in wrong.items():
        with pytest.raises(AssertionError):
            assert_average_follows_profile(average, traj, w)
            pytest.fail(name)  # pragma: no cover - reached only if the check missed the mistake


# --- reconstruction -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def snapshots(k: int = 1, every: int = SNAPSHOT_EVERY) -> tuple[list[PowerProfile], list[dict], list[int]]:
    """Run PowerEMA(STORED) over the trajectory; every ``every`` steps keep (profile, state copy, step asked)."""
    traj, model = trajectory(), Weights()
    ema = PowerEMA(model, sigma_rels=STORED, update_every=k)
    profiles, states, asked = [], [], []
    for step in range(1, STEPS + 1):
        model.set(traj[step - 1])
        ema.update(model, step)
        if step % every == 0:
            for profile, shadow in zip(ema.profiles, ema.models):
                profiles.append(profile)
                states.append({n: v.clone() for n, v in shadow.state_dict().items()})
                asked.append(step)
    return profiles, states, asked


def assert_reconstructs(profiles, states, target: PowerProfile, expected: np.ndarray, tol: float) -> None:
    """The post-hoc average of ``target`` from the snapshots is within ``tol`` of ``expected`` everywhere."""
    x = posthoc_coefficients(profiles, target)
    got = flat(reconstruct_state_dict(states, x))
    err = np.abs(got - expected).max()
    assert err <= tol, f"reconstruction of {target} off by {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("k", [1, 4])
def test_reconstruction_returns_the_stored_widths_exactly(k):
    profiles, states, _ = snapshots(k)
    for i in range(0, len(profiles), 7):
        assert_reconstructs(profiles, states, profiles[i], flat(states[i]), EXACT_TOL)
        x = posthoc_coefficients(profiles, profiles[i])
        assert np.abs(x - np.eye(len(profiles))[i]).max() <= 1e-12
        assert profile_fit_error(profiles, x, profiles[i]) <= 1e-7  # sqrt of a float64 cancellation


# Each case: (target width, read at step, tolerance on weights of size <= 5, bound on the profile's relative L2 fit
# error); measured worst over k = 1 and 4 in the comments. 20 snapshots per width, every 100 steps.
RECOVERY_CASES = [
    (0.07, 2000, INSIDE_TOL, 0.05),  # 1.1e-4
    (0.07, 1500, INSIDE_TOL, 0.05),  # 2.3e-4
    (0.06, 1000, INSIDE_TOL, 0.05),  # 1.1e-3: half the snapshots lie after the read time and drop out
    (0.09, 500, EARLY_TOL, 0.05),  # 2.9e-3: only 5 snapshots per width before step 500
    (0.03, 2000, OUTSIDE_TOL, 0.05),  # 1.8e-3, narrower than both stored widths
    (0.03, 1500, OUTSIDE_TOL, 0.05),  # 3.8e-3
    (0.15, 2000, OUTSIDE_TOL, 0.05),  # 3.9e-4, wider than both
    (0.15, 1500, OUTSIDE_TOL, 0.05),  # 7.8e-4
    (0.2, 2000, OUTSIDE_TOL, 0.05),  # 3.5e-3
    (0.2, 1500, OUTSIDE_TOL, 0.05),  # 4.9e-3
    (0.08, 1234, BETWEEN_TOL, 0.5),  # 2.7e-2, fit error 0.38: no snapshot ends near 1234
    (0.08, 1250, BETWEEN_TOL, 0.5),  # 2.7e-2, fit error 0.33
]


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("sigma_rel,t,tol,fit_max", RECOVERY_CASES)
def test_reconstruction_recovers_another_width(k, sigma_rel, t, tol, fit_max):
    profiles, states, _ = snapshots(k)
    target = PowerProfile(gamma_from_sigma_rel(sigma_rel), t)
    taus = np.arange(1, STEPS + 1)
    expected = power_profile_weights(target.gamma, t, taus, k) @ trajectory()  # the EMA of that width, directly
    assert_reconstructs(profiles, states, target, expected, tol)
    nearest = min(
        np.abs(power_profile_weights(gamma_from_sigma_rel(s), t, taus, k) @ trajectory() - expected).max()
        for s in STORED
    )
    assert nearest > 2 * tol  # the stored widths themselves are far off: the test is not vacuous
    assert profile_fit_error(profiles, posthoc_coefficients(profiles, target), target) <= fit_max


def test_reconstruction_check_catches_wrong_snapshot_times():
    """Snapshots labelled with the step asked (not their last update), one interval late or by number fail."""
    k, every = 4, 90  # 90 is no multiple of 4: the averages of step 1350 are those of step 1348
    profiles, states, asked = snapshots(k, every)
    i = 28  # width 0.05 at step 1350
    assert (asked[i], profiles[i].t) == (1350, 1348.0)
    target = PowerProfile(gamma_from_sigma_rel(0.07), 1800)
    expected = power_profile_weights(target.gamma, 1800, np.arange(1, STEPS + 1), k) @ trajectory()
    assert_reconstructs(profiles, states, target, expected, INSIDE_TOL)  # right times: 1.2e-4
    assert_reconstructs(profiles, states, profiles[i], flat(states[i]), EXACT_TOL)  # 1.8e-15
    as_asked = [PowerProfile(p.gamma, s) for p, s in zip(profiles, asked)]  # off by 2 steps on half of them
    late = [PowerProfile(p.gamma, p.t + k) for p in profiles]
    numbered = [PowerProfile(p.gamma, n // 2 + 1) for n, p in enumerate(profiles)]  # snapshot number, not step
    for wrong in (as_asked, late, numbered):  # the stored width comes back off by 1.8e-2, 3.4e-2 and 1.5
        with pytest.raises(AssertionError, match="off by"):
            assert_reconstructs(wrong, states, profiles[i], flat(states[i]), EXACT_TOL)
    for wrong in (late, numbered):  # another width: off by 2.1e-2 and 0.77 (as_asked's 3.8e-4 passes INSIDE_TOL)
        with pytest.raises(AssertionError, match="off by"):
            assert_reconstructs(wrong, states, target, expected, INSIDE_TOL)


def test_reconstruction_of_tensors_and_copied_entries():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "bn": torch.tensor([5.0])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4), "bn": torch.tensor([7.0])}
    out = reconstruct_state_dict([a, b], [0.25, 0.75], copied={"bn"})
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0])) and out["w"].dtype == torch.float32
    assert out["n"].item() == 4 and out["bn"].item() == 7.0
    half = reconstruct_tensor([torch.ones(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16)], [0.5, 0.5])
    assert half.dtype == torch.bfloat16 and torch.equal(half, torch.full((2,), 0.5, dtype=torch.bfloat16))
    with pytest.raises(UserError, match="other entries"):
        reconstruct_state_dict([a, {"w": b["w"]}], [0.5, 0.5])
    with pytest.raises(ValueError):
        reconstruct_tensor([a["w"]], [0.5, 0.5])


def test_posthoc_refuses_no_or_repeated_snapshots():
    p = PowerProfile(gamma_from_sigma_rel(0.1), 100.0)
    with pytest.raises(UserError, match="at least one"):
        posthoc_coefficients([], p)
    with pytest.raises(UserError, match="repeat"):
        posthoc_coefficients([p, PowerProfile(p.gamma, 100)], p)
    with pytest.raises(UserError, match="step > 0"):
        posthoc_coefficients([p, PowerProfile(p.gamma, 0)], p)


# --- the class: updates, buffers, resume ----------------------------------------------------------------------------


def run(model: nn.Module, ema: PowerEMA, gen: torch.Generator, steps: range) -> None:
    for step in steps:
        perturb(model, gen)
        ema.update(model, step)


@pytest.mark.parametrize("k", [1, 3])
def test_resume_is_bit_for_bit(k):
    model, gen = tiny_model(), torch.Generator().manual_seed(1)
    ema = PowerEMA(model, sigma_rels=(0.05, 0.1, 0.2), update_every=k)
    run(model, ema, gen, range(1, 21))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "gen": gen.get_state()}, buf)
    run(model, ema, gen, range(21, 41))  # the uninterrupted run

    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    resumed_model = tiny_model(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = PowerEMA(resumed_model, sigma_rels=(0.05, 0.1, 0.2), update_every=k)
    resumed.load_state_dict(saved["ema"])
    resumed_gen = torch.Generator()
    resumed_gen.set_state(saved["gen"])
    assert resumed.step == 18 if k == 3 else resumed.step == 20
    run(resumed_model, resumed, resumed_gen, range(21, 41))
    assert resumed.step == ema.step
    for a, b in zip(ema.state_dict()["averages"], resumed.state_dict()["averages"]):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_update_copies_buffers_skips_off_steps_and_moves_forward():
    model, gen = tiny_model(), torch.Generator().manual_seed(2)
    ema = PowerEMA(model, sigma_rels=(0.1, 0.2), update_every=2)
    assert all(m is not model and not m.training for m in ema.models)
    perturb(model, gen)
    ema.update(model, 1)  # not a multiple of 2: nothing happens
    assert ema.step == 0 and not torch.equal(ema.models[0][0].weight, model[0].weight)
    perturb(model, gen)
    ema.update(model, 2)  # the first update copies the live weights
    for shadow in ema.models:
        for a, b in zip(
            list(shadow.parameters()) + list(shadow.buffers()), list(model.parameters()) + list(model.buffers())
        ):
            assert torch.equal(a, b)
    run(model, ema, gen, range(3, 9))
    assert not torch.equal(ema.models[0][0].weight, ema.models[1][0].weight)  # two widths, two averages
    assert torch.equal(ema.models[0][1].running_mean, model[1].running_mean)  # buffers are copied, not averaged
    with pytest.raises(ValueError, match="forward"):
        ema.update(model, 8)
    wrapped = copy.deepcopy(model)
    holder = nn.Module()
    holder.module = wrapped  # a DDP look-alike: the update reads the module inside
    ema.update(holder, 10)
    assert ema.step == 10


def test_load_state_refuses_other_widths_or_models():
    ema = PowerEMA(tiny_model(), sigma_rels=(0.05, 0.1))
    with pytest.raises(UserError, match="sigma_rels"):
        PowerEMA(tiny_model(), sigma_rels=(0.05, 0.2)).load_state_dict(ema.state_dict())
    other = PowerEMA(nn.Sequential(nn.Linear(3, 5)), sigma_rels=(0.05, 0.1))
    with pytest.raises(UserError, match="does not match"):
        other.load_state_dict(ema.state_dict())
    with pytest.raises(UserError, match="update_every"):
        PowerEMA(tiny_model(), update_every=0)
    with pytest.raises(UserError, match="sigma_rel"):
        PowerEMA(tiny_model(), sigma_rels=(0.5,))
