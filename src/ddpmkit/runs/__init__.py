"""The run layer: train a run directory, load a trained run, sample from it and measure it.

    cfg = ddpmkit.load_config("digits", overrides={"train": {"steps": 500}})
    ddpmkit.runs.train(cfg, "runs/digits")
    run = ddpmkit.Run.load("runs/digits")
    samples = run.sample(16, labels=[3], steps=20)

The names load on first use (PEP 562): ``ddpmkit info`` needs a run, not the training stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use
    from .bpd import eval_dataset, evaluate_bpd
    from .outputs import check_output, write_samples, write_trajectory
    from .run import Run, Samples, class_names_of, parse_labels
    from .training import prepare, resumed_config, start_training, train

# Each module of this package -> the public names it defines.
_MODULES = {
    "run": ("Run", "Samples", "parse_labels", "class_names_of"),
    "training": ("train", "start_training", "prepare", "resumed_config"),
    "bpd": ("evaluate_bpd", "eval_dataset"),
    "outputs": ("check_output", "write_samples", "write_trajectory"),
}

__all__ = [
    "Run",
    "Samples",
    "train",
    "start_training",
    "prepare",
    "resumed_config",
    "evaluate_bpd",
    "eval_dataset",
    "parse_labels",
    "class_names_of",
    "check_output",
    "write_samples",
    "write_trajectory",
]

__getattr__, __dir__ = lazy_names(__name__, _MODULES)
