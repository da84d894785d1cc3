"""Schedules that fit the run: a preset's warm-up and EMA start are scaled to a short run with a note, and data
smaller than one batch is said."""

import numpy as np
import yaml
from PIL import Image

from ddpmkit.config import load_config
from ddpmkit.runs.training import fit_schedules
from helpers import run_cli


def test_warmup_and_ema_start_past_the_run_are_scaled_to_a_tenth_of_it():
    notes = []
    cfg = fit_schedules(load_config("folder", overrides={"train": {"steps": 200}}), notes.append)
    assert (cfg.train.warmup_steps, cfg.train.ema_start) == (20, 20)
    assert len(notes) == 1 and notes[0].startswith("note: train.warmup_steps 1000 and train.ema_start 1000")
    assert "200 steps" in notes[0] and "--set" in notes[0]
    long = load_config("digits")
    assert fit_schedules(long, notes.append) == long and len(notes) == 1  # a run they fit: untouched, no note


def test_a_short_run_on_a_few_images_says_both(tiny_config, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    code, err = run_cli(
        "train", "--preset", "folder", "--config", tiny_config, "--data", folder, "--image-size", "8",
        "--set", "train.warmup_steps=1000", "--set", "train.ema_start=1000", "--out", tmp_path / "run",
        "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "note: train.warmup_steps 1000 and train.ema_start 1000 exceed the run's 4 steps: scaled to 0 and 0" in err
    assert "note: the data has 3 examples, fewer than one batch of 16" in err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert (saved["warmup_steps"], saved["ema_start"]) == (0, 0)  # the run records what it trained with
