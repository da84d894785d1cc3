"""``ddpmkit distill``: a consistency model tuned from a trained run by Easy Consistency Tuning (Geng et al. 2024).

The new run's config is the teacher's, with a ``distill`` section naming the teacher and ECT's settings and a
train section from a small preset per dataset kind; it trains through the same trainer as any run (resume,
SIGTERM, metrics, grids), starting from the teacher's EMA weights on the teacher's data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import ExperimentConfig, config_from_checkpoint, deep_merge, experiment_from_dict, parse_assignments
from ..errors import UserError
from ..options import DistillMethod, check_choice
from ..train.checkpoint import read_checkpoint
from ..train.signals import TrainingInterrupted
from .rundir import RunDir, resolve_checkpoint
from .training import Trained, train

__all__ = ["DISTILL_PRESETS", "STAGES", "MIN_STEPS", "distill_config", "distill", "teacher_cost"]

STAGES = 8  # ECT stages over a tuning (t - r halves at each), unless distill.stage_steps is set

# The tuning's train settings per teacher data kind: ECT's (Adam, constant lr, no warm-up) scaled to the data;
# short tunings average over a few hundred steps (an EMA of 0.999 would still hold much of the teacher). Its length
# is ``share`` of the teacher's training images (steps x batch): 0.2 costs about a quarter of the teacher's CPU
# time (an ECT step makes two forward passes and one backward), measured in docs/consistency.md.
DISTILL_PRESETS: dict[str, dict] = {
    "toy2d": {"share": 0.2, "batch_size": 512, "lr": 5e-4, "ema_decay": 0.995, "sample_every": 500},
    "digits": {"share": 0.2, "batch_size": 128, "lr": 2e-4, "ema_decay": 0.995, "sample_every": 200},
    "mnist": {"share": 0.2, "batch_size": 64, "lr": 2e-4, "ema_decay": 0.99, "sample_every": 200},
    "folder": {"share": 0.2, "batch_size": 64, "lr": 1e-4, "ema_decay": 0.999, "sample_every": 2000},
    "cifar10": {"share": 0.125, "batch_size": 128, "lr": 1e-4, "ema_decay": 0.9999, "sample_every": 10000},
}
MIN_STEPS = 2 * STAGES  # a tuning sees every ECT stage for at least two steps
# the tuning's own fixed EMA, whatever the teacher averaged with (the digits preset trains a power EMA)
_TUNING = {
    "warmup_steps": 0,
    "lr_schedule": "constant",
    "ema_start": 0,
    "ema_every": 1,
    "ema_kind": "fixed",
    "ema_snapshot_every": 0,
}


def teacher_cost(cfg: ExperimentConfig, step: int | None = None) -> float | None:
    """The fraction of the teacher's training cost (steps x batch) a consistency run spends by ``step``
    (default: its whole tuning); None where the teacher's cost is unknown."""
    dc = cfg.distill
    if dc is None or not dc.teacher_images:
        return None
    return (cfg.train.steps if step is None else step) * cfg.train.batch_size / dc.teacher_images


def distill_config(teacher: str | Path, method: str = "ect", steps: int | None = None, sets: dict | None = None):
    """The config of an ECT run tuned from the run (or checkpoint) ``teacher``: the teacher's, with its data's
    preset train settings, the ``distill`` section, then ``steps`` and the ``--set`` assignments ``sets``."""
    check_choice("distillation method", method, DistillMethod)
    file = resolve_checkpoint(teacher)
    ckpt = read_checkpoint(file)
    tcfg = config_from_checkpoint(ckpt["config"], ckpt["version"])
    if tcfg.distill is not None:
        raise UserError(f"{str(teacher)!r} is a consistency model already: distill its teacher {tcfg.distill.teacher}")
    sets = sets or {}
    d = tcfg.to_dict()
    preset = dict(DISTILL_PRESETS[tcfg.data.kind])
    teacher_images = int(ckpt["step"]) * tcfg.train.batch_size
    share = preset.pop("share")
    d["name"] = f"{tcfg.name}-ect"
    d["train"].update(_TUNING, **preset, checkpoint_every=preset["sample_every"])
    d["train"]["steps"] = (
        max(MIN_STEPS, round(share * teacher_images / preset["batch_size"])) if steps is None else steps
    )
    d["sample"].update(guidance=1.0, steps=2)  # tuned without guidance; sampled in two calls by default
    d["distill"] = {
        "method": method,
        "teacher": str(file.resolve()),
        "teacher_step": int(ckpt["step"]),
        "teacher_images": teacher_images,
    }
    d = deep_merge(d, sets)
    if "stage_steps" not in sets.get("distill", {}):
        d["distill"]["stage_steps"] = max(1, int(d["train"]["steps"]) // STAGES)
    return experiment_from_dict(d)


def distill(
    teacher: str | Path,
    out: str | Path,
    *,
    method: str = "ect",
    steps: int | None = None,
    assignments: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Trained:
    """Tune a consistency model from ``teacher`` into ``out`` (or go on with it: ``resume``)."""
    out = Path(out)
    sets = parse_assignments(assignments)
    if out.resolve() == Path(teacher).resolve():
        raise UserError("--out must be a new run directory, not the teacher's")
    cfg: ExperimentConfig | None = None
    overrides: dict = {}
    if resume and RunDir(out).latest_checkpoint() is not None:
        overrides = deep_merge(sets, {"train": {"steps": steps}} if steps is not None else {})
    else:
        resume = False  # nothing to go on from: start the tuning
        cfg = distill_config(teacher, method, steps, sets)
        if log is not None:
            cost = teacher_cost(cfg)
            share = "" if cost is None else f", {100 * cost:.1f}% of the teacher's training (steps x batch)"
            log(f"distilling {teacher} by {method}: {cfg.train.steps} steps of {cfg.train.batch_size}{share}")
    try:
        last = train(cfg, out, resume=resume, force=force, overrides=overrides, progress=progress, log=log)
    except TrainingInterrupted as stop:
        return Trained(out, None, stop.exit_code, str(stop))
    return Trained(out, last)
