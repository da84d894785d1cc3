"""The ``ddpmkit`` command: parse (``parser``), call the run layer and print (``commands``). Mistakes exit 2 with
one line."""

from __future__ import annotations

from .commands import execute, run_process
from .parser import build_parser

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddpmkit`` command; returns the exit code."""
    return execute(build_parser().parse_args(argv))


def run() -> None:
    """The console script: parse (``--help``, ``--version`` and a refused command line end here, before torch is
    imported), then run the command and exit."""
    run_process(build_parser().parse_args())


if __name__ == "__main__":
    run()
