"""Config dicts of older layouts brought to today's, keyed by the checkpoint format version they came with."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .sections import DATA_KINDS, DigitsData

__all__ = ["upgrade_config", "UPGRADES"]


def _from_version_1(d: dict) -> dict:
    """Checkpoint format 1 held either today's layout or the one before typed sections (ddpmkit 0.1:
    ``data.name`` and one bag of every dataset's keys, ``train.compile`` beside its mode); the second is
    recognised by its ``data.name``, the first passes unchanged."""
    d = dict(d)
    data = d.get("data")
    if isinstance(data, dict) and "name" in data and "kind" not in data:
        data = dict(data)
        kind = data.pop("name")
        defaults = {
            "root": None,
            "toy2d": None,
            "num_samples": 20000,
            "class_labels": False,
            "channels": None,
            "image_size": None,
            "hflip": False,
        }
        if kind == "toy2d":
            data["distribution"] = data.pop("toy2d", None)
        keep = {f.name for f in dataclasses.fields(DATA_KINDS.get(kind, DigitsData))} | {"kind"}
        d["data"] = {
            "kind": kind,
            **{k: v for k, v in data.items() if k in keep or (k in defaults and v != defaults[k])},
        }
    train = d.get("train")
    if isinstance(train, dict) and "compile" in train:
        train = dict(train)
        on = train.pop("compile")
        train["compile_mode"] = train.get("compile_mode", "default") if on else None
        d["train"] = train
    return d


# the upgrade of a config written under checkpoint format version v to the layout of version v + 1
UPGRADES: dict[int, Callable[[dict], dict]] = {1: _from_version_1}


def upgrade_config(d: dict, version: int | None = None) -> dict:
    """``d``, written under checkpoint format ``version``, in today's layout; a YAML file carries no version
    (None), so it is read as the oldest layout it may be in."""
    version = 1 if version is None else version
    for v in sorted(UPGRADES):
        if v >= version:
            d = UPGRADES[v](d)
    return d
