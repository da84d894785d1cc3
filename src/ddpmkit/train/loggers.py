"""Where a run's training metrics go: ``metrics.jsonl`` (default) and, when asked, TensorBoard event files.

``train.loggers`` names the sinks: ``jsonl`` (``RUN/metrics.jsonl``, see ``metrics.py``) and
``tensorboard`` (event files under ``RUN/tb/``, written with ``torch.utils.tensorboard``; needs the
``tensorboard`` package: ``pip install tensorboard``). Every scalar of a metrics record is written under
its JSONL key as the TensorBoard tag (``loss``, ``loss_q0`` .. ``loss_q3``, ``lr``, ``grad_norm``,
``images_per_s``) at the record's step; sample grids as the image ``samples``. Only the main process writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..files import WriteError
from .metrics import MetricsLogger

__all__ = ["RunLoggers", "TensorBoardLogger", "NOT_SCALARS"]

NOT_SCALARS = ("step", "time")  # record keys that are no curve


def summary_writer_class():
    """torch's SummaryWriter; a UserError naming the pip command when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard
    except ImportError:
        raise UserError(
            "train.loggers has 'tensorboard' but the tensorboard package is not installed: "
            "pip install tensorboard (or pip install 'ddpmkit[tensorboard]')"
        ) from None
    return SummaryWriter


class TensorBoardLogger:
    """Scalars and images into TensorBoard event files under ``log_dir``.

    A fresh run (``start_step`` 0) first removes the event files of an earlier run in the same folder;
    a resumed run writes a purge marker at ``start_step + 1``, so TensorBoard hides the steps an
    interrupted run logged after its last checkpoint: those steps are trained and logged again.
    """

    def __init__(self, log_dir: str | Path, start_step: int = 0) -> None:
        SummaryWriter = summary_writer_class()
        log_dir = Path(log_dir)
        try:
            if start_step == 0 and log_dir.is_dir():
                for old in log_dir.glob("events.out.tfevents.*"):
                    old.unlink()
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(log_dir, e) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step > 0 else None)

    def log(self, record: Mapping[str, Any]) -> None:
        """Each finite number of the record (but step and time) as a scalar at the record's step."""
        step = int(record["step"])
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        """A uint8 HWC (or HW) image."""
        arr = np.asarray(image_hwc)
        self.writer.add_image(tag, arr if arr.ndim == 3 else arr[:, :, None], step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class RunLoggers:
    """Every sink of ``train.loggers`` behind one ``log(record)``; a no-op on processes other than the main.

    The TensorBoard writer opens at ``open()`` (once the run directory is laid out and locked).
    """

    def __init__(
        self, metrics: str | Path, tensorboard: str | Path, names: Sequence[str], enabled: bool = True
    ) -> None:
        self.tb_dir = Path(tensorboard)  # the event files' folder (RUN/tb)
        self.names = tuple(names)
        self.enabled = bool(enabled)
        self.jsonl = MetricsLogger(metrics, enabled=self.enabled and "jsonl" in self.names)
        self.tensorboard: TensorBoardLogger | None = None
        if "tensorboard" in self.names:
            summary_writer_class()  # every process refuses a missing package before training starts

    def open(self, start_step: int) -> None:
        """Start the TensorBoard writer, when asked for (main process only)."""
        if self.enabled and "tensorboard" in self.names and self.tensorboard is None:
            self.tensorboard = TensorBoardLogger(self.tb_dir, start_step)

    def log(self, record: Mapping[str, Any]) -> None:
        """One metrics record to every sink."""
        self.jsonl.log(record)
        if self.tensorboard is not None:
            self.tensorboard.log(record)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        """A sample grid (TensorBoard only; the PNG file is written by the trainer)."""
        if self.tensorboard is not None:
            self.tensorboard.image(tag, image_hwc, step)

    def close(self) -> None:
        """Close every sink (a later log() reopens metrics.jsonl; TensorBoard needs open() again)."""
        self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
