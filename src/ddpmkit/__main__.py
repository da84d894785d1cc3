"""`python -m ddpmkit ...` (and `torchrun -m ddpmkit train ...`)."""

from .cli import run

run()
