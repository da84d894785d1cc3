"""Argument checks shared by every layer: each rule (an integer, a seed, a number in a range) written once."""

from __future__ import annotations

import math

from .errors import UserError

__all__ = [
    "is_int",
    "positive_int",
    "int_in_range",
    "check_seed",
    "number_in_range",
    "check_guidance",
    "SEED_MAX",
    "GUIDANCE_MAX",
]

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes an int64


def is_int(value) -> bool:
    """An int that is not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value) -> int:
    """``value`` if it is an integer >= 1, else a UserError naming ``name``."""
    if not is_int(value) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def int_in_range(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in [low, high] (no upper end when ``high`` is None), else a UserError."""
    if not is_int(value) or value < low or (high is not None and value > high):
        what = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UserError(f"{name} must be an integer {what}, got {value!r}")
    return value


def check_seed(value, num: int = 1) -> int:
    """A seed for ``num`` draws: draw i uses seed + i, so seed + num must stay within int64."""
    if not is_int(value) or not 0 <= value <= SEED_MAX - num:
        raise UserError(f"seed must be an integer in [0, 2**63 - 1 - num] (sample i uses seed + i), got {value!r}")
    return value


def number_in_range(name: str, value, low: float, high: float) -> float:
    """``value`` if it is a finite number in [low, high], else a UserError naming ``name``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise UserError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return value


# guidance weights past this only saturate the samples (every pixel 0 or 255): a typo, not a setting
GUIDANCE_MAX = 100.0


def check_guidance(value) -> float:
    """A classifier-free guidance weight: a finite number in [0, GUIDANCE_MAX] (1 is no guidance)."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= GUIDANCE_MAX
    ):
        raise UserError(
            f"guidance must be a number >= 0 and <= {GUIDANCE_MAX:g} (1: no guidance; larger weights saturate "
            f"every pixel), got {value!r}"
        )
    return value
