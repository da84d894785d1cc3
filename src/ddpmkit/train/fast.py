"""Choices of the fast path: bf16 autocast where the hardware has bf16 matrix units."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["cpu_has_bf16_matmul", "use_bf16", "autocast_context"]


def cpu_has_bf16_matmul() -> bool:
    """True when this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in checks:
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve the 'precision' option: 'auto' means bf16 where the hardware runs it fast."""
    if precision == "fp32":
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_bf16_matmul()
    if precision == "bf16":
        return True
    return supported


def autocast_context(device: torch.device, bf16: bool):
    """torch.autocast to bfloat16 on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
