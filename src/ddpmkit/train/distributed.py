"""Data-parallel training helpers; the only module of ddpmkit that reads torchrun's environment.

Launch with ``torchrun --nproc_per_node N -m ddpmkit train ...``: torchrun sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, :func:`init_distributed` reads them and
starts the process group (NCCL on CUDA, Gloo on CPU). Without WORLD_SIZE > 1 everything here is
a no-op and torch.distributed is never touched.

Batch size and learning rate: ``batch_size`` in a ddpmkit config is the GLOBAL batch size. It is
split evenly across the ranks (:func:`per_rank_batch_size`; it must divide evenly), each rank
averages its loss over its share, and DistributedDataParallel averages the gradients over the
ranks, so every optimizer step sees the gradient of the mean loss over the whole global batch.
The learning rate applies to that global batch: the same config gives the same training on 1
or N processes (up to floating-point summation order), with no learning-rate rescaling.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from ..options import Device
from .runtime import compute_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global rank, rank on its node, number of processes."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    local_rank: int = 0  # rank on this node; picks the GPU
    world_size: int = 1  # number of processes in the job

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def _env_int(name: str, default: int | None = None) -> int:
    """An integer environment variable set by torchrun (UserError when absent or not an integer)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise UserError(f"environment variable {name} is not set; launch multi-process runs with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got {raw!r}") from None


def dist_info_from_env() -> DistInfo:
    """Read RANK, LOCAL_RANK and WORLD_SIZE (torchrun's names) without starting anything."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise UserError(f"environment variable WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        return DistInfo()
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world_size or local_rank < 0:
        raise UserError(f"RANK={rank} / LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world_size}")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Start the process group when torchrun asked for WORLD_SIZE > 1 (NCCL for cuda, Gloo for cpu)."""
    if device_type not in ("cpu", "cuda"):
        raise UserError(f"distributed device type must be 'cpu' or 'cuda', got {device_type!r}")
    info = dist_info_from_env()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UserError(f"WORLD_SIZE={info.world_size} but {name} is not set; launch with torchrun")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("distributed training on cuda was asked for, but CUDA is not available")
        if info.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def cleanup_distributed() -> None:
    """Destroy the process group if one was started, after every rank has got here.

    The barrier first keeps one rank from tearing down its side (and rank 0 the rendezvous
    store) while another still has Gloo work in flight, which can abort the slower process.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End the program with ``code``; a torchrun worker (WORLD_SIZE > 1) skips interpreter shutdown.

    Gloo's C++ threads can abort a worker while the interpreter finalises (docs/reliability.md); a
    worker that got here has written everything, so it flushes its output and leaves with os._exit.
    """
    try:
        worker = dist_info_from_env().enabled
    except UserError:
        worker = False
    if not worker:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if not info.enabled:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Return rank 0's ``obj`` on every rank (picklable objects; no-op for a single process)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Replace a floating tensor, in place, by its mean over the ranks; returns it."""
    if not info.enabled:
        return tensor
    if not tensor.is_floating_point():
        raise TypeError("all_reduce_mean_ needs a floating-point tensor")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor.div_(info.world_size)
    return tensor


def all_gather_cat(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's tensor concatenated along dim 0, in rank order (same shape on all ranks)."""
    if not info.enabled:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def wrap_ddp(
    model: nn.Module, info: DistInfo, device: torch.device, *, find_unused_parameters: bool = False
) -> nn.Module:
    """Wrap a model already on ``device`` in DistributedDataParallel when distributed, else return it."""
    if not info.enabled:
        return model
    device = torch.device(device)
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else info.local_rank]
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=device_ids,
        find_unused_parameters=find_unused_parameters,
        gradient_as_bucket_view=True,
    )


def device_for(info: DistInfo, prefer: Device = "auto") -> torch.device:
    """The device this rank computes on: cuda:LOCAL_RANK when CUDA is used, else cpu."""
    return compute_device(prefer, info.local_rank if info.enabled else None)


def per_rank_batch_size(global_batch_size: int, info: DistInfo) -> int:
    """This rank's share of the global batch (UserError unless it divides evenly)."""
    if global_batch_size % info.world_size != 0:
        raise UserError(f"batch_size {global_batch_size} does not divide evenly across {info.world_size} processes")
    return global_batch_size // info.world_size
