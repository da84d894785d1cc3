"""Power EMA on real processes: under torchrun only rank 0 writes the snapshots, which `ddpmkit ema` rebuilds from;
a SIGTERM'd run resumes bit for bit, its snapshots included."""

import signal

import pytest
import torch
from test_reliability import resume, start, tiny, wait_for_step, weights
from test_torchrun import tiny_yaml, torchrun

from ddpmkit.runs.posthoc_ema import read_snapshots
from ddpmkit.runs.rundir import load_checkpoint
from helpers import run_cli_out, train_digits_args

pytestmark = pytest.mark.system

POWER = ("--set", "train.ema_kind=power", "--set", "train.ema_snapshot_every=2")

# Calls the real CLI in every rank, each rank logging the files it saves through the trainer's snapshot writer.
LAUNCHER = """
import os
import sys

from ddpmkit import cli
from ddpmkit.runs import training
from ddpmkit.train.distributed import exit_process

log, argv = sys.argv[1], sys.argv[2:]
save = training.atomic_torch_save


def logged_save(obj, path):
    with open(f"{log}/rank{os.environ['RANK']}.txt", "a") as f:
        f.write(f"{path}\\n")
    return save(obj, path)


training.atomic_torch_save = logged_save
exit_process(cli.main(argv))
"""


def _power_states(run, checkpoint):
    """(where, averages of one width) of the checkpoint's power EMA and of every snapshot, in order."""
    ckpt = torch.load(run / "checkpoints" / checkpoint, weights_only=True)
    states = [(f"{checkpoint} width {i}", a) for i, a in enumerate(ckpt["extra"]["power_ema"]["averages"])]
    for path in sorted((run / "ema_snapshots").iterdir()):
        snap = torch.load(path, weights_only=True)
        states += [(f"{path.name} width {i}", a) for i, a in enumerate(snap["averages"])]
    return states


def test_torchrun_writes_one_set_of_snapshots_that_ema_rebuilds_from(tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "launch.py").write_text(LAUNCHER)
    args = train_digits_args(tiny_yaml(tmp_path / "tiny.yaml"), run, "--steps", 4, *POWER)
    done = torchrun(tmp_path / "launch.py", logs, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    names = ["step_00000002.pt", "step_00000004.pt"]
    assert sorted(p.name for p in (run / "ema_snapshots").iterdir()) == names  # no temp file left
    written = (logs / "rank0.txt").read_text().split()
    assert [p.split("/")[-1] for p in written if "/ema_snapshots/" in p] == names
    assert not (logs / "rank1.txt").exists()  # rank 1 wrote nothing through the snapshot writer
    snapshots = read_snapshots(run)
    assert [s["step"] for s in snapshots] == [2, 4]
    final = load_checkpoint(run / "checkpoints" / "step_00000004.pt")["extra"]["power_ema"]["averages"]
    for last, kept in zip(snapshots[-1]["averages"], final):
        assert all(torch.equal(last[k], kept[k]) for k in kept)
    code, out = run_cli_out("ema", run, "--sigma-rel", "0.07", "--out", tmp_path / "w07")
    assert code == 0 and "wrote" in out, out
    rebuilt = load_checkpoint(tmp_path / "w07" / "checkpoints" / "step_00000004.pt")
    assert rebuilt["extra"]["posthoc_ema"]["sigma_rel"] == 0.07 and rebuilt["ema"].keys() == final[0].keys()
    assert all(torch.isfinite(v).all() for v in rebuilt["ema"].values())


def test_a_sigtermed_power_run_resumes_bit_for_bit_with_its_snapshots(tmp_path):
    config = tiny(tmp_path, steps=400)
    proc = start(config, tmp_path / "run", *POWER)
    wait_for_step(tmp_path / "run", 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = int(err.strip().splitlines()[-1].split()[3].rstrip(":"))
    goal = step + 3  # odd: the last snapshot is the one written after the final step
    done = resume(tmp_path / "run", "--steps", str(goal))
    assert done.returncode == 0, done.stderr
    straight = start(config, tmp_path / "straight", "--steps", goal, *POWER)
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    name = f"step_{goal:08d}.pt"
    a, b = (weights(tmp_path / r / "checkpoints" / name) for r in ("straight", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    states = [_power_states(tmp_path / r, name) for r in ("straight", "run")]
    assert [w for w, _ in states[0]] == [w for w, _ in states[1]] and states[0][-1][0] == f"{name} width 1"
    for (what, x), (_, y) in zip(*states):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), what
