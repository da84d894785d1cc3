"""The CPU dropout: drop rate, scale, independence, gradient, layouts, and when it steps aside."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddpmkit.nn.cpu_kernels import DROP_LEVELS, Dropout, cpu_dropout


def _dropped(y: torch.Tensor) -> torch.Tensor:
    return (y == 0).float()


def test_drop_rate_and_scale_match_the_quantised_probability():
    torch.manual_seed(0)
    n = 1 << 22
    y = cpu_dropout(torch.ones(n), 0.1)
    k = round(0.1 * DROP_LEVELS)
    rate = k / DROP_LEVELS
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(_dropped(y).mean().item() - rate) < 5 * sigma
    kept = y[y != 0]
    assert torch.all(kept == DROP_LEVELS / (DROP_LEVELS - k))
    # unbiased: the mean of the output is the input's (1) within Monte-Carlo error
    assert abs(y.double().mean().item() - 1.0) < 5 * math.sqrt(rate / (1 - rate) / n)


@pytest.mark.parametrize("p", [0.02, 0.3, 0.5, 0.9])
def test_every_bit_lane_drops_at_the_same_rate(p):
    """Each 64-bit draw feeds four elements: all four lanes must be uniform (a draw whose top
    bit is always 0, like int64 random_(), would never drop the fourth lane)."""
    torch.manual_seed(1)
    n = 1 << 20
    lanes = _dropped(cpu_dropout(torch.ones(n), p)).view(-1, 4).mean(0)
    rate = round(p * DROP_LEVELS) / DROP_LEVELS
    sigma = math.sqrt(rate * (1 - rate) / (n // 4))
    assert torch.all((lanes - rate).abs() < 5 * sigma), lanes


def test_masks_of_neighbours_are_independent():
    torch.manual_seed(2)
    d = _dropped(cpu_dropout(torch.ones(1 << 21), 0.5))
    for lag in (1, 2, 3, 4, 5, 8):
        a, b = d[:-lag] - d.mean(), d[lag:] - d.mean()
        corr = (a * b).mean() / d.var()
        assert abs(corr.item()) < 5 / math.sqrt(len(a)), lag
    # and successive calls draw fresh masks
    assert not torch.equal(cpu_dropout(torch.ones(4096), 0.5), cpu_dropout(torch.ones(4096), 0.5))


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(3)
    x = torch.randn(8, 16, 6, 6, requires_grad=True)
    g = torch.randn(8, 16, 6, 6)
    y = cpu_dropout(x, 0.25)
    y.backward(g)
    keep = y.detach() != 0
    scale = DROP_LEVELS / (DROP_LEVELS - round(0.25 * DROP_LEVELS))
    torch.testing.assert_close(x.grad, torch.where(keep, g * scale, torch.zeros_like(g)))
    torch.testing.assert_close(y.detach(), torch.where(keep, x.detach() * scale, torch.zeros_like(g)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_keeps_dtype_and_memory_format_and_follows_the_seed(dtype, channels_last):
    x = torch.randn(4, 8, 5, 5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(4)
    a = cpu_dropout(x, 0.1)
    torch.manual_seed(4)
    b = cpu_dropout(x, 0.1)
    assert a.dtype == dtype and torch.equal(a, b)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert a.is_contiguous(memory_format=fmt)
    # the mask follows memory order: the same draw masks the same memory slots in either layout
    torch.manual_seed(4)
    other = cpu_dropout(x.contiguous(), 0.1)
    assert torch.equal(a != 0, other != 0) == (not channels_last)
    # the kept values are the input times the scale, rounded once
    scale = DROP_LEVELS / (DROP_LEVELS - round(0.1 * DROP_LEVELS))
    kept = a != 0
    torch.testing.assert_close(a[kept], (x.float() * scale).to(dtype)[kept], rtol=0, atol=0)


def test_module_in_eval_mode_is_the_identity_and_steps_aside_where_it_must():
    m = Dropout(0.1)
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(m.eval()(x), x)
    m.train()
    torch.manual_seed(5)
    ours = m(x)
    torch.manual_seed(5)
    assert torch.equal(ours, cpu_dropout(x, 0.1))
    # a layout the mask cannot copy, and the in-place form, use PyTorch's dropout
    strided = torch.randn(2, 3, 4, 8)[..., ::2]
    torch.manual_seed(6)
    got = m(strided)
    torch.manual_seed(6)
    assert torch.equal(got, F.dropout(strided, 0.1, True))
    inplace = Dropout(0.1, inplace=True)
    y = torch.randn(2, 3)
    torch.manual_seed(7)
    expect = F.dropout(y.clone(), 0.1, True)
    torch.manual_seed(7)
    assert torch.equal(inplace(y), expect)
    # p whose drop count rounds to 0 (or to all) goes to PyTorch's dropout, which handles the limits
    torch.manual_seed(8)
    tiny = Dropout(1e-7).train()(x)
    torch.manual_seed(8)
    assert torch.equal(tiny, F.dropout(x, 1e-7, True))
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="0 < p < 1"):
        cpu_dropout(torch.ones(4), 1.0)
    with pytest.raises(ValueError, match="channels_last"):
        cpu_dropout(torch.ones(4, 4)[:, ::2], 0.1)


def test_compiled_module_uses_pytorchs_dropout():
    m = Dropout(0.1).train()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    y = compiled(torch.ones(64, 64))
    pytorchs = torch.tensor(1 / 0.9)  # PyTorch's exact 1 / (1 - p); ours would be 65536 / 58982
    assert pytorchs != torch.tensor(DROP_LEVELS / (DROP_LEVELS - round(0.1 * DROP_LEVELS)))
    assert set(y.unique().tolist()) == {0.0, pytorchs.item()}
