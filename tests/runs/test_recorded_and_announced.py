"""Recorded and announced: a failed first write leaves no empty run directory behind, and `report` refuses its
output before any work."""

import errno
import time

import pytest

import ddpmkit.runs.report as report
import ddpmkit.runs.rundir as rundir
from ddpmkit.files import WriteError
from helpers import assert_user_error, run_cli


def full_disk(cfg, path):
    raise WriteError(path, OSError(errno.ENOSPC, "No space left on device"))


def test_a_failed_first_write_leaves_no_run_directory(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "save_config", full_disk)
    args = ("train", "--preset", "digits", "--config", tiny_config, "--no-progress", "--device", "cpu", "--out")
    code, err = run_cli(*args, tmp_path / "new")
    assert code == 2 and err.splitlines()[-1].startswith("error: cannot write"), err  # after the "training" line
    assert not (tmp_path / "new").exists()  # a later --resume does not find an empty run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    code, err = run_cli(*args, tmp_path / "mine")
    assert code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "the user's"  # not this command's


def test_report_refuses_an_existing_output_before_any_work(tiny_run, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        pytest.fail("the report was built before its output was checked")

    monkeypatch.setattr(report, "build_report", no_work)
    out = tmp_path / "r.html"
    out.write_text("kept")
    code, err = run_cli("report", tiny_run, "--out", out)
    assert_user_error(code, err, "already exists")
    assert out.read_text() == "kept"


def test_the_final_grid_is_announced_and_grids_are_left_out_of_images_per_s(tiny_config, tmp_path, monkeypatch):
    args = ("train", "--preset", "digits", "--config", tiny_config, "--no-progress", "--device", "cpu")
    code, err = run_cli(*args, "--set", "train.sample_every=4", "--out", tmp_path / "run")
    assert code == 0, err
    assert "drawing the final sample grid of 4 samples into" in err and "step_00000004.png" in err

    from conftest import TINY_DIGITS
    from ddpmkit.config import load_config
    from ddpmkit.runs import start_training

    over = {**TINY_DIGITS, "train": {**TINY_DIGITS["train"], "sample_every": 2, "log_every": 4}}
    trainer = start_training(load_config("digits", overrides=over), tmp_path / "slow", progress=False)
    clock = [0.0]  # a clock that only the grid moves: training takes no time, each grid 100 s (steps 2 and 4)

    def slow_grid(t, step):
        clock[0] += 100.0

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    trainer.grid = slow_grid
    last = trainer.train()
    assert clock[0] == 200.0 and last["images_per_s"] > 1000, last  # 64 images in 100 s would be 0.64
