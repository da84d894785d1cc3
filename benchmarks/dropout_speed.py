"""ddpmkit's CPU dropout against PyTorch's, alone and inside the digits training step.

    python benchmarks/dropout_speed.py [--threads 2] [--rounds 7] [--steps 10] [--quick]

1. The op: forward + backward of dropout (p = 0.1) on half a million activations, in bf16 and
   fp32, channels-last: ``ddpmkit.nn.cpu_kernels.cpu_dropout`` against ``F.dropout``.
2. The digits preset's real training step (``Trainer.train_step``, batch 128, bf16 where the
   CPU has bf16 matrix units), with the residual blocks' dropout modules swapped between
   ddpmkit's ``Dropout`` and ``nn.Dropout`` in the same process, alternating rounds.

Medians over the rounds; the last line is ``step_speedup=X`` (nn.Dropout's step time over ours).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def median_ms(fn, rounds: int, calls: int) -> float:
    """Median over ``rounds`` of the mean wall time (ms) of ``calls`` calls, after 2 warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def op_table(rounds: int, calls: int) -> None:
    from ddpmkit.nn.cpu_kernels import cpu_dropout

    print("| dropout forward + backward, 128x64x8x8 channels-last | F.dropout ms | ddpmkit ms | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(128, 64, 8, 8, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn_like(x)
        theirs = median_ms(lambda: F.dropout(x, 0.1, True).backward(g), rounds, calls)
        ours = median_ms(lambda: cpu_dropout(x, 0.1).backward(g), rounds, calls)
        print(f"| {str(dtype).removeprefix('torch.')} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.2f}x |")


def step_times(rounds: int, steps: int) -> dict[str, float]:
    """Median ms per digits training step with each dropout module, alternating rounds."""
    from ddpmkit.config import load_config
    from ddpmkit.data.batches import batches
    from ddpmkit.nn.cpu_kernels import Dropout
    from ddpmkit.runs import start_training

    cfg = load_config("digits", overrides={"train": {"device": "cpu"}})  # a CPU benchmark, GPU or not
    trainer = start_training(cfg, Path(tempfile.mkdtemp(prefix="ddpmkit-dropout-")) / "run", progress=False)
    stream = batches(trainer.dataset, cfg.train.batch_size, seed=0)
    data = [next(stream) for _ in range(4)]
    blocks = [m for m in trainer.model.modules() if isinstance(getattr(m, "dropout", None), nn.Dropout)]
    kinds = {"nn.Dropout": nn.Dropout, "ddpmkit Dropout": Dropout}
    times: dict[str, list[float]] = {name: [] for name in kinds}

    def run(name: str, n: int) -> float:
        for b in blocks:
            b.dropout = kinds[name](b.dropout.p)
        t0 = time.perf_counter()
        for i in range(n):
            trainer.train_step(*data[i % len(data)])
        return (time.perf_counter() - t0) / n * 1e3

    for name in kinds:
        run(name, 2)  # warm-up
    for _ in range(rounds):
        for name in kinds:
            times[name].append(run(name, steps))
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (medians over them)")
    p.add_argument("--steps", type=int, default=10, help="training steps per configuration per round")
    p.add_argument("--quick", action="store_true", help="2 rounds of 1 step: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from ddpmkit.train.runtime import keep_freed_memory

    keep_freed_memory()  # as the ddpmkit command does
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    op_table(args.rounds, 3 if args.quick else 30)
    times = step_times(args.rounds, args.steps)
    print()
    print("| digits training step | ms |")
    print("| --- | ---: |")
    for name, ms in times.items():
        print(f"| {name} | {ms:.1f} |")
    print(f"step_speedup={times['nn.Dropout'] / times['ddpmkit Dropout']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
