"""Choices of the fast path: device, bf16 autocast where the hardware has bf16 matrix units."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UserError

__all__ = ["pick_device", "cpu_has_bf16_matmul", "use_bf16", "autocast_context"]


def pick_device(prefer: str, dist=None) -> torch.device:
    """'auto' takes CUDA when present; under torchrun each process takes its local GPU."""
    local = 0 if dist is None else dist.local_rank
    if prefer == "cuda" or (prefer == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' was asked for, but no CUDA GPU is available")
        return torch.device("cuda", local)
    return torch.device("cpu")


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
