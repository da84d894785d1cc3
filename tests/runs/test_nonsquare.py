"""Non-square images: image_size [H, W] through the config, the UNet, folder data, training, sampling and the CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ddpmkit import Run, UNet, UNetConfig, UserError
from ddpmkit.cli import main
from ddpmkit.config import load_config
from ddpmkit.data import load_dataset, load_image_folder, resize_images
from ddpmkit.data.base import resize_center_crop
from ddpmkit.fields import parse_image_size
from ddpmkit.nn.unet import AttentionBlock
from ddpmkit.runs import train, write_samples
from helpers import sample_args

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
TINY = {
    "in_channels": 1,
    "base_channels": 8,
    "channel_mults": (1, 2, 2),
    "num_res_blocks": 1,
    "attention_resolutions": (4,),
    "num_groups": 4,
    "head_channels": 8,
    "dropout": 0.0,
}


def _attended_levels(net: UNet) -> list[tuple[int, int]]:
    """The (H, W) of every feature map that passes through self-attention, in forward order (hooks)."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
        for m in net.modules()
        if isinstance(m, AttentionBlock)
    ]
    cfg = net.config
    net(torch.zeros(1, 1, *cfg.resolved_image_hw), torch.tensor([3]))
    for h in hooks:
        h.remove()
    return seen


# ----------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("size, pad", [([16, 24], 0), ([8, 32], 0), ([32, 8], 0), ([12, 20], 2), ([6, 14], 1)])
def test_unet_maps_h_by_w_to_h_by_w(size, pad):
    h, w = size
    net = UNet(UNetConfig(**TINY, image_size=size, initial_pad=pad))
    torch.nn.init.normal_(net.out_conv.weight)  # else the output is all zeros whatever the shapes inside
    x = torch.randn(2, 1, h, w)
    out = net(x, torch.tensor([1, 7]))
    assert out.shape == (2, 1, h, w) and out.abs().sum() > 0
    # every level is H x W halved, padded on both axes; attention sits where the smaller side is 4
    assert net.config.level_shapes() == [((h + 2 * pad) // 2**i, (w + 2 * pad) // 2**i) for i in range(3)]
    attended = {s for s in _attended_levels(net) if min(s) == 4}
    assert attended == {
        ((h + 2 * pad) // 2**k, (w + 2 * pad) // 2**k) for k in range(3) if min(h + 2 * pad, w + 2 * pad) // 2**k == 4
    }


def test_a_non_square_unet_is_the_square_one_run_on_a_wider_input():
    """image_size only places attention: the same weights give the same output on a 16 x 24 input."""
    torch.manual_seed(0)
    square = UNet(UNetConfig(**TINY, image_size=16))
    torch.manual_seed(0)
    wide = UNet(UNetConfig(**TINY, image_size=[16, 24]))
    for a, b in zip(square.state_dict().values(), wide.state_dict().values()):
        assert torch.equal(a, b)
    torch.nn.init.normal_(square.out_conv.weight)
    wide.load_state_dict(square.state_dict())
    x = torch.randn(2, 1, 16, 24)
    torch.testing.assert_close(square(x, torch.tensor([0, 9])), wide(x, torch.tensor([0, 9])), rtol=0, atol=0)


def test_attention_levels_are_named_by_the_smaller_side_whatever_the_orientation():
    landscape = UNet(UNetConfig(**{**TINY, "attention_resolutions": (8,)}, image_size=[16, 32]))
    portrait = UNet(UNetConfig(**{**TINY, "attention_resolutions": (8,)}, image_size=[32, 16]))
    # down (1 block) + up (2 blocks) at the level whose smaller side is 8, + the middle (4 x 8 / 8 x 4)
    assert _attended_levels(landscape) == [(8, 16), (4, 8), (8, 16), (8, 16)]
    assert _attended_levels(portrait) == [(16, 8), (8, 4), (16, 8), (16, 8)]


def test_unet_config_keeps_square_sizes_as_one_int():
    assert UNetConfig(**TINY, image_size=[16, 16]).image_size == 16
    assert UNetConfig(**TINY, image_size=16).to_dict()["image_size"] == 16
    assert UNetConfig(**TINY, image_size=[16, 24]).to_dict()["image_size"] == [16, 24]
    assert UNetConfig.from_dict(UNetConfig(**TINY, image_size=[16, 24]).to_dict()).image_size == (16, 24)


@pytest.mark.parametrize(
    "changes, words",
    [
        (
            {"image_size": [0, 8]},
            "'model.image_size' must be a positive integer or a list [H, W] of two positive integers, got [0, 8]",
        ),
        ({"image_size": [8]}, "'model.image_size' must be a positive integer or a list [H, W]"),
        ({"image_size": "8x16"}, "'model.image_size' must be a positive integer or a list [H, W]"),
        ({"image_size": [8, 12.5]}, "'model.image_size' must be a positive integer or a list [H, W]"),
        (
            {"image_size": [8, 14]},
            "'model.image_size' must be [H, W] such that H + 2*initial_pad and W + 2*initial_pad are divisible by 4",
        ),
        (
            {"image_size": [8, 14], "initial_pad": 1},
            "W + 2*initial_pad are divisible by 4 (2 ** (len(channel_mults) - 1)), got [8, 14]",
        ),
        (
            {"image_size": [8, 16], "attention_resolutions": (16,)},
            "'model.attention_resolutions' must be sizes of levels, each the smaller side of its feature map "
            "(8, 4, 2 for image_size [8, 16])",
        ),
    ],
)
def test_bad_unet_sizes_are_refused_in_one_line(changes, words):
    with pytest.raises(UserError) as info:
        UNetConfig(**{**TINY, **changes})
    assert words in str(info.value) and "\n" not in str(info.value)
    # the same size with a good pad passes: the divisibility counts the padding on both axes
    UNetConfig(**{**TINY, "image_size": [6, 14], "initial_pad": 1})


# ----------------------------------------------------------------------------- config and command line


def _train_cli(tmp_path, config: dict, *extra) -> int:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(
        [
            "train",
            "--preset",
            "digits",
            "--config",
            str(path),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "config, extra, words",
    [
        (
            {"data": {"image_size": [0, 8]}},
            (),
            "config key 'data.image_size' must be a positive integer or a list [H, W] "
            "of two positive integers or null, got [0, 8]",
        ),
        ({"data": {"image_size": [8]}}, (), "config key 'data.image_size' must be a positive integer or a list [H, W]"),
        ({"data": {"image_size": "8x16"}}, (), "got '8x16'"),
        ({"data": {"image_size": [8, 8, 8]}}, (), "got [8, 8, 8]"),
        (
            {"data": {"image_size": [8, 10]}},
            (),
            "config key 'model.image_size' must be [H, W] such that H + "
            "2*initial_pad and W + 2*initial_pad are divisible by 4",
        ),
        (
            {"data": {"image_size": [8, 16]}, "model": {"image_size": [16, 8]}},
            (),
            "config key 'model.image_size' must be [8, 16], as the data gives, got [16, 8]",
        ),
        ({}, ("--image-size", "8x"), "--image-size must be a positive integer S or HxW"),
        ({}, ("--image-size", "0x8"), "got '0x8'"),
        ({}, ("--image-size", "8x10"), "divisible by 4"),
    ],
)
def test_bad_sizes_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, config, extra, words):
    assert _train_cli(tmp_path, config, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_command_line_sizes():
    assert parse_image_size("32") == 32 and parse_image_size("32x48") == [32, 48]
    assert parse_image_size("32X32") == 32 and parse_image_size("8x16") == [8, 16]
    for bad in ("", "x", "32x", "3.5", "-8", "8x8x8", "²"):
        with pytest.raises(UserError, match="--image-size must be"):
            parse_image_size(bad)


def test_a_size_given_on_top_of_a_preset_reshapes_its_model(tmp_path):
    """--image-size (an override of data.image_size) on a preset whose model took the preset's size."""
    from ddpmkit.runs import start_training

    cfg = load_config("digits")
    assert cfg.model.image_size == 8
    trainer = start_training(cfg, tmp_path / "r", overrides={"data": {"image_size": [8, 16]}}, progress=False)
    assert trainer.cfg.model.image_size == (8, 16) and trainer.dataset.shape == (1, 8, 16)


def test_configs_agree_however_the_size_is_written():
    cfg = load_config("digits", overrides={"data": {"image_size": [8, 16]}, "model": {"image_size": [8, 16]}})
    assert cfg.data.image_size == cfg.model.image_size == (8, 16)
    assert cfg.to_dict()["data"]["image_size"] == [8, 16]
    cfg = load_config("digits", overrides={"data": {"image_size": [8, 8]}, "model": {"image_size": 8}})
    assert cfg.data.image_size == cfg.model.image_size == 8


def test_legacy_int_configs_load_unchanged():
    """The YAML of a run written before non-square images reads to the same values, image_size an int."""
    raw = yaml.safe_load((LEGACY / "digits_unet_config.yaml").read_text())
    cfg = load_config(config_file=LEGACY / "digits_unet_config.yaml")
    assert cfg.model.image_size == 8 and isinstance(cfg.model.image_size, int)
    assert cfg.model.to_dict()["image_size"] == raw["model"]["image_size"] == 8
    run = Run.load(LEGACY / "digits_unet_step3.pt", device="cpu")
    assert run.sample_shape == (1, 8, 8) and run.config.model.image_size == 8


def test_a_square_run_still_samples_the_same_bits(one_thread):
    """The 20 digits the code before non-square images drew from the legacy checkpoint, bit for bit."""
    before = np.load(LEGACY / "legacy_unet_samples.npz")
    run = Run.load(LEGACY / "digits_unet_step3.pt", device="cpu")
    samples = run.sample(20, labels="all", precision="fp32")
    from ddpmkit.images import to_uint8

    np.testing.assert_array_equal(to_uint8(samples.x, run.config.sample.levels), before["images"])


# ----------------------------------------------------------------------------- resizing


def _ramp(w: int, h: int, a: int, b: int) -> Image.Image:
    """A greyscale image whose pixel (x, y) is a*x + b*y: bicubic resizing keeps a linear ramp linear."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray((a * x + b * y).astype(np.uint8), "L")


@pytest.mark.parametrize(
    "src, size",
    [((90, 60), (12, 24)), ((40, 100), (16, 8)), ((50, 50), (10, 31)), ((90, 61), (20, 25)), ((64, 41), (20, 20))],
)
def test_resize_and_centre_crop_match_the_analytic_ramp(src, size):
    """Output pixel (i, j) samples the source at ((left + j + 0.5) / s - 0.5, (top + i + 0.5) / s - 0.5), with s
    the cover scale max(H / h, W / w) and the crop centred: a*x + b*y there, within rounding (interior pixels)."""
    (w, h), (height, width) = src, size
    a, b = 1, 2
    out = np.asarray(resize_center_crop(_ramp(w, h, a, b), size), dtype=np.float64)
    assert out.shape == (height, width)
    scale = max(height / h, width / w)
    new_w, new_h = round(w * scale), round(h * scale)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    j = np.arange(width)
    i = np.arange(height)
    x = (left + j + 0.5) * (w / new_w) - 0.5
    y = (top + i + 0.5) * (h / new_h) - 0.5
    expected = a * x[None, :] + b * y[:, None]
    inner = (slice(2, -2), slice(2, -2))  # bicubic clamps at the image's own borders
    np.testing.assert_allclose(out[inner], expected[inner], atol=1.01)


def test_square_resizing_is_what_it_was():
    """For an int size: the shorter side becomes S and the centre S x S is kept, the rule before [H, W]
    sizes, written out here again, pixel for pixel."""
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.integers(0, 256, (3, 3, 36, 23), dtype=np.uint8))  # 23 x 36 -> 16 x 25: 9 cut
    ours = resize_images(data, 16)
    assert torch.equal(ours, resize_images(data, (16, 16)))
    for k in range(3):
        img = Image.fromarray(data[k].permute(1, 2, 0).numpy())
        new_w, new_h = 16, round(36 * 16 / 23)
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top = (new_h - 16) // 2
        ref = np.asarray(img.crop((0, top, 16, top + 16)))
        np.testing.assert_array_equal(ours[k].permute(1, 2, 0).numpy(), ref)


def test_builtin_datasets_resize_to_h_by_w():
    ds = load_dataset("digits", image_size=(8, 16))
    assert ds.shape == (1, 8, 16)
    # an 8 x 8 digit scaled 2x to 16 x 16, rows 4..11 kept
    full = resize_images(load_dataset("digits").data[:4], 16)
    assert torch.equal(ds.data[:4], full[:, :, 4:12, :])


# ----------------------------------------------------------------------------- train, sample, write


def _folder(root: Path, n: int = 6) -> Path:
    """Landscape and portrait RGB images with a bright centre block, in two class folders."""
    rng = np.random.default_rng(1)
    for k in range(n):
        w, h = (36, 20) if k % 2 else (24, 40)
        arr = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        arr[h // 2 - 3 : h // 2 + 3, w // 2 - 3 : w // 2 + 3] = 250
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / f"c{k % 2}" / f"{k}.png")
    return root


def test_folder_images_are_covered_and_centre_cropped(tmp_path):
    ds = load_image_folder(_folder(tmp_path / "imgs"), (8, 16))
    assert ds.shape == (3, 8, 16) and len(ds) == 6
    centre = ds.data[:, :, 3:5, 7:9].float().mean()
    assert centre > 200  # the marked centre stays in the centre, landscape or portrait


TINY_FOLDER = {
    "name": "wide",
    "data": {"kind": "folder", "image_size": [8, 16], "class_labels": True, "hflip": True},
    "model": {
        "kind": "unet",
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
        "num_groups": 4,
        "head_channels": 8,
        "dropout": 0.0,
    },
    "diffusion": {"timesteps": 20},
    "train": {
        "steps": 3,
        "batch_size": 4,
        "log_every": 1,
        "sample_every": 3,
        "checkpoint_every": 3,
        "num_grid_samples": 4,
        "precision": "fp32",
        "device": "cpu",
    },
    "sample": {"sampler": "ddim", "steps": 3, "grid_sampler": "ddim", "grid_steps": 2},
}


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wide")
    path = tmp / "wide.yaml"
    path.write_text(
        yaml.safe_dump({**TINY_FOLDER, "data": {**TINY_FOLDER["data"], "root": str(_folder(tmp / "imgs"))}})
    )
    torch.set_num_threads(1)
    train(load_config(config_file=path), tmp / "run", progress=False, log=None)
    return tmp / "run"


def _grid_size(ncol: int, nrow: int, h: int = 8, w: int = 16) -> tuple[int, int]:
    """(width, height) of a sample grid of h x w tiles enlarged by grid_scale with GRID_GAP between them."""
    from ddpmkit.images import GRID_GAP, grid_scale

    s = grid_scale(w, ncol)
    return ncol * (w * s + GRID_GAP) + GRID_GAP, nrow * (h * s + GRID_GAP) + GRID_GAP


def test_a_non_square_run_trains_and_samples_h_by_w(wide_run, tmp_path):
    grid = Image.open(next((wide_run / "samples").glob("*.png")))
    assert grid.size == _grid_size(2, 2)  # a training grid of 8 x 16 tiles: one class per row
    assert yaml.safe_load((wide_run / "config.yaml").read_text())["model"]["image_size"] == [8, 16]
    run = Run.load(wide_run, device="cpu")
    assert run.sample_shape == (3, 8, 16) and run.config.model.image_size == (8, 16)
    s = run.sample(5, seed=3, batch_size=2)
    assert s.x.shape == (5, 3, 8, 16) and s.labels.tolist() == [0, 1, 0, 1, 0]
    # sample i uses seed + i whatever the batch: samples 1.. of seed 3 are samples 0.. of seed 4
    torch.testing.assert_close(run.sample(4, seed=4, labels=[1, 0, 1, 0]).x, s.x[1:], rtol=0, atol=1e-5)
    npz = np.load(write_samples(tmp_path / "s.npz", s))
    assert npz["images"].shape == (5, 8, 16, 3) and npz["labels"].tolist() == [0, 1, 0, 1, 0]
    png = Image.open(write_samples(tmp_path / "s.png", s))
    assert png.size == _grid_size(3, 2)  # classes 0 and 1 cycled: a row of three 0s and a row of two 1s


def test_the_commands_take_a_non_square_run(wide_run, tmp_path, capsys):
    assert main(["info", str(wide_run)]) == 0
    assert "folder (8x16x3 images, H x W x C)" in capsys.readouterr().out
    out, strip = tmp_path / "s.npz", tmp_path / "t.png"
    assert main(sample_args(wide_run, "--num", "3", "--out", out, "--trajectory", strip, "--device", "cpu")) == 0
    assert np.load(out)["images"].shape == (3, 8, 16, 3)
    rows, cols = 2 * 3, 3  # x_t and predicted x0 rows for 3 samples; ddim with 3 calls keeps all 3
    assert Image.open(strip).size == (cols * (16 * 4 + 1) + 1, rows * (8 * 4 + 1) + 1)
    assert main(["eval", str(wide_run), "--split", "train", "--num", "2", "--no-progress", "--device", "cpu"]) == 0
    assert "bits/dim = " in capsys.readouterr().out
    # a resumed run keeps its size: 8x16 agrees, 16x8 does not
    assert (
        main(["train", "--out", str(wide_run), "--resume", "--steps", "4", "--image-size", "8x16", "--no-progress"])
        == 0
    )
    assert (
        main(["train", "--out", str(wide_run), "--resume", "--steps", "5", "--image-size", "16x8", "--no-progress"])
        == 2
    )
    assert "--image-size [16, 8] differs from the run's data.image_size = [8, 16]" in capsys.readouterr().err


def test_bits_per_dim_counts_h_w_c(wide_run):
    """L_T in bits/dim is KL(q(x_T | x0) || N(0, I)) summed over all H * W * C dimensions (the closed form for
    each) over H * W * C * ln 2: an image dark on its left half and light on its right tells H * H from H * W."""
    run = Run.load(wide_run, device="cpu")
    x0 = torch.cat([torch.full((2, 3, 8, 8), -1.0), torch.full((2, 3, 8, 8), 1.0 - 2 / 255)], dim=3)
    terms = run.diffusion.vb_terms(run.model, x0, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    abar = float(np.prod(1 - run.diffusion.betas.double().numpy()))
    mean, var = np.sqrt(abar) * x0.double().numpy(), 1 - abar
    kl = 0.5 * (-1 - np.log(var) + var + mean**2)  # KL(N(mean, var) || N(0, 1)) per dimension, in nats
    expected = kl.reshape(2, -1).sum(1) / (8 * 16 * 3 * np.log(2))
    np.testing.assert_allclose(terms.prior.numpy(), expected, rtol=1e-5)
    assert terms.total.shape == (2,) and torch.all(terms.total > terms.prior)


def test_inpaint_edit_and_interpolate_take_a_non_square_run(wide_run, tmp_path, capsys):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[:, ::-1].copy()).save(tmp_path / "b.png")
    mask = np.full((8, 16), 255, np.uint8)
    mask[:, 8:] = 0  # keep the left half
    Image.fromarray(mask).save(tmp_path / "m.png")
    run, common = str(wide_run), ["--no-progress", "--device", "cpu", "--labels", "1"]
    assert (
        main(
            [
                "inpaint",
                run,
                "--image",
                str(tmp_path / "a.png"),
                "--mask",
                str(tmp_path / "m.png"),
                "--num",
                "2",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "i.npz"),
                *common,
            ]
        )
        == 0
    )
    filled = np.load(tmp_path / "i.npz")["images"]
    assert filled.shape == (2, 8, 16, 3) and (filled[:, :, :8] == image[:, :8]).all()
    assert (
        main(
            [
                "edit",
                run,
                "--image",
                str(tmp_path / "a.png"),
                "--strength",
                "0.5",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "e.npz"),
                *common,
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "e.npz")["images"].shape == (1, 8, 16, 3)
    assert (
        main(
            [
                "interpolate",
                run,
                "--images",
                f"{tmp_path / 'a.png'},{tmp_path / 'b.png'}",
                "--frames",
                "3",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "strip.npz"),
                *common,
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "strip.npz")["images"].shape == (3, 8, 16, 3)
    wrong = tmp_path / "tall.png"
    Image.fromarray(image.transpose(1, 0, 2).copy()).save(wrong)  # 16 x 8: the run's size turned
    assert main(["edit", run, "--image", str(wrong), "--strength", "0.5", *common]) == 2
    assert capsys.readouterr().err.count("\n") == 1
