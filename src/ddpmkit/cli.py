"""The ``ddpmkit`` command: parse, build a config, run. User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import get_args

from .errors import UserError
from .samplers import SAMPLERS, Spacing
from .train.config import CompileMode

__all__ = ["main"]


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--preset", help="digits, toy2d-<moons|swissroll|8gaussians|checkerboard>, folder, cifar10, mnist")
    p.add_argument("--config", help="a YAML file of overrides (on top of the preset, if any)")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--microbatch", type=int, help="run each process's share of the batch in chunks of at most "
                                                  "this many examples (same training, less memory)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--data", help="data directory (folder, cifar10, mnist presets)")
    p.add_argument("--image-size", type=int, help="resize images to this size")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 where the hardware runs it natively, else fp32; fp16 (with loss scaling): "
                        "for GPUs without native bf16 (V100, T4)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--compile-mode", choices=list(get_args(CompileMode)),
                   help="torch.compile's mode (turns --compile on); reduce-overhead adds CUDA graphs on GPUs")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="start over in a run directory that has checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained model")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--sampler", choices=list(SAMPLERS), help="default: the run's config")
    p.add_argument("--steps", type=int,
                   help="network calls (default: the run's sample.steps; --sampler ddpm chosen here: all T)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1]")
    p.add_argument("--spacing", choices=list(get_args(Spacing)), help="timestep spacing (default: the run's config, else the sampler's)")
    p.add_argument("--labels", help="class labels: all | 3 | 0,1,2 | cat,dog (numbers or the run's class names; "
                                    "cycled over the samples)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, whatever the batch size")
    p.add_argument("--batch-size", type=int, default=256, help="samples per network batch")
    p.add_argument("--out", action="append", help="samples.npz and/or grid.png (repeatable)")
    p.add_argument("--trajectory", help="PNG strip of x_t and predicted x0 along the reverse process")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="network precision; default: auto for image models (bf16 where the hardware is fast "
                        "at it), fp32 for 2-D data")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-progress", action="store_true")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="measure a trained model")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--metric", choices=["bpd"], default="bpd", help="bpd: the variational bound in bits/dim")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--data", help="evaluate on other images: a folder of held-out images (folder runs; "
                                  "class sub-folders named as in training), or the dataset's directory (cifar10, mnist)")
    p.add_argument("--num", type=int, help="evaluate the first N examples of the split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpmkit", description="Denoising diffusion probabilistic models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    p = sub.add_parser("info", help="describe a run or checkpoint")
    p.add_argument("run", help="run directory or checkpoint file")
    return parser


# ---------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .train.config import load_config
    from .train.distributed import cleanup_distributed, init_distributed
    from .train.trainer import Trainer

    over: dict = {"train": {}, "data": {}}
    for key in ("steps", "batch_size", "microbatch", "lr", "seed", "device", "precision", "compile", "compile_mode"):
        if getattr(args, key) is not None:
            over["train"][key] = getattr(args, key)
    if args.compile_mode is not None:
        over["train"]["compile"] = True
    if args.data is not None:
        over["data"]["root"] = args.data
    if args.image_size is not None:
        over["data"]["image_size"] = args.image_size
    if args.preset is None and args.config is None and args.resume and args.out:
        cfg = None
    else:
        cfg = load_config(args.preset, args.config, over)
    out = Path(args.out) if args.out else Path("runs") / (cfg.name if cfg else "run")
    has_ckpt = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("*.pt"))
    if args.resume and args.force:
        raise UserError("--resume and --force exclude each other")
    if has_ckpt and not args.resume and not args.force:
        raise UserError(f"run directory {str(out)!r} already has checkpoints: pass --resume to continue or --force to start over")
    if out.exists() and not out.is_dir():
        raise UserError(f"run directory {str(out)!r} exists and is not a directory")
    if args.resume:
        cfg = _resumed_config(out, cfg, over, args.preset)
    if args.force and has_ckpt:
        for f in (out / "checkpoints").glob("*.pt"):
            f.unlink()
        metrics = out / "metrics.jsonl"
        if metrics.exists():
            metrics.unlink()
    dist = init_distributed("cuda" if cfg.train.device != "cpu" and _cuda() else "cpu")
    try:
        trainer = Trainer(cfg, out, resume=args.resume, dist=dist, progress=not args.no_progress)
        if dist.is_main:
            print(f"training {out}: {trainer.describe()}", file=sys.stderr, flush=True)
            if hint := trainer.speed_hint():
                print(hint, file=sys.stderr, flush=True)
        last = trainer.train()
    finally:
        cleanup_distributed()
    if dist.is_main and not last:
        print(f"{out} is at step {trainer.step} of {cfg.train.steps} already: nothing to train")
    elif dist.is_main:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k in ("step", "loss", "images_per_s"))
        print(f"trained {out} ({summary})")
    return 0


def _resumed_config(out: Path, given, over: dict, preset: str | None):
    """The config a resumed run goes on with: its own (from its latest checkpoint), with the command
    line's flags of how it runs (RESUMABLE_TRAIN_KEYS: --steps, --device, --precision, --compile,
    --compile-mode, --microbatch) and --data; any other flag given must agree with it, and a
    --preset or --config must name the same dataset."""
    from .train.checkpoint import latest_checkpoint, load_checkpoint
    from .train.config import config_from_checkpoint
    from .train.trainer import RESUMABLE_TRAIN_KEYS

    latest = latest_checkpoint(out)
    if latest is None:
        raise UserError(f"nothing to resume: {str(out)!r} has no checkpoints")
    saved = config_from_checkpoint(load_checkpoint(latest)["config"])
    if given is not None and given.data.name != saved.data.name:
        source = f"the {preset} preset" if preset else "the config given"
        raise UserError(f"{str(out)!r} is a run on {saved.data.name} data, not on {given.data.name} ({source}): "
                        f"resume it with --out {out} --resume")
    changeable = {("train", key) for key in RESUMABLE_TRAIN_KEYS} | {("data", "root")}
    for section, values in over.items():
        for key, value in values.items():
            part = getattr(saved, section)
            if (section, key) in changeable:
                setattr(part, key, value)
            elif value != getattr(part, key):
                may = ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE_TRAIN_KEYS)
                raise UserError(f"--{key.replace('_', '-')} {value} differs from the run's {section}.{key} = "
                                f"{getattr(part, key)}: a resumed run keeps its config (only {may} and --data "
                                f"may change)")
    saved.train.__post_init__()  # the runtime values given must be in range too
    return saved


def _default_sample_precision(cfg) -> str:
    """auto (bf16 autocast where the hardware has bf16 matrix units) for image models: their samples
    end as 8-bit pixels, and bf16 ones score the same (README, Performance); fp32 for 2-D points,
    whose tiny MLP gains nothing from bf16 and whose coordinates keep full precision."""
    return "auto" if cfg.model.kind == "unet" else "fp32"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------- loading a run
def load_run(run: str, use_ema: bool = True, device: str = "auto"):
    """(config, model in eval mode, diffusion, checkpoint dict) from a run directory or checkpoint."""
    import torch

    from .train.build import build_diffusion, build_model
    from .train.checkpoint import load_checkpoint, resolve_checkpoint
    from .train.config import config_from_checkpoint
    from .train.distributed import DistInfo, device_for

    ckpt = load_checkpoint(resolve_checkpoint(run))
    try:
        cfg = config_from_checkpoint(ckpt["config"])
        model = build_model(cfg.model)
        state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
        model.load_state_dict(state)
    except (UserError, KeyError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint of {run!r} does not match its config: {first}") from None
    dev = device_for(DistInfo(), device)
    model = model.to(dev).eval()
    if cfg.model.kind == "unet":  # channels-last convolutions are faster on CPU and GPU
        model = model.to(memory_format=torch.channels_last)
    images = cfg.model.kind == "unet"
    diffusion = build_diffusion(cfg.diffusion, images=images)
    return cfg, model, diffusion, ckpt


def parse_labels(spec: str | None, num: int, num_classes: int | None, names: list[str] | None = None):
    """--labels all | K | a,b,c -> int64 [num] cycled, or None for an unconditional model.

    Each of a, b, c is a label number or, where the run recorded them, a class name (a name wins:
    a folder run's class "1" may have label 0).
    """
    import torch

    if num_classes is None:
        if spec is not None:
            raise UserError("--labels given, but this model is not class-conditional")
        return None
    if spec is None or spec == "all":
        values = list(range(num_classes))
    else:
        index = {name: i for i, name in enumerate(names or [])}
        values = []
        for token in (v.strip() for v in spec.split(",")):
            if token in index:
                values.append(index[token])
            elif token:
                try:
                    values.append(int(token))
                except ValueError:
                    known = f" or one of its class names ({', '.join(names)})" if names else ""
                    raise UserError(f"--labels must be 'all' or a comma list of class numbers{known}, "
                                    f"got {token!r}") from None
        if not values:
            raise UserError(f"--labels must name at least one class, got {spec!r}")
        bad = [v for v in values if not 0 <= v < num_classes]
        if bad:
            raise UserError(f"--labels {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    return torch.tensor([values[i % len(values)] for i in range(num)], dtype=torch.long)


def _default_steps(sampler: str, sc) -> int | None:
    """Network calls when --steps is not given: the run's own for its sampler, the whole chain for
    ancestral sampling chosen instead, and the run's (or its grids') few-step budget for a fast sampler."""
    if sampler == sc.sampler:
        return sc.steps
    if sampler == "ddpm":
        return None
    return sc.steps or sc.grid_steps


def _check_outputs(paths: list[Path], force: bool) -> None:
    for p in paths:
        if p.exists() and not force:
            raise UserError(f"output {str(p)!r} already exists (pass --force to overwrite)")
        if not p.parent.exists():
            raise UserError(f"the directory of output {str(p)!r} does not exist")


# ---------------------------------------------------------------------- sample
def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .images import save_image_grid, save_npz, save_points_png, to_uint8
    from .train.fast import autocast_context, autocast_dtype

    if args.num < 1:
        raise UserError(f"--num must be a positive number of samples, got {args.num}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    outs = [Path(p) for p in (args.out or ["samples.npz"])]
    for p in outs:
        if p.suffix.lower() not in (".npz", ".png"):
            raise UserError(f"--out {str(p)!r}: give a .npz or a .png file")
    extra = [Path(args.trajectory)] if args.trajectory else []
    if extra and extra[0].suffix.lower() != ".png":
        raise UserError(f"--trajectory {args.trajectory!r}: give a .png file")
    _check_outputs(outs + extra, args.force)
    cfg, model, diffusion, ckpt = load_run(args.run, use_ema=not args.no_ema, device=args.device)
    sc = cfg.sample
    sampler = args.sampler or sc.sampler
    steps = args.steps if args.steps is not None else _default_steps(sampler, sc)
    eta = sc.eta if args.eta is None else args.eta
    spacing = args.spacing or (sc.spacing if sampler == sc.sampler else None)
    guidance = sc.guidance if args.guidance is None else args.guidance
    if not (math.isfinite(guidance) and guidance >= 0):
        raise UserError(f"--guidance must be a number >= 0 (1: no guidance), got {guidance}")
    if steps is not None and not 1 <= steps <= diffusion.num_timesteps:
        raise UserError(f"--steps must be between 1 and {diffusion.num_timesteps}, got {steps}")
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"--eta must be in [0, 1], got {eta}")
    null = getattr(model, "null_class", None)
    labels = parse_labels(args.labels, args.num, null, _class_names(ckpt))
    if guidance != 1.0 and labels is None:
        raise UserError("--guidance needs a class-conditional model")
    device = next(model.parameters()).device
    shape = _sample_shape(cfg)
    amp = autocast_dtype(args.precision or _default_sample_precision(cfg), device)
    chunks = []
    traj_rows: list = []
    from tqdm.auto import tqdm

    bar = tqdm(total=args.num, desc=f"sampling {sampler}", disable=args.no_progress, leave=False)
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        gens = [torch.Generator(device=device).manual_seed(args.seed + start + i) for i in range(n)]
        y = None if labels is None else labels[start:start + n].to(device)
        callback = _trajectory_callback(traj_rows, diffusion, sampler, steps) if (args.trajectory and start == 0) else None
        with autocast_context(device, amp):
            x = diffusion.sample(model, (n, *shape), sampler=sampler, steps=steps, y=y, guidance_scale=guidance,
                                 generator=gens, eta=eta, spacing=spacing, device=device, callback=callback)
        chunks.append(x.float().cpu())
        bar.update(n)
    bar.close()
    x = torch.cat(chunks)
    for p in outs:
        if cfg.model.kind == "unet":
            images = to_uint8(x, sc.levels)
            if p.suffix.lower() == ".npz":
                save_npz(p, images, None if labels is None else labels.numpy().astype(np.int64))
            else:
                save_image_grid(p, images, nrow=_grid_cols(args.num), scale=_grid_scale(shape))
        else:
            if p.suffix.lower() == ".npz":
                _save_points_npz(p, x.numpy(), labels)
            else:
                save_points_png(p, x.numpy())
    if args.trajectory:
        _save_trajectory(Path(args.trajectory), traj_rows, cfg, shape)
    print(f"wrote {args.num} samples ({sampler}, {steps or diffusion.num_timesteps} steps) to " + ", ".join(map(str, outs)))
    return 0


def _sample_shape(cfg) -> tuple[int, ...]:
    p = cfg.model.params
    if cfg.model.kind == "unet":
        return (p["in_channels"], p["image_size"], p["image_size"])
    return (p["dim"],)


def _grid_cols(n: int) -> int:
    return max(1, int(math.ceil(math.sqrt(n))))


def _grid_scale(shape) -> int:
    return max(1, 64 // shape[-1])


def _save_points_npz(path: Path, points, labels) -> None:
    import os
    import tempfile

    import numpy as np

    arrays = {"points": points.astype(np.float32)}
    if labels is not None:
        arrays["labels"] = labels.numpy().astype(np.int64)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _trajectory_callback(rows: list, diffusion, sampler: str, steps: int | None):
    """Keep x_t and the predicted x0 at about 10 evenly spaced steps of the first batch."""
    total = steps or diffusion.num_timesteps
    keep = set(round(i * (total - 1) / 9) for i in range(10)) if total > 1 else {0}

    def cb(i, t, x, d):
        if i in keep:
            rows.append((int(t[0]) if hasattr(t, "__len__") else int(t), x[:8].float().cpu(), d.x0[:8].float().cpu()))

    return cb


def _save_trajectory(path: Path, rows: list, cfg, shape) -> None:
    """Two rows per kept sample: x_t along the way, and the predicted x0 at the same steps."""
    import numpy as np
    import torch

    from .images import save_png, to_uint8, make_grid

    if cfg.model.kind != "unet":
        raise UserError("--trajectory draws images; this model makes 2-D points")
    n = rows[0][1].shape[0]
    tiles = []
    for k in range(min(n, 4)):
        tiles += [r[1][k].clamp(-1, 1) for r in rows]
        tiles += [r[2][k].clamp(-1, 1) for r in rows]
    images = to_uint8(torch.stack(tiles))
    grid = make_grid(images, nrow=len(rows), padding=1, scale=_grid_scale(shape))
    save_png(path, np.asarray(grid))


# ---------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    import torch

    out = Path(args.out) if args.out else None
    if out is not None:
        _check_outputs([out], args.force)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    cfg, model, diffusion, ckpt = load_run(args.run, use_ema=not args.no_ema, device=args.device)
    if cfg.model.kind != "unet":
        raise UserError("bits/dim is defined for image data on 256 levels; this run models 2-D points")
    data, source = _eval_dataset(cfg, ckpt, args.split, args.data)
    n = len(data) if args.num is None else args.num
    if not 1 <= n <= len(data):
        raise UserError(f"--num must be between 1 and {len(data)} (the size of the {source}), got {n}")
    device = next(model.parameters()).device
    conditional = getattr(model, "null_class", None) is not None
    gen = torch.Generator(device=device).manual_seed(args.seed)
    totals, priors, decoders = [], [], []
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, args.batch_size), desc="bits/dim", disable=args.no_progress, leave=False):
        idx = slice(start, min(n, start + args.batch_size))
        x0 = data.data[idx].to(device=device, dtype=torch.float32) / 127.5 - 1.0
        y = data.labels[idx].to(device) if conditional else None
        terms = diffusion.vb_terms(model, x0, y, generator=gen, progress=not args.no_progress)
        totals.append(terms.total.cpu())
        priors.append(terms.prior.cpu())
        decoders.append(terms.terms[:, 0].cpu())
    total = torch.cat(totals)
    mean = total.mean().item()
    sem = (total.std(unbiased=True).item() / math.sqrt(n)) if n > 1 else float("nan")
    result = {
        "metric": "bpd",
        "bpd": mean,
        "stderr": sem,
        "num": n,
        "split": None if args.data and cfg.data.name == "folder" else args.split,
        "data": args.data or cfg.data.root,
        "prior_bpd": torch.cat(priors).mean().item(),
        "decoder_bpd": torch.cat(decoders).mean().item(),
        "step": int(ckpt["step"]),
        "ema": not args.no_ema,
        "variance": cfg.diffusion.variance,
    }
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
    print(json.dumps(result))
    print(f"bits/dim = {mean:.4f} +- {sem:.4f} (n = {n}, {source})")
    return 0


def _eval_dataset(cfg, ckpt: dict, split: str, root: str | None):
    """(the examples ``eval`` measures, a few words naming them): the run's data at ``split``, or the
    images under ``root`` prepared as the run's were, labelled by the run's own class names."""
    import dataclasses

    import torch

    from .train.build import build_dataset

    folder = cfg.data.name == "folder"
    if root is None:
        if folder and split != "train":
            raise UserError("a folder run has no test split: pass --data DIR (a folder of held-out images) "
                            "or --split train")
        return build_dataset(cfg.data, split), f"{split} split"
    if cfg.data.name not in ("folder", "cifar10", "mnist"):
        raise UserError(f"--data applies to folder, cifar10 and mnist runs; the {cfg.data.name} data has no directory")
    classes = cfg.model.params.get("num_classes")
    data_cfg = dataclasses.replace(cfg.data, root=root, channels=cfg.model.params["in_channels"],
                                   class_labels=cfg.data.class_labels and bool(classes))
    if not folder:
        return build_dataset(data_cfg, split), f"{split} split of {root}"
    data = build_dataset(data_cfg, "train")  # the whole folder
    if classes:
        names = _class_names(ckpt)
        if names is None:
            raise UserError("this checkpoint does not record its class names (it predates them), so the class "
                            f"sub-folders under {root} cannot be matched to its labels")
        index = {name: i for i, name in enumerate(names)}
        for name in data.class_names:
            if name not in index:
                raise UserError(f"class sub-folder {name!r} under {root} is not a class of this run "
                                f"(its classes: {', '.join(names)})")
        relabel = torch.tensor([index[name] for name in data.class_names])
        data = dataclasses.replace(data, labels=relabel[data.labels], num_classes=len(names), class_names=names)
    return data, f"images under {root}"


def _class_names(ckpt: dict) -> list[str] | None:
    """The names of the run's labels (label i is names[i]), where its data named them."""
    return (ckpt.get("extra") or {}).get("class_names")


# ---------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from .nn import num_parameters
    from .train.build import build_model
    from .train.checkpoint import load_checkpoint, resolve_checkpoint
    from .train.config import config_from_checkpoint

    path = resolve_checkpoint(args.run)
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt["config"])
    model = build_model(cfg.model)
    d = cfg.diffusion
    print(f"checkpoint   {path}")
    print(f"step         {ckpt['step']} of {cfg.train.steps}")
    print(f"data         {cfg.data.name}" + (f" ({cfg.data.toy2d})" if cfg.data.toy2d else ""))
    print(f"model        {cfg.model.kind}, {num_parameters(model) / 1e6:.3f} M parameters")
    print(f"diffusion    T={d.timesteps} {d.schedule}, prediction={d.prediction}, variance={d.variance}, loss={d.loss}")
    classes = cfg.model.params.get("num_classes")
    names = _class_names(ckpt)
    named = f" (labels 0..{classes - 1}: {', '.join(names)})" if classes and names else ""
    print(f"classes      {classes if classes else 'unconditional'}{named}" + (f", p_uncond={d.p_uncond}" if classes else ""))
    print(f"ema          {'yes' if ckpt.get('ema') is not None else 'no'} (decay {cfg.train.ema_decay})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddpmkit`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "info": cmd_info}
    try:
        return commands[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ddpmkit info RUN | head -1`): stop quietly, as on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141


def run() -> None:
    """The console script: main(), then exit (a torchrun worker without interpreter shutdown).

    Before anything is allocated, glibc's malloc is told to keep freed memory (see
    ``keep_freed_memory``): steps then reuse their buffers instead of page-faulting them in anew.
    """
    from .train.distributed import exit_process
    from .train.fast import keep_freed_memory

    keep_freed_memory()
    exit_process(main())


if __name__ == "__main__":
    run()
