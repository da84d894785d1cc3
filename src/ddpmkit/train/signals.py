"""Stopping a training run cleanly on SIGTERM (what SLURM and Kubernetes send before preemption) or SIGINT.

The first signal asks the loop to stop after the current step, write a checkpoint and raise
:class:`TrainingInterrupted`; a second one ends the process at once, as the signal's default
action would (every file is written atomically, so nothing is left half-written).
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from .distributed import DistInfo

__all__ = ["TrainingInterrupted", "StopSignals", "CHECK_EVERY"]

# under torchrun the ranks agree on a stop every this many steps (an all-reduce each step would sync the host)
CHECK_EVERY = 10


class TrainingInterrupted(Exception):
    """Training stopped on a signal after ``step`` optimizer steps, with a checkpoint of that step written."""

    def __init__(self, signum: int, step: int, checkpoint: bool = True):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        written = "checkpoint written, --resume continues" if checkpoint else "no checkpoint written"
        super().__init__(f"interrupted at step {step}: {written}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it."""
        return 128 + self.signum


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGINT only set ``signum`` (the main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: end now, as the default action would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum

    def requested(self, step: int, dist: DistInfo, device: torch.device) -> int | None:
        """The signal to stop on after ``step`` steps, the same on every rank (None: go on)."""
        if dist.world_size == 1:
            return self.signum
        if step % CHECK_EVERY:
            return None
        flag = torch.tensor([self.signum or 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None
