"""Training a run directory: the one place where a run's checkpoint and the caller's overrides meet, and where
the generic trainer is handed what it trains (network, data, diffusion objective, sample grids)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np
import torch

from ..config import (
    RESUMABLE_TRAIN_KEYS,
    ExperimentConfig,
    TrainConfig,
    config_from_checkpoint,
    deep_merge,
    experiment_from_dict,
    load_config,
    parse_assignments,
    preset_path,
    read_yaml,
    without_shape,
)
from ..errors import UserError
from ..files import WriteError
from ..power_ema import PowerEMA
from ..timestep_sampling import make_timestep_sampler
from ..train.averages import Average, PowerAverage
from ..train.checkpoint import atomic_torch_save, read_checkpoint
from ..train.distributed import DistInfo, cleanup_distributed, device_for, dist_info_from_env, init_distributed
from ..train.runtime import autocast_context, use_deterministic_algorithms
from ..train.signals import TrainingInterrupted
from .build import build_dataset, build_diffusion, build_model, check_state_dict, resolve_model_config
from .consistency_model import consistency_objective, is_consistency, sample_consistency, teacher_weights
from .rundir import RunDir, check_checkpoint_name

if TYPE_CHECKING:
    from ..train.objective import DiffusionObjective
    from ..train.trainer import Trainer

__all__ = ["train", "start_training", "make_trainer", "prepare", "resumed_config"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _silent(line: str) -> None:
    """Where the notes of a process that does not log go."""


def train(
    cfg: ExperimentConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = _stderr,
) -> dict | None:
    """Train ``cfg`` into ``run_dir``, or go on with the run there (``resume``); returns the last metrics.

    ``overrides`` ({"train": {...}, "data": {...}}) go on top of ``cfg``; on resume they go on top of
    the run's own config, where only how it runs may change (RESUMABLE_TRAIN_KEYS and data.root) and any
    other value must agree. ``force`` starts over in a directory that has checkpoints. Under torchrun
    every process calls this; ``log`` (main process only) hears what runs. The result (main process
    only; None on the others) is the last metrics line, or only {"step": ...} when the run was already
    at its last step.
    """
    files = RunDir(run_dir)
    note = log if log is not None and dist_info_from_env().is_main else _silent
    cfg, ckpt = prepare(cfg, files.path, resume=resume, force=force, overrides=overrides, note=note)
    dist = init_distributed("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    fresh = not files.path.exists()
    try:
        trainer = make_trainer(cfg, files, checkpoint=ckpt, dist=dist, progress=progress, log=note)
        with files.locked() if dist.is_main else contextlib.nullcontext():
            if dist.is_main:
                files.tidy(trainer.start_step, force and not resume)
                if log is not None:
                    log(f"training {files.path}: {trainer.describe()}")
                    if (n := len(trainer.dataset)) < cfg.train.batch_size:
                        log(
                            f"note: the data has {n} examples, fewer than one batch of {cfg.train.batch_size}: "
                            f"each batch repeats them"
                        )
                    if hint := trainer.speed_hint():
                        log(hint)
            last = trainer.train() or {"step": trainer.step}
        return last if dist.is_main else None
    except WriteError:
        if fresh and dist.is_main and files.latest_checkpoint() is None and not files.config.exists():
            files.remove()  # this command made it and wrote nothing in it: no empty run for a --resume to find
        raise
    finally:
        cleanup_distributed()


def start_training(
    cfg: ExperimentConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    overrides: dict | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> Trainer:
    """The Trainer that ``train`` would run (for callers that step it themselves), in this process."""
    cfg, ckpt = prepare(cfg, Path(run_dir), resume=resume, force=force, overrides=overrides)
    return make_trainer(cfg, RunDir(run_dir), checkpoint=ckpt, dist=dist, progress=progress)


def make_trainer(
    cfg: ExperimentConfig,
    files: RunDir,
    *,
    checkpoint: dict | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Trainer:
    """The trainer of ``cfg``: its data read, the network shaped by it and seeded, the diffusion objective;
    ``log`` hears when the final sample grid is drawn."""
    # the loop, its loggers and objective load only when a run trains, not with Run.load: start-up
    from ..train.objective import DiffusionObjective, Objective
    from ..train.trainer import Trainer

    dist = dist or DistInfo()
    tc = cfg.train
    Trainer.check_batch(tc.batch_size, dist)
    device = device_for(dist, tc.device)
    if tc.deterministic:
        use_deterministic_algorithms(device)
    dataset = build_dataset(cfg.data, "train", seed=tc.seed)
    cfg = resolve_model_config(cfg, dataset)
    images = dataset.kind == "image"
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model).to(device)
    if images and tc.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    diffusion = build_diffusion(cfg.diffusion, images=images)
    timesteps = make_timestep_sampler(cfg.diffusion.timestep_sampler, diffusion.num_timesteps)
    objective: Objective
    if is_consistency(cfg):  # ECT's loss; a fresh start begins from the teacher's EMA weights
        objective = consistency_objective(cfg, diffusion, getattr(model, "null_class", None))
        if checkpoint is None:
            model.load_state_dict(teacher_weights(cfg))
    else:
        objective = DiffusionObjective(
            diffusion, timesteps, cfg.diffusion.p_uncond, getattr(model, "null_class", None), dist
        )
    return Trainer(
        cfg,
        model,
        dataset,
        objective,
        files,
        device=device,
        checkpoint=checkpoint,
        dist=dist,
        progress=progress,
        grid=_grid_drawer(files, log),
        ema=_average(cfg, model, files, dist),
    )


def _average(cfg: ExperimentConfig, model: torch.nn.Module, files: RunDir, dist: DistInfo) -> Average | None:
    """The power EMAs of ``train.ema_kind`` power, the first width sampled, snapshots written by the main process
    into RUN/ema_snapshots; None for the trainer's fixed-decay EMA."""
    tc = cfg.train
    if tc.ema_kind != "power":
        return None
    power = PowerEMA(model, tc.ema_sigma_rels, tc.ema_every)
    write = None if not dist.is_main else (lambda step, snapshot: atomic_torch_save(snapshot, files.ema_snapshot(step)))
    return PowerAverage(power, tc.ema_snapshot_every, tc.steps, write)


def _grid_drawer(files: RunDir, log: Callable[[str], None] | None = None) -> Callable[[Trainer, int], Path]:
    """The hook that draws a trainer's sample grid into ``files`` (and TensorBoard, when it logs there)."""

    @torch.no_grad()
    def draw(trainer: Trainer, step: int) -> Path:
        """A PNG of EMA samples; labels cycle through the classes (one class per row)."""
        # PIL (and the image helpers that import it) only when a grid is drawn: start-up
        from PIL import Image

        from ..images import sample_grid, save_png, save_points_png, to_uint8  # lazy: imports PIL (start-up)

        sc, device = trainer.cfg.sample, trainer.device
        n = trainer.cfg.train.num_grid_samples
        if log is not None and step == trainer.cfg.train.steps:  # minutes on a CPU: say what runs
            log(f"drawing the final sample grid of {n} samples into {files.grid(step)}")
        model = trainer.ema.model
        null = getattr(model, "null_class", None)
        y = None if null is None else torch.arange(n, device=device) % null
        gen = torch.Generator(device=device).manual_seed(1234)
        with autocast_context(device, trainer.amp):
            if is_consistency(trainer.cfg):  # the consistency model's own few-call sampler
                x = _consistency_grid(trainer, model, n, y, gen)
            else:
                x = cast("DiffusionObjective", trainer.objective).diffusion.sample(
                    model,
                    (n, *trainer.dataset.shape),
                    sampler=sc.grid_sampler,
                    steps=sc.grid_steps,
                    y=y,
                    generator=gen,
                    device=device,
                )
        path = files.grid(step)
        grid: np.ndarray | None
        if trainer.images:
            grid = sample_grid(to_uint8(x.float()), None if y is None else y.cpu().numpy())
            save_png(path, grid)
        else:
            save_points_png(path, x.float().cpu().numpy())
            grid = np.asarray(Image.open(path).convert("RGB")) if trainer.logger.tensorboard is not None else None
        if grid is not None:
            trainer.logger.image("samples", grid, step)
        return path

    return draw


def _consistency_grid(trainer: Trainer, model: torch.nn.Module, n: int, y, gen: torch.Generator) -> torch.Tensor:
    """A training grid of a consistency run: ``distill.grid_calls``-call samples of its EMA network."""
    cfg = trainer.cfg
    assert cfg.distill is not None
    diffusion = build_diffusion(cfg.diffusion, images=trainer.images)
    shape = (n, *trainer.dataset.shape)
    return sample_consistency(
        cfg, model, diffusion, shape, cfg.distill.grid_calls, y=y, generator=gen, device=gen.device
    )


def prepare(
    cfg: ExperimentConfig | None,
    run_dir: Path,
    *,
    resume: bool,
    force: bool,
    overrides: dict | None,
    note: Callable[[str], None] | None = None,
) -> tuple[ExperimentConfig, dict | None]:
    """(the config the run trains with, the checkpoint it goes on from or None); checks the directory and
    writes nothing (``train`` clears a forced run's old files once it holds the run's lock). With ``resume``,
    ``force`` goes on from a checkpoint whose config is not the run's; ``note`` hears what was passed over."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} exists and is not a directory")
    latest = RunDir(run_dir).latest_checkpoint()
    if resume:
        if latest is None:
            raise UserError(f"nothing to resume: {str(run_dir)!r} has no checkpoints")
        ckpt = _readable_checkpoint(run_dir, note)
        check_run_config(ckpt, RunDir(run_dir), overrides or {}, force=force, note=note)
        cfg = resumed_config(ckpt, run_dir, cfg, overrides or {})
        for part in ("model", "ema"):
            check_state_dict(cfg.model, ckpt[part], f"the {part} weights of {str(run_dir)!r}'s step {ckpt['step']}")
        return cfg, ckpt
    if cfg is None:
        raise UserError("give a config (a --preset or a --config file) to start a run")
    if latest is not None and not force:
        raise UserError(
            f"run directory {str(run_dir)!r} already has checkpoints: pass --resume to continue "
            f"or --force to start over"
        )
    cfg = experiment_from_dict(deep_merge(without_shape(cfg), overrides)) if overrides else cfg
    return fit_schedules(cfg, note or _stderr), None


def fit_schedules(cfg: ExperimentConfig, note: Callable[[str], None]) -> ExperimentConfig:
    """A fresh run whose warm-up or EMA start exceed its steps (a preset's, on a short run) has them scaled to a
    tenth of the run, and a fixed EMA longer than what follows its start is shortened to a tenth of that, with a
    note each: otherwise it never reaches its learning rate, or samples from weights that are mostly the start's."""
    tc = cfg.train
    fitted: dict[str, float] = {
        key: tc.steps // 10 for key in ("warmup_steps", "ema_start") if getattr(tc, key) > tc.steps
    }
    if fitted:
        was = " and ".join(f"train.{key} {getattr(tc, key)}" for key in fitted)
        now = " and ".join(str(value) for value in fitted.values())
        note(
            f"note: {was} exceed the run's {tc.steps} steps: scaled to {now} (a tenth of the run; set them "
            f"with --set to choose)"
        )
    averaged = tc.steps - int(fitted.get("ema_start", tc.ema_start))
    if tc.ema_kind == "fixed" and tc.ema_decay > 0 and 1 / (1 - tc.ema_decay) > averaged:  # about 1 / (1 - d) steps
        horizon = averaged // 10  # EDM2's sigma_rel 0.1 is about a tenth; half kept a 200-step run's start
        fitted["ema_decay"] = round(1 - 1 / horizon, 4) if horizon > 1 else 0.0
        note(
            f"note: train.ema_decay {tc.ema_decay} averages over about {1 / (1 - tc.ema_decay):.0f} steps, more than "
            f"the {averaged} after its start: shortened to {fitted['ema_decay']}, about a tenth of them (set it "
            f"with --set to choose)"
        )
    return experiment_from_dict(deep_merge(cfg.to_dict(), {"train": fitted})) if fitted else cfg


def _readable_checkpoint(run_dir: Path, note: Callable[[str], None] | None) -> dict:
    """The newest checkpoint of the run that reads; a damaged newer one (a crash mid-copy, a full disk
    outside ddpmkit) is passed over with a note. One whose name is not its step is refused."""
    found = RunDir(run_dir).list_checkpoints()
    for path in reversed(found):
        try:
            ckpt = read_checkpoint(path)
        except UserError as e:
            if path == found[0]:
                raise
            (note or _stderr)(f"note: {e}; resuming from the checkpoint before it")
            continue
        check_checkpoint_name(path, ckpt)
        return ckpt
    raise AssertionError("unreachable")


# what makes two configs two runs: a checkpoint of another network, data kind or diffusion is another run's
_IDENTITY = ("model.", "data.kind", "diffusion.")


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_run_config(
    ckpt: dict, files: RunDir, overrides: dict, *, force: bool, note: Callable[[str], None] | None
) -> None:
    """The checkpoint a resume goes on from must be the run's: its network, data kind and diffusion those of
    RUN/config.yaml (unless ``force``). Other differences get a note: config.yaml is a record of the run,
    rewritten on resume, not an input (changes go in as flags or --set)."""
    if not files.config.is_file():
        return
    say = note or _stderr
    try:
        recorded = _flat(experiment_from_dict(read_yaml(files.config)).to_dict())
    except UserError as e:
        say(f"note: {files.config} is not a config ({e}); it is rewritten from the checkpoint's config")
        return
    saved = _flat(config_from_checkpoint(ckpt["config"], ckpt.get("version")).to_dict())
    given = _flat(overrides)
    differ = [k for k in sorted(saved.keys() | recorded.keys()) if saved.get(k) != recorded.get(k) and k not in given]
    foreign = [k for k in differ if k.startswith(_IDENTITY)]
    if foreign and not force:
        raise UserError(
            f"the latest checkpoint of {str(files.path)!r} (step {ckpt['step']}) is not this run's: its "
            f"{', '.join(foreign[:4])} differ from {files.config.name}; move it out of {files.checkpoints}, "
            f"or pass --force with --resume to go on from it with its own config"
        )
    if differ:
        say(
            f"note: {files.config} differs from the checkpoint's config in {', '.join(differ[:6])}"
            f"{' ...' if len(differ) > 6 else ''}; the file is a record of the run, rewritten now: give changes "
            f"as flags or --set"
        )


def resumed_config(ckpt: dict, run_dir: Path, given: ExperimentConfig | None, overrides: dict) -> ExperimentConfig:
    """The run's own config (from its checkpoint) with the overrides of how it runs; any other override
    must agree with it, and a config ``given`` must be on the same dataset."""
    saved = config_from_checkpoint(ckpt["config"], ckpt.get("version"))
    if given is not None and given.data.kind != saved.data.kind:
        raise UserError(
            f"{str(run_dir)!r} is a run on {saved.data.kind} data, not on {given.data.kind} (the config "
            f"given): resume it with --out {run_dir} --resume"
        )
    changeable = {("train", key) for key in RESUMABLE_TRAIN_KEYS} | {("data", "root")}
    current = saved.to_dict()
    for section, values in overrides.items():
        for key, value in values.items():
            if (section, key) not in changeable and value != current[section].get(key):
                may = ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE_TRAIN_KEYS)
                raise UserError(
                    f"--{key.replace('_', '-')} {value} differs from the run's {section}.{key} = "
                    f"{current[section].get(key)}: a resumed run keeps its config (only {may} and "
                    f"--data may change)"
                )
    cfg = experiment_from_dict(deep_merge(current, overrides))  # checked like any config
    step = int(ckpt["step"])
    if cfg.train.steps < step:
        raise UserError(
            f"{str(run_dir)!r} is at step {step} already: train.steps = {cfg.train.steps} would go "
            f"back (give a larger --steps)"
        )
    return cfg


class Trained(NamedTuple):
    """How a training ended: the run directory, the last metrics (None off the main process or when stopped),
    and, when a signal stopped it, the exit code and what the main process tells (None on the others)."""

    run_dir: Path
    last: dict | None
    exit_code: int = 0
    stopped: str | None = None


UNUSED_BY_POWER_EMA = ("ema_decay", "ema_start")


def _refuse_unused_ema_keys(cfg: ExperimentConfig, sets: dict, preset: str | None, config_file: str | None) -> None:
    """``train.ema_decay`` (or ema_start) from ``--set``, or changed by a config file under the preset's power EMA
    (the digits preset's, the EMA kind chosen nowhere else), would be silently ignored; a value equal to the
    preset's is left alone."""
    if cfg.train.ema_kind != "power":
        return
    given = [f"--set train.{key}" for key in UNUSED_BY_POWER_EMA if key in sets.get("train", {})]
    mine = (read_yaml(config_file).get("train") or {}) if config_file is not None else {}
    if "ema_kind" not in mine and "ema_kind" not in sets.get("train", {}):  # the preset's power EMA, not one chosen
        base = (read_yaml(preset_path(preset)).get("train") or {}) if preset else {}
        for key in UNUSED_BY_POWER_EMA:
            if key in mine and mine[key] != base.get(key, getattr(TrainConfig, key)):
                given.append(f"train.{key} in {config_file}")
    if given:
        raise UserError(
            f"{given[0]} is not used by the power EMA (train.ema_kind power): choose its widths with "
            "train.ema_sigma_rels, or use the fixed EMA: --set train.ema_kind=fixed --set train.ema_snapshot_every=0"
        )


def train_or_resume(
    preset: str | None,
    config_file: str | None,
    assignments: list[str] | None,
    run_dir: str | Path | None,
    *,
    flags: dict,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> Trained:
    """``ddpmkit train``: a preset, a config file and ``--set`` assignments into ``run_dir`` (default
    runs/<config name>), with ``flags`` ({"train": {...}, "data": {...}}) on top; a resume given only the run
    directory goes on with the run's own config."""
    sets = parse_assignments(assignments)
    overrides = deep_merge(sets, {section: values for section, values in flags.items() if values})  # flags win
    cfg: ExperimentConfig | None = None
    if resume and run_dir and not (preset or config_file):
        out = Path(run_dir)
    else:
        cfg = load_config(preset, config_file, overrides)  # flags and --set merged first, then checked once
        _refuse_unused_ema_keys(cfg, sets, preset, config_file)
        out = Path(run_dir) if run_dir else Path("runs") / cfg.name
    try:
        last = train(cfg, out, resume=resume, force=force, overrides=overrides, progress=progress)
    except TrainingInterrupted as stop:
        return Trained(out, None, stop.exit_code, str(stop) if dist_info_from_env().is_main else None)
    return Trained(out, last)
