"""Every checkpoint has its metrics line: the steps since the last line are logged before a checkpoint is written,
periodic or on an interrupt, so an interrupted run's metrics.jsonl covers its last checkpoint."""

import copy
import signal

import pytest

from ddpmkit.config import load_config
from ddpmkit.runs import start_training
from ddpmkit.train.metrics import read_metrics
from ddpmkit.train.signals import StopSignals, TrainingInterrupted


def tiny_trainer(run_dir, **train):
    from conftest import TINY_DIGITS

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(train)
    return start_training(load_config("digits", overrides=over), run_dir, progress=False)


def steps_logged(run_dir):
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]


def test_an_interrupt_between_lines_logs_its_steps_before_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(
        StopSignals, "requested", lambda self, step, dist, device: signal.SIGTERM if step == 3 else None
    )
    trainer = tiny_trainer(tmp_path / "run", steps=8, log_every=2, checkpoint_every=0)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.train()
    assert stopped.value.step == 3
    assert steps_logged(tmp_path / "run") == [2, 3]  # step 3 has its line, as its checkpoint has its weights
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))] == ["step_00000003.pt"]


def test_a_periodic_checkpoint_between_lines_logs_its_steps_first(tmp_path):
    trainer = tiny_trainer(tmp_path / "run", steps=5, log_every=4, checkpoint_every=3)
    last = trainer.train()
    assert steps_logged(tmp_path / "run") == [3, 4, 5] and last["step"] == 5
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in lines)  # each line averages its own steps
