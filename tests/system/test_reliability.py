"""Nothing lost, nothing half-written: signals, the run lock, stray temp files, metrics after a resume,
divergence, full disks and file modes, on real subprocesses where a real one matters."""

import copy
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ddpmkit import UserError
from ddpmkit.config import load_config
from ddpmkit.files import TEMP_FILE
from ddpmkit.runs import start_training
from ddpmkit.train.metrics import read_metrics
from helpers import train_digits_args

pytestmark = pytest.mark.system


def tiny(tmp_path, **train) -> Path:
    from conftest import TINY_DIGITS

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(
        {
            "device": "cpu",
            "log_every": 1,
            "checkpoint_every": 1000,
            "sample_every": 0,
            "lr_schedule": "constant",
            "deterministic": True,
            **train,
        }
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(over))
    return path


def start(config: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ddpmkit", *train_digits_args(config, out, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def resume(out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ddpmkit", "train", "--out", str(out), "--resume", "--no-progress", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until metrics.jsonl shows ``step`` (the process is inside its training loop)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        path = out / "metrics.jsonl"
        if path.exists() and any(r.get("step", 0) >= step for r in read_metrics(path)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def weights(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_goes_on_bit_for_bit(tmp_path, signum, code):
    config = tiny(tmp_path, steps=400)
    proc = start(config, tmp_path / "run")
    wait_for_step(tmp_path / "run", 3, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    step = int(lines[-1].split()[3].rstrip(":"))
    assert lines[-1] == f"interrupted at step {step}: checkpoint written, --resume continues"
    assert "Traceback" not in err and 3 <= step < 400
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == [f"step_{step:08d}.pt"]  # no temp file beside it
    goal = step + 3
    done = resume(tmp_path / "run", "--steps", str(goal))
    assert done.returncode == 0, done.stderr
    straight = subprocess.run(
        [sys.executable, "-m", "ddpmkit", *train_digits_args(config, tmp_path / "straight", "--steps", goal)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert straight.returncode == 0, straight.stderr
    a = weights(tmp_path / "straight" / "checkpoints" / f"step_{goal:08d}.pt")
    b = weights(tmp_path / "run" / "checkpoints" / f"step_{goal:08d}.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == goal  # no step logged twice


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    proc = start(tiny(tmp_path, steps=400), tmp_path / "run")
    wait_for_step(tmp_path / "run", 2, proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGTERM, 143)  # killed by the second, or done with the first's save
    again = resume(tmp_path / "run", "--steps", "1000")
    stray = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if TEMP_FILE.match(p.name)]
    assert stray == [] and again.returncode in (0, 2), again.stderr  # 2: killed before any checkpoint
    assert "Traceback" not in again.stderr


def test_a_second_trainer_of_the_same_run_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    from helpers import assert_user_error

    proc = start(tiny(tmp_path, steps=400, checkpoint_every=2), tmp_path / "run")
    wait_for_step(tmp_path / "run", 3, proc)
    second = resume(tmp_path / "run", "--steps", "500")
    assert_user_error(second.returncode, second.stderr, "is in use by another training process", f"pid {proc.pid}")
    proc.kill()
    proc.communicate(timeout=60)
    latest = max(int(p.stem[5:]) for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    again = resume(tmp_path / "run", "--steps", str(latest + 1))
    assert again.returncode == 0, again.stderr


def test_temp_files_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    from helpers import run_cli

    cfg = tiny(tmp_path, steps=2, checkpoint_every=1)
    code, err = run_cli("train", "--preset", "digits", "--config", cfg, "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    ckpts = tmp_path / "run" / "checkpoints"
    stray = [
        ckpts / ".step_00000003.pt.4242.0123abcd.tmp",
        tmp_path / "run" / ".config.yaml.4242.89abcdef.tmp",
        tmp_path / "run" / "samples" / ".step_00000003.png.77.deadbeef.tmp",
    ]
    for path in stray:
        path.write_bytes(b"half a checkpoint")
    (ckpts / "notes.tmp").write_text("not ours")
    code, err = run_cli("train", "--out", tmp_path / "run", "--resume", "--no-progress", "--steps", "3")
    assert code == 0, err
    assert not any(p.exists() for p in stray) and (ckpts / "notes.tmp").exists()


def test_metrics_never_repeat_a_step_after_a_resume_from_an_older_checkpoint(tmp_path):
    from helpers import run_cli

    cfg = tiny(tmp_path, steps=4, checkpoint_every=2, keep_checkpoints=0)
    assert run_cli("train", "--preset", "digits", "--config", cfg, "--out", tmp_path / "run", "--no-progress")[0] == 0
    (tmp_path / "run" / "checkpoints" / "step_00000004.pt").unlink()  # as if killed between step 2 and 4
    assert run_cli("train", "--out", tmp_path / "run", "--resume", "--no-progress")[0] == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_divergence_stops_training_naming_the_step_and_writes_no_bad_checkpoint(tmp_path):
    from conftest import TINY_DIGITS

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(steps=6, log_every=1, checkpoint_every=1, device="cpu")
    trainer = start_training(load_config("digits", overrides=over), tmp_path / "r", progress=False)
    real = trainer.train_step

    def poisoned(x0, y):
        if trainer.step == 2:  # the weights go bad before step 3
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))
        return real(x0, y)

    trainer.train_step = poisoned
    with pytest.raises(UserError, match=r"training diverged at step 3: .*\(latest: step_00000002.pt\)"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == [
        "step_00000001.pt",
        "step_00000002.pt",
    ]


def test_non_finite_weights_are_never_checkpointed_even_when_the_loss_looked_fine(tmp_path):
    from conftest import TINY_DIGITS

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(steps=2, device="cpu")
    trainer = start_training(load_config("digits", overrides=over), tmp_path / "r", progress=False)
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("inf")
    with pytest.raises(UserError, match="training diverged by step 0"):
        trainer.save(0)
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root only), else skip: a real ENOSPC from the kernel."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_one_error_line_and_leaves_the_earlier_files(tiny_disk, tmp_path):
    from helpers import assert_user_error, run_cli

    code, err = run_cli(
        "train",
        "--preset",
        "digits",
        "--config",
        tiny(tmp_path, steps=2, checkpoint_every=1),
        "--out",
        tiny_disk / "run",
        "--no-progress",
    )
    assert err.startswith("training ")  # the line saying what runs, then the error
    assert_user_error(code, err.split("\n", 1)[1], "cannot write", "step_00000001.pt", "No space left on device")
    ckpts = tiny_disk / "run" / "checkpoints"
    assert not [p for p in ckpts.iterdir() if TEMP_FILE.match(p.name)]  # no partial file
    config_before = (tiny_disk / "run" / "config.yaml").read_bytes()
    fd = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)  # now nothing fits
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "digits_unet_step3.pt"
    code, err = run_cli("sample", legacy, "--num", "8", "--out", tiny_disk / "s.npz", "--no-progress")
    assert_user_error(code, err, "cannot write", "s.npz", "No space left on device")
    code, err = run_cli("eval", legacy, "--num", "2", "--out", tiny_disk / "r.json", "--no-progress")
    assert_user_error(code, err, "cannot write", "r.json")
    assert (tiny_disk / "run" / "config.yaml").read_bytes() == config_before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "run"]


def test_outputs_follow_the_umask(tmp_path):
    from helpers import run_cli

    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "digits_unet_step3.pt"
    old = os.umask(0o022)
    try:
        out = [tmp_path / "s.npz", tmp_path / "g.png"]
        code, err = run_cli(
            "sample", legacy, "--num", "4", "--out", out[0], "--out", out[1], "--trajectory", tmp_path / "t.png"
        )
        assert code == 0, err
    finally:
        os.umask(old)
    for path in [*out, tmp_path / "t.png"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_read_only_file_system_is_one_error_line_before_any_work(tmp_path):
    from helpers import assert_user_error, run_cli

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, err = run_cli(
            "train", "--preset", "digits", "--config", tiny(tmp_path, steps=2), "--out", mnt / "run", "--no-progress"
        )
        assert_user_error(code, err, "cannot write", "Read-only file system")
        legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "digits_unet_step3.pt"
        code, err = run_cli("sample", legacy, "--out", mnt / "s.npz", "--no-progress")
        assert_user_error(code, err, "is not writable")
        code, err = run_cli("sample", legacy, "--out", tmp_path / "missing" / "s.npz", "--no-progress")
        assert_user_error(code, err, "does not exist")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
