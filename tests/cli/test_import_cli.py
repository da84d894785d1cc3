"""``ddpmkit import``: a saved DDPMPipeline folder becomes a run that every command takes; refusals are one line."""

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from helpers import assert_user_error, run_cli, run_cli_out  # noqa: E402

# google/ddpm-cifar10-32's own settings (frequency shift, asymmetric downsampling, eps, one full-width head),
# at 16 x 16 with two narrow levels and T = 50 so that every command below runs in seconds
UNET = dict(
    sample_size=16,
    block_out_channels=[32, 64],
    layers_per_block=1,
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    norm_eps=1e-6,
    attention_head_dim=None,
)
SCHEDULER = dict(num_train_timesteps=50, beta_start=1e-4, beta_end=0.2, variance_type="fixed_large")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny DDPMPipeline folder with random weights."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**UNET).eval()
    path = tmp_path_factory.mktemp("import_cli") / "ddpm-tiny-16"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SCHEDULER)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("import_cli_run") / "run"
    code, stdout = run_cli_out("import", folder, "--out", out)
    assert code == 0, stdout
    assert stdout.startswith(f"wrote {out} (unet, ") and f"M parameters, from {folder})" in stdout, stdout
    return out


def _png(path, mode):
    from PIL import Image

    values = np.random.default_rng(0).integers(0, 256, (16, 16, 3) if mode == "RGB" else (16, 16), dtype=np.uint8)
    if mode == "L":
        values = np.where(np.arange(16)[:, None] < 8, 255, 0).astype(np.uint8) * np.ones((1, 16), np.uint8)
    Image.fromarray(values, mode).save(path)
    return path


def test_imported_run_samples_and_describes_its_source(imported, folder, tmp_path):
    code, err = run_cli("sample", imported, "--num", 2, "--steps", 4, "--no-progress", "--out", tmp_path / "s.npz")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        assert [a.shape for a in f.values() if a.ndim == 4] == [(2, 16, 16, 3)]
    code, out = run_cli_out("info", imported)
    assert code == 0 and f"source       diffusers folder {folder.resolve()}" in out, out
    assert "T=50 linear" in out


def test_imported_run_exports_inpaints_edits_and_scores(imported, tmp_path):
    code, err = run_cli("export", imported, "--format", "diffusers", "--out", tmp_path / "e")
    assert code == 0 and (tmp_path / "e" / "unet" / "diffusion_pytorch_model.safetensors").is_file(), err
    image, mask = _png(tmp_path / "x.png", "RGB"), _png(tmp_path / "m.png", "L")
    common = ("--image", image, "--steps", 4, "--no-progress")
    code, err = run_cli("inpaint", imported, *common, "--mask", mask, "--out", tmp_path / "f.png")
    assert code == 0 and (tmp_path / "f.png").is_file(), err
    code, err = run_cli("edit", imported, *common, "--strength", 0.5, "--out", tmp_path / "d.png")
    assert code == 0 and (tmp_path / "d.png").is_file(), err
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for i in range(2):
        _png(held_out / f"{i}.png", "RGB")
    code, out = run_cli_out("eval", imported, "--metric", "bpd", "--data", held_out, "--no-progress")
    assert code == 0 and np.isfinite(json.loads(out.splitlines()[0])["bpd"]), out


def test_a_setting_without_an_exact_mapping_is_one_line_and_writes_nothing(folder, tmp_path):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "fourier")
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**config, "time_embedding_type": "fourier"}))
    code, err = run_cli("import", copy, "--out", tmp_path / "run")
    assert_user_error(code, err, "cannot import exactly", "time_embedding_type")
    assert not (tmp_path / "run").exists()


def test_an_existing_out_needs_force_and_a_missing_folder_is_one_line(folder, imported, tmp_path):
    code, err = run_cli("import", folder, "--out", imported)
    assert_user_error(code, err, "already exists", "--force")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert_user_error(*run_cli("import", folder, "--out", tmp_path / "taken"), "already exists")
    assert run_cli("import", folder, "--out", tmp_path / "taken", "--force")[0] == 0
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    code, err = run_cli("import", folder, "--out", tmp_path / "taken", "--force")
    assert_user_error(code, err, "holds a run's checkpoints")
    assert_user_error(*run_cli("import", tmp_path / "nowhere", "--out", tmp_path / "r"), "no such folder")
    assert_user_error(*run_cli("import", tmp_path, "--out", tmp_path / "r"), "not a diffusers DDPM folder")
