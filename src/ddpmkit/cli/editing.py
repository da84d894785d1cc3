"""The commands that edit images with a trained run: ``inpaint`` (RePaint), ``edit`` (SDEdit), ``interpolate``.

Each has its parser (``add_<command>``) and its handler (``cmd_<command>``); the run layer (and torch with it) is
imported inside each handler, when its command runs: a measured start-up cost.
"""

from __future__ import annotations

import argparse

from ..errors import UserError
from .flags import (
    COMMON,
    DECODING,
    add_command,
    add_flag,
    add_flags,
    flag_keywords,
    image_outputs,
    load_run,
    sampling_options,
)

__all__ = ["add_inpaint", "add_edit", "add_interpolate", "cmd_inpaint", "cmd_edit", "cmd_interpolate"]


def _editing_options(p, spacing: str) -> None:
    """The options inpaint and edit share with sample; ``spacing``: the default of --spacing, said in its help."""
    add_flags(p, "run")
    p.add_argument(
        "--image",
        required=True,
        help="the input: a PNG (grey L or RGB, at the run's size) or a samples .npz (all its images)",
    )
    p.add_argument("--num", type=int, default=1, help="results per input image")
    p.add_argument("--steps", type=int, help="network calls of the sampling chain (default: as ddpmkit sample)")
    add_flags(p, "eta")
    add_flag(p, "spacing", f"timestep spacing (default: {spacing})")
    p.add_argument(
        "--labels",
        help="classes to condition on (cycled over the results); default for a class-"
        "conditional run: unconditional, through its null label",
    )
    add_flags(p, "guidance")
    add_flag(p, "seed", "result i uses seed + i, whatever the batch size")
    add_flag(p, "batch-size", "results per network batch")
    p.add_argument("--out", action="append", help="results.npz and/or picture.png, one row per input (repeatable)")
    add_flags(p, "precision", *COMMON)


def add_inpaint(sub) -> None:
    p = add_command(
        sub,
        "inpaint",
        "fill in the masked part of images (RePaint)",
        "  ddpmkit inpaint runs/digits --image digit.png --mask top_half.png --num 4 --resample 4 --out filled.png",
    )
    _editing_options(p, "the sampler's")
    p.add_argument("--mask", required=True, help="PNG, white (255) = keep, black (0) = generate; or .npz 'mask' 0/1")
    p.add_argument("--resample", type=int, default=1, help="RePaint's resamplings R (1: plain replacement)")
    p.add_argument("--jump", type=int, default=1, help="RePaint's jump length J")
    add_flag(
        p,
        "sampler",
        "the reverse step: ddpm (ancestral, the default) or ddim; the dpm++ solvers are refused",
        default="ddpm",
    )


def cmd_inpaint(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.editing import inpaint, read_mask

    def fill(run, images, **options):
        mask = read_mask(args.mask, run, len(images))
        return inpaint(run, images, mask, resample=args.resample, jump=args.jump, **options)

    return _edit_images(args, fill, "completions")


def add_edit(sub) -> None:
    p = add_command(
        sub,
        "edit",
        "image-to-image: noise an image part way, then denoise it (SDEdit)",
        "  ddpmkit edit runs/digits --image three.png --strength 0.5 --labels 8 --out eight.png",
    )
    _editing_options(p, "the run's sample.spacing with the run's own sampler, else the sampler's")
    p.add_argument(
        "--strength",
        type=float,
        required=True,
        help="in [0, 1]: the input is noised to t0 = strength T (0: unchanged, 1: a new sample)",
    )
    add_flags(p, "sampler")


def cmd_edit(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.editing import edit

    def noise_and_denoise(run, images, **options):
        return edit(run, images, args.strength, **options)

    return _edit_images(args, noise_and_denoise, "edits", diffusion=False)  # a consistency model edits in its own calls


def _edit_images(args: argparse.Namespace, change, what: str, diffusion: bool = True) -> int:
    """inpaint's and edit's handler: --out checked, the run loaded, --image read, ``change`` made --num times to each
    image with the sampling flags, the results written."""
    # lazy: start-up (see the module docstring)
    from ..runs.editing import read_images

    outs = image_outputs(args, "edited.png")
    run = load_run(args, diffusion=diffusion)
    result = change(run, read_images(args.image, run), num=args.num, **sampling_options(args))
    return _write_edited(run, result, outs, f"{len(result.x)} {what} ({result.calls} network calls each)")


def add_interpolate(sub) -> None:
    p = add_command(
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
    add_flag(p, "spacing", "timestep spacing (default: ddim's)")
    p.add_argument("--labels", help="one class for every frame (default for a class-conditional run: its null label)")
    add_flags(p, "guidance")
    p.add_argument("--out", action="append", help="strip.png and/or frames.npz (repeatable)")
    add_flags(p, "precision", *COMMON)


def cmd_interpolate(args: argparse.Namespace) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.editing import image_pair, interpolate, read_image_pair

    outs = image_outputs(args, "edited.png")
    seeds = None if args.seeds is None else _seed_pair(args.seeds)
    paths = None if seeds is not None else image_pair(args.images)
    run = load_run(args, diffusion=False)  # a consistency model decodes seeds' noises in its own few calls
    images = None if paths is None else read_image_pair(paths, run)
    result = interpolate(run, seeds=seeds, images=images, frames=args.frames, **flag_keywords(args, DECODING))
    how = "consistency" if run.config.distill is not None else "DDIM"
    return _write_edited(run, result, outs, f"{len(result.x)} frames ({how}, {result.calls} steps)")


def _seed_pair(text: str) -> list[int]:
    """``--seeds A,B`` as integers (how many there are is the run layer's check)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds must be two integers A,B, got {text!r}") from None


def _write_edited(run, result, outs: list, what: str) -> int:
    # lazy: start-up (see the module docstring)
    from ..runs.editing import write_edited

    for path in outs:
        write_edited(path, result, run.config.sample.levels)
    print(f"wrote {what} to " + ", ".join(map(str, outs)))
    return 0
