"""The DDPM UNet (Ho et al. 2020, appendix B): residual blocks with time and class bias, self-attention."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..fields import ImageSize, check_fields, check_image_size, from_dict, image_hw, require, to_dict
from ..options import ModelKind
from .cpu_kernels import Dropout, GroupNorm, attention
from .embeddings import TimeEmbedding, check_conditioning

__all__ = ["UNetConfig", "UNet", "ResidualBlock", "AttentionBlock", "Downsample", "Upsample"]

# ----------------------------------------------------------------------------- UNetConfig

_WHEN_SET = {"written_when_set": True}


@dataclass
class UNetConfig:
    """Shape of a UNet; saved in checkpoints, so sampling needs only the checkpoint."""

    kind: ClassVar[ModelKind] = "unet"
    section: ClassVar[str] = "model"

    in_channels: int | None = None  # image channels, 1 grayscale or 3 RGB (None: 3; in an experiment: the data's)
    base_channels: int = 128  # width of level 0; also the sinusoidal table size (must be even)
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)  # width of level i = base_channels * channel_mults[i]
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes (pixels; the smaller side of a non-square
    # map) that get self-attention
    dropout: float = 0.1  # dropout inside residual blocks, in [0, 1)
    num_classes: int | None = None  # class-conditional with this many classes (+1 null label); None: off
    time_emb_scale: float = 1.0  # factor applied to t before the sinusoidal table
    initial_pad: int = 0  # zero padding added on every side before the net, cropped at the end
    num_groups: int = 32  # GroupNorm groups; must divide every channel count
    image_size: ImageSize | None = None  # input size S (S x S) or [H, W]; places attention_resolutions
    # (None: 32; in an experiment: the data's)
    out_channels: int | None = None  # output channels (None: in_channels; 2*in for learned variance)
    time_emb_dim: int | None = None  # width of the time embedding MLP (None: 4 * base_channels)
    head_channels: int = 64  # channels per attention head (heads = channels // head_channels, >= 1)
    # settings of the released DDPM models (Ho et al. 2020); written to configs only when set
    time_freq_shift: int = field(default=0, metadata=_WHEN_SET)  # frequencies 10000^(-k/(half - shift))
    downsample_padding: int = field(default=1, metadata=_WHEN_SET)  # 1: pad 1 all round; 0: pad right/bottom by 1
    norm_eps: float = field(default=1e-5, metadata=_WHEN_SET)  # epsilon of every GroupNorm

    def __post_init__(self) -> None:
        check_fields(self)
        for name in (
            "in_channels",
            "base_channels",
            "num_res_blocks",
            "num_groups",
            "head_channels",
            "out_channels",
            "time_emb_dim",
            "num_classes",
        ):
            value = getattr(self, name)
            require(value is None or value >= 1, f"model.{name}", "a positive integer", value)
        object.__setattr__(self, "image_size", check_image_size(self.image_size, "model.image_size"))
        require(
            len(self.channel_mults) > 0 and min(self.channel_mults) > 0,
            "model.channel_mults",
            "a non-empty list of positive integers",
            list(self.channel_mults),
        )
        require(
            all(r > 0 for r in self.attention_resolutions),
            "model.attention_resolutions",
            "a list of positive sizes",
            list(self.attention_resolutions),
        )
        require(0.0 <= self.dropout < 1.0, "model.dropout", "in [0, 1)", self.dropout)
        require(self.time_emb_scale > 0, "model.time_emb_scale", "positive", self.time_emb_scale)
        require(self.initial_pad >= 0, "model.initial_pad", "at least 0", self.initial_pad)
        require(self.base_channels % 2 == 0, "model.base_channels", "even (sinusoidal table)", self.base_channels)
        require(
            0 <= self.time_freq_shift < self.base_channels // 2,
            "model.time_freq_shift",
            f"in [0, {self.base_channels // 2}) (half the sinusoidal table)",
            self.time_freq_shift,
        )
        require(self.downsample_padding in (0, 1), "model.downsample_padding", "0 or 1", self.downsample_padding)
        require(0 < self.norm_eps < 1, "model.norm_eps", "in (0, 1)", self.norm_eps)
        for ch in [self.base_channels, *self.level_channels()]:
            require(
                ch % self.num_groups == 0, "model.num_groups", f"a divisor of the channel count {ch}", self.num_groups
            )
        self._check_levels()

    def _check_levels(self) -> None:
        """The image size halves evenly at each level, attention sits on levels, heads split evenly."""
        factor = 2 ** (len(self.channel_mults) - 1)
        resolved = self.resolved_image_size
        size = resolved if self.square or isinstance(resolved, int) else list(resolved)  # as the user writes it
        if self.square:
            require(
                self.padded_hw[0] % factor == 0,
                "model.image_size",
                f"such that image_size + 2*initial_pad is divisible by {factor} (2 ** (len(channel_mults) - 1))",
                size,
            )
        else:
            require(
                all(s % factor == 0 for s in self.padded_hw),
                "model.image_size",
                f"[H, W] such that H + "
                f"2*initial_pad and W + 2*initial_pad are divisible by {factor} (2 ** (len(channel_mults) - 1))",
                size,
            )
        levels = self.level_resolutions()
        named = "sizes of levels" if self.square else "sizes of levels, each the smaller side of its feature map"
        for r in self.attention_resolutions:
            require(
                r in levels,
                "model.attention_resolutions",
                f"{named} ({', '.join(map(str, levels))} for image_size {size})",
                list(self.attention_resolutions),
            )
        attn_channels = [ch for ch, r in zip(self.level_channels(), levels) if r in self.attention_resolutions]
        for ch in [*attn_channels, self.level_channels()[-1]]:  # the middle always has attention
            heads = max(1, ch // self.head_channels)
            require(
                ch % heads == 0,
                "model.head_channels",
                f"such that {ch} channels split into {heads} attention heads",
                self.head_channels,
            )

    def level_channels(self) -> list[int]:
        """Channel count of each level."""
        return [self.base_channels * m for m in self.channel_mults]

    def level_shapes(self) -> list[tuple[int, int]]:
        """Feature-map (height, width) of each level: (H + 2*initial_pad) // 2**i, the same for W."""
        h, w = self.padded_hw
        return [(h // 2**i, w // 2**i) for i in range(len(self.channel_mults))]

    def level_resolutions(self) -> list[int]:
        """The size that names each level in attention_resolutions: the smaller side of its feature map
        (for a square image: (image_size + 2*initial_pad) // 2**i)."""
        return [min(hw) for hw in self.level_shapes()]

    @property
    def square(self) -> bool:
        """Whether the input is square (image_size an int or unset)."""
        h, w = self.resolved_image_hw
        return h == w

    @property
    def resolved_image_hw(self) -> tuple[int, int]:
        """Input (height, width) with the default filled in."""
        return image_hw(self.resolved_image_size)

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Input (height, width) plus initial_pad on both sides: the size of level 0."""
        h, w = self.resolved_image_hw
        return h + 2 * self.initial_pad, w + 2 * self.initial_pad

    @property
    def resolved_in_channels(self) -> int:
        """Input channels with the default filled in."""
        return 3 if self.in_channels is None else self.in_channels

    @property
    def resolved_image_size(self) -> ImageSize:
        """Image size with the default filled in: S (square) or (H, W)."""
        return 32 if self.image_size is None else self.image_size

    @property
    def resolved_out_channels(self) -> int:
        """Output channels with the default filled in."""
        return self.resolved_in_channels if self.out_channels is None else self.out_channels

    @property
    def resolved_time_emb_dim(self) -> int:
        """Time embedding width with the default filled in."""
        return 4 * self.base_channels if self.time_emb_dim is None else self.time_emb_dim

    def to_dict(self) -> dict:
        """Plain dict of the fields (lists for tuples), safe for YAML and weights_only checkpoints."""
        return to_dict(self, with_kind=False)

    @classmethod
    def from_dict(cls, d: Mapping) -> UNetConfig:
        """Build from a dict; unknown keys and wrong types raise UserError."""
        return from_dict(cls, d)


# ----------------------------------------------------------------------------- blocks


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, num_groups: int, head_channels: int, eps: float = 1e-5):
        super().__init__()
        self.heads = max(1, channels // head_channels)  # number of heads
        self.norm = GroupNorm(num_groups, channels, eps)
        # a 1x1 convolution over pixels is a Linear over the channel vector of each token
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> x + attention(x), same shape."""
        b, c, h, w = x.shape
        # [B, C, H, W] -> [B, HW, C]: a free view when x is channels_last
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        qkv = self.qkv(tokens).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, HW, d]
        out = attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        # back to [B, C, H, W] as a channels_last view (no copy)
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time (and class) bias, GroupNorm-SiLU-dropout-conv, + skip; then attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        class_rows: int | None,
        dropout: float,
        num_groups: int,
        attention: nn.Module | None = None,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = GroupNorm(num_groups, in_channels, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_bias = nn.Linear(emb_dim, out_channels)
        self.class_bias = nn.Embedding(class_rows, out_channels) if class_rows is not None else None
        self.norm2 = GroupNorm(num_groups, out_channels, eps)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attention = attention if attention is not None else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, Cin, H, W], emb = SiLU(time embedding) [B, E], y labels [B] -> [B, Cout, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        bias = self.time_bias(emb)
        if self.class_bias is not None:
            bias = bias + self.class_bias(y).to(bias.dtype)
        h = h + bias.to(h.dtype)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.attention(h + self.skip(x))


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 convolution (padding 0: the input padded right and below)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, H/2, W/2]; emb and y are ignored."""
        if self.conv.padding == (0, 0):  # the released DDPM models' TensorFlow "SAME" padding of a stride-2 conv
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, 2H, 2W]; emb and y are ignored."""
        if torch.compiler.is_compiling():
            # The same pixels as a broadcast: its backward is a sum over 2x2 blocks, which the
            # compiler fuses, where interpolate's is a slow scatter (docs/performance.md)
            b, c, h, w = x.shape
            x = x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)
            return self.conv(x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------- UNet


class UNet(nn.Module):
    """The DDPM UNet: model(x_t, t, y=None) -> a tensor shaped like x_t (out_channels channels)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"UNet needs a UNetConfig, got {type(config).__name__}")
        self.config = config
        cfg = config
        # label num_classes is the null ("no class") label of classifier-free guidance
        self.null_class: int | None = cfg.num_classes
        class_rows = None if cfg.num_classes is None else cfg.num_classes + 1
        emb_dim = cfg.resolved_time_emb_dim
        self.time_embedding = TimeEmbedding(cfg.base_channels, emb_dim, cfg.time_emb_scale, cfg.time_freq_shift)
        self.init_conv = nn.Conv2d(cfg.resolved_in_channels, cfg.base_channels, 3, padding=1)

        def block(cin: int, cout: int, attend: bool) -> ResidualBlock:
            attn = AttentionBlock(cout, cfg.num_groups, cfg.head_channels, cfg.norm_eps) if attend else None
            return ResidualBlock(cin, cout, emb_dim, class_rows, cfg.dropout, cfg.num_groups, attn, cfg.norm_eps)

        resolutions = cfg.level_resolutions()
        last = len(cfg.channel_mults) - 1
        self.downs = nn.ModuleList()
        skip_channels = [cfg.base_channels]
        ch = cfg.base_channels
        for i, out in enumerate(cfg.level_channels()):
            attend = resolutions[i] in cfg.attention_resolutions
            for _ in range(cfg.num_res_blocks):
                self.downs.append(block(ch, out, attend))
                ch = out
                skip_channels.append(ch)
            if i != last:
                self.downs.append(Downsample(ch, cfg.downsample_padding))
                skip_channels.append(ch)

        self.middle = nn.ModuleList([block(ch, ch, True), block(ch, ch, False)])

        self.ups = nn.ModuleList()
        for i in reversed(range(len(cfg.channel_mults))):
            out = cfg.level_channels()[i]
            attend = resolutions[i] in cfg.attention_resolutions
            for _ in range(cfg.num_res_blocks + 1):
                self.ups.append(block(ch + skip_channels.pop(), out, attend))
                ch = out
            if i != 0:
                self.ups.append(Upsample(ch))
        assert not skip_channels  # every skip is consumed

        self.out_norm = GroupNorm(cfg.num_groups, ch, cfg.norm_eps)
        self.out_conv = nn.Conv2d(ch, cfg.resolved_out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)  # the net starts by predicting 0
        assert self.out_conv.bias is not None  # a Conv2d made with its bias
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W], t timesteps [B] (int64 or float), y labels [B] (conditional models only)."""
        t = check_conditioning(x, t, y, self.null_class)
        factor = 2 ** (len(self.config.channel_mults) - 1)
        if x.dim() != 4 or any((s + 2 * self.config.initial_pad) % factor for s in x.shape[2:]):
            raise ValueError(
                f"the UNet needs [B, C, H, W] input with H and W (+ 2 * initial_pad) divisible by "
                f"{factor}, got shape {tuple(x.shape)}"
            )
        ip = self.config.initial_pad
        if ip:
            x = F.pad(x, (ip, ip, ip, ip))

        emb = F.silu(self.time_embedding(t))  # every block applies SiLU first: do it once
        h = self.init_conv(x)
        skips = [h]
        for layer in self.downs:
            h = layer(h, emb, y)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb, y)
        for layer in self.ups:
            if isinstance(layer, ResidualBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, emb, y)
        h = self.out_conv(F.silu(self.out_norm(h)))
        if ip:
            h = h[:, :, ip:-ip, ip:-ip]
        return h
