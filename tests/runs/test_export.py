"""ddpmkit export: safetensors round trip; diffusers folders checked against diffusers itself (when installed)."""

import copy
import json

import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.config import DiffusionConfig
from ddpmkit.nn.unet import UNetConfig
from ddpmkit.runs import Run
from ddpmkit.runs.build import build_diffusion
from ddpmkit.runs.export import diffusers_refusal, export_run, load_safetensors, scheduler_config

pytest.importorskip("safetensors")


def _train(path, **data):
    from conftest import TINY_DIGITS
    from ddpmkit.config import load_config
    from ddpmkit.runs import train

    over = copy.deepcopy(TINY_DIGITS)
    over["train"].update(steps=1, checkpoint_every=0, log_every=1, device="cpu")
    over["data"] = data
    train(load_config("digits", overrides=over), path, progress=False, log=None)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny unconditional digits run whose EMA weights are replaced by random ones (trained ones are near 0)."""
    path = _train(tmp_path_factory.mktemp("export") / "run", conditional=False)
    file = sorted((path / "checkpoints").glob("*.pt"))[-1]
    ckpt = torch.load(file, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    ckpt["ema"] = {k: 0.3 * torch.randn(v.shape, generator=gen) for k, v in ckpt["ema"].items()}
    torch.save(ckpt, file)
    return path


def _inputs(run, n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *run.sample_shape, generator=gen)
    t = torch.randint(0, run.diffusion.num_timesteps, (n,), generator=gen)
    return x, t


def test_safetensors_round_trip_gives_the_same_network(run_dir, tmp_path):
    out = export_run(run_dir, "safetensors", tmp_path / "exp")
    model, cfg = load_safetensors(out)
    run = Run.load(run_dir, device="cpu")
    about = json.loads((out / "config.json").read_text())
    assert about["ema"] is True and about["step"] == 1 and cfg == run.config
    theirs = run.model.state_dict()
    assert model.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    model = model.to(memory_format=torch.channels_last)  # as Run.load lays it out: the same kernels
    x, t = _inputs(run)
    with torch.no_grad():
        assert torch.equal(model(x, t), run.model(x, t))
        assert run.model(x, t).abs().max() > 0.1  # random weights: a real comparison


def test_default_out_and_refusing_to_overwrite(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "safetensors"]) == 0
    out = run_dir.parent / "run_export"
    before = (out / "model.safetensors").read_bytes()
    assert main(["export", str(run_dir), "--format", "safetensors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["export", str(run_dir / "nope"), "--format", "safetensors", "--out", str(out) + "2"]) == 2


def test_a_class_conditional_run_is_refused_with_the_reason(tmp_path, capsys):
    run = _train(tmp_path / "cond")
    assert main(["export", str(run), "--format", "diffusers", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot export to diffusers") and "class bias" in err[0]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"initial_pad": 2, "attention_resolutions": (6,)}, "initial_pad"),
        ({"channel_mults": (2, 2)}, "channel_mults"),
        ({"time_emb_scale": 1000.0}, "time_emb_scale"),
        ({"channel_mults": (1, 4), "head_channels": 32, "attention_resolutions": (8,)}, "heads of different widths"),
    ],
)
def test_networks_diffusers_cannot_compute_are_refused(change, words):
    base = dict(base_channels=16, channel_mults=(1, 2), attention_resolutions=(4,), num_groups=8, image_size=8)
    cfg = type("Cfg", (), {"model": UNetConfig(**{**base, **change})})
    assert words in diffusers_refusal(cfg)
    assert diffusers_refusal(type("Cfg", (), {"model": UNetConfig(**base)})) is None


@pytest.fixture(scope="module")
def diffusers_dir(run_dir, tmp_path_factory):
    pytest.importorskip("diffusers")
    return export_run(run_dir, "diffusers", tmp_path_factory.mktemp("diffusers") / "out")


@pytest.mark.anchors
def test_diffusers_unet_computes_our_network(run_dir, diffusers_dir):
    from diffusers import UNet2DModel

    theirs = UNet2DModel.from_pretrained(diffusers_dir, subfolder="unet").eval()
    run = Run.load(run_dir, device="cpu")
    x, t = _inputs(run)
    with torch.no_grad():
        ours, got = run.model(x, t), theirs(x, t).sample
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.anchors
def test_diffusers_scheduler_and_pipeline_load(run_dir, diffusers_dir):
    from diffusers import DDPMPipeline, DDPMScheduler

    run = Run.load(run_dir, device="cpu")
    scheduler = DDPMScheduler.from_pretrained(diffusers_dir, subfolder="scheduler")
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), run.diffusion.alphas_cumprod, rtol=1e-6, atol=0)
    pipe = DDPMPipeline.from_pretrained(diffusers_dir)
    images = pipe(
        batch_size=1, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 8, 8, 1)


@pytest.mark.anchors
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small", "learned_range"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_a_ddpm_scheduler_step_is_our_ancestral_step(variance, prediction):
    """DDPMScheduler.step from our scheduler config = our posterior mean + our sigma * the same noise."""
    diffusers = pytest.importorskip("diffusers")
    cfg = DiffusionConfig(
        timesteps=40,
        schedule="cosine" if prediction == "v" else "linear",
        prediction=prediction,
        variance=variance,
        loss="hybrid" if variance == "learned_range" else "l2",
    )
    ours = build_diffusion(cfg)
    sched = diffusers.DDPMScheduler.from_config(scheduler_config(cfg))
    sched.set_timesteps(cfg.timesteps)
    # diffusers keeps its tables in float32 (relative error 1e-3 in 1 - abar near t = 1): the config's betas in float64
    sched.alphas_cumprod = torch.cumprod(1 - torch.tensor(sched.config.trained_betas, dtype=torch.float64), 0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 4, 4, generator=gen, dtype=torch.float64)
    out = torch.randn(2, 2 if variance == "learned_range" else 1, 4, 4, generator=gen, dtype=torch.float64).clamp(-1, 1)
    for step in (39, 17, 1, 0):
        t = torch.full((2,), step)
        mv = ours.p_mean_variance(lambda *_: out, x, t)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
        expected = mv.mean + (step > 0) * torch.exp(0.5 * mv.log_var) * noise
        got = sched.step(out, step, x, generator=torch.Generator().manual_seed(step)).prev_sample
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
