"""`ddpmkit eval --metric fid kid pr` and `ddpmkit stats` end to end, on a TorchScript stand-in network; `ddpmkit eval
--metric digits` on sample files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.eval import digits as dj
from helpers import StandIn, assert_user_error, run_cli

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "digits_unet_step3.pt"


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("net") / "standin.pt"
    torch.jit.save(torch.jit.script(StandIn()), str(path))
    return path


def test_stats_then_eval_of_a_run_and_of_a_sample_file(network, tmp_path, capsys):
    from test_cli import write_pngs

    write_pngs(tmp_path / "held", 12, seed=1)
    ref = tmp_path / "ref.npz"
    assert (
        main(
            [
                "stats",
                str(tmp_path / "held"),
                "--image-size",
                "8",
                "--features",
                "--out",
                str(ref),
                "--inception",
                str(network),
                "--no-progress",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stats["num"] == 12 and stats["image_shape"] == [3, 8, 8] and "features" in np.load(ref).files

    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                str(LEGACY),
                "--metric",
                "fid",
                "kid",
                "pr",
                "--num",
                "16",
                "--steps",
                "2",
                "--ref",
                "test",
                "--inception",
                str(network),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["num"] == 16 and result["fid"] > 0 and result["kid_stderr"] >= 0
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1 and result["step"] == 3
    assert result["network_known"] is False and result["ref"] == "test"

    samples = tmp_path / "s.npz"
    assert main(["sample", str(LEGACY), "--num", "16", "--steps", "2", "--out", str(samples), "--no-progress"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(samples),
                "--metric",
                "fid",
                "--ref",
                str(tmp_path / "held"),
                "--inception",
                str(network),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["num"] == 16


def test_quality_eval_errors_are_one_line(network, tmp_path):
    code, err = run_cli("eval", LEGACY, "--metric", "bpd", "fid")
    assert_user_error(code, err, "--metric bpd is measured alone")
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    code, err = run_cli("eval", tmp_path / "s.npz", "--metric", "fid", "--ref", "test", "--inception", network)
    assert_user_error(code, err, "--ref test needs a run")
    code, err = run_cli(
        "eval",
        LEGACY,
        "--metric",
        "fid",
        "--ref",
        "nowhere",
        "--inception",
        network,
        "--num",
        "2",
        "--steps",
        "1",
        "--no-progress",
    )
    assert_user_error(code, err, "--ref must be train, test, a directory of images or a stats .npz")
    code, err = run_cli("stats", tmp_path, "--out", tmp_path / "x.npz", "--inception", network)
    assert_user_error(code, err, "--image-size")


def test_digits_metric_of_the_eval_command(tmp_path, capsys):
    judge = dj.get_judge(0)
    assert main(["eval", str(tmp_path / "missing.npz"), "--metric", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    s = judge.split
    path = tmp_path / "s.npz"
    np.savez(path, images=s.test_images[:40], labels=s.test_labels[:40])
    assert main(["eval", str(path), "--metric", "digits", "--permutations", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 40 and report["accuracy"] >= 0.9
    bad = tmp_path / "bad.npz"
    np.savez(bad, pictures=s.test_images[:4])
    assert main(["eval", str(bad), "--metric", "digits"]) == 2
    assert "images" in capsys.readouterr().err
    junk = tmp_path / "junk.npz"
    junk.write_text("not an archive")
    assert main(["eval", str(junk), "--metric", "digits"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_digits_metric_prints_the_judges_report_as_it_is(tmp_path, capsys):
    s = dj.get_judge(0).split
    path, out = tmp_path / "s.npz", tmp_path / "r.json"
    np.savez(path, images=s.test_images[:30], labels=s.test_labels[:30])
    assert (
        main(
            [
                "eval",
                str(path),
                "--metric",
                "digits",
                "--permutations",
                "10",
                "--ref",
                "train",
                "--seed",
                "3",
                "--no-labels",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    expected = dj.evaluate_digit_samples(s.test_images[:30], None, reference="train", num_permutations=10, seed=3)
    assert capsys.readouterr().out == json.dumps(expected, indent=2) + "\n" == out.read_text()
    assert_user_error(*run_cli("eval", path, "--metric", "digits", "fid"), "--metric digits is measured alone")
    assert_user_error(*run_cli("eval", path, "--metric", "digits", "--ref", "x"), "reference must be 'test' or 'train'")
    assert_user_error(*run_cli("eval", tmp_path, "--metric", "digits"), "scores a samples .npz")
