"""The command line end to end on tiny runs, and every bad input of the contract:
one `error:` line, exit code 2, no traceback, nothing overwritten or executed."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ddpmkit.cli import main
from helpers import assert_user_error, resume_args, run_cli, sample_args


@pytest.fixture
def run_dir(tiny_run):
    """A digits run trained for 4 steps with a tiny network (once per session: a test that changes it copies it)."""
    return tiny_run


def test_train_writes_the_run_directory(run_dir):
    assert (run_dir / "config.yaml").is_file()
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    assert [p.name for p in ckpts] == ["step_00000002.pt", "step_00000004.pt"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"images_per_s"' in lines[0]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["num_classes"] == 10 and cfg["model"]["in_channels"] == 1


def test_sample_npz_and_grid(run_dir, tmp_path, capsys):
    npz, png = tmp_path / "s.npz", tmp_path / "g.png"
    code = main(
        [
            "sample",
            str(run_dir),
            "--num",
            "13",
            "--labels",
            "all",
            "--steps",
            "5",
            "--batch-size",
            "5",
            "--out",
            str(npz),
            "--out",
            str(png),
            "--no-progress",
        ]
    )
    assert code == 0
    data = np.load(npz)
    assert data["images"].dtype == np.uint8 and data["images"].shape == (13, 8, 8, 1)
    assert data["labels"].dtype == np.int64
    np.testing.assert_array_equal(data["labels"], np.arange(13) % 10)
    assert png.stat().st_size > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_samples_do_not_depend_on_batch_size(run_dir, tmp_path, precision):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = [
        "--num",
        "6",
        "--labels",
        "3",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--seed",
        "7",
        "--no-progress",
        "--device",
        "cpu",  # bitwise on the CPU; a GPU may pick other kernels for another batch size
        "--precision",
        precision,
    ]
    assert main(["sample", str(run_dir), *common, "--batch-size", "6", "--out", str(a)]) == 0
    assert main(["sample", str(run_dir), *common, "--batch-size", "4", "--out", str(b)]) == 0
    np.testing.assert_array_equal(np.load(a)["images"], np.load(b)["images"])


def test_sample_precision_defaults_to_auto_for_images_and_fp32_for_points(run_dir, tmp_path, monkeypatch):
    import ddpmkit.runs.run as loaded

    asked = []
    real = loaded.autocast_dtype
    monkeypatch.setattr(
        loaded, "autocast_dtype", lambda precision, device: asked.append(precision) or real(precision, device)
    )
    common = ["--num", "2", "--sampler", "ddim", "--steps", "2", "--device", "cpu", "--no-progress"]
    assert main(["sample", str(run_dir), *common, "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["sample", str(run_dir), *common, "--precision", "fp32", "--out", str(tmp_path / "b.npz")]) == 0
    assert asked == ["auto", "fp32"]
    toy = tmp_path / "toy"
    # sample_every=0: no scatter of 2,000 points at the end of training (most of this test's time otherwise)
    quick = ["--steps", "2", "--batch-size", "64", "--device", "cpu", "--set", "train.sample_every=0"]
    assert main(["train", "--preset", "toy2d-moons", *quick, "--out", str(toy), "--no-progress"]) == 0
    asked.clear()
    assert main(["sample", str(toy), *common, "--out", str(tmp_path / "c.npz")]) == 0
    assert main(["sample", str(toy), *common, "--precision", "bf16", "--out", str(tmp_path / "d.npz")]) == 0
    assert asked == ["fp32", "bf16"]


def test_fp16_trains_resumes_and_samples_from_the_command_line(tiny_config, tmp_path):
    out = tmp_path / "fp16"
    common = ["--preset", "digits", "--config", str(tiny_config), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--steps", "2", "--precision", "fp16"]) == 0
    ckpt = torch.load(out / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert ckpt["config"]["train"]["precision"] == "fp16" and ckpt["extra"]["grad_scaler"]["scale"] == 2.0**16
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0
    npz = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                str(out),
                "--num",
                "3",
                "--steps",
                "2",
                "--sampler",
                "ddim",
                "--precision",
                "fp16",
                "--device",
                "cpu",
                "--out",
                str(npz),
                "--no-progress",
            ]
        )
        == 0
    )
    assert np.load(npz)["images"].shape == (3, 8, 8, 1)


def test_sample_with_guidance_and_trajectory(run_dir, tmp_path):
    out, traj = tmp_path / "g.npz", tmp_path / "traj.png"
    guided = ("--labels", "0,1", "--guidance", "2.0", "--sampler", "dpm++2m", "--steps", "5")
    assert main(sample_args(run_dir, "--num", "4", *guided, "--out", out, "--trajectory", traj)) == 0
    assert traj.stat().st_size > 0
    np.testing.assert_array_equal(np.load(out)["labels"], [0, 1, 0, 1])


def test_info_and_eval(run_dir, tmp_path, capsys):
    assert main(["info", str(run_dir)]) == 0
    assert "step         4 of 4" in capsys.readouterr().out
    out = tmp_path / "bpd.json"
    assert main(["eval", str(run_dir), "--metric", "bpd", "--num", "8", "--out", str(out), "--no-progress"]) == 0
    import json

    result = json.loads(out.read_text())
    assert result["num"] == 8 and result["bpd"] > 0 and result["stderr"] >= 0


def test_resume_continues_the_step_count(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--out", str(copy), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert (copy / "checkpoints" / "step_00000006.pt").is_file()


def test_resume_keeps_the_runs_config_and_takes_only_runtime_flags(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = sorted(p.name for p in (copy / "checkpoints").glob("*.pt"))
    for flags, words in [
        (["--steps", "6", "--lr", "0.1"], ["--lr 0.1 differs", "train.lr = 0.001"]),
        (["--steps", "6", "--batch-size", "8"], ["--batch-size 8", "train.batch_size = 16"]),
        (["--steps", "3"], ["at step 4 already", "go back"]),
        (["--preset", "toy2d-moons", "--steps", "6"], ["run on digits data, not on toy2d"]),
    ]:
        code, err = run_cli("train", "--out", copy, "--resume", *flags, "--no-progress")
        assert_user_error(code, err, *words)
    assert sorted(p.name for p in (copy / "checkpoints").glob("*.pt")) == before  # nothing written

    assert main(["train", "--out", str(copy), "--resume", "--no-progress"]) == 0
    assert "at step 4 of 4 already: nothing to train" in capsys.readouterr().out
    # flags that agree with the run are fine; device, precision and microbatch may change
    assert (
        main(
            [
                "train",
                "--preset",
                "digits",
                "--out",
                str(copy),
                "--resume",
                "--steps",
                "5",
                "--lr",
                "0.001",
                "--device",
                "cpu",
                "--precision",
                "bf16",
                "--microbatch",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    saved = yaml.safe_load((copy / "config.yaml").read_text())["train"]
    assert saved["steps"] == 5 and saved["precision"] == "bf16" and saved["batch_size"] == 16
    assert saved["microbatch"] == 5
    code, err = run_cli("train", "--out", copy, "--resume", "--steps", "6", "--microbatch", "0", "--no-progress")
    assert_user_error(code, err, "train.microbatch", "at least 1")


def test_train_says_in_one_line_what_it_runs(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    common = ["--preset", "digits", "--config", str(tiny_config), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--steps", "1", "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert f"training {out}: steps 0 -> 1, unet " in err and "M parameters, batch 16, cpu (" in err
    assert "bf16 autocast, channels-last" in err and err.count("training ") == 1
    assert main(resume_args(out, "--steps", 2, "--precision", "fp16", "--microbatch", 5)) == 0
    err = capsys.readouterr().err
    assert "steps 1 -> 2" in err and "batch 16 in chunks of 5" in err and "fp16 autocast + loss scaling" in err


def test_compile_mode_flag_turns_compile_on(tmp_path, tiny_config, monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "digits",
                "--config",
                str(tiny_config),
                "--out",
                str(out),
                "--steps",
                "1",
                "--compile-mode",
                "max-autotune-no-cudagraphs",
                "--no-progress",
            ]
        )
        == 0
    )
    assert modes == ["max-autotune-no-cudagraphs"]
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert "compile" not in saved and saved["compile_mode"] == "max-autotune-no-cudagraphs"


# ---------------------------------------------------------------------- eval on held-out images
def write_pngs(folder: Path, n: int, seed: int, size: int = 8) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A class-conditional folder run (classes ant, bee, cat) whose class bias really matters."""
    from conftest import TINY_DIGITS

    root = tmp_path_factory.mktemp("folder")
    for k, name in enumerate(["ant", "bee", "cat"]):
        write_pngs(root / "train" / name, 3, seed=k)
    cfg = {**TINY_DIGITS, "data": {"image_size": 8, "class_labels": True}}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "folder",
                "--data",
                str(root / "train"),
                "--config",
                str(root / "c.yaml"),
                "--out",
                str(out),
                "--steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    path = sorted((out / "checkpoints").glob("*.pt"))[-1]
    ckpt = torch.load(path, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for state in (ckpt["model"], ckpt["ema"]):  # large random class biases and output layer
        for key in state:
            if "class_bias" in key or "out_conv" in key:
                state[key] = torch.randn(state[key].shape, generator=g)
    torch.save(ckpt, path)
    return out, root


def test_eval_on_held_out_images_uses_the_runs_class_names(folder_run, tmp_path, capsys):
    from ddpmkit import Run

    run, root = folder_run
    assert main(["info", str(run)]) == 0
    assert "classes      3 (labels 0..2: ant, bee, cat)" in capsys.readouterr().out
    held = tmp_path / "held"
    write_pngs(held / "cat", 2, seed=7)  # only cat (label 2 in training), so label 0 here if not matched
    out = tmp_path / "bpd.json"
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                str(held),
                "--out",
                str(out),
                "--seed",
                "3",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["num"] == 2 and result["data"] == str(held) and result["split"] is None

    loaded = Run.load(run, ema=True, device="cpu")
    model, diffusion = loaded.model, loaded.diffusion
    from PIL import Image

    x0 = (
        torch.stack(
            [torch.from_numpy(np.array(Image.open(held / "cat" / f"{i}.png"))).permute(2, 0, 1) for i in range(2)]
        ).float()
        / 127.5
        - 1.0
    )

    def bpd(label: int) -> float:
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            return diffusion.vb_terms(model, x0, torch.full((2,), label), generator=gen).total.mean().item()

    assert result["bpd"] == pytest.approx(bpd(2), rel=1e-6)
    assert abs(bpd(0) - bpd(2)) > 1e-3 * bpd(2)  # the label matters, so a wrong one would show


def test_sample_labels_by_class_name(folder_run, tmp_path):
    run, _ = folder_run
    npz = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                str(run),
                "--num",
                "5",
                "--labels",
                "cat,ant, 1",
                "--steps",
                "2",
                "--sampler",
                "ddim",
                "--out",
                str(npz),
                "--no-progress",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(npz)["labels"], [2, 0, 1, 2, 0])
    code, err = run_cli("sample", run, "--num", "2", "--labels", "dog", "--out", tmp_path / "t.npz")
    assert_user_error(code, err, "'dog'", "ant, bee, cat")


def test_parse_labels_prefers_a_class_name_to_a_number():
    from ddpmkit.runs import parse_labels

    assert parse_labels("2,1,0", 3, 2, ["1", "2"]).tolist() == [1, 0, 0]  # names "2", "1"; then label 0
    assert parse_labels("1", 2, 2).tolist() == [1, 1]
    with pytest.raises(Exception, match="class numbers, got 'x'"):
        parse_labels("x", 2, 2)


def test_eval_data_errors(folder_run, run_dir, tmp_path):
    run, root = folder_run
    code, err = run_cli("eval", run, "--no-progress")
    assert_user_error(code, err, "no test split", "--data")
    write_pngs(tmp_path / "held" / "dog", 1, seed=0)
    code, err = run_cli("eval", run, "--data", tmp_path / "held", "--no-progress")
    assert_user_error(code, err, "'dog'", "ant, bee, cat")
    code, err = run_cli("eval", run_dir, "--data", tmp_path / "held", "--no-progress")
    assert_user_error(code, err, "--data applies to folder, cifar10 and mnist runs")


# ---------------------------------------------------------------------- bad input
def test_missing_data_directory(tmp_path):
    code, err = run_cli("train", "--preset", "folder", "--data", tmp_path / "nope", "--out", tmp_path / "r")
    assert_user_error(code, err, "nope")
    assert not (tmp_path / "r").exists()


def test_empty_data_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_cli("train", "--preset", "folder", "--data", tmp_path / "empty", "--out", tmp_path / "r")
    assert_user_error(code, err, "empty")


def test_corrupt_image_file(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    code, err = run_cli("train", "--preset", "folder", "--data", d, "--out", tmp_path / "r")
    assert_user_error(code, err, "broken.png")


@pytest.mark.parametrize(
    "bad,word",
    [
        ({"train": {"stepz": 3}}, "train.stepz"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"model": {"base_chanels": 8}}, "base_chanels"),
        ({"diffusion": {"variance": "huge"}}, "diffusion.variance"),
        ({"optimizer": {}}, "optimizer"),
    ],
)
def test_bad_config(tmp_path, bad, word):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    code, err = run_cli("train", "--preset", "digits", "--config", cfg, "--out", tmp_path / "r")
    assert_user_error(code, err, word)


def test_not_a_checkpoint_and_truncated(run_dir, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(200))
    assert_user_error(*run_cli("sample", junk, "--out", tmp_path / "s.npz"), "junk.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    assert_user_error(*run_cli("info", plain), "plain.pt")
    real = sorted((run_dir / "checkpoints").glob("*.pt"))[-1].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(real[: len(real) // 2])
    assert_user_error(*run_cli("sample", cut, "--out", tmp_path / "s.npz"), "cut.pt")
    assert not (tmp_path / "s.npz").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "ddpmkit-checkpoint", "model": _Evil(str(marker))}, f)
    code, err = run_cli("sample", evil, "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "evil.pt")
    assert not marker.exists()


def test_labels_out_of_range_and_negative_num(run_dir, tmp_path):
    assert_user_error(*run_cli("sample", run_dir, "--labels", "10", "--out", tmp_path / "s.npz"), "10")
    assert_user_error(*run_cli("sample", run_dir, "--labels", "x", "--out", tmp_path / "s.npz"), "labels")
    assert_user_error(*run_cli("sample", run_dir, "--num", "-5", "--out", tmp_path / "s.npz"), "-5")
    assert not (tmp_path / "s.npz").exists()


def test_trajectory_must_be_a_png(run_dir, tmp_path):
    traj = tmp_path / "traj.txt"
    assert_user_error(
        *run_cli("sample", run_dir, "--num", "2", "--out", tmp_path / "s.npz", "--trajectory", traj), "trajectory"
    )
    assert not traj.exists() and not (tmp_path / "s.npz").exists()


def test_default_steps_follow_the_chosen_sampler():
    from ddpmkit.config import SampleConfig
    from ddpmkit.runs.run import default_steps as _default_steps

    sc = SampleConfig(sampler="dpm++2m", steps=25, grid_steps=40)
    assert _default_steps("dpm++2m", sc) == 25
    assert _default_steps("ddim", sc) == 25  # another fast sampler keeps the run's budget
    assert _default_steps("ddpm", sc) is None  # ancestral sampling chosen here: all T steps
    full = SampleConfig(sampler="ddpm", steps=None, grid_steps=40)
    assert _default_steps("ddpm", full) is None
    assert _default_steps("dpm++3m", full) == 40  # never 1000 calls of a fast sampler by default


def test_existing_output_is_not_overwritten(run_dir, tmp_path):
    out = tmp_path / "s.npz"
    out.write_bytes(b"precious")
    assert_user_error(*run_cli("sample", run_dir, "--num", "2", "--out", out), "exists")
    assert out.read_bytes() == b"precious"


def test_existing_run_is_not_overwritten(run_dir):
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("*.pt")}
    code, err = run_cli("train", "--preset", "digits", "--out", run_dir)
    assert_user_error(code, err, "--resume")
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("*.pt")}
    assert before == after


def test_negative_guidance(run_dir, tmp_path):
    code, err = run_cli("sample", run_dir, "--num", "2", "--guidance", "-1", "--out", tmp_path / "g.npz")
    assert_user_error(code, err, "guidance must be a number >= 0")


@pytest.mark.system  # SIGPIPE reaches only a real console script
def test_a_reader_that_goes_away_ends_the_command_quietly(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpmkit", "info", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command has imported torch, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_missing_run(tmp_path):
    assert_user_error(*run_cli("info", tmp_path / "nothing"), "nothing")
