"""``ddpmkit distill``: a consistency model tuned from a trained run (Easy Consistency Tuning; ``runs.distill``)."""

from __future__ import annotations

import argparse
import sys

from ..options import DistillMethod, choices
from .flags import add_command, add_flag, add_flags, flag_keywords

__all__ = ["add_parser", "cmd_distill"]


def add_parser(sub) -> None:
    """The ``distill`` sub-command: RUN, --method, --out, --steps, --set, --resume, --force, --no-progress."""
    p = add_command(
        sub,
        "distill",
        "tune a consistency model (one or two network calls a sample) from a trained run",
        "  ddpmkit distill runs/digits --method ect --out runs/digits-ect\n"
        "  ddpmkit sample runs/digits-ect --steps 2 --out two-calls.png\n"
        "  ddpmkit distill runs/digits --out runs/digits-ect --resume --steps 4000",
        "run",
    )
    p.add_argument(
        "--method", choices=choices(DistillMethod), default="ect", help="Easy Consistency Tuning (Geng et al. 2024)"
    )
    p.add_argument("--out", required=True, help="the consistency model's new run directory")
    p.add_argument("--steps", type=int, help="total tuning steps (default: the data's distill preset)")
    add_flag(p, "resume", "continue the tuning in --out from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="start over in an --out that has checkpoints")
    add_flags(p, "no-progress", "set")


def cmd_distill(args: argparse.Namespace) -> int:
    # lazy: start-up (torch loads only once the command line is accepted)
    from ..runs.distill import distill

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    tuning = flag_keywords(args, ("method", "steps", "resume", "force"))
    done = distill(args.run, args.out, **tuning, assignments=args.set, progress=not args.no_progress, log=log)
    if done.stopped:
        print(done.stopped, file=sys.stderr)
    if done.exit_code or done.last is None:
        return done.exit_code
    last = done.last
    if "loss" not in last:
        print(f"{done.run_dir} is at step {last['step']} already: nothing to tune")
        return 0
    cost = f", {100 * last['teacher_cost']:.1f}% of the teacher's training" if "teacher_cost" in last else ""
    print(f"distilled {done.run_dir} (step {last['step']}, loss {last['loss']:.4g}, stage {last['stage']}{cost})")
    return 0
