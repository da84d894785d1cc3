"""benchmarks/mnist_quality.py: ddpmkit's recipe on top of the mnist preset (``--set``), snapshots for a post-hoc
EMA sweep only with a power EMA, and the scored checkpoints."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.bench


def test_the_recipe_goes_on_top_of_the_scaled_preset():
    from conftest import benchmark_script

    with benchmark_script("mnist_quality") as module:
        plain = module._ddpmkit_config(800, "x")
        tuned = module._ddpmkit_config(800, "x", ["train.ema_kind=power", "diffusion.min_snr_gamma=5"])
        quarters = module._quarters(800)
    assert (plain.train.steps, plain.train.warmup_steps, plain.train.ema_decay) == (800, 40, 0.995)
    assert plain.train.ema_kind == "fixed" and plain.train.ema_snapshot_every == 0
    assert (tuned.train.ema_kind, tuned.train.ema_snapshot_every, tuned.diffusion.min_snr_gamma) == ("power", 100, 5)
    assert (tuned.train.steps, tuned.train.checkpoint_every) == (800, 200)
    assert quarters == [("q1", 200), ("q2", 400), ("q3", 600), ("all", 800)]


def test_the_preset_row_trains_the_preset_as_the_cli_does():
    from conftest import benchmark_script
    from ddpmkit import load_config

    with benchmark_script("mnist_quality") as module:
        preset = module.preset_config()
        tuned = module.preset_config(["train.ema_kind=power"])
    cli = load_config("mnist")
    assert preset.train == cli.train and preset.model == cli.model and preset.diffusion == cli.diffusion
    assert preset.train.steps == 3000 and preset.train.sample_every == 1000
    assert tuned.train.ema_kind == "power" and tuned.train.steps == 3000


def test_diffusers_samples_in_the_calls_asked_for(tmp_path, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    from conftest import benchmark_script

    with benchmark_script("mnist_quality") as module:
        import torch

        torch.save(module.diffusers_model().state_dict(), tmp_path / "ema.pt")
        calls, forward = [], diffusers.UNet2DModel.forward

        def counted(self, *args, **kwargs):
            calls.append(1)
            return forward(self, *args, **kwargs)

        monkeypatch.setattr(diffusers.UNet2DModel, "forward", counted)
        images = module.sample_diffusers(tmp_path / "ema.pt", 3, calls=4)
    assert images.shape == (3, 28, 28, 1) and images.dtype.name == "uint8"
    assert len(calls) == 4  # one batch of 3, four solver steps
