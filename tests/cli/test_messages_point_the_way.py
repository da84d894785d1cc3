"""Messages that point the right way: eval of a sample file with its default --ref or with --metric bpd, and a
guidance weight that only saturates the samples."""

import numpy as np
import pytest

from ddpmkit import UserError
from ddpmkit.validate import GUIDANCE_MAX, check_guidance
from helpers import assert_user_error, run_cli


@pytest.fixture
def samples(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8))
    return path


def test_fid_of_a_sample_file_with_the_default_ref_says_what_to_give(samples):
    code, err = run_cli("eval", samples, "--metric", "fid", "--no-progress")
    assert_user_error(code, err, "--ref test needs a run", "--ref DIR", "--ref STATS.npz", "ddpmkit stats")


def test_bpd_of_a_sample_file_says_it_needs_a_run_not_that_the_file_is_corrupt(samples):
    code, err = run_cli("eval", samples, "--metric", "bpd", "--no-progress")
    assert_user_error(code, err, "--metric bpd", "a run directory or a checkpoint", "s.npz")
    assert "corrupt" not in err and "readable" not in err


def test_guidance_is_bounded(tiny_run, tmp_path):
    assert check_guidance(GUIDANCE_MAX) == GUIDANCE_MAX
    with pytest.raises(UserError, match="guidance must be a number >= 0 and <= 100"):
        check_guidance(1e9)
    code, err = run_cli("sample", tiny_run, "--num", "2", "--guidance", "1e9", "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "guidance must be a number >= 0 and <= 100", "saturate")
    assert not (tmp_path / "s.npz").exists()
