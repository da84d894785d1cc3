"""The trainer: resume equality, the learning-rate schedule, config loading, bf16 vs fp32 steps."""

import copy

import pytest
import torch

from ddpmkit import UserError
from ddpmkit.config import TrainConfig, experiment_from_dict, load_config
from ddpmkit.runs import start_training
from ddpmkit.train.trainer import lr_at


def tiny_cfg(steps: int, **train):
    from conftest import TINY_DIGITS

    over = copy.deepcopy(TINY_DIGITS)
    over["model"]["dropout"] = 0.1  # exercises the global RNG across a resume
    over["train"].update(steps=steps, deterministic=True, **train)
    return load_config("digits", overrides=over)


def resume(run_dir, steps):
    """The trainer of a run resumed up to ``steps``, through the run layer."""
    return start_training(None, run_dir, resume=True, overrides={"train": {"steps": steps}}, progress=False)


def state(trainer):
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "ema": {k: v.clone() for k, v in trainer.ema.state_dict().items()},
    }


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # a constant learning rate: a cosine schedule depends on the total number of steps
    straight = start_training(tiny_cfg(6, lr_schedule="constant"), tmp_path / "a", progress=False)
    straight.train()
    first = start_training(tiny_cfg(3, lr_schedule="constant"), tmp_path / "b", progress=False)
    first.train()
    resumed = resume(tmp_path / "b", 6)
    assert resumed.start_step == 3
    resumed.train()
    a, b = state(straight), state(resumed)
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    # and the optimizer moments too
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in sa:
        torch.testing.assert_close(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=0, atol=0)


def test_fp16_resume_keeps_the_loss_scale(tmp_path):
    """The GradScaler's state (scale, steps since the last overflow) travels in the checkpoint."""
    straight = start_training(tiny_cfg(4, lr_schedule="constant", precision="fp16"), tmp_path / "a", progress=False)
    straight.train()
    start_training(tiny_cfg(2, lr_schedule="constant", precision="fp16"), tmp_path / "b", progress=False).train()
    resumed = resume(tmp_path / "b", 4)
    assert resumed.scaler.state_dict()["_growth_tracker"] == 2
    resumed.train()
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    assert straight.scaler.state_dict()["_growth_tracker"] == 4  # four steps without an overflow
    a, b = state(straight), state(resumed)
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")


def test_resume_on_another_kind_of_device_reseeds_the_noise_stream(tmp_path, capsys):
    """A run saved on a GPU holds a 16-byte CUDA generator state, which a CPU generator cannot take."""
    import shutil

    from ddpmkit.runs.rundir import load_checkpoint
    from ddpmkit.train.checkpoint import save_checkpoint

    start_training(tiny_cfg(2, device="cpu"), tmp_path / "r", progress=False).train()
    path = tmp_path / "r" / "checkpoints" / "step_00000002.pt"
    ckpt = load_checkpoint(path)
    ckpt["extra"]["generator"] = torch.zeros(16, dtype=torch.uint8)  # as a CUDA Philox state
    save_checkpoint(path, **{k: ckpt[k] for k in ("step", "config", "model", "ema", "optimizer", "rng", "extra")})
    runs = []
    for name in ("a", "b"):
        shutil.copytree(tmp_path / "r", tmp_path / name)
        t = resume(tmp_path / name, 3)
        t.train()
        runs.append(state(t))
    assert "trained on another kind of device" in capsys.readouterr().err
    for k in runs[0]["model"]:  # reseeded from (seed, step): two resumes agree
        assert torch.equal(runs[0]["model"][k], runs[1]["model"][k])


def test_resume_without_checkpoints_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        resume(tmp_path / "none", 2)


def test_training_reduces_the_loss(tmp_path):
    cfg = tiny_cfg(60, lr=2e-3, log_every=20)
    cfg.diffusion.timesteps = 50
    trainer = start_training(cfg, tmp_path / "r", progress=False)
    trainer.train()
    from ddpmkit.train.metrics import read_metrics

    losses = [m["loss"] for m in read_metrics(tmp_path / "r" / "metrics.jsonl")]
    assert losses[-1] < 0.8 * losses[0]


def test_lr_warmup_then_cosine():
    tc = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1)
    assert lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(10, tc) == pytest.approx(1.0)
    assert lr_at(60, tc) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, tc) == pytest.approx(0.1)
    const = TrainConfig(lr=0.5)
    assert lr_at(1000, const) == 0.5


def test_config_is_strict_and_round_trips():
    cfg = load_config("digits")
    again = experiment_from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(UserError, match="train.nope"):
        load_config("digits", overrides={"train": {"nope": 1}})
    with pytest.raises(UserError, match="train.batch_size"):
        load_config("digits", overrides={"train": {"batch_size": 1.5}})
    with pytest.raises(UserError, match="data.hflip"):
        load_config("digits", overrides={"data": {"hflip": "yes"}})
    with pytest.raises(UserError, match="unknown preset"):
        load_config("imagenet")


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "steps", 0),
        ("train", "batch_size", 0),
        ("train", "log_every", 0),
        ("train", "ema_every", 0),
        ("train", "num_grid_samples", 0),
        ("train", "warmup_steps", -1),
        ("train", "checkpoint_every", -5),
        ("train", "sample_every", -1),
        ("train", "keep_checkpoints", -1),
        ("train", "ema_start", -1),
        ("train", "lr", -1e-4),
        ("train", "lr", 0.0),
        ("train", "lr", float("inf")),
        ("train", "lr", float("nan")),
        ("train", "weight_decay", -0.1),
        ("train", "min_lr_ratio", 1.5),
        ("train", "ema_decay", 1.0),
        ("train", "grad_clip", -1.0),
        ("train", "grad_clip", 0.0),
        ("train", "adam_betas", [0.9, 1.0]),
        ("diffusion", "vlb_weight", -0.001),
        ("sample", "steps", 0),
        ("sample", "grid_steps", 0),
        ("sample", "eta", 1.5),
        ("sample", "guidance", -1.0),
    ],
)
def test_config_values_out_of_range_are_refused_by_name(section, key, value):
    """Caught when the config is read, before any data or network: one UserError naming the key."""
    with pytest.raises(UserError, match=f"'{section}.{key}' must be"):
        load_config("digits", overrides={section: {key: value}})


def test_config_range_limits_themselves_are_accepted():
    cfg = load_config(
        "digits",
        overrides={
            "train": {
                "steps": 1,
                "log_every": 1,
                "warmup_steps": 0,
                "checkpoint_every": 0,
                "sample_every": 0,
                "keep_checkpoints": 0,
                "min_lr_ratio": 1.0,
                "ema_decay": 0.0,
                "grad_clip": None,
                "adam_betas": [0.0, 0.0],
                "weight_decay": 0.0,
            },
            "diffusion": {"vlb_weight": 0.0},
            "sample": {"steps": 1, "eta": 1.0, "guidance": 0.0},
        },
    )
    assert cfg.train.grad_clip is None and cfg.sample.guidance == 0.0


def test_toy2d_preset_names_the_distribution():
    cfg = load_config("toy2d-moons")
    assert cfg.data.distribution == "moons" and cfg.model.kind == "mlp"


def test_bad_model_field_is_caught_when_the_config_is_read():
    with pytest.raises(UserError, match="'model.num_groups' must be a divisor of the channel count"):
        load_config("digits", overrides={"model": {"base_channels": 16, "num_groups": 7}})


def test_bf16_step_agrees_with_fp32(tmp_path):
    """One training step's loss under bf16 autocast is within bf16 precision of fp32."""
    from ddpmkit.train.runtime import autocast_context

    trainer = start_training(tiny_cfg(1, device="cpu"), tmp_path / "r", progress=False)  # CPU autocast, CPU batch
    torch.manual_seed(0)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    y = torch.arange(8) % 10
    t, w, noise, drop = trainer.objective.draw(8, (1, 8, 8), torch.device("cpu"), torch.Generator().manual_seed(0))
    # give the zero-initialised output a signal so the comparison means something
    torch.nn.init.normal_(trainer.model.out_conv.weight, std=0.1) if hasattr(trainer.model, "out_conv") else None
    trainer.model.eval()
    fp32, _ = trainer.objective(trainer.model, x0, y, t, w, noise, drop)
    with autocast_context(torch.device("cpu"), torch.bfloat16):
        bf16, _ = trainer.objective(trainer.model, x0, y, t, w, noise, drop)
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.03)


def _grads_of_one_step(tmp_path, name, x0, y, **train):
    """The gradient one train_step hands to the optimizer (the step itself is skipped)."""
    cfg = tiny_cfg(1, precision="fp32", device="cpu", **train)  # the batch below lives on the CPU
    cfg.model.dropout = 0.0  # a chunked step draws its dropout masks in another order
    trainer = start_training(cfg, tmp_path / name, progress=False)
    seen = {}

    def capture():
        seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})

    trainer.optimizer.step = capture
    loss = trainer.train_step(x0, y)
    return loss, seen


def test_microbatches_accumulate_the_whole_batch_gradient(tmp_path):
    """Chunks of 6, 6 and 4 of a batch of 16, each chunk's mean loss weighted by its size."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    y = torch.arange(16) % 10
    loss, whole = _grads_of_one_step(tmp_path, "whole", x0, y, grad_clip=None)
    chunked_loss, chunked = _grads_of_one_step(tmp_path, "chunks", x0, y, grad_clip=None, microbatch=6)
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-6, atol=0)
    assert whole.keys() == chunked.keys()
    for k in whole:
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-5, atol=1e-7, msg=k)
    # a microbatch at least as large as the batch is the whole batch, bit for bit
    same_loss, same = _grads_of_one_step(tmp_path, "same", x0, y, grad_clip=None, microbatch=64)
    assert torch.equal(same_loss, loss) and all(torch.equal(same[k], whole[k]) for k in whole)


def test_microbatched_training_follows_the_same_path(tmp_path):
    """Three steps with loss-aware timesteps (which see every chunk's losses) and clipping; the
    tolerance is the 2-process test's: summation order, amplified by Adam's first steps."""
    runs = {}
    for name, microbatch in (("whole", None), ("chunks", 5)):
        # on the CPU: a GPU's TF32 convolutions would round the chunks and the whole batch apart
        cfg = tiny_cfg(3, precision="fp32", lr_schedule="constant", microbatch=microbatch, device="cpu")
        cfg.model.dropout = 0.0
        cfg.diffusion.timestep_sampler = "loss_aware"
        trainer = start_training(cfg, tmp_path / name, progress=False)
        trainer.train()
        runs[name] = trainer
    a, b = state(runs["whole"]), state(runs["chunks"])
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{part}.{k}: {m}")
    sa, sb = runs["whole"].objective.timesteps.state_dict(), runs["chunks"].objective.timesteps.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(torch.as_tensor(sb[k]), torch.as_tensor(sa[k]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_microbatch_is_refused_with_cuda_graph_compile_modes(mode):
    """CUDA graphs replay into the buffers that hold the gradients being accumulated."""
    with pytest.raises(UserError, match="'train.microbatch' cannot be combined with compile_mode"):
        load_config("digits", overrides={"train": {"compile_mode": mode, "microbatch": 4}})
    for fine in (
        {"compile_mode": "max-autotune-no-cudagraphs", "microbatch": 4},
        {"compile_mode": None, "microbatch": 4},
        {"compile_mode": mode, "microbatch": None},
    ):
        load_config("digits", overrides={"train": fine})
