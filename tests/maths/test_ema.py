"""EMA arithmetic against a hand-written loop, unwrapping, buffers and state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpmkit.ema import EMA, unwrap_model
from ddpmkit.errors import UserError
from helpers import perturb, tiny_model


def manual_ema(history: list[dict[str, torch.Tensor]], decay: float, start: int, every: int) -> dict:
    """Reference: float64 loop over the parameter snapshots after steps 1..n."""
    shadow = {k: v.double().clone() for k, v in history[0].items()}  # weights at construction
    for step, params in enumerate(history[1:], start=1):
        for k, v in params.items():
            if step <= start:
                shadow[k] = v.double().clone()
            elif step % every == 0:
                d = decay**every
                shadow[k] = d * shadow[k] + (1 - d) * v.double()
    return shadow


@pytest.mark.parametrize("decay,start,every", [(0.9, 0, 1), (0.8, 3, 1), (0.7, 2, 3), (0.0, 0, 2)])
def test_ema_matches_manual_loop(decay: float, start: int, every: int) -> None:
    model = tiny_model()
    ema = EMA(model, decay=decay, start_step=start, update_every=every)
    gen = torch.Generator().manual_seed(1)
    names = [n for n, _ in model.named_parameters()]
    history = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    for step in range(1, 11):
        perturb(model, gen)
        history.append({n: p.detach().clone() for n, p in model.named_parameters()})
        ema.update(model, step)
    expected = manual_ema(history, decay, start, every)
    got = dict(ema.model.named_parameters())
    for n in names:
        torch.testing.assert_close(got[n].double(), expected[n], rtol=1e-5, atol=1e-5)
        assert not torch.equal(got[n], history[-1][n]) or decay == 0.0 or 10 <= start


def test_time_constant_independent_of_interval() -> None:
    """A constant target is approached at the same rate whatever update_every is."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    emas = [EMA(model, decay=0.9, update_every=k) for k in (1, 2, 5)]
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(1, 11):
        for ema in emas:
            ema.update(model, step)
    expected = 1 - 0.9**10
    for ema in emas:
        assert ema.model.weight.item() == pytest.approx(expected, rel=1e-5)


def test_buffers_copied_and_shadow_frozen() -> None:
    model = tiny_model()
    ema = EMA(model, decay=0.99)
    assert not ema.model.training
    assert all(not p.requires_grad for p in ema.model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    perturb(model, torch.Generator().manual_seed(2))
    ema.update(model, step=5)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)
    assert ema.model[1].num_batches_tracked.item() == 1
    # weights are averaged, not copied
    assert not torch.allclose(ema.model[0].weight, model[0].weight)


def test_skipped_steps_change_nothing() -> None:
    model = tiny_model()
    ema = EMA(model, decay=0.5, update_every=4)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    perturb(model, torch.Generator().manual_seed(3))
    for step in (1, 2, 3, 5):
        ema.update(model, step)
    for k, v in ema.state_dict().items():
        assert torch.equal(v, before[k]), k


class FakeDDP:
    """An object that, like DistributedDataParallel, holds the real network in .module."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


class FakeDDPModule(nn.Module):
    """A module wrapper whose only child is the real network, in .module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class CompiledLike(nn.Module):
    """Like torch.compile's OptimizedModule: the real network in ._orig_mod."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_unwrap_model() -> None:
    net = tiny_model()
    assert unwrap_model(net) is net
    assert unwrap_model(FakeDDP(net)) is net
    assert unwrap_model(CompiledLike(FakeDDPModule(net))) is net
    assert unwrap_model(nn.DataParallel(net)) is net

    class HasModuleChild(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(1, 1)
            self.other = nn.Linear(1, 1)

    keep = HasModuleChild()
    assert unwrap_model(keep) is keep  # not a wrapper: it has other children


def test_ema_accepts_wrapped_model() -> None:
    net = tiny_model()
    ema = EMA(FakeDDP(net), decay=0.5)  # type: ignore[arg-type]
    assert set(ema.state_dict()) == set(net.state_dict())  # no "module." prefix
    perturb(net, torch.Generator().manual_seed(4))
    ema.update(CompiledLike(net), step=1)
    w0 = tiny_model()[0].weight  # same seed -> the initial weights
    torch.testing.assert_close(ema.model[0].weight, 0.5 * w0 + 0.5 * net[0].weight)


def test_state_dict_round_trip() -> None:
    model = tiny_model()
    ema = EMA(model, decay=0.9)
    perturb(model, torch.Generator().manual_seed(5))
    ema.update(model, 1)
    state = {k: v.clone() for k, v in ema.state_dict().items()}
    other = EMA(tiny_model(seed=7), decay=0.9)
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k]), k
    # loading in place keeps updates working on the loaded shadow
    other.update(model, 2)
    torch.testing.assert_close(other.model[0].weight, 0.9 * state["0.weight"] + 0.1 * model[0].weight)
    with pytest.raises(UserError, match="does not match"):
        other.load_state_dict({"nope": torch.zeros(1)})


@pytest.mark.parametrize(
    "kwargs",
    [{"decay": 1.0}, {"decay": -0.1}, {"start_step": -1}, {"update_every": 0}, {"update_every": 1.5}],
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(UserError):
        EMA(nn.Linear(1, 1), **kwargs)


def test_update_after_moving_models() -> None:
    """Converting both models (as .to(device) would) after the EMA is built keeps updates correct."""
    model = tiny_model()
    ema = EMA(model, decay=0.5)
    ema.update(model, 1)  # bind the tensor lists before the conversion
    model.double()
    ema.model.double()
    start = ema.model[0].weight.detach().clone()
    perturb(model, torch.Generator().manual_seed(6))
    ema.update(model, 2)
    torch.testing.assert_close(ema.model[0].weight, 0.5 * start + 0.5 * model[0].weight)
    assert ema.model[0].weight.dtype == torch.float64
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)
