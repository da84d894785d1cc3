"""A run is one run: --resume refuses another run's checkpoint, a checkpoint named for a step it does not hold,
and says when RUN/config.yaml was edited by hand."""

import shutil
from pathlib import Path

import pytest
import yaml

from helpers import assert_user_error, run_cli

RESUME = ("--resume", "--device", "cpu", "--no-progress")


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the session's tiny run, for a test that resumes it."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_resume_refuses_a_checkpoint_of_another_run_unless_forced(run_copy, tiny_config, tmp_path):
    other = tmp_path / "other"
    code, err = run_cli(
        "train", "--preset", "digits", "--config", tiny_config, "--set", "model.base_channels=8",
        "--steps", "6", "--out", other, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    shutil.copy(other / "checkpoints" / "step_00000006.pt", run_copy / "checkpoints")
    recorded = (run_copy / "config.yaml").read_text()
    code, err = run_cli("train", "--out", run_copy, "--steps", "8", *RESUME)
    assert_user_error(code, err, "is not this run's", "model.base_channels", "--force")
    assert "--preset" not in err and (run_copy / "config.yaml").read_text() == recorded
    assert not (run_copy / "checkpoints" / "step_00000008.pt").exists()
    code, err = run_cli("train", "--out", run_copy, "--steps", "8", "--force", *RESUME)
    assert code == 0, err
    assert (run_copy / "checkpoints" / "step_00000008.pt").is_file()
    assert (run_copy / "checkpoints" / "step_00000004.pt").is_file()  # --force with --resume deletes nothing
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["model"]["base_channels"] == 8


def test_a_checkpoint_named_for_another_step_is_refused(run_copy):
    ckpts = run_copy / "checkpoints"
    shutil.copy(ckpts / "step_00000002.pt", ckpts / "step_00000200.pt")
    code, err = run_cli("train", "--out", run_copy, "--steps", "300", *RESUME)
    assert_user_error(code, err, "step_00000200.pt", "holds step 2, not the 200", "step_00000002.pt")
    code, err = run_cli("info", run_copy)
    assert_user_error(code, err, "holds step 2, not the 200")


def test_a_hand_edited_config_yaml_gets_a_note_naming_the_keys(run_copy):
    path = run_copy / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["lr"] = 0.5
    cfg["train"]["steps"] = 99  # a key the command sets is not named
    path.write_text(yaml.safe_dump(cfg))
    code, err = run_cli("train", "--out", run_copy, "--steps", "5", *RESUME)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "train.lr" in notes[0] and "train.steps" not in notes[0], err
    assert "record" in notes[0]
    assert yaml.safe_load(path.read_text())["train"]["lr"] != 0.5  # rewritten from the checkpoint's config
