"""ddpmkit inpaint, edit and interpolate on a tiny trained digits run: outputs, exact equalities, bad inputs refused
first."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit import GaussianDiffusion
from ddpmkit.cli import main
from ddpmkit.images import save_npz, save_png

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
RUN = str(LEGACY / "digits_unet_step3.pt")
TOY = str(LEGACY / "moons_mlp_step3.pt")


@pytest.fixture
def inputs(tmp_path):
    """A digit on the data's 17 grey levels, a keep-the-top-half mask, and other files to refuse."""
    rng = np.random.default_rng(0)
    digit = (np.round(rng.integers(0, 17, (8, 8)) * 255 / 16)).astype(np.uint8)
    mask = np.full((8, 8), 255, np.uint8)
    mask[4:] = 0
    files = {
        "digit": save_png(tmp_path / "digit.png", digit),
        "mask": save_png(tmp_path / "mask.png", mask),
        "digit2": save_png(tmp_path / "digit2.png", digit[::-1].copy()),
        "big": save_png(tmp_path / "big.png", np.zeros((16, 16), np.uint8)),
        "rgb": save_png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8)),
        "grey_mask": save_png(tmp_path / "grey_mask.png", np.where(mask > 0, 128, 0).astype(np.uint8)),
        "small_mask": save_png(tmp_path / "small_mask.png", np.full((4, 4), 255, np.uint8)),
    }
    np.savez(tmp_path / "mask2.npz", mask=np.full((8, 8), 2))
    files["npz_mask"] = tmp_path / "mask2.npz"
    files["pair"] = save_npz(tmp_path / "pair.npz", np.stack([digit, digit[::-1]])[..., None])
    return {k: str(v) for k, v in files.items()}, digit


def test_inpaint_keeps_the_known_pixels_and_writes_npz_and_png(tmp_path, inputs, capsys, one_thread):
    files, digit = inputs
    out_npz, out_png = tmp_path / "c.npz", tmp_path / "c.png"
    assert (
        main(
            [
                "inpaint",
                RUN,
                "--image",
                files["digit"],
                "--mask",
                files["mask"],
                "--num",
                "3",
                "--steps",
                "6",
                "--resample",
                "2",
                "--jump",
                "2",
                "--out",
                str(out_npz),
                "--out",
                str(out_png),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "3 completions (10 network calls each)" in capsys.readouterr().out  # 6 + (2 - 1) x 2 x 2 jump points
    with np.load(out_npz) as z:
        images = z["images"]
        assert images.shape == (3, 8, 8, 1) and "labels" not in z.files  # unconditional: the null label
    assert (images[:, :4, :, 0] == digit[:4]).all()
    assert not (images[:, 4:, :, 0] == digit[4:]).all()
    from PIL import Image

    assert Image.open(out_png).size == (4 * 65 + 1, 66)  # the masked input, then 3 completions, 8 px drawn 8x
    two = tmp_path / "two.npz"
    assert (
        main(
            [
                "inpaint",
                RUN,
                "--image",
                files["pair"],
                "--mask",
                files["mask"],
                "--sampler",
                "ddim",
                "--eta",
                "0",
                "--steps",
                "4",
                "--labels",
                "3",
                "--out",
                str(two),
                "--no-progress",
            ]
        )
        == 0
    )
    with np.load(two) as z:
        assert z["images"].shape == (2, 8, 8, 1) and z["labels"].tolist() == [3, 3]


def test_edit_at_strength_0_is_the_input_and_at_1_is_ddpmkit_sample(tmp_path, inputs, one_thread):
    files, digit = inputs
    zero, one, sampled = tmp_path / "0.npz", tmp_path / "1.npz", tmp_path / "s.npz"
    assert main(["edit", RUN, "--image", files["digit"], "--strength", "0", "--out", str(zero), "--no-progress"]) == 0
    assert (np.load(zero)["images"][0, :, :, 0] == digit).all()
    common = ["--labels", "8", "--sampler", "ddim", "--steps", "5", "--seed", "3", "--no-progress"]
    assert main(["edit", RUN, "--image", files["digit"], "--strength", "1", "--out", str(one), *common]) == 0
    assert main(["sample", RUN, "--num", "1", "--out", str(sampled), *common]) == 0
    np.testing.assert_array_equal(np.load(one)["images"], np.load(sampled)["images"])
    assert np.load(one)["labels"].tolist() == [8]
    half = tmp_path / "h.png"
    assert (
        main(
            [
                "edit",
                RUN,
                "--image",
                files["pair"],
                "--strength",
                "0.5",
                "--num",
                "2",
                "--out",
                str(half),
                "--labels",
                "8",
                "--guidance",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )


def test_interpolate_between_seeds_ends_at_their_samples_and_between_images(tmp_path, inputs, one_thread):
    files, _ = inputs
    strip, a, b = tmp_path / "strip.npz", tmp_path / "a.npz", tmp_path / "b.npz"
    assert (
        main(
            [
                "interpolate",
                RUN,
                "--seeds",
                "3,4",
                "--frames",
                "4",
                "--steps",
                "5",
                "--labels",
                "2",
                "--out",
                str(strip),
                "--out",
                str(tmp_path / "strip.png"),
                "--no-progress",
            ]
        )
        == 0
    )
    for seed, path in (("3", a), ("4", b)):
        assert (
            main(
                [
                    "sample",
                    RUN,
                    "--num",
                    "1",
                    "--seed",
                    seed,
                    "--labels",
                    "2",
                    "--sampler",
                    "ddim",
                    "--steps",
                    "5",
                    "--out",
                    str(path),
                    "--no-progress",
                ]
            )
            == 0
        )
    frames = np.load(strip)["images"]
    assert frames.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(frames[0], np.load(a)["images"][0])
    np.testing.assert_array_equal(frames[-1], np.load(b)["images"][0])
    png = tmp_path / "images.png"
    assert (
        main(
            [
                "interpolate",
                RUN,
                "--images",
                f"{files['digit']},{files['digit2']}",
                "--frames",
                "3",
                "--steps",
                "5",
                "--out",
                str(png),
                "--no-progress",
            ]
        )
        == 0
    )
    from PIL import Image

    assert Image.open(png).size == (5 * 65 + 1, 66)  # the two images around three frames


INPAINT = ["inpaint", RUN, "--image", "{digit}", "--mask"]  # a row adds the mask and any other flags
EDIT = ["edit", RUN, "--image", "{digit}", "--strength"]  # a row adds the strength and any other flags
BAD = [
    (["inpaint", TOY, "--image", "{digit}", "--mask", "{mask}"], "needs an image model"),
    (["inpaint", RUN, "--image", "{big}", "--mask", "{mask}"], "is 16x16 with 1 channel(s); this run makes 8x8"),
    (["inpaint", RUN, "--image", "{rgb}", "--mask", "{mask}"], "has mode RGB"),
    ([*INPAINT, "{grey_mask}"], "found the grey value 128"),
    ([*INPAINT, "{small_mask}"], "has shape (1, 4, 4); need [8, 8]"),
    ([*INPAINT, "{npz_mask}"], "must hold only 0 (generate) and 1 (keep)"),
    ([*INPAINT, "{mask}", "--resample", "0"], "resample must be an integer >= 1"),
    ([*INPAINT, "{mask}", "--jump", "0"], "jump must be an integer >= 1"),
    ([*INPAINT, "{mask}", "--sampler", "dpm++2m"], "multistep solver"),
    ([*INPAINT, "{mask}", "--eta", "0.5"], "eta applies to the ddim sampler"),
    (["inpaint", RUN, "--image", "nope.png", "--mask", "{mask}"], "image file not found"),
    ([*EDIT, "1.5"], "strength must be a number in [0, 1], got 1.5"),
    ([*EDIT, "-0.1"], "strength must be a number in [0, 1]"),
    ([*EDIT, "0.5", "--guidance", "3"], "guidance needs labels"),
    ([*EDIT, "0.5", "--labels", "11"], "label 11 is out of range"),
    ([*EDIT, "0.5", "--steps", "51"], "steps must be between 1 and 50"),
    (["edit", TOY, "--image", "{digit}", "--strength", "0.5"], "needs an image model"),
    (["interpolate", RUN, "--seeds", "1"], "seeds must be two integers"),
    (["interpolate", RUN, "--seeds", "1,x"], "--seeds must be two integers A,B"),
    (["interpolate", RUN, "--images", "{digit}"], "--images must be two files"),
    (["interpolate", RUN, "--seeds", "1,2", "--frames", "1"], "frames must be an integer >= 2"),
    (["interpolate", RUN, "--seeds", "1,2", "--labels", "1,2"], "interpolation takes one label"),
    (["interpolate", TOY, "--seeds", "1,2"], "needs an image model"),
]


@pytest.mark.parametrize("argv, words", BAD, ids=[f"{a[0]}-{w[:24]}" for a, w in BAD])
def test_bad_inputs_are_one_line_exit_2_before_any_network_call(tmp_path, inputs, capsys, monkeypatch, argv, words):
    files, _ = inputs

    def boom(*args, **kwargs):
        raise AssertionError("a network was called before the inputs were checked")

    for name in ("inpaint", "edit", "invert", "sample", "denoise"):
        monkeypatch.setattr(GaussianDiffusion, name, boom)
    out = tmp_path / "out.png"
    assert main([a.format(**files) for a in argv] + ["--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not out.exists()


def test_an_existing_output_is_kept_and_the_console_script_exits_2(tmp_path, inputs):
    from helpers import assert_user_error, run_cli

    files, _ = inputs
    out = tmp_path / "kept.png"
    out.write_bytes(b"mine")
    code, err = run_cli("edit", RUN, "--image", files["digit"], "--strength", "0.3", "--out", out)
    assert_user_error(code, err, "already exists")
    assert out.read_bytes() == b"mine"


def test_results_do_not_depend_on_the_batch_size_and_masks_can_differ_per_image(tmp_path, inputs, one_thread):
    from ddpmkit import Run
    from ddpmkit.runs.editing import edit, inpaint, read_images, read_mask

    files, digit = inputs
    run = Run.load(RUN, device="cpu")
    images = read_images(files["pair"], run)
    masks = np.zeros((2, 8, 8), np.int64)
    masks[0, :4], masks[1, :, :4] = 1, 1  # keep the top half of the first, the left half of the second
    np.savez(tmp_path / "masks.npz", mask=masks)
    mask = read_mask(tmp_path / "masks.npz", run, 2)
    assert mask.shape == (2, 1, 8, 8)
    one = inpaint(run, images, mask, num=2, steps=4, resample=2, batch_size=1, precision="fp32")
    four = inpaint(run, images, mask, num=2, steps=4, resample=2, batch_size=4, precision="fp32")
    assert torch.equal(one.x, four.x)
    kept = torch.from_numpy(masks).bool()[:, None].repeat_interleave(2, 0)
    assert torch.equal(one.x[kept], images.repeat_interleave(2, 0)[kept])
    a = edit(run, images, 0.4, num=3, steps=5, batch_size=2, labels="1,2", precision="fp32")
    b = edit(run, images, 0.4, num=3, steps=5, batch_size=6, labels="1,2", precision="fp32")
    assert torch.equal(a.x, b.x) and a.labels.tolist() == [1, 2, 1, 2, 1, 2]
