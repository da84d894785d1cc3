"""The one way ddpmkit writes a file: atomically, durably, with the modes of a plain ``open()``.

Every output (checkpoints, sample files, PNG grids, JSON results, YAML configs, rewritten
metrics logs) goes through :func:`atomic_write`: the bytes go to a temporary file beside the
destination (``.NAME.PID.HEX.tmp``), are synced to disk, and the file is renamed over the
destination, so a crash or a full disk never leaves a half-written file and the earlier file
stays as it was.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "write_bytes", "write_text", "TEMP_FILE"]

# what atomic_write's temporary files are named: a killed writer may leave one behind
TEMP_FILE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, sync it, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() gives
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable by syncing its directory (best effort; not possible on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
