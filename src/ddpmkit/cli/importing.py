"""``ddpmkit import``: a diffusers DDPM folder written as a run directory (the mapping is ``runs.pretrained``)."""

from __future__ import annotations

import argparse

from ..options import DataKind, choices
from .flags import add_described_command

__all__ = ["add_parser", "cmd_import"]

DATASETS = tuple(k for k in choices(DataKind) if k != "toy2d")  # the image data kinds a model can be scored on


def add_parser(sub) -> None:
    """The ``import`` sub-command: DIR, --out, --dataset, --force."""
    p = add_described_command(
        sub,
        "import",
        "import a diffusers DDPM folder as a run (mapped exactly, else refused)",
        "Import a diffusers DDPM folder (a DDPMPipeline folder, unet/ + scheduler/, or a local\n"
        "Hugging Face cache entry) as a ddpmkit run directory. A setting ddpmkit cannot compute\n"
        "exactly is refused with one line; nothing is downloaded.",
        "  ddpmkit import ddpm-cifar10-32 --out runs/ddpm-cifar10 --dataset cifar10\n"
        "  ddpmkit sample runs/ddpm-cifar10 --sampler unipc-bh2 --steps 10 --out grid.png",
    )
    p.add_argument("dir", metavar="DIR", help="the folder, a cache entry models--OWNER--NAME, or OWNER/NAME if cached")
    p.add_argument("--out", help="run directory to write (default: runs/<the folder's name>)")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="the data the model was trained on, which eval compares with (default: folder, images of the "
        "model's shape given with --data)",
    )
    p.add_argument("--force", action="store_true", help="write into an existing --out that holds no checkpoints")


def cmd_import(args: argparse.Namespace) -> int:
    # lazy: start-up (torch loads only once the command line is accepted)
    from ..runs.pretrained import import_diffusers
    from ..runs.run import describe_checkpoint

    out = import_diffusers(args.dir, args.out, dataset=args.dataset, force=args.force)
    print(f"wrote {out} ({describe_checkpoint(out)['model']}, from {args.dir})")
    return 0
