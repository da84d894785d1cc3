"""The argument parser of the ``ddpmkit`` command: the top level, and each command's parser from its module.

It imports only options and version (never the run layer), so ``--help``, ``--version`` and a refused command line
answer without torch.
"""

from __future__ import annotations

import argparse

from ..version import __version__
from . import distill, ema, importing
from .commands import add_config, add_info, add_sample, add_train
from .editing import add_edit, add_inpaint, add_interpolate
from .flags import FLAGS, HelpFormatter
from .measure import EVAL_METRICS, add_eval, add_export, add_report, add_stats, add_tune_steps

__all__ = ["build_parser", "EVAL_METRICS", "FLAGS"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ddpmkit command (its choices come from ddpmkit.options)."""
    parser = argparse.ArgumentParser(
        prog="ddpmkit",
        description="Denoising diffusion probabilistic models.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  ddpmkit train --preset digits\n  ddpmkit sample runs/digits "
        "--labels all --out grid.png\n  ddpmkit COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_train,
        add_sample,
        add_tune_steps,
        add_eval,
        add_stats,
        add_inpaint,
        add_edit,
        add_interpolate,
        add_report,
        add_export,
        importing.add_parser,
        ema.add_parser,
        distill.add_parser,
        add_info,
        add_config,
    ):
        add(sub)
    return parser
