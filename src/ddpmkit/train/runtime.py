"""Runtime choices of training and sampling: the device, bf16 autocast where the hardware has bf16 matrix units
(fp16 on request),
deterministic algorithms on request, an allocator that keeps freed memory."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

from ..errors import UserError
from ..options import Device, check_choice

__all__ = [
    "compute_device",
    "cpu_has_bf16_matmul",
    "cuda_has_bf16_matmul",
    "use_bf16",
    "autocast_dtype",
    "autocast_context",
    "use_deterministic_algorithms",
    "keep_freed_memory",
    "cpu_threads",
]


def cpu_threads() -> str:
    """How many threads torch computes on, as a message says it: "1 thread", "2 threads"."""
    n = torch.get_num_threads()
    return f"{n} thread" + ("" if n == 1 else "s")


def compute_device(prefer: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device to compute on: cuda (GPU ``local_rank``, torchrun's; else the current one) when CUDA is used,
    else cpu."""
    check_choice("device", prefer, Device)
    if prefer == "cpu" or (prefer == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for, but CUDA is not available")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if local_rank is None else local_rank
    if index >= count:
        raise UserError(f"LOCAL_RANK={index} but only {count} CUDA devices are visible")
    return torch.device("cuda", index)


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


def cuda_has_bf16_matmul(device: torch.device | int | None = None) -> bool:
    """True when this GPU runs bf16 matrix products natively: NVIDIA from compute capability 8.0
    (Ampere) on. ``torch.cuda.is_bf16_supported()`` also says True where bf16 is only emulated
    (Volta and Turing: V100, T4), which is slower than fp32 there. ROCm GPUs count as native, as
    PyTorch counts them (true from MI100 on; older AMD cards emulate it)."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the 'precision' option means bf16: 'bf16', or 'auto' where the hardware runs bf16 natively."""
    if precision != "auto":
        return precision == "bf16"
    return cuda_has_bf16_matmul(device) if device.type == "cuda" else cpu_has_bf16_matmul()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the 'precision' option runs networks in under autocast; None for fp32.

    'auto': bf16 where the hardware runs it natively, else fp32. 'fp16': float16, for GPUs
    without native bf16 (V100, T4); training then needs loss scaling (the trainer's GradScaler).
    """
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if use_bf16(precision, device) else None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to ``dtype`` on ``device``, or a no-op context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_deterministic_algorithms(device: torch.device) -> None:
    """torch.use_deterministic_algorithms(True), with the cuBLAS setting it needs on a GPU.

    On CUDA, deterministic matrix products need ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or
    ``:16:8``), or PyTorch refuses them at the first call; a value the user set is kept.
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters of glibc's malloc.h
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB lie free at the heap's top


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; process-wide, so only the CLI calls it.

    Every training or sampling step frees and re-allocates the same large activation buffers.
    By default glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mmap calls
    and gives freed heap back to the system, so each step page-faults its buffers in again, pages
    the kernel zero-fills first. With mmap off for malloc and trimming off, the buffers are reused,
    for a higher peak memory (the heap keeps its high-water mark); measured in docs/performance.md.
    Returns False, changing nothing, where the C library is not glibc or where any MALLOC_*
    variable is set (the user's own tuning wins; ``MALLOC_MMAP_MAX_=65536`` restores glibc's default).
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
