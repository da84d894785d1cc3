"""The run layer: Run.load / sample / evaluate_bpd, runs written by ddpmkit 0.1, checks before work, the writer."""

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit import Run, UserError
from ddpmkit.cli import main
from ddpmkit.files import TEMP_FILE, atomic_write, write_text

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


def test_a_checkpoint_written_by_ddpmkit_0_1_samples_as_it_did(tmp_path, one_thread):
    """The same 20 digits (fp32, seeds 0..19) that the code of a678110 drew from this checkpoint."""
    before = np.load(LEGACY / "legacy_unet_samples.npz")
    run = Run.load(LEGACY / "digits_unet_step3.pt", device="cpu")
    assert (run.step, run.sample_shape, run.num_classes, run.ema) == (3, (1, 8, 8), 10, True)
    assert run.class_names == [str(d) for d in range(10)]
    samples = run.sample(20, labels="all", precision="fp32")
    assert (samples.sampler, samples.steps) == ("dpm++2m", 5)
    np.testing.assert_array_equal(samples.labels.numpy(), before["labels"])
    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                str(LEGACY / "digits_unet_step3.pt"),
                "--num",
                "20",
                "--labels",
                "all",
                "--precision",
                "fp32",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(out)["images"], before["images"])


def test_a_2d_checkpoint_written_by_ddpmkit_0_1_samples_as_it_did(tmp_path):
    before = np.load(LEGACY / "legacy_mlp_samples.npz")["points"]
    run = Run.load(LEGACY / "moons_mlp_step3.pt", device="cpu")
    assert run.sample_shape == (2,) and not run.is_image and run.config.data.distribution == "moons"
    np.testing.assert_allclose(run.sample(20).x.numpy(), before, rtol=0, atol=1e-5)


def test_a_run_directory_of_ddpmkit_0_1_resumes(tmp_path, capsys):
    run_dir = tmp_path / "old"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(LEGACY / "digits_unet_step3.pt", run_dir / "checkpoints" / "step_00000003.pt")
    shutil.copy(LEGACY / "digits_unet_config.yaml", run_dir / "config.yaml")
    assert main(["info", str(run_dir)]) == 0
    assert "step         3 of 3" in capsys.readouterr().out
    assert main(["train", "--out", str(run_dir), "--resume", "--steps", "4", "--device", "cpu", "--no-progress"]) == 0
    assert (run_dir / "checkpoints" / "step_00000004.pt").is_file()
    assert "kind: digits" in (run_dir / "config.yaml").read_text()  # rewritten in the typed layout


def test_run_sample_checks_every_option_before_the_first_network_call(monkeypatch):
    run = Run.load(LEGACY / "digits_unet_step3.pt", device="cpu")
    calls = []
    monkeypatch.setattr(run.diffusion, "sample", lambda *a, **k: calls.append(1))
    for options, words in [
        ({"steps": 51}, "steps must be between 1 and 50"),
        ({"labels": "7,11"}, "label 11 is out of range"),
        ({"labels": [2, "x"]}, "got 'x'"),
        ({"guidance": float("nan")}, "guidance must be a number >= 0"),
        ({"batch_size": 0}, "batch size must be a positive integer"),
    ]:
        with pytest.raises(UserError, match=words):
            run.sample(4, **options)
    toy = Run.load(LEGACY / "moons_mlp_step3.pt", device="cpu")
    with pytest.raises(UserError, match="this model is not class-conditional"):
        toy.sample(4, labels=1)
    with pytest.raises(UserError, match="a trajectory draws images"):
        toy.sample(4, trajectory=True)
    assert calls == []


def test_sample_refuses_a_trajectory_of_a_2d_model_before_writing_anything(tmp_path):
    from helpers import assert_user_error, run_cli

    out, traj = tmp_path / "s.npz", tmp_path / "t.png"
    code, err = run_cli("sample", LEGACY / "moons_mlp_step3.pt", "--num", "2", "--out", out, "--trajectory", traj)
    assert_user_error(code, err, "a trajectory draws images")
    assert not out.exists() and not traj.exists()
    code, err = run_cli("sample", LEGACY / "moons_mlp_step3.pt", "--out", tmp_path / "nope" / "s.npz")
    assert_user_error(code, err, "does not exist")
    code, err = run_cli("eval", LEGACY / "digits_unet_step3.pt", "--out", tmp_path / "r.txt")
    assert_user_error(code, err, ".json")


def test_run_sample_trajectory_and_evaluate_bpd(tmp_path):
    from ddpmkit.runs import write_trajectory

    run = Run.load(LEGACY / "digits_unet_step3.pt", device="cpu")
    samples = run.sample(3, labels=[4], sampler="ddim", steps=12, trajectory=True)
    assert samples.labels.tolist() == [4, 4, 4] and len(samples.trajectory) == 10
    from ddpmkit import sampling_timesteps

    kept = sampling_timesteps(50, 12, "quadratic").tolist()  # ddim's default spacing; calls 3 and 8 skipped
    assert [t for t, _, _ in samples.trajectory] == [kept[i] for i in (0, 1, 2, 4, 5, 6, 7, 9, 10, 11)]
    path = write_trajectory(tmp_path / "t.png", samples)
    from PIL import Image

    assert Image.open(path).size == (10 * 65 + 1, 6 * 65 + 1)  # 10 steps x (3 samples x 2 rows), 8 px drawn 8x
    result = run.evaluate_bpd(split="test", num=5, batch_size=3)
    assert result["num"] == 5 and result["step"] == 3 and 0 < result["bpd"] < 20


def test_the_writer_follows_the_umask_and_leaves_nothing_on_failure(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.txt", "one")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(write_text(tmp_path / "b.txt", "two").stat().st_mode) == 0o600
    finally:
        os.umask(old)

    def half(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="cannot write .*a.txt.*: No space left on device"):
        atomic_write(tmp_path / "a.txt", half)
    assert (tmp_path / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert TEMP_FILE.match(".step_00000010.pt.1234.0a1b2c3d.tmp") and not TEMP_FILE.match("step_00000010.pt")


def test_train_through_the_python_api(tmp_path):
    import copy

    from conftest import TINY_DIGITS
    from ddpmkit.config import load_config
    from ddpmkit.runs import train

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(steps=2, checkpoint_every=0, device="cpu")
    last = train(load_config("digits", overrides=over), tmp_path / "r", progress=False, log=None)
    assert last["step"] == 2 and np.isfinite(last["loss"])
    with pytest.raises(UserError, match="already has checkpoints"):
        train(load_config("digits", overrides=over), tmp_path / "r", progress=False, log=None)
    again = train(None, tmp_path / "r", resume=True, overrides={"train": {"steps": 3}}, progress=False, log=None)
    assert again["step"] == 3
    run = Run.load(tmp_path / "r")
    assert run.step == 3 and torch.isfinite(run.sample(2, steps=2).x).all()
