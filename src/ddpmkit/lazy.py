"""Public names of a package loaded on first use (PEP 562), so importing the package costs nothing until then."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

Names = tuple[str, ...]


def lazy_names(package: str, modules: dict[str, Names]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``modules`` maps each of its modules (relative to the
    package) to the public names it defines; any other name is a sub-module, imported on first use."""
    homes = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        else:
            try:
                value = importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(sys.modules[package], name, value)  # found once; later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
