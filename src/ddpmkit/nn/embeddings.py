"""Timestep embeddings: the Transformer sinusoidal table that Ho et al. 2020 (appendix B) feed the UNet, and its MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from ..validate import is_int

__all__ = ["SinusoidalEmbedding", "TimeEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """Transformer-style embedding of timesteps: cat(sin(t * s * f_k), cos(t * s * f_k)), f_k = 10000^(-k/half).

    ``shift`` > 0 gives f_k = 10000^(-k/(half - shift)), computed in float32 as the released DDPM
    models' code (shift 1) and diffusers' ``freq_shift`` compute it.
    """

    freqs: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, dim: int, scale: float = 1.0, shift: int = 0):
        super().__init__()
        if not is_int(dim) or dim <= 0 or dim % 2 != 0:
            raise UserError(f"the sinusoidal embedding size must be a positive even integer, got {dim!r}")
        self.dim = dim  # embedding width (half sines, half cosines)
        self.scale = float(scale)  # factor applied to t before the table
        half = dim // 2
        if shift:
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - shift))
        else:
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        self.shift = shift  # the frequency denominator is half - shift
        # not saved in checkpoints; kept in float32 whatever .to(dtype) does to the module (see forward)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps t of shape [B] (int or float) as a float32 tensor [B, dim]."""
        args = torch.outer(t.float() * self.scale, self.freqs.float())
        return torch.cat((args.sin(), args.cos()), dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}" + (f", shift={self.shift}" if self.shift else "")


class TimeEmbedding(nn.Sequential):
    """Sinusoidal table followed by Linear, SiLU, Linear (the time MLP of Ho et al. 2020's UNet)."""

    def __init__(self, base_dim: int, emb_dim: int, scale: float = 1.0, shift: int = 0):
        super().__init__(
            SinusoidalEmbedding(base_dim, scale, shift),  # [B] -> [B, base_dim]
            nn.Linear(base_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] -> [B, emb_dim]; the float32 table meets the MLP in its weights' dtype (a model cast to bf16)."""
        table, first = self[0](t), self[1]
        return self[3](self[2](first(table.to(first.weight.dtype))))


def check_conditioning(x: torch.Tensor, t, y, null_class: int | None) -> torch.Tensor:
    """The errors a denoiser raises when t or y is missing or unexpected; t as a [B] tensor.

    ``null_class`` is the model's null label (= its number of classes), None when unconditional.
    Labels must be integers in [0, null_class], one per example; the range is checked on CPU
    tensors outside torch.compile (elsewhere it would cost a host synchronisation or a graph break).
    """
    conditional = null_class is not None
    if t is None:
        raise ValueError("time conditioning was specified but t is not passed")
    if conditional and y is None:
        raise ValueError("class conditioning was specified but y is not passed")
    if not conditional and y is not None:
        raise ValueError("y was passed but the model is not class-conditional (num_classes is None)")
    if null_class is not None:
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point() or y.is_complex():
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must be one integer label per example, shape ({x.shape[0]},), got {got}")
        checkable = y.device.type == "cpu" and y.numel() and not torch.compiler.is_compiling()
        if checkable and not (0 <= int(y.min()) and int(y.max()) <= null_class):
            raise ValueError(
                f"labels y must lie in [0, {null_class}] ({null_class}: the null label), "
                f"got values from {int(y.min())} to {int(y.max())}"
            )
    if not isinstance(t, torch.Tensor):
        return torch.full((x.shape[0],), t, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t
