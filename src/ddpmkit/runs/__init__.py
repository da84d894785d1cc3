"""The run layer: train a run directory, load a trained run, sample from it and measure it.

    cfg = ddpmkit.load_config("digits", overrides={"train": {"steps": 500}})
    ddpmkit.train(cfg, "runs/digits")
    run = ddpmkit.Run.load("runs/digits")
    samples = run.sample(16, labels=[3], steps=20)
"""

from .bpd import eval_dataset, evaluate_bpd
from .run import Run, Samples, class_names_of, parse_labels
from .outputs import check_output, write_samples, write_trajectory
from .training import prepare, resumed_config, start_training, train

__all__ = ["Run", "Samples", "train", "start_training", "prepare", "resumed_config", "evaluate_bpd",
           "eval_dataset", "parse_labels", "class_names_of", "check_output", "write_samples", "write_trajectory"]
