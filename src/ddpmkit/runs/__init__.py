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

# Each public name -> the module of this package that defines it.
_HOMES = {
    "Run": "run",
    "Samples": "run",
    "train": "training",
    "start_training": "training",
    "prepare": "training",
    "resumed_config": "training",
    "evaluate_bpd": "bpd",
    "eval_dataset": "bpd",
    "parse_labels": "run",
    "class_names_of": "run",
    "check_output": "outputs",
    "write_samples": "outputs",
    "write_trajectory": "outputs",
}

__all__ = ["Run", "Samples", "train", "start_training", "prepare", "resumed_config", "evaluate_bpd",
           "eval_dataset", "parse_labels", "class_names_of", "check_output", "write_samples", "write_trajectory"]

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
