"""Training a run directory: the one place where a run's checkpoint and the caller's overrides meet."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable
from typing import NamedTuple

from ..errors import UserError
from ..files import TEMP_FILE, WriteError
from .build import check_state_dict
from ..train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from ..config import (RESUMABLE_TRAIN_KEYS, ExperimentConfig, as_written, config_from_checkpoint, deep_merge,
                            experiment_from_dict, static_shape)
from ..train.distributed import DistInfo, cleanup_distributed, init_distributed
from ..train.metrics import truncate_metrics
from ..train.trainer import Trainer
from ..config import load_config, parse_assignments
from ..train.distributed import dist_info_from_env
from ..train.signals import TrainingInterrupted

__all__ = ["train", "start_training", "resumed_config"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train(cfg: ExperimentConfig | None, run_dir: str | Path, *, resume: bool = False, force: bool = False,
          overrides: dict | None = None, progress: bool = True, log: Callable[[str], None] | None = _stderr) -> dict:
    """Train ``cfg`` into ``run_dir``, or go on with the run there (``resume``); returns the last metrics.

    ``overrides`` ({"train": {...}, "data": {...}}) go on top of ``cfg``; on resume they go on top of
    the run's own config, where only how it runs may change (RESUMABLE_TRAIN_KEYS and data.root) and any
    other value must agree. ``force`` starts over in a directory that has checkpoints. Under torchrun
    every process calls this; ``log`` (main process only) hears what runs. The result (main process
    only; None on the others) is the last metrics line, or only {"step": ...} when the run was already
    at its last step.
    """
    run_dir = Path(run_dir)
    cfg, ckpt = prepare(cfg, run_dir, resume=resume, force=force, overrides=overrides)
    dist = init_distributed("cuda" if cfg.train.device != "cpu" and _cuda() else "cpu")
    try:
        trainer = Trainer(cfg, run_dir, checkpoint=ckpt, dist=dist, progress=progress)
        with run_lock(run_dir) if dist.is_main else contextlib.nullcontext():
            if dist.is_main:
                tidy_run_dir(run_dir, trainer.start_step, force)
                if log is not None:
                    log(f"training {run_dir}: {trainer.describe()}")
                    if hint := trainer.speed_hint():
                        log(hint)
            last = trainer.train() or {"step": trainer.step}
        return last if dist.is_main else None
    finally:
        cleanup_distributed()


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` while training, so a second trainer of the same run is refused; the lock is
    the kernel's (flock), so a process that dies, even by SIGKILL, leaves none behind."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise WriteError(run_dir / ".lock", e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"run directory {str(run_dir)!r} is in use by another training process (pid {holder}): "
                            f"wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def tidy_run_dir(run_dir: Path, step: int, force: bool) -> None:
    """Before training from ``step``: the old run gone (``force``), temp files of killed writers removed,
    metrics lines past ``step`` dropped (they are logged again)."""
    if force:
        for f in (run_dir / "checkpoints").glob("step_*.pt"):
            f.unlink()
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        if folder.is_dir():
            for f in folder.iterdir():
                if TEMP_FILE.match(f.name) and f.is_file():
                    f.unlink()
    truncate_metrics(run_dir / "metrics.jsonl", step)


def start_training(cfg: ExperimentConfig | None, run_dir: str | Path, *, resume: bool = False,
                   force: bool = False, overrides: dict | None = None, dist: DistInfo | None = None,
                   progress: bool = True) -> Trainer:
    """The Trainer that ``train`` would run (for callers that step it themselves), in this process."""
    cfg, ckpt = prepare(cfg, Path(run_dir), resume=resume, force=force, overrides=overrides)
    return Trainer(cfg, run_dir, checkpoint=ckpt, dist=dist, progress=progress)


def prepare(cfg: ExperimentConfig | None, run_dir: Path, *, resume: bool, force: bool,
            overrides: dict | None) -> tuple[ExperimentConfig, dict | None]:
    """(the config the run trains with, the checkpoint it goes on from or None); checks the directory and
    writes nothing (``train`` clears a forced run's old files once it holds the run's lock)."""
    if resume and force:
        raise UserError("resume and force exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} exists and is not a directory")
    latest = latest_checkpoint(run_dir)
    if resume:
        if latest is None:
            raise UserError(f"nothing to resume: {str(run_dir)!r} has no checkpoints")
        ckpt = _readable_checkpoint(run_dir)
        cfg = resumed_config(ckpt, run_dir, cfg, overrides or {})
        for part in ("model", "ema"):
            check_state_dict(cfg.model, ckpt[part], f"the {part} weights of {str(run_dir)!r}'s step {ckpt['step']}")
        return cfg, ckpt
    if cfg is None:
        raise UserError("give a config (a --preset or a --config file) to start a run")
    if latest is not None and not force:
        raise UserError(f"run directory {str(run_dir)!r} already has checkpoints: pass --resume to continue "
                        f"or --force to start over")
    return (experiment_from_dict(deep_merge(_unshaped(cfg), overrides)) if overrides else cfg), None


def _unshaped(cfg: ExperimentConfig) -> dict:
    """``cfg`` as a dict without the model fields its data filled in, so that data overrides (--image-size,
    a 3-channel --data) shape the model again instead of clashing with the old data's shape."""
    d = cfg.to_dict()
    for key, value in static_shape(cfg.data).items():
        if as_written(d["model"].get(key)) == as_written(value):
            d["model"].pop(key, None)
    return d


def _readable_checkpoint(run_dir: Path) -> dict:
    """The newest checkpoint of the run that reads; a damaged newer one (a crash mid-copy, a full disk
    outside ddpmkit) is passed over with a note."""
    found = list_checkpoints(run_dir)
    for path in reversed(found):
        try:
            ckpt = load_checkpoint(path)
        except UserError as e:
            if path == found[0]:
                raise
            print(f"note: {e}; resuming from the checkpoint before it", file=sys.stderr)
            continue
        return ckpt
    raise AssertionError("unreachable")


def resumed_config(ckpt: dict, run_dir: Path, given: ExperimentConfig | None, overrides: dict) -> ExperimentConfig:
    """The run's own config (from its checkpoint) with the overrides of how it runs; any other override
    must agree with it, and a config ``given`` must be on the same dataset."""
    saved = config_from_checkpoint(ckpt["config"])
    if given is not None and given.data.kind != saved.data.kind:
        raise UserError(f"{str(run_dir)!r} is a run on {saved.data.kind} data, not on {given.data.kind} (the config "
                        f"given): resume it with --out {run_dir} --resume")
    changeable = {("train", key) for key in RESUMABLE_TRAIN_KEYS} | {("data", "root")}
    current = saved.to_dict()
    for section, values in overrides.items():
        for key, value in values.items():
            if (section, key) not in changeable and value != current[section].get(key):
                may = ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE_TRAIN_KEYS)
                raise UserError(f"--{key.replace('_', '-')} {value} differs from the run's {section}.{key} = "
                                f"{current[section].get(key)}: a resumed run keeps its config (only {may} and "
                                f"--data may change)")
    cfg = experiment_from_dict(deep_merge(current, overrides))  # checked like any config
    step = int(ckpt["step"])
    if cfg.train.steps < step:
        raise UserError(f"{str(run_dir)!r} is at step {step} already: train.steps = {cfg.train.steps} would go "
                        f"back (give a larger --steps)")
    return cfg


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

class Trained(NamedTuple):
    """How a training ended: the run directory, the last metrics (None off the main process or when stopped),
    and, when a signal stopped it, the exit code and what the main process tells (None on the others)."""

    run_dir: Path
    last: dict | None
    exit_code: int = 0
    stopped: str | None = None


def train_or_resume(preset: str | None, config_file: str | None, assignments: list[str] | None,
                    run_dir: str | Path | None, *, flags: dict, resume: bool = False, force: bool = False,
                    progress: bool = True) -> Trained:
    """``ddpmkit train``: a preset, a config file and ``--set`` assignments into ``run_dir`` (default
    runs/<config name>), with ``flags`` ({"train": {...}, "data": {...}}) on top; a resume given only the run
    directory goes on with the run's own config."""
    sets = parse_assignments(assignments)
    overrides = deep_merge(sets, {section: values for section, values in flags.items() if values})  # flags win
    cfg: ExperimentConfig | None = None
    if resume and run_dir and not (preset or config_file):
        out = Path(run_dir)
    else:
        cfg = load_config(preset, config_file, sets)
        out = Path(run_dir) if run_dir else Path("runs") / cfg.name
    try:
        last = train(cfg, out, resume=resume, force=force, overrides=overrides, progress=progress)
    except TrainingInterrupted as stop:
        return Trained(out, None, stop.exit_code, str(stop) if dist_info_from_env().is_main else None)
    return Trained(out, last)
