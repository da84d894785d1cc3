"""Tests of the denoising networks: embeddings, UNet, MLP denoiser, configs."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from torch import nn

from ddpmkit.errors import UserError
from ddpmkit.nn import MLPConfig, MLPDenoiser, SinusoidalEmbedding, UNet, UNetConfig, num_parameters
from ddpmkit.nn.cpu_kernels import GroupNorm, math_attention
from ddpmkit.nn.embeddings import TimeEmbedding
from ddpmkit.nn.unet import AttentionBlock
from helpers import TINY_UNET, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(net, batch: int = 3, seed: int = 1, size: int | None = None):
    """Random x, t (and y for a conditional net) for a UNet."""
    g = torch.Generator().manual_seed(seed)
    cfg = net.config
    s = cfg.image_size if size is None else size
    x = torch.randn(batch, cfg.in_channels, s, s, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = None if cfg.num_classes is None else torch.randint(0, cfg.num_classes, (batch,), generator=g)
    return x, t, y


# ----------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_matches_direct_formula():
    dim, scale = 6, 0.5
    t = torch.tensor([0, 1, 7, 999])
    got = SinusoidalEmbedding(dim, scale)(t)
    half = dim // 2
    for i, ti in enumerate(t.tolist()):
        for k in range(half):
            arg = ti * scale * 10000.0 ** (-k / half)
            assert got[i, k].item() == pytest.approx(math.sin(arg), abs=1e-4)
            assert got[i, half + k].item() == pytest.approx(math.cos(arg), abs=1e-4)


def test_sinusoidal_embedding_accepts_float_timesteps():
    emb = SinusoidalEmbedding(8)
    assert torch.equal(emb(torch.tensor([3, 5])), emb(torch.tensor([3.0, 5.0])))


@pytest.mark.parametrize("dim", [0, 5, -2])
def test_sinusoidal_embedding_rejects_bad_dim(dim):
    with pytest.raises(UserError):
        SinusoidalEmbedding(dim)


def test_time_embedding_shape():
    assert TimeEmbedding(8, 20)(torch.tensor([1, 2, 3])).shape == (3, 20)


# ----------------------------------------------------------------------------- UNet shapes


@pytest.mark.parametrize(
    "overrides,size,out_ch",
    [
        ({}, 8, 1),
        (dict(in_channels=3, channel_mults=(1, 2, 2, 2), attention_resolutions=(8, 2)), 8, 3),
        (dict(num_res_blocks=2, attention_resolutions=()), 8, 1),
        (dict(in_channels=3, out_channels=6), 8, 6),
        (dict(num_classes=3, attention_resolutions=(8, 4)), 8, 1),
        (dict(initial_pad=2, channel_mults=(1, 2, 2), attention_resolutions=(6,)), 8, 1),  # 8 -> 12: 12, 6, 3
        (dict(initial_pad=2, image_size=28, channel_mults=(1, 1, 2), attention_resolutions=(8,)), 28, 1),
        (dict(base_channels=16, head_channels=4, attention_resolutions=(8, 4)), 8, 1),  # several heads
    ],
)
def test_unet_output_shape(overrides, size, out_ch):
    net = tiny_unet(**overrides)
    x, t, y = inputs(net, batch=2, size=size)
    with torch.no_grad():
        out = net(x, t, y)
    assert out.shape == (2, out_ch, size, size)
    assert torch.isfinite(out).all()


def test_unet_output_is_zero_at_init():
    net = tiny_unet(randomize_out=False)
    x, t, y = inputs(net)
    with torch.no_grad():
        assert net(x, t, y).abs().max().item() == 0.0


def test_unet_parameter_count_matches_architecture():
    """Count by hand for in=1, base=8, mults=(1, 2), 1 block, attention at 4x4, 3 classes."""
    net = tiny_unet(num_classes=3)

    def conv(ci, co, k):
        return ci * co * k * k + co

    def lin(i, o):
        return i * o + o

    def gn(c):
        return 2 * c

    emb = 32  # 4 * base_channels

    def rb(ci, co):
        return (
            gn(ci)
            + conv(ci, co, 3)
            + lin(emb, co)
            + 4 * co
            + gn(co)
            + conv(co, co, 3)
            + (conv(ci, co, 1) if ci != co else 0)
        )

    def attn(c):
        return gn(c) + lin(c, 3 * c) + lin(c, c)

    expected = (
        lin(8, emb)
        + lin(emb, emb)
        + conv(1, 8, 3)  # time MLP, initial conv
        + rb(8, 8)
        + conv(8, 8, 3)
        + rb(8, 16)
        + attn(16)  # down (skips 8, 8, 8, 16)
        + rb(16, 16)
        + attn(16)
        + rb(16, 16)  # middle
        + rb(32, 16)
        + attn(16)
        + rb(24, 16)
        + attn(16)
        + conv(16, 16, 3)  # up, level 1
        + rb(24, 8)
        + rb(16, 8)  # up, level 0
        + gn(8)
        + conv(8, 1, 3)  # output
    )
    assert num_parameters(net) == expected


def test_num_parameters_of_a_linear_layer():
    assert num_parameters(nn.Linear(3, 4)) == 16


# ----------------------------------------------------------------------------- conditioning


def test_time_conditioning_changes_output():
    net = tiny_unet()
    x, t, _ = inputs(net)
    with torch.no_grad():
        a = net(x, t)
        b = net(x, t + 100)
        c = net(x, t.float())
    assert (a - b).abs().amax(dim=(1, 2, 3)).min().item() > 1e-4
    assert torch.allclose(a, c, atol=1e-6)


def test_class_conditioning_changes_only_the_relabelled_example():
    net = tiny_unet(num_classes=3)
    x, t, _ = inputs(net)
    y = torch.tensor([0, 1, 2])
    y2 = torch.tensor([0, 2, 2])
    with torch.no_grad():
        a, b = net(x, t, y), net(x, t, y2)
        null = net(x, t, torch.full((3,), net.null_class))
    assert net.null_class == 3
    assert (a[1] - b[1]).abs().max().item() > 1e-4
    assert torch.allclose(a[[0, 2]], b[[0, 2]], atol=1e-6)  # examples do not interact
    assert (null - a).abs().amax(dim=(1, 2, 3)).min().item() > 1e-4


def test_unconditional_model_has_no_null_class():
    assert tiny_unet().null_class is None


def test_unet_missing_and_unexpected_inputs_raise():
    cond = tiny_unet(num_classes=3)
    x, t, y = inputs(cond)
    with pytest.raises(ValueError, match="t is not passed"):
        cond(x, None, y)
    with pytest.raises(ValueError, match="y is not passed"):
        cond(x, t)
    uncond = tiny_unet()
    with pytest.raises(ValueError, match="not class-conditional"):
        uncond(x, t, y)
    n = x.shape[0]
    for bad, words in [
        (y[:1], "one integer label per example"),
        (y.float(), "one integer label per example"),
        (torch.full((n,), 4), "lie in [0, 3] (3: the null label)"),
        (torch.full((n,), -1), "from -1 to -1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            cond(x, t, bad)
    cond(x, t, torch.full((n,), 3))  # the null label is a label
    with pytest.raises(ValueError, match="divisible by"):
        cond(x[:, :, :-1, :-1], t, y)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("hgt,wid", [(3, 2), (17, 16)])  # 272 tokens: the fused-kernel path on CPU
def test_attention_block_matches_hand_written_attention(hgt, wid):
    torch.manual_seed(0)
    c, heads, groups = 8, 2, 2
    block = AttentionBlock(c, groups, head_channels=c // heads)
    for p in block.parameters():  # GroupNorm starts at weight 1, bias 0: make it non-trivial
        nn.init.normal_(p, 0.0, 0.5)
    x = torch.randn(2, c, hgt, wid)
    got = block(x)

    xd = x.double()
    w_n, b_n = block.norm.weight.double(), block.norm.bias.double()
    w_qkv, b_qkv = block.qkv.weight.double(), block.qkv.bias.double()
    w_o, b_o = block.proj.weight.double(), block.proj.bias.double()
    d = c // heads
    expected = torch.empty_like(xd)
    for n in range(2):
        # GroupNorm by its definition
        xn = torch.empty(c, hgt, wid, dtype=torch.float64)
        for g in range(groups):
            chunk = xd[n, g * c // groups : (g + 1) * c // groups]
            mean, var = chunk.mean(), ((chunk - chunk.mean()) ** 2).mean()
            xn[g * c // groups : (g + 1) * c // groups] = (chunk - mean) / torch.sqrt(var + block.norm.eps)
        xn = xn * w_n[:, None, None] + b_n[:, None, None]
        tokens = xn.reshape(c, hgt * wid).T  # [HW, C], pixel p = i * W + j
        qkv = tokens @ w_qkv.T + b_qkv  # [HW, 3C]: q, k, v, each split into heads
        out = torch.empty(hgt * wid, c, dtype=torch.float64)
        for h in range(heads):
            q = qkv[:, h * d : (h + 1) * d]
            k = qkv[:, c + h * d : c + (h + 1) * d]
            v = qkv[:, 2 * c + h * d : 2 * c + (h + 1) * d]
            scores = q @ k.T / math.sqrt(d)
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            out[:, h * d : (h + 1) * d] = weights @ v
        out = out @ w_o.T + b_o
        expected[n] = xd[n] + out.T.reshape(c, hgt, wid)
    assert torch.allclose(got.double(), expected, atol=1e-5)


def test_math_attention_matches_torch_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 6)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(math_attention(q, k, v), expected, atol=1e-5)


# ----------------------------------------------------------------------------- speed paths


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_channels_last_matches_torch(dtype):
    torch.manual_seed(0)
    norm = GroupNorm(4, 16)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    ref = nn.GroupNorm(4, 16)
    ref.load_state_dict(norm.state_dict())
    x = (torch.randn(3, 16, 5, 4) * 3 + 1).to(dtype)
    out = norm(x.to(memory_format=torch.channels_last))
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.float(), ref(x).float(), atol=1e-5 if dtype == torch.float32 else 3e-2)


def test_channels_last_gives_the_same_output():
    net = tiny_unet(num_classes=3, initial_pad=2, channel_mults=(1, 2, 2), attention_resolutions=(6,))
    x, t, y = inputs(net)
    with torch.no_grad():
        a = net(x, t, y)
        b = net(x.to(memory_format=torch.channels_last), t, y)
        net_cl = net.to(memory_format=torch.channels_last)
        c = net_cl(x.to(memory_format=torch.channels_last), t, y)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-5)


def test_bf16_autocast_is_close_to_fp32():
    net = tiny_unet(num_classes=3)
    x, t, y = inputs(net, batch=4)
    with torch.no_grad():
        ref = net(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x.to(memory_format=torch.channels_last), t, y)
    err = (low.float() - ref).norm() / ref.norm()
    assert err.item() < 0.05


def test_gradients_reach_every_parameter():
    net = tiny_unet(num_classes=3, attention_resolutions=(8, 4)).train()
    x, t, y = inputs(net, batch=4)
    net(x, t, y).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum().item() > 0, name


# ----------------------------------------------------------------------------- UNetConfig


@pytest.mark.parametrize(
    "overrides",
    [
        dict(base_channels=0),
        dict(base_channels="8"),
        dict(base_channels=6, num_groups=4),  # 4 does not divide 6
        dict(num_groups=5),
        dict(channel_mults=()),
        dict(channel_mults=(1, 0)),
        dict(channel_mults="12"),
        dict(num_res_blocks=0),
        dict(attention_resolutions=(5,)),  # no level is 5x5
        dict(image_size=10, channel_mults=(1, 2, 2)),  # 10 not divisible by 4
        dict(num_classes=0),
        dict(num_classes=True),
        dict(dropout=1.0),
        dict(dropout=-0.1),
        dict(initial_pad=-1),
        dict(time_emb_scale=0.0),
        dict(out_channels=0),
        dict(base_channels=9, num_groups=1),  # odd: no sinusoidal table
    ],
)
def test_invalid_unet_configs_raise(overrides):
    with pytest.raises(UserError):
        UNetConfig(**{**TINY_UNET, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        dict(base_channels=10, num_groups=1, channel_mults=(1,), attention_resolutions=()),
        dict(base_channels=10, num_groups=2, head_channels=4, channel_mults=(1,), attention_resolutions=(8,)),
        dict(channel_mults=[1, 2], attention_resolutions=[], dropout=0, time_emb_scale=2),
        dict(image_size=6, initial_pad=1, channel_mults=(1, 2, 2), attention_resolutions=(2,)),
    ],
)
def test_valid_edge_unet_configs_are_accepted(overrides):
    cfg = UNetConfig(**{**TINY_UNET, **overrides})
    assert isinstance(cfg.channel_mults, tuple) and isinstance(cfg.dropout, float)


def test_attention_heads_must_split_channels():
    with pytest.raises(UserError, match="attention heads"):
        UNetConfig(
            **{
                **TINY_UNET,
                "base_channels": 10,
                "num_groups": 1,
                "head_channels": 3,
                "channel_mults": (1,),
                "attention_resolutions": (),
            }
        )


def test_unet_config_dict_round_trip_and_yaml():
    cfg = UNetConfig(**{**TINY_UNET, "num_classes": 10})
    d = cfg.to_dict()
    assert d["channel_mults"] == [1, 2]
    back = UNetConfig.from_dict(yaml.safe_load(yaml.safe_dump(d)))
    assert back == cfg
    assert back.channel_mults == (1, 2) and isinstance(back.attention_resolutions, tuple)


def test_unet_config_defaults_match_the_paper():
    cfg = UNetConfig()  # the fields the data gives in an experiment are None: RGB 32x32 when built alone
    assert (cfg.resolved_in_channels, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks) == (
        3,
        128,
        (1, 2, 2, 2),
        2,
    )
    assert (cfg.attention_resolutions, cfg.dropout, cfg.num_classes, cfg.time_emb_scale) == ((16,), 0.1, None, 1.0)
    assert (cfg.initial_pad, cfg.num_groups, cfg.resolved_image_size, cfg.head_channels) == (0, 32, 32, 64)
    assert UNet(cfg).init_conv.in_channels == 3
    assert cfg.resolved_out_channels == 3 and cfg.resolved_time_emb_dim == 512


def test_unet_config_from_dict_rejects_unknown_key_and_bad_type():
    with pytest.raises(UserError, match="chanel_mults"):
        UNetConfig.from_dict({"chanel_mults": [1, 2]})
    with pytest.raises(UserError, match="dropout"):
        UNetConfig.from_dict({"dropout": "high"})
    with pytest.raises(UserError):
        UNetConfig.from_dict([1, 2])


# ----------------------------------------------------------------------------- MLP


def tiny_mlp(**overrides) -> MLPDenoiser:
    """A small MLP denoiser in eval mode with a random output layer."""
    torch.manual_seed(0)
    net = MLPDenoiser(MLPConfig(**{**dict(hidden=16, depth=2, time_emb_dim=8), **overrides})).eval()
    with torch.no_grad():
        net.out_proj.weight.normal_(0.0, 0.1)
        net.out_proj.bias.normal_(0.0, 0.1)
    return net


def test_mlp_shapes():
    assert tiny_mlp()(torch.randn(5, 2), torch.randint(0, 1000, (5,))).shape == (5, 2)
    assert tiny_mlp(out_dim=4)(torch.randn(5, 2), torch.randint(0, 1000, (5,))).shape == (5, 4)
    assert tiny_mlp(dim=3, num_classes=2)(
        torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)
    ).shape == (5, 3)


def test_mlp_output_is_zero_at_init():
    net = MLPDenoiser(MLPConfig(hidden=16, depth=2, time_emb_dim=8))
    assert net(torch.randn(4, 2), torch.arange(4)).abs().max().item() == 0.0


def test_mlp_conditioning_changes_output():
    net = tiny_mlp(num_classes=3)
    x, t = torch.randn(3, 2), torch.tensor([5, 50, 500])
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        a = net(x, t, y)
        b = net(x, t + 7, y)
        c = net(x, t, torch.tensor([0, 3, 2]))  # 3 = the null label
    assert net.null_class == 3
    assert (a - b).abs().amax(dim=1).min().item() > 1e-4
    assert (a[1] - c[1]).abs().max().item() > 1e-4
    assert torch.allclose(a[[0, 2]], c[[0, 2]], atol=1e-6)


def test_mlp_missing_and_unexpected_inputs_raise():
    cond = tiny_mlp(num_classes=3)
    x, t, y = torch.randn(2, 2), torch.tensor([1, 2]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="t is not passed"):
        cond(x, None, y)
    with pytest.raises(ValueError, match="y is not passed"):
        cond(x, t)
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny_mlp()(x, t, y)
    with pytest.raises(ValueError, match=re.escape("lie in [0, 3]")):
        cond(x, t, torch.tensor([0, 9]))


def test_mlp_gradients_reach_every_parameter():
    net = tiny_mlp(num_classes=3).train()
    net(torch.randn(4, 2), torch.tensor([1, 20, 300, 999]), torch.tensor([0, 1, 2, 3])).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name


@pytest.mark.parametrize(
    "overrides",
    [
        dict(dim=0),
        dict(hidden=-1),
        dict(depth=0),
        dict(time_emb_dim=7),
        dict(num_classes=0),
        dict(out_dim=0),
        dict(time_emb_scale=-1.0),
        dict(hidden=2.5),
        dict(dim=None),
    ],
)
def test_invalid_mlp_configs_raise(overrides):
    with pytest.raises(UserError):
        MLPConfig(**overrides)


def test_mlp_config_dict_round_trip_and_unknown_key():
    cfg = MLPConfig(hidden=32, num_classes=4)
    assert MLPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match="width"):
        MLPConfig.from_dict({"width": 3})
