"""``ddpmkit ema``: a power EMA of any width rebuilt from a run's snapshots, or a sweep of widths scored
(the fit and the scores are ``runs.posthoc_ema``)."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..options import EMASweepMetric, choices
from .flags import add_described_command, add_flag, add_flags, flag_keywords

__all__ = ["add_parser", "cmd_ema"]


def add_parser(sub) -> None:
    """The ``ema`` sub-command: RUN, --sigma-rel or --sweep with --metric and --num, --out, --keep-best."""
    p = add_described_command(
        sub,
        "ema",
        "rebuild a power EMA of any width from a run's snapshots, or sweep widths and score them",
        "Rebuild the power-function EMA of relative width S from the snapshots of a run trained\n"
        "with train.ema_kind power (EDM2's least-squares fit), as a new run directory every command\n"
        "samples; or score a sweep of widths with a cheap metric, print the table and keep it in\n"
        "RUN/ema_snapshots/sweep-<metric>.json.",
        "  ddpmkit ema runs/digits --sigma-rel 0.07 --out runs/digits-ema0.07\n"
        "  ddpmkit ema runs/digits --sweep 0.02:0.25:8 --metric digits --num 500 --keep-best",
    )
    add_flag(p, "run", "run directory trained with train.ema_kind power and snapshots")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sigma-rel", type=float, metavar="S", help="the relative width to rebuild, in (0, 0.3)")
    what.add_argument("--sweep", metavar="LO:HI:N", help="score N widths evenly spaced from LO to HI")
    p.add_argument(
        "--metric",
        choices=choices(EMASweepMetric),
        default="digits",
        help="--sweep's score: digits: the judge's class accuracy of --num samples (default 500); fid: FID of "
        "--num samples (default 1000) against the test split; bpd: bits/dim of the first --num test images "
        "(default: digits)",
    )
    p.add_argument("--num", type=int, help="samples (digits, fid) or test images (bpd) per width")
    add_flag(p, "seed", "seeds the samples scored (default: 0)")
    p.add_argument("--steps", type=int, help="--sweep: network calls per sample (default: the run's sample.steps)")
    p.add_argument(
        "--ref",
        default="test",
        help="--metric fid: train, test, a folder of images or a stats .npz from `ddpmkit stats` (default: test)",
    )
    add_flags(p, "inception")
    p.add_argument("--keep-best", action="store_true", help="--sweep: also write the best width's run (see --out)")
    p.add_argument("--out", help="run directory to write (default: RUN-ema<S>)")
    p.add_argument("--force", action="store_true", help="overwrite the checkpoints of an existing --out")
    add_flag(p, "device", "where to run (default: auto)")  # spelled out: this help layout shows no defaults
    add_flags(p, "no-progress")


def cmd_ema(args: argparse.Namespace) -> int:
    # lazy: start-up (torch loads only once the command line is accepted)
    from ..runs.posthoc_ema import parse_sweep, rebuilt_run_dir, sweep, write_rebuilt_run
    from ..runs.rundir import RunDir

    if args.sweep is None:
        if args.keep_best:
            raise UserError("--keep-best goes with --sweep (--sigma-rel writes its width anyway)")
        path = write_rebuilt_run(args.run, args.sigma_rel, args.out, args.force)
        print(f"wrote {path} (EMA width sigma_rel {args.sigma_rel:g} rebuilt from {args.run}'s snapshots)")
        return 0
    widths = parse_sweep(args.sweep)
    if args.keep_best and args.out is not None:
        rebuilt_run_dir(args.run, args.out, args.force)  # refused now, not after the sweep
    header = [f"{'sigma_rel':>9}  {args.metric + ' score':>12}  {'fit error':>9}"]

    def row(r: dict) -> None:
        while header:  # with the first row: a refused input prints its error line alone
            print(header.pop(), flush=True)
        score = next(v for k, v in r.items() if k not in ("sigma_rel", "fit_error"))
        print(f"{r['sigma_rel']:>9.4f}  {score:>12.4f}  {r['fit_error']:>9.2e}", flush=True)

    drawn = flag_keywords(args, ("num", "seed", "device", "ref", "steps"))
    table = sweep(
        args.run, widths, args.metric, **drawn, network=args.inception, progress=not args.no_progress, tell=row
    )
    best = table["best_sigma_rel"]
    print(
        f"best sigma_rel {best:.4f} by {table['ranked_by']} (table kept in {RunDir(args.run).ema_sweep(args.metric)})"
    )
    if args.keep_best:
        path = write_rebuilt_run(args.run, best, args.out, args.force)
        print(f"wrote {path}")
    return 0
