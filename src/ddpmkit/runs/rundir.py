"""The run directory: the one owner of every path in it, its lock, its tidying and its checkpoints' names.

RUN/config.yaml                      the resolved config
RUN/checkpoints/step_XXXXXXXX.pt     checkpoints (train/checkpoint.py writes and reads the files)
RUN/metrics.jsonl                    one JSON object per log interval
RUN/samples/step_XXXXXXXX.png        sample grids drawn while training
RUN/tb/                              TensorBoard event files (train.loggers: [jsonl, tensorboard])
RUN/eval/<...>.json                  evaluations recorded by ``ddpmkit eval RUN``
RUN/timesteps/<sampler>-<K>.json     grids tuned by ``ddpmkit tune-steps``
RUN/ema_snapshots/step_XXXXXXXX.pt   power EMA snapshots (train.ema_kind power), named by their last update
RUN/ema_snapshots/sweep-<metric>.json  ``ddpmkit ema RUN --sweep``'s table
RUN/report.html                      ``ddpmkit report``'s default page
RUN/.lock                            held while a process trains the run
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from ..config import ExperimentConfig, save_config
from ..errors import UserError
from ..files import TEMP_FILE, WriteError
from ..train.checkpoint import read_checkpoint
from ..train.metrics import truncate_metrics
from ..validate import positive_int

__all__ = [
    "RunDir",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_checkpoint",
    "prune_checkpoints",
    "load_checkpoint",
    "read_named_checkpoint",
    "check_checkpoint_name",
    "run_dir_of",
    "run_lock",
    "tidy_run_dir",
    "CHECKPOINTS",
    "EVAL",
]

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
SAMPLES = "samples"
TENSORBOARD = "tb"
EVAL = "eval"
TIMESTEPS = "timesteps"
EMA_SNAPSHOTS = "ema_snapshots"
REPORT = "report.html"
LOCK = ".lock"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def _step_name(step: int, suffix: str) -> str:
    return f"step_{int(step):08d}{suffix}"


class RunDir:
    """The paths of one run directory, and what a trainer does with them (the trainer's ``RunFiles``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / CONFIG
        self.checkpoints = self.path / CHECKPOINTS
        self.metrics = self.path / METRICS
        self.samples = self.path / SAMPLES
        self.tensorboard = self.path / TENSORBOARD
        self.eval = self.path / EVAL
        self.timesteps = self.path / TIMESTEPS
        self.ema_snapshots = self.path / EMA_SNAPSHOTS
        self.report = self.path / REPORT
        self.lock = self.path / LOCK

    def __str__(self) -> str:
        return str(self.path)

    def checkpoint(self, step: int) -> Path:
        """The checkpoint after ``step`` optimizer steps."""
        return self.checkpoints / _step_name(step, ".pt")

    def grid(self, step: int) -> Path:
        """The sample grid drawn after ``step`` optimizer steps."""
        return self.samples / _step_name(step, ".png")

    def grids(self) -> list[Path]:
        """The sample grids drawn while training, by name (so by step)."""
        return sorted(self.samples.glob("step_*.png"))

    def tuned(self, sampler: str, steps: int) -> Path:
        """Where the run keeps its tuned grid for ``sampler`` at ``steps`` network calls."""
        return self.timesteps / f"{sampler}-{steps}.json"

    def ema_snapshot(self, step: int) -> Path:
        """The power EMA snapshot whose averages were last updated after ``step`` optimizer steps."""
        return self.ema_snapshots / _step_name(step, ".pt")

    def list_ema_snapshots(self) -> list[tuple[int, Path]]:
        """(step, path) of the run's power EMA snapshots, oldest first."""
        return _step_files(self.ema_snapshots)

    def ema_sweep(self, metric: str) -> Path:
        """Where ``ddpmkit ema --sweep`` keeps its table for ``metric``."""
        return self.ema_snapshots / f"sweep-{metric}.json"

    def list_ema_sweeps(self) -> list[Path]:
        """The tables ``ddpmkit ema --sweep`` kept, by name."""
        return sorted(self.ema_snapshots.glob(self.ema_sweep("*").name))

    def list_checkpoints(self) -> list[Path]:
        """The run's checkpoints, oldest (lowest step) first."""
        return [p for _, p in _step_files(self.checkpoints)]

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint with the highest step, or None when the run has none."""
        found = self.list_checkpoints()
        return found[-1] if found else None

    def prune_checkpoints(self, keep: int) -> list[Path]:
        """Delete all but the newest ``keep`` checkpoints; return the deleted paths."""
        positive_int("the number of checkpoints to keep", keep)
        doomed = self.list_checkpoints()[:-keep]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed

    def remove(self) -> None:
        """Delete the run directory and everything in it (a run that a failed first write left empty)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def lay_out(self, cfg: ExperimentConfig) -> None:
        """The folders a trainer writes into, and the resolved config."""
        for folder in (self.checkpoints, self.samples):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError(folder, e) from None
        save_config(cfg, self.config)

    def tidy(self, step: int, force: bool) -> None:
        """Before training from ``step``: the old run gone (``force``), temp files of killed writers removed,
        metrics lines past ``step`` dropped (they are logged again)."""
        if force:
            for f in self.checkpoints.glob("step_*.pt"):
                f.unlink()
            self.metrics.unlink(missing_ok=True)
        for done, f in self.list_ema_snapshots():  # snapshots past ``step`` are written again (all when forced)
            if force or done > step:
                f.unlink()
        for folder in (self.path, self.checkpoints, self.samples, self.ema_snapshots):
            if folder.is_dir():
                for f in folder.iterdir():
                    if TEMP_FILE.match(f.name) and f.is_file():
                        f.unlink()
        truncate_metrics(self.metrics, step)

    @contextlib.contextmanager
    def locked(self):
        """Hold the run's lock while training, so a second trainer of the same run is refused; the lock is
        the kernel's (flock), so a process that dies, even by SIGKILL, leaves none behind."""
        try:
            import fcntl  # POSIX only: Windows trains without a lock
        except ImportError:
            yield
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise WriteError(self.lock, e) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise UserError(
                    f"run directory {str(self.path)!r} is in use by another training process (pid "
                    f"{holder}): wait for it to end or stop it"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)


def _step_files(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step_N.pt file in ``folder``, sorted by step."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _STEP_FILE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The checkpoint after ``step`` optimizer steps: run_dir/checkpoints/step_XXXXXXXX.pt."""
    return RunDir(run_dir).checkpoint(step)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest (lowest step) first."""
    return RunDir(run_dir).list_checkpoints()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's checkpoint with the highest step, or None when it has none."""
    return RunDir(run_dir).latest_checkpoint()


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints of a run; return the deleted paths."""
    return RunDir(run_dir).prune_checkpoints(keep)


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file -> itself; a run directory (or its checkpoints/) -> its latest checkpoint."""
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise UserError(f"no such run directory or checkpoint: {path}")
    if path.is_file():
        return path
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            inside = _step_files(path)  # the checkpoints/ folder itself
            latest = inside[-1][1] if inside else None
        if latest is None:
            raise UserError(f"run directory has no checkpoints (no {CHECKPOINTS}/step_*.pt): {path}")
        return latest
    raise UserError(f"not a file or directory: {path}")


def load_checkpoint(run_or_checkpoint: str | Path) -> dict:
    """A checkpoint file, or a run directory's latest, loaded and checked (``train.checkpoint.read_checkpoint``)."""
    return read_named_checkpoint(resolve_checkpoint(run_or_checkpoint))


def check_checkpoint_name(path: Path, ckpt: dict) -> None:
    """A file named step_N.pt must hold step N: the latest checkpoint is picked by name, so a renamed or
    copied-in file would otherwise stand for a step it does not hold."""
    match = _STEP_FILE.match(path.name)
    if match and int(match.group(1)) != ckpt["step"]:
        raise UserError(
            f"checkpoint {str(path)!r} holds step {ckpt['step']}, not the {int(match.group(1))} its name says: "
            f"rename it to {_step_name(ckpt['step'], '.pt')} or remove it"
        )


def read_named_checkpoint(path: Path) -> dict:
    """A checkpoint file read and checked, its name agreeing with its step (``check_checkpoint_name``)."""
    ckpt = read_checkpoint(path)
    check_checkpoint_name(path, ckpt)
    return ckpt


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory of a checkpoint (RUN/checkpoints/step_*.pt), or None for a loose file."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS else None


def run_lock(run_dir: str | Path):
    """Hold ``run_dir/.lock`` while training (see ``RunDir.locked``)."""
    return RunDir(run_dir).locked()


def tidy_run_dir(run_dir: str | Path, step: int, force: bool) -> None:
    """Before training from ``step`` (see ``RunDir.tidy``)."""
    RunDir(run_dir).tidy(step, force)
