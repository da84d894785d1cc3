"""Pickles read safely: an unpickler that rebuilds numpy arrays and plain containers only.

A pickle can run any code it names, so this unpickler resolves only the globals that numpy array
reconstruction needs (and ``_codecs.encode``, which bytes written with pickle protocol 2 use) and
refuses everything else, persistent ids included, with a UserError; a malicious file runs nothing.
"""

from __future__ import annotations

import codecs
import pickle
from typing import Any, Protocol

import numpy as np

from ..errors import UserError

__all__ = ["NumpyOnlyUnpickler"]

try:  # numpy 2 names (the numpy.core ones warn there)
    from numpy._core import multiarray, numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]


class BinaryReadable(Protocol):
    """What pickle reads from: a binary file (open, gzip.open, io.BytesIO)."""

    def read(self, n: int, /) -> bytes: ...

    def readline(self) -> bytes: ...


# (module, name) a pickle may name -> the object it gets. Nothing else is resolved.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): lambda: getattr(numeric, "_frombuffer"),  # protocol 5; untyped
    ("numpy._core.numeric", "_frombuffer"): lambda: getattr(numeric, "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,  # bytes written with pickle protocol 2
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An Unpickler that can rebuild numpy arrays, dicts, lists, tuples, strings and numbers only.

    ``source`` names the file in refusals ("a CIFAR-10 pickle"); without it the wording is generic.
    """

    def __init__(self, file: BinaryReadable, *, source: str | None = None, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed numpy global; any other global is refused with a UserError."""
        make = _ALLOWED.get((module, name))
        if make is None:
            if self.source is None:
                raise UserError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
            raise UserError(f"refusing to load {module}.{name} from {self.source}")
        return make()

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (no array file uses them)."""
        raise UserError(f"refusing persistent ids in {self.source or 'a pickle'}")
