"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``, never unpickled.

A checkpoint is a dict of tensors and plain Python values only::

    format     "ddpmkit-checkpoint"
    version    2 (1: the config may be in the layout of ddpmkit 0.1; see config/upgrades.py)
    step       optimizer steps done
    config     the resolved config as a plain dict
    model      state dict of the live model
    ema        state dict of the EMA model, or None
    optimizer  optimizer state dict, or None
    rng        RNG states as tensors / plain values (torch CPU, CUDA, Python, NumPy, + the caller's)
    extra      dict of anything else plain

Where a run directory keeps them is runs/rundir.py's business.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..ema import EMA, unwrap_model
from ..errors import UserError
from ..files import atomic_write
from ..validate import is_int

FORMAT = "ddpmkit-checkpoint"
VERSION = 2  # bump on every change of the layout, with an upgrade in config/upgrades.py where the config changed
READABLE = (1, 2)  # the versions this ddpmkit reads
REQUIRED_KEYS = ("step", "config", "model", "ema", "optimizer", "rng", "extra")


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states: torch CPU, this process's GPU (when it uses one), Python and NumPy.

    Only the current GPU's state is kept: every torchrun rank seeds and draws the same global
    streams, so rank 0's state is every rank's, and reading the other GPUs' states would open a
    CUDA context on each of them (a process that never used its GPU has no state to keep).
    """
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy global generator's state is always the 5-tuple
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_current"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured; keys it does not know are ignored."""
    try:
        if "torch" in state:
            torch.set_rng_state(state["torch"].cpu())
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process computes on its GPU
            if "cuda_current" in state:
                torch.cuda.set_rng_state(state["cuda_current"].cpu())
            elif state.get("cuda"):  # older checkpoints: every GPU of the saving process, its own first
                torch.cuda.set_rng_state(state["cuda"][0].cpu())
        if "python" in state:
            version, internal, gauss = state["python"]
            random.setstate((version, tuple(internal), gauss))
        if "numpy" in state:
            s = state["numpy"]
            keys = s["keys"].cpu().numpy().astype(np.uint32)
            np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise UserError(f"checkpoint RNG state is malformed ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- save


def _to_plain(value: Any, where: str) -> Any:
    """Turn dataclasses, Paths and enums into plain values; refuse anything weights_only cannot load."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _to_plain(value.value, where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Mapping):
        return {key: _to_plain(v, f"{where}.{key}") for key, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return value
    kind = type(value).__name__
    raise TypeError(f"checkpoint entry {where} has type {kind}, which is not a plain value")


def _state_of(obj: Any, where: str) -> Any:
    """A state dict from a module / EMA / optimizer, or the mapping itself; None stays None."""
    if obj is None:
        return None
    if isinstance(obj, nn.Module):
        return unwrap_model(obj).state_dict()
    if isinstance(obj, (EMA, torch.optim.Optimizer)) or hasattr(obj, "state_dict"):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(f"checkpoint entry {where} must be a module, optimizer, EMA or state dict")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save through the one atomic writer (files.atomic_write)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    config: Any,
    model: nn.Module | Mapping[str, Any],
    ema: EMA | Mapping[str, Any] | None,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None,
    rng: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; ``rng`` entries add to (and override) the global RNG states."""
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "config": _to_plain(config if config is not None else {}, "config"),
        "model": _state_of(model, "model"),
        "ema": _state_of(ema, "ema"),
        "optimizer": _state_of(optimizer, "optimizer"),
        "rng": _to_plain({**capture_rng_state(), **dict(rng or {})}, "rng"),
        "extra": _to_plain(dict(extra or {}), "extra"),
    }
    return atomic_torch_save(ckpt, path)


# --------------------------------------------------------------------------- load


def load_weights_only(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """A ddpmkit file (``what``: checkpoint, EMA snapshot) read with weights_only=True, so never running code; any
    failure is one UserError (a file that asks to import or run code is refused as unsafe)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: we report one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):
            raise UserError(
                f"refused to load unsafe content: {path} is not a ddpmkit {what} (it asks to import or run code)"
            ) from None
        raise UserError(f"{path} is not a readable {what} (truncated or corrupt)") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    except Exception:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise UserError(f"{path} is not a readable {what} (truncated or corrupt)") from None


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint file with weights_only=True (its ``version`` says how to read its config)."""
    path = Path(path)
    ckpt = load_weights_only(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a ddpmkit checkpoint (no format: {FORMAT!r} entry)")
    version = ckpt.get("version")
    if version not in READABLE:
        raise UserError(
            f"{path} has checkpoint version {version!r}; this ddpmkit reads versions {', '.join(map(str, READABLE))}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise UserError(f"{path} is not a complete ddpmkit checkpoint (missing: {', '.join(missing)})")
    if not isinstance(ckpt["model"], Mapping) or not is_int(ckpt["step"]):
        raise UserError(f"{path} is not a readable checkpoint (malformed model or step entry)")
    return ckpt
