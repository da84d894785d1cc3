"""Exponential moving average (EMA) of a model's weights, the model ddpmkit samples from.

The shadow model follows the live one as ``shadow <- d * shadow + (1 - d) * param``
(Ho et al. 2020 use d = 0.9999 every step). ``update_every = k`` skips k - 1 of every k
optimizer steps and uses ``d ** k`` on the steps it does update, so the time constant
``1 / (1 - d)`` in optimizer steps is the same whatever k: an EMA updated every 10 steps
with d = 0.9999 averages over as many optimizer steps as one updated every step.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping

import torch
from torch import nn

from .errors import UserError
from .validate import int_in_range


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel (``.module``) or torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        inner = getattr(model, "module", None)
        # A pure wrapper (DDP, DataParallel, look-alikes) holds ``.module`` as its only child;
        # a network that merely has a submodule called "module" has other children too.
        if isinstance(inner, nn.Module) and (
            isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
            or not isinstance(model, nn.Module)
            or [c for c in model.children()] == [inner]
        ):
            model = inner
            continue
        return model


def _buffer_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner module, name) of every non-None buffer, in ``model.buffers()`` order."""
    return [(m, name) for m in model.modules() for name, b in m._buffers.items() if b is not None]


def _slot_tensors(slots: list[tuple[nn.Module, str]]) -> list[torch.Tensor]:
    """The buffers the slots name, read now (``_buffer_slots`` keeps only slots that hold a tensor)."""
    tensors = []
    for m, name in slots:
        tensor = m._buffers[name]
        if tensor is None:
            raise ValueError(f"EMA.update: buffer {name!r} of the model was set to None")
        tensors.append(tensor)
    return tensors


def _foreach_copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """Copy ``src`` into ``dst`` element-wise, batched where torch supports it."""
    if not dst:
        return
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # pragma: no cover - older torch
        for d, s in zip(dst, src):
            d.copy_(s)


def mismatch(exc: RuntimeError) -> str:
    """The line of ``load_state_dict``'s error that says what does not match (its first line only names the model)."""
    lines = str(exc).strip().splitlines()
    return lines[1].strip() if len(lines) > 1 else (lines[0] if lines else "")


class EMA:
    """Shadow copy of a model whose weights are an exponential moving average of the live ones."""

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,  # EMA decay per optimizer step, in [0, 1)
        start_step: int = 0,  # until this many optimizer steps are done, copy the weights
        update_every: int = 1,  # average every k optimizer steps, with decay ** k
    ) -> None:
        """Deep-copy the (unwrapped) model into ``self.model``, in eval mode, without gradients."""
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise UserError(f"ema decay must be a number in [0, 1), got {decay!r}")
        int_in_range("ema start_step", start_step, 0)
        int_in_range("ema update_every", update_every, 1)
        self.decay = float(decay)
        self.start_step = start_step
        self.update_every = update_every
        self.model = copy.deepcopy(unwrap_model(model)).eval()
        self.model.requires_grad_(False)
        # Parameter objects (not .detach() views) so that a later .to(device) stays visible.
        params = list(self.model.parameters())
        self._float_idx = [i for i, p in enumerate(params) if p.is_floating_point()]
        self._other_idx = [i for i, p in enumerate(params) if not p.is_floating_point()]
        self._shadow_float: list[torch.Tensor] = [params[i] for i in self._float_idx]
        self._shadow_other: list[torch.Tensor] = [params[i] for i in self._other_idx]
        # Buffers are re-read through their owners: .to(device) replaces buffer tensors.
        self._shadow_buffer_slots = _buffer_slots(self.model)
        self._live_ref: weakref.ref[nn.Module] | None = None
        self._live_float: list[torch.Tensor] = []
        self._live_other: list[torch.Tensor] = []
        self._live_buffer_slots: list[tuple[nn.Module, str]] = []

    @property
    def effective_decay(self) -> float:
        """The decay applied on an updating step: ``decay ** update_every``."""
        return self.decay**self.update_every

    def _bind(self, model: nn.Module) -> None:
        """Build the live model's tensor lists matching the shadow's, once per model object."""
        live = unwrap_model(model)
        if self._live_ref is not None and self._live_ref() is live:
            return
        params = list(live.parameters())
        slots = _buffer_slots(live)
        if len(params) != len(self._float_idx) + len(self._other_idx) or len(slots) != len(self._shadow_buffer_slots):
            raise ValueError("EMA.update got a model whose structure differs from the EMA's model")
        self._live_float = [params[i] for i in self._float_idx]
        self._live_other = [params[i] for i in self._other_idx]
        self._live_buffer_slots = slots
        self._live_ref = weakref.ref(live)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the live weights after ``step`` optimizer steps (copy them while step <= start_step)."""
        self._bind(model)
        if step <= self.start_step:
            _foreach_copy(self._shadow_float, self._live_float)
        elif step % self.update_every == 0:
            if self._shadow_float:
                weight = 1.0 - self.effective_decay
                torch._foreach_lerp_(self._shadow_float, self._live_float, weight)
        else:
            return
        _foreach_copy(self._shadow_other, self._live_other)
        _foreach_copy(_slot_tensors(self._shadow_buffer_slots), _slot_tensors(self._live_buffer_slots))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow model's state dict (decay and friends live in the config)."""
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a shadow state dict saved by :meth:`state_dict` (in place: cached lists stay valid)."""
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"EMA state does not match the model: {mismatch(exc)}") from None
