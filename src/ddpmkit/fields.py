"""Typed config dataclasses: built strictly from mappings and checked by one validator, in one wording.

Every config class (the network configs, each dataset's, the training and sampling sections)
declares its fields with type hints and a ``section`` name; ``check_fields`` coerces and checks
each value against its hint, ``require`` states a range, and both raise
``UserError("config key 'section.name' must be ..., got ...")``. A field whose hint is a union
of config classes (the data and model sections) picks its class by the mapping's ``kind``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, Union

from .errors import UserError
from .options import short

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "fail",
    "require",
    "check_fields",
    "from_dict",
    "to_dict",
    "config_classes",
    "ImageSize",
    "image_hw",
    "check_image_size",
    "parse_image_size",
]

C = TypeVar("C", bound="DataclassInstance")

# an image size: an int S (S x S, as every config before non-square images) or (H, W)
ImageSize = int | tuple[int, int]
IMAGE_SIZE_WORDS = "a positive integer or a list [H, W] of two positive integers"


def fail(key: str, what: str, value: Any) -> NoReturn:
    """Raise the one config error: ``config key 'key' must be what, got value``."""
    raise UserError(f"config key {key!r} must be {what}, got {short(value)}")


def require(ok: bool, key: str, what: str, value: Any) -> None:
    """``fail`` unless ``ok``."""
    if not ok:
        fail(key, what, value)


def _describe(hint: Any) -> str:
    """A few words naming what a type hint accepts."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if set(inner) == set(typing.get_args(ImageSize)):
            return IMAGE_SIZE_WORDS + (" or null" if len(inner) < len(args) else "")
        return " or ".join(_describe(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} {_describe(args[0]).split(' ', 1)[1]}s"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def config_classes(hint: Any) -> dict[str, type[DataclassInstance]]:
    """{kind: class} of a union of config classes (empty for any other hint)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kinded = all(dataclasses.is_dataclass(a) and isinstance(getattr(a, "kind", None), str) for a in args)
    if typing.get_origin(hint) not in (Union, types.UnionType) or not kinded:  # an optional section has no kind
        return {}
    return {a.kind: a for a in args}


def coerce(hint: Any, value: Any, key: str) -> Any:
    """``value`` checked against ``hint``: lists become tuples, ints floats, YAML's '1e-4' a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, key)
    kinds = config_classes(hint)
    if kinds:
        return _pick_kind(kinds, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):  # an optional section says what is wrong inside
            return coerce(inner[0], value, key)
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, key)
            except UserError:
                pass
        fail(key, _describe(hint), value)
    if origin is Literal:
        if value not in args or (isinstance(value, bool) and not all(isinstance(a, bool) for a in args)):
            fail(key, _describe(hint), value)
        return value
    if origin is tuple:
        return _coerce_tuple(hint, value, key)
    return _coerce_scalar(hint, value, key)


def _coerce_tuple(hint: Any, value: Any, key: str) -> tuple:
    args = typing.get_args(hint)
    variadic = len(args) == 2 and args[1] is Ellipsis
    if not isinstance(value, (list, tuple)) or (not variadic and len(value) != len(args)):
        fail(key, _describe(hint), value)
    kinds = [args[0]] * len(value) if variadic else args
    try:
        return tuple(coerce(k, v, key) for k, v in zip(kinds, value))
    except UserError:
        fail(key, _describe(hint), value)


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML reads 1e-4 (no dot) as a string
                value = float(value)
            except ValueError:
                fail(key, "a finite number", value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        fail(key, "a finite number", value)
    if hint in (bool, int, str):
        fail(key, _describe(hint), value)
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in ddpmkit, not the user's


def _pick_kind(kinds: dict[str, type], value: Any, key: str):
    if isinstance(value, tuple(kinds.values())):
        return value
    if not isinstance(value, Mapping):
        fail(key, "a mapping of keys to values", value)
    kind = value.get("kind", next(iter(kinds)))
    if not isinstance(kind, str) or kind not in kinds:
        fail(f"{key}.kind", "one of " + ", ".join(map(repr, kinds)), kind)
    return from_dict(kinds[kind], {k: v for k, v in value.items() if k != "kind"}, key)


def check_fields(config: Any) -> None:
    """Coerce and check every field of a config dataclass in place (its ``__post_init__`` calls this)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        key = f"{config.section}.{f.name}" if config.section else f.name
        object.__setattr__(config, f.name, coerce(hints[f.name], getattr(config, f.name), key))


def _section(cls: Any) -> str:
    """The YAML section a config class is read from (its ``section`` class variable)."""
    return cls.section


def from_dict(cls: type[C], data: Any, where: str | None = None) -> C:
    """Build config class ``cls`` from a mapping, refusing unknown keys; values are checked by the class."""
    where = _section(cls) if where is None else where
    if not isinstance(data, Mapping):
        fail(where or "top level", "a mapping of keys to values", data)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise UserError(f"unknown config key {short(key)}; known keys here: {', '.join(names)}")
    return cls(**data)


def to_dict(config: Any, with_kind: bool = True) -> dict:
    """A config dataclass as a plain dict (YAML- and checkpoint-safe): tuples become lists, ``kind`` first."""
    kind = getattr(type(config), "kind", None)
    out = {"kind": kind} if with_kind and isinstance(kind, str) else {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("written_when_set") and value == f.default:  # configs from before the field read the same
            continue
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def image_hw(size: ImageSize) -> tuple[int, int]:
    """(H, W) of an image size: S -> (S, S), (H, W) as it is."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_image_size(size: ImageSize | None, key: str, what: str = IMAGE_SIZE_WORDS) -> ImageSize | None:
    """A coerced image size checked positive, a square [S, S] written as S (one spelling per shape)."""
    if size is None or isinstance(size, int):
        require(size is None or size >= 1, key, what, size)
        return size
    require(min(size) >= 1, key, what, list(size))
    return size[0] if size[0] == size[1] else size


def parse_image_size(text: str, flag: str = "--image-size") -> int | list[int]:
    """A command-line image size: ``32`` (32 x 32) or ``32x48`` (H x W) -> 32 or [32, 48]."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isascii() and p.strip().isdigit() and int(p) >= 1 for p in parts):
        h, w = int(parts[0]), int(parts[-1])
        return h if h == w else [h, w]
    raise UserError(f"{flag} must be a positive integer S or HxW (height x width, e.g. 32x48), got {short(text)}")
