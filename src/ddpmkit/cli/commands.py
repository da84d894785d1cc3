"""The commands that make and read runs (``train``, ``sample``, ``info``, ``config``: parser and handler each),
and the dispatch of every command to its handler.

The run layer (and torch with it) is imported inside each handler, when its command runs: a measured start-up
cost, so that ``--help``, ``--version`` and a refused command line answer without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from ..errors import UserError
from ..fields import parse_image_size
from ..options import CompileMode, choices
from .distill import cmd_distill
from .editing import cmd_edit, cmd_inpaint, cmd_interpolate
from .ema import cmd_ema
from .flags import COMMON, add_command, add_flag, add_flags, image_outputs, load_run, sampling_options
from .importing import cmd_import
from .measure import cmd_eval, cmd_export, cmd_report, cmd_stats, cmd_tune_steps

__all__ = ["COMMANDS", "execute", "run_process", "add_train", "add_sample", "add_info", "add_config"]

# train's flags that set train.<key> of the config when given
TRAIN_KEYS = ("steps", "batch_size", "microbatch", "lr", "seed", "device", "precision", "compile_mode")


def add_train(sub) -> None:
    p = add_command(
        sub,
        "train",
        "train a model into a run directory",
        "  ddpmkit train --preset digits --out runs/digits\n"
        "  ddpmkit train --preset folder --data photos/ --image-size 64 "
        "--set 'train.loggers=[jsonl, tensorboard]'\n"
        "  ddpmkit train --out runs/digits --resume --steps 8000",
        "preset",
        "config",
    )
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    add_flag(p, "batch-size", "global batch size", default=None)
    p.add_argument(
        "--microbatch",
        type=int,
        help="run each process's share of the batch in chunks of at most "
        "this many examples (same training, less memory)",
    )
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--data", help="data directory (folder, cifar10, mnist presets)")
    p.add_argument(
        "--image-size", metavar="S|HxW", help="resize images to S x S (e.g. 32) or H x W (e.g. 32x48: height x width)"
    )
    add_flag(p, "seed", "random seed", default=None)
    add_flag(p, "device", "where to train", default=None)
    add_flag(
        p,
        "precision",
        "auto: bf16 where the hardware runs it natively, else fp32; fp16 (with loss scaling): "
        "for GPUs without native bf16 (V100, T4)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the network (mode default)")
    p.add_argument(
        "--compile-mode",
        choices=choices(CompileMode),
        help="torch.compile's mode (implies --compile); reduce-overhead adds CUDA graphs on GPUs",
    )
    add_flag(p, "resume", "continue the run from its latest checkpoint")
    p.add_argument(
        "--force",
        action="store_true",
        help="start over in a run directory that has checkpoints (with --resume: go on from another run's checkpoint)",
    )
    add_flags(p, "no-progress", "set")


def cmd_train(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.training import train_or_resume

    done = train_or_resume(
        args.preset,
        args.config,
        args.set,
        args.out,
        flags=_train_flags(args),
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
    )
    if done.stopped:
        print(done.stopped, file=sys.stderr)
    if done.exit_code or done.last is None:  # stopped by a signal, or not the main process
        return done.exit_code
    last = done.last
    if "loss" not in last:
        print(f"{done.run_dir} is at step {last['step']} of {last['step']} already: nothing to train")
    else:
        print(
            f"trained {done.run_dir} ("
            + ", ".join(f"{k} {last[k]:.4g}" for k in ("step", "loss", "images_per_s"))
            + ")"
        )
    return 0


def _train_flags(args: argparse.Namespace) -> dict:
    """The config values train's flags give: {"train": {...}, "data": {...}} (--compile: compile_mode default)."""
    flags: dict = {"train": {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k) is not None}, "data": {}}
    if args.compile and args.compile_mode is None:
        flags["train"]["compile_mode"] = "default"
    size = None if args.image_size is None else parse_image_size(args.image_size)
    for key, value in (("root", args.data), ("image_size", size)):
        if value is not None:
            flags["data"][key] = value
    return flags


def add_sample(sub) -> None:
    p = add_command(
        sub,
        "sample",
        "draw samples from a trained model",
        "  ddpmkit sample runs/digits --num 100 --labels all --out samples.npz --out grid.png\n"
        "  ddpmkit sample runs/digits --num 64 --sampler ddim --steps 25 --guidance 2 --labels 3 "
        "--out threes.png",
        "run",
    )
    p.add_argument("--num", type=int, default=64, help="number of samples")
    add_flags(p, "sampler")
    p.add_argument(
        "--steps", type=int, help="network calls (default: the run's sample.steps; --sampler ddpm chosen here: all T)"
    )
    add_flags(p, "eta", "order")
    add_flag(p, "spacing", "timestep spacing (default: the run's config, else the sampler's)")
    p.add_argument(
        "--labels",
        help="class labels: all | 3 | 0,1,2 | cat,dog (numbers or the run's class names; cycled over the samples)",
    )
    add_flag(p, "guidance", "classifier-free guidance weight (1 = off)")
    add_flag(p, "seed", "sample i uses seed + i, whatever the batch size")
    add_flag(p, "batch-size", "samples per network batch")
    p.add_argument("--out", action="append", help="samples.npz and/or grid.png (repeatable)")
    p.add_argument("--trajectory", help="PNG strip of x_t and predicted x0 along the reverse process")
    add_flag(
        p,
        "precision",
        "network precision; default: auto for image models (bf16 where the hardware is fast at it), fp32 for 2-D data",
    )
    add_flags(p, *COMMON)


def cmd_sample(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs import check_output, write_samples, write_trajectory

    outs = image_outputs(args, "samples.npz")
    traj = args.trajectory and check_output(args.trajectory, args.force, (".png",), "--trajectory")
    run = load_run(args, diffusion=False)
    samples = run.sample(
        args.num,
        **sampling_options(args),
        trajectory=bool(traj),
        order=args.order,
    )
    for path in outs:
        write_samples(path, samples, run.config.sample.levels)
    if traj:
        write_trajectory(traj, samples)
    tuned = f", tuned timesteps {samples.timesteps_file}" if samples.timesteps_file else ""
    print(f"wrote {args.num} samples ({samples.sampler}, {samples.steps} steps{tuned}) to " + ", ".join(map(str, outs)))
    return 0


def add_info(sub) -> None:
    add_command(sub, "info", "describe a run or checkpoint", "  ddpmkit info runs/digits", "run")


def cmd_info(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.run import describe_checkpoint

    for key, value in describe_checkpoint(args.run).items():
        print(f"{key:<12} {value}")
    return 0


def add_config(sub) -> None:
    add_command(
        sub,
        "config",
        "print the resolved config (YAML) of a preset, a config file and --set",
        "  ddpmkit config --preset digits\n"
        "  ddpmkit config --preset digits --set train.steps=500 > short.yaml "
        "&& ddpmkit train --config short.yaml",
        "preset",
        "config",
        "set",
    )


def cmd_config(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..config import config_yaml, load_config, parse_assignments

    sys.stdout.write(config_yaml(load_config(args.preset, args.config, parse_assignments(args.set))))
    return 0


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "tune-steps": cmd_tune_steps,
    "eval": cmd_eval,
    "stats": cmd_stats,
    "info": cmd_info,
    "inpaint": cmd_inpaint,
    "edit": cmd_edit,
    "interpolate": cmd_interpolate,
    "config": cmd_config,
    "report": cmd_report,
    "export": cmd_export,
    "import": cmd_import,
    "ema": cmd_ema,
    "distill": cmd_distill,
}


def execute(args: argparse.Namespace) -> int:
    """Run the parsed command; returns the exit code (a mistake: 2 with one line on stderr)."""
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ddpmkit info RUN | head -1`): stop quietly, as on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141


def run_process(args: argparse.Namespace) -> NoReturn:
    """The console script's command: glibc's malloc is first told to keep freed memory, so training steps reuse
    their buffers (``keep_freed_memory``; docs/performance.md), then the command runs and the process ends (a
    torchrun worker without interpreter shutdown)."""
    # lazy: torch loads once the command line is accepted
    from ..train.distributed import exit_process
    from ..train.runtime import keep_freed_memory

    keep_freed_memory()
    exit_process(execute(args))
