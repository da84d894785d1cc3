"""``ddpmkit distill`` as a process: SIGTERM writes a checkpoint from which ``--resume`` goes on bit for bit, and
two processes under torchrun tune one run (rank 0 writes) whose ranks agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpmkit.train.metrics import read_metrics
from helpers import distill_args

pytestmark = pytest.mark.system

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def weights(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


def ddpmkit(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ddpmkit", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def test_sigterm_checkpoints_the_tuning_and_resume_goes_on_bit_for_bit(tiny_run, tmp_path):
    from test_reliability import wait_for_step

    out = tmp_path / "cm"
    cmd = [sys.executable, "-m", "ddpmkit", *distill_args(tiny_run, out, "--steps", 400, "--set", "train.log_every=1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for_step(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = int(err.strip().splitlines()[-1].split()[3].rstrip(":"))
    assert 3 <= step < 400 and (out / "checkpoints" / f"step_{step:08d}.pt").exists()
    goal = step + 2 + step % 2  # an even step: stage_steps 2 and checkpoints every 2
    done = ddpmkit(*distill_args(tiny_run, out, "--steps", goal, "--set", "train.log_every=1", "--resume"))
    assert done.returncode == 0, done.stderr
    straight = ddpmkit(*distill_args(tiny_run, tmp_path / "straight", "--steps", goal, "--set", "train.log_every=1"))
    assert straight.returncode == 0, straight.stderr
    a = weights(tmp_path / "straight" / "checkpoints" / f"step_{goal:08d}.pt")
    b = weights(out / "checkpoints" / f"step_{goal:08d}.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == goal


def test_two_processes_under_torchrun_tune_one_run(tiny_run, tmp_path):
    from test_torchrun import torchrun

    out = tmp_path / "cm"
    done = torchrun("-m", "ddpmkit", *distill_args(tiny_run, out, "--steps", 4), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000004.pt"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [2, 4]  # one writer
    assert [r["stage"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1]
    sampled = ddpmkit("sample", out, "--steps", 2, "--num", 4, "--labels", "all", "--out", tmp_path / "s.npz")
    assert sampled.returncode == 0, sampled.stderr
