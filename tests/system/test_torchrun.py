"""`torchrun --nproc_per_node 2 -m ddpmkit train` on CPU (Gloo) against a 1-process run.

One module-scoped fixture runs, on a tiny digits config in fp32:
  * the reference: 1 process, 4 steps (checkpoints at steps 2 and 4);
  * `python -m torch.distributed.run --standalone --nproc_per_node 2 -m ddpmkit train` for 2 steps;
  * the same under torchrun with `--resume --steps 4 --microbatch 3` (each rank's 8 rows in
    chunks of 3, 3 and 2, gradients all-reduced after the last), through a small launcher that
    calls the real CLI and then saves each rank's final weights and EMA, so the ranks can be
    compared.
The same global batch and seed on 1 or 2 processes must give the same training (up to
floating-point summation order), and only rank 0 may write files.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ddpmkit.cli import main
from ddpmkit.runs.rundir import list_checkpoints, load_checkpoint
from helpers import train_digits_args

pytestmark = pytest.mark.system

TORCHRUN_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)

# Calls the real CLI in every rank, then saves that rank's final live weights and EMA.
LAUNCHER = """
import sys

import torch

from ddpmkit import cli
from ddpmkit.train import trainer as trainer_module
from ddpmkit.train.distributed import exit_process

dump_dir, argv = sys.argv[1], sys.argv[2:]
seen = []
train = trainer_module.Trainer.train


def keep_and_train(self):
    seen.append(self)
    return train(self)


trainer_module.Trainer.train = keep_and_train
code = cli.main(argv)
if seen:
    t = seen[0]
    torch.save({"model": t.model.state_dict(), "ema": t.ema.state_dict(), "step": t.step},
               f"{dump_dir}/rank{t.dist.rank}.pt")
exit_process(code)  # as the ddpmkit command ends
"""


def tiny_yaml(path: Path) -> Path:
    from conftest import TINY_DIGITS

    cfg = copy.deepcopy(TINY_DIGITS)
    # fp32 for an exact comparison; no dropout (its mask comes from each process's own RNG);
    # a constant learning rate so the 2-step and the resumed 4-step runs follow one schedule
    cfg["model"]["dropout"] = 0.0
    cfg["train"].update(precision="fp32", device="cpu", lr_schedule="constant", keep_checkpoints=0)
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Two CPU processes under torchrun; the parent's own torchrun variables are not inherited."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    cfg = tiny_yaml(root / "tiny.yaml")
    common = ["--preset", "digits", "--config", str(cfg), "--no-progress"]

    ref = root / "ref"
    assert main(["train", *common, "--out", str(ref), "--steps", "4"]) == 0

    dist = root / "dist"
    first = torchrun("-m", "ddpmkit", "train", *common, "--out", dist, "--steps", "2", cwd=root)
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = {
        "checkpoints": [p.name for p in list_checkpoints(dist)],
        "metrics": (dist / "metrics.jsonl").read_text().splitlines(),
    }

    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER)
    dumps = root / "dumps"
    dumps.mkdir()
    second = torchrun(
        launcher,
        dumps,
        "train",
        "--out",
        dist,
        "--resume",
        "--steps",
        "4",
        "--microbatch",
        "3",
        "--no-progress",
        cwd=root,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    return {
        "ref": ref,
        "dist": dist,
        "first": first,
        "second": second,
        "after_first": after_first,
        "dumps": [torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in (0, 1)],
    }


def assert_states_close(a: dict, b: dict, what: str, **tol) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m: f"{what}.{k}: {m}", **tol)


# Gradients of the global batch are summed in another order (two halves, then all-reduce):
# fp32 rounding, slightly amplified by Adam's division by sqrt(v) on the first steps.
TOL = dict(rtol=1e-4, atol=1e-5)


def test_two_processes_write_one_set_of_files(runs):
    dist = runs["dist"]
    assert runs["after_first"]["checkpoints"] == ["step_00000002.pt"]
    assert [p.name for p in list_checkpoints(dist)] == ["step_00000002.pt", "step_00000004.pt"]
    metrics = [yaml.safe_load(line) for line in (dist / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]  # one line per interval, not one per rank
    assert (dist / "config.yaml").is_file()
    for run in (runs["first"], runs["second"]):
        assert run.stdout.count("trained ") == 1, run.stdout  # the summary line comes from rank 0 only


def test_two_processes_match_one_process(runs):
    for step in (2, 4):
        ref = load_checkpoint(runs["ref"] / "checkpoints" / f"step_{step:08d}.pt")
        got = load_checkpoint(runs["dist"] / "checkpoints" / f"step_{step:08d}.pt")
        assert got["step"] == ref["step"] == step
        assert {**got["config"], "train": None} == {**ref["config"], "train": None}
        runtime = {k: got["config"]["train"][k] for k in ("steps", "microbatch")}
        assert got["config"]["train"] == {**ref["config"]["train"], **runtime}
        assert_states_close(got["model"], ref["model"], f"model@{step}", **TOL)
        assert_states_close(got["ema"], ref["ema"], f"ema@{step}", **TOL)
    # the logged mean loss is the mean over the global batch on both
    ref_m = [yaml.safe_load(line) for line in (runs["ref"] / "metrics.jsonl").read_text().splitlines()]
    got_m = [yaml.safe_load(line) for line in (runs["dist"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in got_m] == pytest.approx([m["loss"] for m in ref_m], rel=1e-4)


def test_ranks_hold_identical_weights_and_ema(runs):
    r0, r1 = runs["dumps"]
    assert r0["step"] == r1["step"] == 4
    assert_states_close(r0["model"], r1["model"], "model", rtol=0, atol=0)
    assert_states_close(r0["ema"], r1["ema"], "ema", rtol=0, atol=0)
    # and rank 0's state is what the final checkpoint holds
    final = load_checkpoint(runs["dist"] / "checkpoints" / "step_00000004.pt")
    assert_states_close(r0["model"], final["model"], "checkpoint model", rtol=0, atol=0)
    assert_states_close(r0["ema"], final["ema"], "checkpoint ema", rtol=0, atol=0)


def test_resume_under_torchrun_continued_from_step_2(runs):
    out = runs["second"].stdout
    assert "step 4" in out, out
    ckpt = load_checkpoint(runs["dist"] / "checkpoints" / "step_00000004.pt")
    assert ckpt["step"] == 4


def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_rank_0_writes(tmp_path):
    """torchrun passes SIGTERM on to its workers: they agree on a step (a multiple of CHECK_EVERY)."""
    import signal
    import time

    from ddpmkit.train.metrics import read_metrics
    from ddpmkit.train.signals import CHECK_EVERY

    cfg = tiny_yaml(tmp_path / "tiny.yaml")
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "ddpmkit",
            *train_digits_args(cfg, run, "--steps", 5000),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + 240
    while not ((run / "metrics.jsonl").exists() and read_metrics(run / "metrics.jsonl")):
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert err.count("interrupted at step ") == 1, err  # rank 0 says it
    step = int(err.split("interrupted at step ")[1].split(":")[0])
    assert step % CHECK_EVERY == 0 and list_checkpoints(run)[-1].name == f"step_{step:08d}.pt"
    again = torchrun(
        "-m", "ddpmkit", "train", "--out", run, "--resume", "--steps", step + 3, "--no-progress", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert list_checkpoints(run)[-1].name == f"step_{step + 3:08d}.pt"
