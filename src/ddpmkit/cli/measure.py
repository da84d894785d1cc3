"""The commands that measure or publish a trained run: ``tune-steps``, ``eval``, ``stats``, ``report``, ``export``.

Each has its parser (``add_<command>``) and its handler (``cmd_<command>``); the run layer (and torch with it) is
imported inside each handler, when its command runs: a measured start-up cost.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..fields import parse_image_size
from ..files import write_text
from ..options import ExportFormat, QualityMetric, Split, choices
from .flags import COMMON, add_command, add_flag, add_flags, flag_keywords, load_run

__all__ = [
    "EVAL_METRICS",
    "add_tune_steps",
    "add_eval",
    "add_stats",
    "add_report",
    "add_export",
    "cmd_tune_steps",
    "cmd_eval",
    "cmd_stats",
    "cmd_report",
    "cmd_export",
]

EVAL_METRICS = ("bpd", *choices(QualityMetric), "digits")
# the flags of `eval` handed to runs.evaluation.evaluate under their own names
EVAL_FLAGS = tuple("ref split data num seed batch_size device sampler steps inception resize permutations".split())


def add_tune_steps(sub) -> None:
    p = add_command(
        sub,
        "tune-steps",
        "optimise a sampler's K-call timesteps for a trained run (saved in the run)",
        "  ddpmkit tune-steps runs/digits --steps 10 --sampler unipc-bh1\n"
        "  ddpmkit sample runs/digits --sampler unipc-bh1 --steps 10 --out grid.png",
    )
    add_flag(p, "run", "run directory")
    p.add_argument("--steps", type=int, required=True, help="network calls K of the grid to tune")
    add_flag(p, "sampler", "a deterministic sampler (default: the run's)")
    p.add_argument("--draws", type=int, default=256, help="draws the objective averages over")
    p.add_argument("--heldout", type=int, default=256, help="other draws that check the result")
    p.add_argument("--rounds", type=int, default=4, help="sweeps of the coordinate descent (move 1/2, 1/4, ...)")
    add_flag(p, "seed", "draw i uses seed + i")
    add_flag(p, "batch-size", None)
    add_flags(p, *COMMON)


def cmd_tune_steps(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.tuning import describe, tune_steps

    run = load_run(args)
    log = None if args.no_progress else (lambda text: print(text, file=sys.stderr, flush=True))
    tuning = flag_keywords(args, ("draws", "heldout", "rounds", "seed", "force", "batch_size"))
    record = tune_steps(run, args.steps, args.sampler, **tuning, log=log)
    print(describe(record))
    return 0


def add_eval(sub) -> None:
    p = add_command(
        sub,
        "eval",
        "measure a trained model (or score a sample file)",
        "  ddpmkit eval runs/digits --metric bpd --split test\n"
        "  ddpmkit eval samples.npz --metric fid kid --ref stats.npz\n"
        "  ddpmkit eval samples.npz --metric digits",
    )
    add_flag(p, "run", "run directory or checkpoint file; for fid, kid, pr, digits also a samples .npz")
    p.add_argument(
        "--metric",
        nargs="+",
        choices=EVAL_METRICS,
        default=["bpd"],
        help="bpd: the variational bound in bits/dim; fid, kid, pr: Inception-feature scores of samples; "
        "digits: the 8x8 digits judge's report on a samples .npz",
    )
    p.add_argument("--split", choices=choices(Split), default="test", help="bpd: the split measured")
    p.add_argument(
        "--data",
        help="bpd on other images: a folder of held-out images (folder runs; class sub-folders "
        "named as in training), or the dataset's directory (cifar10, mnist)",
    )
    p.add_argument(
        "--num", type=int, help="bpd: the first N examples (default all); fid, kid, pr: samples (default 10000)"
    )
    p.add_argument(
        "--ref",
        default="test",
        help="fid, kid, pr: train | test (the run's data) | DIR | stats.npz; digits: train | test",
    )
    add_flag(p, "sampler", "fid, kid, pr: default the run's config")
    p.add_argument("--steps", type=int, help="fid, kid, pr: network calls per sample")
    add_flags(p, "inception", "resize")
    p.add_argument("--permutations", type=int, default=200, help="digits: permutations of the MMD tests")
    p.add_argument("--no-labels", action="store_true", help="digits: ignore the file's labels")
    add_flag(p, "batch-size", "examples per network batch")
    add_flag(p, "seed", "seeds the noise of bpd and of the samples scored")
    p.add_argument("--out", help="write the result as JSON here")
    add_flags(p, *COMMON)


def cmd_eval(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs import check_output
    from ..runs.evaluation import BPD, DIGITS, evaluate, keep_result

    out = args.out and check_output(args.out, args.force, (".json",), "--out")
    result = evaluate(
        args.run,
        args.metric,
        **flag_keywords(args, EVAL_FLAGS),
        ema=not args.no_ema,
        labels=not args.no_labels,
        progress=not args.no_progress,
    )
    _report(result, out, indent=2 if DIGITS in args.metric else None)
    note = keep_result(args.run, result, args.metric, ref=args.ref, split=args.split, data=args.data)
    if note:
        print(f"note: result not kept in {args.run}/eval: {note}", file=sys.stderr)
    if set(args.metric) == {BPD}:
        bpd, sem = (("n/a" if v is None else f"{v:.4f}") for v in (result["bpd"], result["stderr"]))
        print(f"bits/dim = {bpd} +- {sem} (n = {result['num']}, {result['source']})")
    return 0


def _report(result: dict, out, indent: int | None = None) -> None:
    """The result as JSON on stdout, one line unless ``indent`` is given, and as a file when asked."""
    if indent is not None:  # the digits judge's report, printed as it always was (indented, NaN allowed)
        text = json.dumps(result, indent=indent)
        if out:
            write_text(out, text + "\n")
        print(text)
        return
    if out:
        write_text(out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(json.dumps(result, allow_nan=False))


def add_stats(sub) -> None:
    p = add_command(
        sub,
        "stats",
        "reference statistics (mu, sigma) of images for fid",
        "  ddpmkit stats photos/ --image-size 64 --out photos_stats.npz --features",
    )
    p.add_argument("source", help="a directory of images, or a preset (digits, mnist, cifar10 with --data)")
    p.add_argument("--out", required=True, help="stats .npz (pytorch-fid's mu and sigma)")
    p.add_argument("--features", action="store_true", help="keep the features too (needed for kid and pr)")
    p.add_argument("--split", choices=choices(Split), default="train", help="the split of a preset's data")
    p.add_argument("--data", help="the dataset's directory (mnist, cifar10)")
    p.add_argument(
        "--image-size", metavar="S|HxW", help="the size to read images at, S or HxW (required for a directory)"
    )
    add_flags(p, "inception", "resize", "force-out", "no-progress")


def cmd_stats(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs import check_output
    from ..runs.quality import stats_of

    out = check_output(args.out, args.force, (".npz",), "--out")
    size = None if args.image_size is None else parse_image_size(args.image_size)
    _report(
        stats_of(
            args.source,
            out=out,
            split=args.split,
            data=args.data,
            image_size=size,
            features=args.features,
            network=args.inception,
            allow_unknown=bool(args.inception),
            resize=args.resize,
            progress=not args.no_progress,
        ),
        None,
    )
    return 0


def add_report(sub) -> None:
    p = add_command(
        sub,
        "report",
        "one self-contained HTML page about a run",
        "  ddpmkit report runs/digits\n  ddpmkit report runs/digits --out digits.html --no-trajectory",
    )
    add_flag(p, "run", "run directory")
    p.add_argument("--out", help="the HTML file (default RUN/report.html)")
    p.add_argument("--no-trajectory", action="store_true", help="do not draw a trajectory strip (4 samples)")
    add_flag(p, "device", "where the trajectory is drawn")
    add_flags(p, "force-out")


def cmd_report(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.report import write_report

    out = write_report(args.run, args.out, trajectory=not args.no_trajectory, device=args.device, force=args.force)
    print(f"wrote {out}")
    return 0


def add_export(sub) -> None:
    p = add_command(
        sub,
        "export",
        "export a run's EMA weights (safetensors, or a diffusers folder)",
        "  ddpmkit export runs/digits --format safetensors\n"
        "  ddpmkit export runs/uncond --format diffusers --out uncond_diffusers",
        "run",
    )
    p.add_argument(
        "--format",
        choices=choices(ExportFormat),
        required=True,
        help="safetensors: model.safetensors + config.json; diffusers: a DDPMPipeline folder "
        "(networks that map exactly; others are refused with the reason)",
    )
    p.add_argument("--out", help="folder (default RUN_export for safetensors, RUN_diffusers for diffusers)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an existing --out")


def cmd_export(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.export import export_run

    out = export_run(args.run, args.format, args.out, force=args.force)
    print(f"wrote {out} ({args.format})")
    return 0
