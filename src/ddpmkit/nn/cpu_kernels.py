"""CPU kernel workarounds of the networks: dropout, GroupNorm and attention, the same maths as PyTorch's ops.

Each replaces a PyTorch CPU kernel that is slow for the UNet's shapes (measured in docs/performance.md, "CPU
dropout" and "CPU kernels"; benchmarks/dropout_speed.py, benchmarks/train_speed.py) and leaves PyTorch's op in
charge on GPUs and under ``torch.compile``; tests/nn/test_fast_path.py and test_dropout.py check them against it.

Dropout: PyTorch's CPU dropout draws one 32-bit Mersenne-Twister number per element. Here one 64-bit draw of the
same generator gives the random bits of four elements: an element is kept when its 16-bit uniform integer is at
least k - 32768, k = round(p * 65536), so it is dropped with probability k / 65536 (0.1 becomes 0.100006) and kept
values are scaled by 65536 / (65536 - k), which keeps the expectation of every element exactly equal to its input.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "cpu_dropout", "DROP_LEVELS", "GroupNorm", "attention", "math_attention"]

# ---------------------------------------------------------------------------- dropout
DROP_LEVELS = 1 << 16  # drop probabilities are multiples of 1 / DROP_LEVELS
_INT16_MIN = -(1 << 15)


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x`` covers its memory without gaps in a layout the mask can copy (NCHW or NHWC)."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each element of a dense CPU tensor with probability round(p * 65536) / 65536, scale the rest.

    The random bits come from torch's default generator (so ``torch.manual_seed`` and saved RNG
    states govern them), four elements per 64-bit draw, laid out in ``x``'s own memory order;
    the result has ``x``'s dtype and memory format. Differentiable: the gradient is the same
    mask and scale.
    """
    drop = round(p * DROP_LEVELS)
    if not 0 < drop < DROP_LEVELS:
        raise ValueError(f"cpu_dropout needs 0 < p < 1 with a drop count in (0, 65536), got p={p}")
    if not _dense(x):
        raise ValueError("cpu_dropout needs a contiguous or channels_last tensor")
    n = x.numel()
    # the full int64 range: every one of the 64 bits is uniform (random_() would leave the top one 0)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64)
    bits = words.view(torch.int16)[:n].as_strided(x.shape, x.stride())
    keep = (bits >= _INT16_MIN + drop).view(torch.uint8).to(x.dtype)  # bool -> 0/1: uint8 converts fast
    return x.mul(keep).mul_(DROP_LEVELS / (DROP_LEVELS - drop))


class Dropout(nn.Dropout):
    """nn.Dropout with a faster CPU training pass (see the module's docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout of ``x`` in training mode, ``x`` itself in evaluation mode."""
        if (
            self.training
            and not self.inplace
            and x.device.type == "cpu"
            and _dense(x)
            and 0 < round(self.p * DROP_LEVELS) < DROP_LEVELS
            and not torch.compiler.is_compiling()
        ):
            return cpu_dropout(x, self.p)
        return super().forward(x)


# ---------------------------------------------------------------------------- GroupNorm
# From this many pixels PyTorch's CPU channels_last GroupNorm splits its work by pixel, not by group: there its
# AVX2 backward is slow and its half-precision forward fast (measured: docs/performance.md, "CPU kernels").
_CPU_CL_NORM_PIXEL_SPLIT = 1024


@functools.cache
def _native_cl_norm_backward_is_slow() -> bool:
    """Whether this CPU build's channels_last GroupNorm backward is the slow one (the AVX512 one is fast)."""
    return torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")


class _ChannelsLastGroupNorm(torch.autograd.Function):
    """group_norm of a channels_last fp32 tensor: PyTorch's forward, a backward over [N, HW, C] views.

    With g = dy * weight and xhat = (x - mean) * rstd, averaged over each (sample, group):
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), written as dx = a * dy + b * x + c with
    a, b, c per (sample, channel), from two reductions over the pixels (sum dy, sum dy * x).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        n, c, h, w = x.shape
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, h * w, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        per = c // ctx.groups  # channels per group
        count = h * w * per  # elements per (sample, group)
        xv = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # free views of channels_last memory
        dyv = dy.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, h * w, c)
        sum_dy = dyv.sum(1)  # [N, C]
        sum_dy_x = (dyv * xv).sum(1)
        mean_c = mean.repeat_interleave(per, dim=1)  # [N, G] -> [N, C]
        rstd_c = rstd.repeat_interleave(per, dim=1)
        sum_dy_xhat = (sum_dy_x - mean_c * sum_dy) * rstd_c  # per channel: sum of dy * xhat
        grad_weight = sum_dy_xhat.sum(0) if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.sum(0) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            g_sum = (weight * sum_dy).view(n, ctx.groups, per).sum(-1)  # sum of g per group
            gx_sum = (weight * sum_dy_xhat).view(n, ctx.groups, per).sum(-1)  # sum of g * xhat
            coef_x = -rstd * rstd * gx_sum / count  # [N, G]
            const = -coef_x * mean - rstd * g_sum / count
            coef_x = coef_x.repeat_interleave(per, dim=1).unsqueeze(1)
            const = const.repeat_interleave(per, dim=1).unsqueeze(1)
            grad_x = torch.addcmul(const, xv, coef_x).addcmul_(dyv, (rstd_c * weight).unsqueeze(1))
            grad_x = grad_x.view(n, h, w, c).permute(0, 3, 1, 2)
        return grad_x, grad_weight, grad_bias, None, None


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that avoids PyTorch's slow CPU kernels for channels_last input (same maths)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same result and memory format as nn.GroupNorm."""
        if torch.compiler.is_compiling():  # the compiler fuses the plain op; the detours only break graphs
            return super().forward(x)
        if (
            x.device.type == "cpu"
            and x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            pixel_split = x.shape[2] * x.shape[3] >= _CPU_CL_NORM_PIXEL_SPLIT
            if x.dtype in (torch.bfloat16, torch.float16):
                if pixel_split and not self._differentiable(x):  # a forward only: PyTorch's kernel wins
                    return super().forward(x)
                # else normalising an fp32 copy beats PyTorch's half-precision kernels (docs/performance.md)
                weight = None if self.weight is None else self.weight.float()  # no copy unless cast to half
                bias = None if self.bias is None else self.bias.float()
                return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
            if (
                x.dtype == torch.float32
                and self.affine
                and torch.is_grad_enabled()
                and pixel_split
                and self.weight.dtype == torch.float32
                and _native_cl_norm_backward_is_slow()
            ):
                return _ChannelsLastGroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)

    def _differentiable(self, x: torch.Tensor) -> bool:
        """Whether autograd will record this call (a backward may follow)."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))


# ---------------------------------------------------------------------------- attention
# Up to this many tokens two batched products beat PyTorch's fused CPU attention in bf16/fp16, whose backward is
# slow there; in fp32 the fused kernel wins (measured: docs/performance.md, "CPU kernels").
_CPU_MATH_ATTENTION_MAX_TOKENS = 256


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dimensions, written out."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return scores.softmax(dim=-1).to(v.dtype) @ v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention [B, heads, L, d] by the fastest kernel for the device and length."""
    if (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and q.shape[-2] <= _CPU_MATH_ATTENTION_MAX_TOKENS
    ):
        return math_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
