"""TensorBoard logging (train.loggers: [jsonl, tensorboard]): the event files read back with tensorboard's own
reader hold the values of metrics.jsonl at the same steps, the sample grid as an image, and a resumed run's
repeated steps once; the per-quarter losses and the gradient norm against an independent computation."""

import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit import UserError
from ddpmkit.config import load_config
from ddpmkit.runs import start_training

SCALARS = ["loss", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "lr", "grad_norm", "images_per_s"]


def tiny_cfg(steps: int, loggers=("jsonl", "tensorboard"), **train):
    from conftest import TINY_DIGITS

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(
        {"steps": steps, "loggers": list(loggers), "log_every": 1, "sample_every": 2, "batch_size": 32, **train}
    )
    return load_config("digits", overrides=over)


def read_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_event_files_hold_the_jsonl_values_and_the_grid(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    run = tmp_path / "r"
    start_training(tiny_cfg(4), run, progress=False).train()
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    acc = read_events(run)
    tags = acc.Tags()
    assert set(SCALARS) <= set(tags["scalars"]) and "step" not in tags["scalars"]
    for key in SCALARS:
        events = acc.Scalars(key)
        want = [(r["step"], r[key]) for r in records if key in r]
        assert [e.step for e in events] == [s for s, _ in want], key
        np.testing.assert_allclose([e.value for e in events], [v for _, v in want], rtol=1e-6, err_msg=key)
    # the grids of steps 2 and 4, pixel for pixel the PNG files
    images = acc.Images("samples")
    assert [i.step for i in images] == [2, 4]
    for im in images:
        got = np.asarray(Image.open(io.BytesIO(im.encoded_image_string)).convert("L"))
        png = np.asarray(Image.open(run / "samples" / f"step_{im.step:08d}.png").convert("L"))
        np.testing.assert_array_equal(got, png)


def test_resume_logs_each_step_once(tmp_path, one_thread):
    """An interrupted run logged steps 3 and 4 past its checkpoint at 2; resumed from 2, TensorBoard shows
    each step once, with the values of the resumed run (those metrics.jsonl keeps)."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "r"
    start_training(tiny_cfg(4, checkpoint_every=2, keep_checkpoints=0), run, progress=False).train()
    (run / "checkpoints" / "step_00000004.pt").unlink()  # as if killed after logging step 4
    before = {r["step"]: r["loss"] for r in metrics(run)}
    resumed = start_training(None, run, resume=True, overrides={"train": {"steps": 5}}, progress=False)
    from ddpmkit.runs.rundir import tidy_run_dir

    tidy_run_dir(run, resumed.start_step, force=False)
    resumed.train()
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["loss"] == pytest.approx(before[3])  # the same batches and noise: the same losses
    events = read_events(run).Scalars("loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([e.value for e in events], [r["loss"] for r in records], rtol=1e-6)


class _Recording:
    """The trainer's objective, remembering the timesteps and per-example losses of every call."""

    def __init__(self, objective):
        self.objective, self.t, self.losses = objective, [], []

    def draw(self, *args):
        return self.objective.draw(*args)

    def __getattr__(self, name):  # bins, observe, state: the objective's own
        return getattr(self.objective, name)

    def __call__(self, model, x0, y, t, *rest):
        loss, losses = self.objective(model, x0, y, t, *rest)
        self.t.append(t.clone())
        self.losses.append(losses.clone())
        return loss, losses


def test_quarter_losses_and_grad_norm_match_a_direct_computation(tmp_path, one_thread):
    """One step: loss_q<k> is the mean per-example loss of the examples whose t lies in the k-th quarter of
    0..T-1; grad_norm is the norm of the step's gradient (left in p.grad), the one before clipping."""
    cfg = tiny_cfg(1, loggers=("jsonl",), grad_clip=None, microbatch=12)  # chunks: 12, 12, 8
    tr = start_training(cfg, tmp_path / "a", progress=False)
    tr.objective = seen = _Recording(tr.objective)
    tr.train()
    (record,) = metrics(tmp_path / "a")
    t, losses = torch.cat(seen.t), torch.cat(seen.losses)
    assert len(t) == 32
    T = cfg.diffusion.timesteps
    for q in range(4):
        mask = (t >= q * T / 4) & (t < (q + 1) * T / 4)
        if mask.any():
            assert record[f"loss_q{q}"] == pytest.approx(losses[mask].mean().item(), rel=1e-5)
        else:
            assert f"loss_q{q}" not in record
    assert sum(f"loss_q{q}" in record for q in range(4)) >= 2
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.model.parameters() if p.grad is not None]))
    assert record["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    # clipped to 1e-6, the same step logs the same norm: the one before clipping
    clipped_cfg = tiny_cfg(1, loggers=("jsonl",), grad_clip=1e-6, microbatch=12)
    start_training(clipped_cfg, tmp_path / "b", progress=False).train()
    (clipped,) = metrics(tmp_path / "b")
    assert clipped["grad_norm"] == pytest.approx(record["grad_norm"], rel=1e-5)


def test_tensorboard_missing_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("no tensorboard here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match=r"pip install tensorboard"):
        start_training(tiny_cfg(1), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_loggers_key_is_checked():
    with pytest.raises(UserError, match=r"config key 'train.loggers' must be"):
        tiny_cfg(1, loggers=("jsonl", "wandb"))
    with pytest.raises(UserError, match=r"config key 'train.loggers' must be a list without repeats"):
        tiny_cfg(1, loggers=("jsonl", "jsonl"))


def test_tensorboard_only_writes_no_jsonl(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    start_training(tiny_cfg(2, loggers=("tensorboard",)), tmp_path / "r", progress=False).train()
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    assert [e.step for e in read_events(tmp_path / "r").Scalars("loss")] == [1, 2]


def test_a_run_started_over_drops_the_old_events(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from ddpmkit.runs import train

    run = tmp_path / "r"
    train(tiny_cfg(3, sample_every=0), run, progress=False, log=None)
    train(tiny_cfg(2, sample_every=0), run, force=True, progress=False, log=None)
    events = read_events(run).Scalars("loss")
    assert [e.step for e in events] == [1, 2]
    np.testing.assert_allclose([e.value for e in events], [r["loss"] for r in metrics(run)], rtol=1e-6)


def test_points_grid_reaches_tensorboard(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    over = {
        "train": {
            "steps": 2,
            "batch_size": 16,
            "log_every": 1,
            "sample_every": 2,
            "num_grid_samples": 8,
            "loggers": ["jsonl", "tensorboard"],
        },
        "model": {"hidden": 16},
        "diffusion": {"timesteps": 20},
        "sample": {"grid_steps": 3},
    }
    start_training(load_config("toy2d-moons", overrides=over), tmp_path / "r", progress=False).train()
    (image,) = read_events(tmp_path / "r").Images("samples")
    got = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / "r" / "samples" / "step_00000002.png")))
