"""Timestep samplers: the uniform one, and improved DDPM's loss-aware importance sampling (eq. 18)."""

import math

import numpy as np
import pytest
import torch

from ddpmkit import UserError
from ddpmkit.timestep_sampling import LossAwareTimesteps, UniformTimesteps, make_timestep_sampler


def test_uniform_draws_every_t_with_weight_one():
    s = UniformTimesteps(5)
    t, w = s.sample(20000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and 0 <= t.min() and t.max() == 4 and torch.all(w == 1)
    counts = torch.bincount(t, minlength=5).double() / len(t)
    assert torch.allclose(counts, torch.full((5,), 0.2, dtype=torch.float64), atol=5 * math.sqrt(0.16 / 20000))


def fill(s: LossAwareTimesteps, losses: np.ndarray) -> None:
    """Feed a [T, history] table of losses, one update per history slot."""
    for k in range(losses.shape[1]):
        s.update(torch.arange(losses.shape[0]), torch.tensor(losses[:, k]))


def test_loss_aware_is_uniform_until_every_t_has_a_full_history():
    s = LossAwareTimesteps(4, history=3)
    fill(s, np.ones((4, 2)))
    s.update(torch.tensor([0, 1, 2]), torch.tensor([5.0, 5.0, 5.0]))  # t = 3 still has 2 of 3
    assert torch.equal(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    s.update(torch.tensor([3]), torch.tensor([1.0]))
    assert not torch.equal(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))


def test_loss_aware_probabilities_and_weights_match_eq_18():
    rng = np.random.default_rng(0)
    T, H, u = 6, 4, 0.05
    table = rng.uniform(0.1, 3.0, (T, H))
    s = LossAwareTimesteps(T, history=H, uniform_prob=u)
    fill(s, table)
    rms = np.sqrt((table**2).mean(axis=1))  # sqrt(E[L_t^2]) over the history
    expected = (1 - u) * rms / rms.sum() + u / T
    np.testing.assert_allclose(s.probabilities().numpy(), expected, rtol=1e-12)
    # the weights 1 / (T p(t)) make the weighted loss an unbiased estimate of the mean over t
    t, w = s.sample(200000, "cpu", torch.Generator().manual_seed(1))
    np.testing.assert_allclose(w.double().numpy(), 1.0 / (T * expected[t.numpy()]), rtol=1e-6)
    freq = np.bincount(t.numpy(), minlength=T) / len(t)
    assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected * (1 - expected) / len(t))), (freq, expected)
    per_t = table.mean(axis=1)
    estimate = float(np.mean(w.double().numpy() * per_t[t.numpy()]))
    assert estimate == pytest.approx(per_t.mean(), rel=0.01)


def test_loss_aware_keeps_the_last_history_losses_and_skips_non_finite_ones():
    s = LossAwareTimesteps(2, history=2, uniform_prob=0.0)
    s.update(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([9.0, 3.0, 4.0, 1.0, 1.0]))  # t = 0 keeps 3, 4
    s.update(torch.tensor([0, 1, 1]), torch.tensor([float("inf"), float("nan"), float("-inf")]))
    assert s.state_dict()["counts"].tolist() == [2, 2]
    assert s.state_dict()["losses"][0].tolist() == [3.0, 4.0]
    p = s.probabilities()
    assert torch.isfinite(p).all()
    assert p[0].item() == pytest.approx(math.sqrt(12.5) / (math.sqrt(12.5) + 1.0))


def test_loss_aware_state_round_trips():
    a = LossAwareTimesteps(5, history=2)
    fill(a, np.arange(10, dtype=float).reshape(5, 2) + 1)
    b = LossAwareTimesteps(5, history=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.probabilities(), b.probabilities())


def test_make_timestep_sampler_by_name():
    assert type(make_timestep_sampler("uniform", 10)) is UniformTimesteps
    assert type(make_timestep_sampler("loss_aware", 10)) is LossAwareTimesteps
    with pytest.raises(UserError, match="unknown timestep sampler"):
        make_timestep_sampler("importance", 10)
    with pytest.raises(UserError, match="history >= 1"):
        LossAwareTimesteps(10, history=0)
