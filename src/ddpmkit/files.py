"""The one way ddpmkit writes a file: atomically, durably, with the modes of a plain ``open()``.

Every output (checkpoints, sample files, PNG grids, JSON results, YAML configs, rewritten
metrics logs) goes through :func:`atomic_write`: the bytes go to a temporary file beside the
destination (``.NAME.PID.HEX.tmp``), are synced to disk, and the file is renamed over the
destination, so a crash or a full disk never leaves a half-written file and the earlier file
stays as it was. An output claimed new (:func:`claim_new`, what ``check_output`` does without
``--force``) is linked into place instead, which fails if another writer got there first.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from .errors import UserError

__all__ = ["atomic_write", "write_bytes", "write_text", "WriteError", "TEMP_FILE", "claim_new", "release"]

# what atomic_write's temporary files are named: a killed writer may leave one behind
TEMP_FILE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")

# outputs checked as not there yet: written by an exclusive link, so of two writers only the first succeeds
_NEW: set[Path] = set()
# file systems without hard links: the name is claimed by an exclusive create instead
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


def claim_new(path: str | Path) -> None:
    """Write ``path`` only if it still does not exist when its bytes are ready (see ``atomic_write``)."""
    _NEW.add(Path(path).absolute())


def release(path: str | Path) -> None:
    """``path`` may be replaced again (an output given with --force)."""
    _NEW.discard(Path(path).absolute())


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, sync it, and rename it over ``path``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() gives
    except OSError as e:
        raise WriteError(path, e) from None
    watched = None
    try:
        with os.fdopen(fd, "wb") as f:
            watched = _Watched(f)
            write(cast(IO[bytes], watched))  # a proxy: every other attribute is the file's
            f.flush()
            os.fsync(f.fileno())
        if path.absolute() in _NEW:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, FileExistsError):
            raise UserError(f"output {str(path)!r} already exists (another command wrote it first)") from None
        cause = e if isinstance(e, OSError) else getattr(watched, "error", None)
        if cause is not None:  # torch.save reports a failed write as a RuntimeError: name the real cause
            raise WriteError(path, cause) from None
        raise
    _fsync_dir(path.parent)
    return path


def _link_new(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path``, failing with FileExistsError if ``path`` exists (no check-then-rename race)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # claim the name, then fill it
        os.replace(tmp, path)
        return
    tmp.unlink()


class _Watched:
    """A file that remembers the OSError of a failed write, whatever the writer turns it into."""

    def __init__(self, file: IO[bytes]):
        self._file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._file, name)


class WriteError(UserError):
    """A file could not be written (disk full, read-only, no such directory, ...); the old file is intact."""

    def __init__(self, path: Path, error: OSError):
        self.path, self.errno = path, error.errno
        super().__init__(f"cannot write {str(path)!r}: {error.strerror or error}")


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
