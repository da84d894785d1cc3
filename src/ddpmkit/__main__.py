"""`python -m ddpmkit ...` (and `torchrun -m ddpmkit train ...`)."""

import sys

from .cli import main

sys.exit(main())
