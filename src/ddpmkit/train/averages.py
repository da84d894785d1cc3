"""The averaged weights a trainer keeps beside the live ones: what the trainer calls, whatever their kind.

A run samples from ``average.model``; a checkpoint keeps ``average.state_dict()`` as its ``ema`` entry (so every
command samples any kind the same way) and ``extra_state()`` among its extras (what resuming needs beyond it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from torch import nn

from ..ema import EMA
from ..errors import UserError
from ..power_ema import PowerEMA

__all__ = ["Average", "FixedAverage", "PowerAverage", "SNAPSHOT_FORMAT", "POWER_EMA_STATE"]

SNAPSHOT_FORMAT = "ddpmkit-ema-snapshot"  # the ``format`` entry of a power EMA snapshot file
POWER_EMA_STATE = "power_ema"  # the checkpoint extra holding a power EMA's whole state


class Average(Protocol):
    """Averaged weights: updated after each optimizer step, saved into and loaded from checkpoints."""

    model: nn.Module  # the weights samples are drawn from

    def update(self, model: nn.Module, step: int) -> None: ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, extra: Mapping[str, Any]) -> None: ...


class FixedAverage(EMA):
    """The fixed-decay EMA (ema.EMA): its shadow weights are its whole state."""

    def extra_state(self) -> dict[str, Any]:
        """Nothing beyond the shadow weights."""
        return {}

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Nothing to load beyond the shadow weights."""


class PowerAverage:
    """Power-function EMAs of several widths (power_ema.PowerEMA); the first width's average is the one sampled.

    Every ``snapshot_every`` steps, and after ``final_step``, ``write(step, snapshot)`` receives all the averages,
    labelled with the step of their last update (the ``t`` of their profiles), for post-hoc reconstruction.
    """

    def __init__(
        self,
        power: PowerEMA,
        snapshot_every: int = 0,  # 0: no snapshots
        final_step: int | None = None,
        write: Callable[[int, dict[str, Any]], Any] | None = None,  # None: this process writes none
    ) -> None:
        self.power, self.snapshot_every, self.final_step, self.write = power, snapshot_every, final_step, write
        self.model = power.models[0]

    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the live weights (on PowerEMA's interval), then write a snapshot when one is due."""
        self.power.update(model, step)
        due = (self.snapshot_every and step % self.snapshot_every == 0) or step == self.final_step
        if due and self.write is not None and self.snapshot_every and self.power.step > 0:
            self.write(self.power.step, self.snapshot())  # written at once: the state shares the averages' storage

    def snapshot(self) -> dict[str, Any]:
        """Every average now, with the widths, exponents and the step their profiles are read at."""
        state = self.power.state_dict()
        return {
            "format": SNAPSHOT_FORMAT,
            "step": state["step"],
            "sigma_rels": state["sigma_rels"],
            "gammas": list(self.power.gammas),
            "update_every": self.power.update_every,
            "averages": state["averages"],
        }

    def state_dict(self) -> Mapping[str, Any]:
        """The sampled (first) width's weights: the checkpoint's ``ema`` entry."""
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load the sampled width's weights (``load_extra_state`` then loads every width)."""
        self.model.load_state_dict(state)

    def extra_state(self) -> dict[str, Any]:
        """Every width's average and the step of the last update: what a bit-for-bit resume needs."""
        return {POWER_EMA_STATE: self.power.state_dict()}

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Load the state ``extra_state`` saved; a checkpoint without it did not train a power EMA."""
        state = extra.get(POWER_EMA_STATE)
        if state is None:
            raise UserError("the checkpoint holds no power EMA state (it was trained with train.ema_kind 'fixed')")
        self.power.load_state_dict(state)
