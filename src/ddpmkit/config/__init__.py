"""The experiment config: typed sections, presets, ``--set`` assignments and upgrades of older layouts."""

from .experiment import *  # noqa: F403
from .experiment import __all__  # noqa: F401
