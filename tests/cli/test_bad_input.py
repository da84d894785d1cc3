"""Bad input, second round (issue 18): each case one `error:` line, exit 2, no traceback, nothing written,
or, where the input is usable, a one-line note of what was done."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_user_error, run_cli, run_cli_out

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
DIGITS = LEGACY / "digits_unet_step3.pt"


def crafted(tmp_path: Path, change) -> Path:
    """A copy of the digits fixture with ``change(ckpt)`` applied."""
    ckpt = torch.load(DIGITS, weights_only=True)
    change(ckpt)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path


def test_a_seed_out_of_range(tmp_path):
    code, err = run_cli("sample", DIGITS, "--seed", "18446744073709551615", "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "seed must be an integer in [0, 2**63 - 1 - num]")
    assert not (tmp_path / "s.npz").exists()


def test_a_config_asking_for_a_huge_network_allocates_nothing(tmp_path):
    start = time.monotonic()
    huge = crafted(tmp_path, lambda c: c["config"]["model"].update(base_channels=1_000_000_000))
    code, err = run_cli("sample", huge, "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "the network of its config cannot be laid out")
    large = crafted(tmp_path, lambda c: c["config"]["model"].update(base_channels=4096, num_groups=4))
    code, err = run_cli("sample", large, "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "has shape (11, 8), the network of its config needs (11, 4096)")
    code, err = run_cli("info", huge)  # reports the weights it holds, builds nothing
    assert code == 0, err
    assert time.monotonic() - start < 120 and not (tmp_path / "s.npz").exists()


def test_resume_of_a_checkpoint_with_a_wrong_shaped_tensor(tmp_path):
    def grow(ckpt):
        ckpt["model"]["init_conv.weight"] = torch.zeros(9, 1, 3, 3)

    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(crafted(tmp_path, grow), run / "step_00000003.pt")
    code, err = run_cli("train", "--out", tmp_path / "run", "--resume", "--steps", "4")
    assert_user_error(code, err, "'init_conv.weight' has shape (9, 1, 3, 3)", "needs (8, 1, 3, 3)")


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path):
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(DIGITS, run / "step_00000003.pt")
    (run / "step_00000004.pt").write_bytes(DIGITS.read_bytes()[:5000])
    code, err = run_cli(
        "train", "--out", tmp_path / "run", "--resume", "--steps", "5", "--device", "cpu", "--no-progress"
    )
    assert code == 0, err
    assert "step_00000004.pt is not a readable checkpoint" in err and "resuming from the checkpoint before it" in err
    assert (run / "step_00000005.pt").is_file()


def test_eval_of_a_bound_that_is_not_finite_prints_valid_json(tmp_path):
    def poison(ckpt):
        for state in (ckpt["model"], ckpt["ema"]):
            state["out_conv.bias"] = torch.full_like(state["out_conv.bias"], float("nan"))

    code, out = run_cli_out("eval", crafted(tmp_path, poison), "--num", "2", "--no-progress", "--device", "cpu")
    assert code == 0
    result = json.loads(out.splitlines()[0])
    assert result["bpd"] is None and "bits/dim = n/a" in out


def test_outputs_that_are_directories_or_unwritable_are_refused_before_any_work(tmp_path):
    (tmp_path / "d.npz").mkdir()
    code, err = run_cli("sample", DIGITS, "--out", tmp_path / "d.npz", "--force")
    assert_user_error(code, err, "is a directory")
    (tmp_path / "r.json").mkdir()
    code, err = run_cli("eval", DIGITS, "--out", tmp_path / "r.json", "--force")
    assert_user_error(code, err, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "r.json"]  # no DIR.tmp left


@pytest.mark.parametrize("metric", ["digits", "fid"])
def test_a_file_that_is_not_a_plain_npz_is_refused_without_suggesting_to_unpickle_it(tmp_path, metric):
    text, objects = tmp_path / "notes.npz", tmp_path / "objects.npz"
    text.write_text("not an archive")
    np.savez(objects, images=np.array([object()], dtype=object))
    for bad in (text, objects):
        code, err = run_cli("eval", bad, "--metric", metric, "--ref", tmp_path / "ref.npz")
        assert_user_error(code, err, "cannot read sample file", "not a NumPy .npz of plain arrays")
        assert "pickle" not in err
