"""The metrics log of a run: ``metrics.jsonl``, one JSON object per line, appended and flushed."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import UserError
from ..files import WriteError, write_text


def _plain(value: Any) -> Any:
    """A JSON-ready value: tensors and NumPy scalars via .item(), non-finite floats as null."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    elif hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()  # NumPy scalars and 0-d arrays
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot log a value of type {type(value).__name__}")


class MetricsLogger:
    """Appends records to a JSON-lines file; a no-op when disabled (non-main ranks) or path is None."""

    def __init__(self, path: str | Path | None, enabled: bool = True) -> None:
        """Remember where to write; the file is opened (in append mode) at the first record."""
        self.path = Path(path) if path is not None else None
        self.enabled = bool(enabled) and self.path is not None
        self._file: IO[str] | None = None

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line and flush it; tensors become numbers via .item()."""
        path = self.path
        if not self.enabled or path is None:  # enabled only with a path
            return
        line = json.dumps({str(k): _plain(v) for k, v in record.items()}, allow_nan=False)
        try:
            if self._file is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as e:
            raise WriteError(path, e) from None

    def close(self) -> None:
        """Close the file (a later log() reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLogger:
        """Use as a context manager that closes the file."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file; a cut-off last line (a crash mid-write) is skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"metrics file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read metrics file {path}: {exc}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UserError(f"metrics file {path} line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise UserError(f"metrics file {path} line {number} is not a JSON object")
        records.append(record)
    return records


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop records with "step" above ``step`` (before resuming there); return how many were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    records = read_metrics(path)
    kept = [r for r in records if not (isinstance(r.get("step"), (int, float)) and r["step"] > step)]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)
