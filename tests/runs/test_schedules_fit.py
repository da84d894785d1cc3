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
    assert len(notes) == 2 and notes[0].startswith("note: train.warmup_steps 1000 and train.ema_start 1000")
    assert "200 steps" in notes[0] and "--set" in notes[0]
    long = load_config("digits")
    assert fit_schedules(long, notes.append) == long and len(notes) == 2  # a run they fit: untouched, no note


def test_an_ema_longer_than_the_averaged_steps_is_shortened_to_a_tenth_of_them():
    notes = []
    cfg = fit_schedules(load_config("folder", overrides={"train": {"steps": 200}}), notes.append)
    # 180 steps after the EMA starts (step 20): an average over about 18, 1 / (1 - d) = 18
    assert cfg.train.ema_decay == round(1 - 1 / 18, 4) and 0.9999**180 > 0.98 > 1e-4 > cfg.train.ema_decay**180
    assert notes[1].startswith("note: train.ema_decay 0.9999 averages over about 10000 steps") and "0.9444" in notes[1]
    tiny = load_config("digits", overrides={"train": {"steps": 4, "warmup_steps": 0, "ema_start": 0, "ema_decay": 0.5}})
    assert fit_schedules(tiny, notes.append) == tiny  # 1 / (1 - 0.5) = 2 steps: within the 4
    mnist = fit_schedules(load_config("mnist", overrides={"train": {"steps": 1000}}), notes.append)
    assert mnist.train.ema_decay == round(1 - 1 / 70, 4) and len(notes) == 3  # 700 steps after its start at 300
    for kept in ("digits", "mnist", "cifar10", "toy2d"):  # the presets as they are: untouched
        assert fit_schedules(load_config(kept), notes.append) == load_config(kept)
    power = load_config("folder", overrides={"train": {"steps": 200, "ema_kind": "power"}})
    assert fit_schedules(power, notes.append).train.ema_kind == "power"  # a power EMA has no decay to shorten


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
