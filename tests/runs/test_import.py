"""Importing diffusers DDPM folders: the released models' structures, exact network and sampler, refusals."""

import inspect
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from ddpmkit.errors import UserError  # noqa: E402
from ddpmkit.runs import Run  # noqa: E402
from ddpmkit.runs.diffusers_folder import (  # noqa: E402
    SCHEDULER_DEFAULTS,
    UNET_DEFAULTS,
    is_diffusers_source,
    read_diffusers,
    run_fields_from_diffusers,
)
from ddpmkit.runs.export import export_run  # noqa: E402
from ddpmkit.runs.pretrained import import_diffusers  # noqa: E402

# google/ddpm-cifar10-32 and google/ddpm-celebahq-256 as released (unet/config.json), widths divided by 4
CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=[32, 64, 64, 64],
    layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    norm_eps=1e-6,
    norm_num_groups=32,
    attention_head_dim=None,
    act_fn="silu",
    center_input_sample=False,
    time_embedding_type="positional",
    mid_block_scale_factor=1,
)
CELEBAHQ = dict(
    CIFAR10,
    sample_size=256,
    block_out_channels=[32, 32, 64, 64, 128, 128],
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
)
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    variance_type="fixed_large",
    clip_sample=True,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _pipeline_folder(path, unet_config, scheduler=SCHEDULER, seed=0):
    """A DDPMPipeline folder with random weights (the trained ones are not downloaded)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**unet_config)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every bias and norm weight away from its initial value
    DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler(**scheduler)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return _pipeline_folder(tmp_path_factory.mktemp("import") / "ddpm-cifar10-32", CIFAR10)


def _their_unet(folder):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(folder, subfolder="unet").eval()


def _max_difference(folder, n=4, seed=1):
    """max |ours - theirs| of the network's output at n inputs and timesteps (t = 0 and T - 1 among them).

    Both in the channels_last layout Run.load gives ours: PyTorch's CPU convolutions round differently in the
    two layouts (4.7e-5 apart on diffusers' own UNet at 256 x 256), whichever network computes.
    """
    run = Run(**run_fields_from_diffusers(folder, device="cpu"))
    theirs = _their_unet(folder).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *run.sample_shape, generator=gen).contiguous(memory_format=torch.channels_last)
    t = torch.cat([torch.tensor([0, 999]), torch.randint(1, 999, (n - 2,), generator=gen)])
    with torch.no_grad():
        ours, got = run.model(x, t), theirs(x, t).sample
    assert got.abs().max() > 0.1  # random weights: a real comparison
    return (ours - got).abs().max().item()


def test_defaults_are_diffusers_own():
    from diffusers import DDPMScheduler, UNet2DModel

    for cls, table in ((UNet2DModel, UNET_DEFAULTS), (DDPMScheduler, SCHEDULER_DEFAULTS)):
        params = inspect.signature(cls.__init__).parameters
        theirs = {k: p.default for k, p in params.items() if k != "self"}
        theirs = {k: list(v) if isinstance(v, tuple) else v for k, v in theirs.items()}
        assert theirs == table


def test_the_released_models_settings_are_written_only_when_set():
    from ddpmkit.nn.unet import UNetConfig

    assert not {"time_freq_shift", "downsample_padding", "norm_eps"} & UNetConfig().to_dict().keys()
    cfg = UNetConfig(time_freq_shift=1, downsample_padding=0, norm_eps=1e-6)
    assert cfg.to_dict()["norm_eps"] == 1e-6 and UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_cifar10_structure_computes_diffusers_network(cifar_dir):
    cfg = read_diffusers(cifar_dir).config.model
    assert (
        cfg.channel_mults,
        cfg.attention_resolutions,
        cfg.time_freq_shift,
        cfg.downsample_padding,
        cfg.norm_eps,
    ) == ((1, 2, 2, 2), (16,), 1, 0, 1e-6)
    assert _max_difference(cifar_dir) < 1e-5


def test_celebahq_structure_computes_diffusers_network(tmp_path):
    folder = _pipeline_folder(tmp_path / "ddpm-celebahq-256", CELEBAHQ, dict(SCHEDULER, variance_type="fixed_small"))
    cfg = read_diffusers(folder).config
    assert cfg.model.channel_mults == (1, 1, 2, 2, 4, 4) and cfg.model.attention_resolutions == (16,)
    assert cfg.diffusion.variance == "fixed_small"
    assert _max_difference(folder, n=3) < 1e-5


def test_flipped_table_and_attention_heads_map_exactly(tmp_path):
    folder = _pipeline_folder(
        tmp_path / "flip",
        dict(CIFAR10, flip_sin_to_cos=True, freq_shift=0, attention_head_dim=16, downsample_padding=1, norm_eps=1e-5),
    )
    assert read_diffusers(folder).config.model.head_channels == 16
    assert _max_difference(folder) < 1e-5


def test_a_learned_variance_maps_exactly(tmp_path):
    folder = _pipeline_folder(
        tmp_path / "learned", dict(CIFAR10, out_channels=6), dict(SCHEDULER, variance_type="learned_range")
    )
    assert read_diffusers(folder).config.diffusion.variance == "learned_range"
    assert _max_difference(folder) < 1e-5


@pytest.mark.parametrize("timesteps, steps", [(100, 100), (1000, 50)], ids=["full-chain", "respaced"])
def test_ancestral_sampling_equals_ddpm_pipeline(tmp_path, timesteps, steps):
    """The same x_T and noises (one generator, drawn in the same order) give the same images.

    The whole chain of a 100-step diffusion, and the released 1000-step one respaced to 50 steps (diffusers'
    "leading" timesteps 980, 960, ..., 0); a 1000-step chain would take minutes on this CPU."""
    from diffusers import DDPMPipeline

    folder = _pipeline_folder(tmp_path / "cifar", CIFAR10, dict(SCHEDULER, num_train_timesteps=timesteps))
    run = Run(**run_fields_from_diffusers(folder, device="cpu"))
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, *run.sample_shape, generator=gen)
    with torch.no_grad():
        ours = run.diffusion.sample(
            run.model, x_T.shape, "ddpm", steps=steps, spacing="leading", generator=gen, x_T=x_T
        )
    pipeline = DDPMPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=steps, output_type="np"
    ).images
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert ours.std() > 0.05
    assert (ours - torch.from_numpy(theirs)).abs().max() < 1e-4


def test_import_writes_a_run_that_loads_and_records_its_source(cifar_dir, tmp_path):
    out = import_diffusers(cifar_dir, tmp_path / "run", dataset="cifar10")
    assert is_diffusers_source(cifar_dir) and not is_diffusers_source(out)
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "step_00000000.pt").is_file()
    ckpt = torch.load(out / "checkpoints" / "step_00000000.pt", weights_only=True)
    files = ckpt["extra"]["source"]["files"]
    assert sorted(files) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert ckpt["step"] == 0 and ckpt["optimizer"] is None
    loaded = Run.load(out, device="cpu")
    direct = Run(**run_fields_from_diffusers(cifar_dir, device="cpu", dataset="cifar10"))
    assert loaded.config == direct.config and loaded.ema and loaded.config.data.kind == "cifar10"
    assert all(torch.equal(v, direct.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(UserError, match="already exists"):
        import_diffusers(cifar_dir, out)


def test_a_default_runs_folder_that_cannot_be_made_is_one_error(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)  # root ignores a read-only folder's mode: refuse the mkdir itself
    with pytest.raises(UserError, match="cannot create 'runs' for the run \\(give --out\\): Permission denied"):
        import_diffusers(cifar_dir, dataset="cifar10")


def test_run_load_takes_the_folder_itself_and_samples_as_the_imported_run(cifar_dir, tmp_path):
    out = import_diffusers(cifar_dir, tmp_path / "run")
    direct, loaded = Run.load(cifar_dir, device="cpu"), Run.load(out, device="cpu")
    assert direct.config == loaded.config and direct.ema and not Run.load(cifar_dir, ema=False, device="cpu").ema
    assert not any(p.name == "runs" for p in cifar_dir.parent.iterdir())  # nothing written
    ours, theirs = (r.sample(4, sampler="unipc-bh2", steps=10) for r in (direct, loaded))
    assert ours.x.std() > 0.05 and torch.equal(ours.x, theirs.x)
    with pytest.raises(UserError, match="no such run directory or checkpoint"):  # a missing run keeps its message
        Run.load("no-such-dir/run")  # owner/name-shaped, not in any cache


def test_export_import_export_round_trips_bit_for_bit(cifar_dir, tmp_path):
    first = export_run(import_diffusers(cifar_dir, tmp_path / "r1"), "diffusers", tmp_path / "e1")
    second = export_run(import_diffusers(first, tmp_path / "r2"), "diffusers", tmp_path / "e2")
    for name in (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_pytorch_bin_with_old_attention_names_imports_the_same(cifar_dir, tmp_path):
    from safetensors.torch import load_file

    folder = shutil.copytree(cifar_dir, tmp_path / "bin")
    state = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in state.items():
        for new, was in old.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{was}.")
        renamed[key] = value
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(renamed, folder / "unet" / "diffusion_pytorch_model.bin")
    ours, theirs = read_diffusers(folder).state, read_diffusers(cifar_dir).state
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())


# ----------------------------------------------------------------------------- refusals


def _edit(folder, tmp_path, file, **changes):
    copy = shutil.copytree(folder, tmp_path / "edited")
    path = copy / file
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return copy


def _refused(folder, *words):
    with pytest.raises(UserError) as info:
        read_diffusers(folder)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


UNET_REFUSALS = [
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"num_class_embeds": 10}, "num_class_embeds"),
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]}, "down_block_types"),
    ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}, "up_block_types"),
    ({"mid_block_type": "UNetMidBlock2DCrossAttn"}, "mid_block_type"),
    ({"mid_block_type": None}, "mid_block_type"),
    ({"add_attention": False}, "add_attention"),
    ({"center_input_sample": True}, "center_input_sample"),
    ({"act_fn": "gelu"}, "act_fn"),
    ({"attention_head_dim": 48}, "attention_head_dim"),
    ({"mid_block_scale_factor": 2}, "mid_block_scale_factor"),
    ({"downsample_type": "resnet"}, "downsample_type"),
    ({"upsample_type": "resnet"}, "upsample_type"),
    ({"attn_norm_num_groups": 16}, "attn_norm_num_groups"),
    ({"block_out_channels": [32, 48, 64, 64]}, "block_out_channels"),
    ({"in_channels": 4}, "in_channels"),
    ({"out_channels": 6}, "out_channels"),
    ({"freq_shift": 0.5}, "freq_shift"),
    ({"sample_size": None}, "sample_size"),
    ({"cross_attention_dim": 768}, "cross_attention_dim"),
    ({"_class_name": "UNet2DConditionModel"}, "_class_name"),
]


@pytest.mark.parametrize("change, setting", UNET_REFUSALS, ids=[s for _, s in UNET_REFUSALS])
def test_unet_settings_without_an_exact_mapping_are_refused(cifar_dir, tmp_path, change, setting):
    _refused(_edit(cifar_dir, tmp_path, "unet/config.json", **change), "cannot import exactly", setting)


SCHEDULER_REFUSALS = [
    ({"beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"trained_betas": [0.01] * 999 + [0.02]}, "trained_betas"),
    ({"variance_type": "learned"}, "variance_type"),
    ({"variance_type": "fixed_small_log"}, "variance_type"),
    ({"variance_type": "learned_range"}, "out_channels"),  # the UNet outputs no variance
    ({"clip_sample_range": 2.0}, "clip_sample_range"),
    ({"thresholding": True}, "thresholding"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"_class_name": "DDIMScheduler"}, "_class_name"),
]


@pytest.mark.parametrize("change, setting", SCHEDULER_REFUSALS, ids=[str(c) for c, _ in SCHEDULER_REFUSALS])
def test_scheduler_settings_without_an_exact_mapping_are_refused(cifar_dir, tmp_path, change, setting):
    _refused(_edit(cifar_dir, tmp_path, "scheduler/scheduler_config.json", **change), setting)


def test_scheduler_settings_that_map(cifar_dir, tmp_path):
    from diffusers import DDPMScheduler

    from ddpmkit.runs.build import build_betas
    from ddpmkit.schedules import cosine_beta_schedule, scaled_linear_beta_schedule

    cases = [
        (
            {"prediction_type": "v_prediction", "clip_sample": False, "clip_sample_range": 3.0},
            {"prediction": "v", "clip_denoised": False},
        ),
        ({"prediction_type": "sample", "variance_type": "fixed_small"}, {"prediction": "x0"}),
        ({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500}, {"schedule": "cosine"}),
        ({"trained_betas": cosine_beta_schedule(1000).tolist()}, {"schedule": "cosine", "timesteps": 1000}),
        ({"beta_schedule": "scaled_linear", "beta_start": 8.5e-4, "beta_end": 0.012}, {"schedule": "scaled_linear"}),
        ({"trained_betas": scaled_linear_beta_schedule(1000).tolist()}, {"schedule": "scaled_linear"}),
    ]
    for i, (change, expected) in enumerate(cases):
        d = read_diffusers(_edit(cifar_dir, tmp_path / str(i), "scheduler/scheduler_config.json", **change))
        assert all(getattr(d.config.diffusion, k) == v for k, v in expected.items()), (change, d.config.diffusion)
    theirs = DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=500).betas.double()
    ours = build_betas(
        read_diffusers(
            _edit(cifar_dir, tmp_path / "c", "scheduler/scheduler_config.json", **cases[2][0])
        ).config.diffusion
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)  # float32 on their side
    theirs = DDPMScheduler(**cases[4][0]).betas.double()
    ours = build_betas(
        read_diffusers(
            _edit(cifar_dir, tmp_path / "s", "scheduler/scheduler_config.json", **cases[4][0])
        ).config.diffusion
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    folder = _edit(cifar_dir, tmp_path / "default", "scheduler/scheduler_config.json")
    data = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    del data["variance_type"]
    (folder / "scheduler/scheduler_config.json").write_text(json.dumps(data))
    assert read_diffusers(folder).config.diffusion.variance == "fixed_small"  # diffusers' default


def test_a_pipeline_with_other_components_is_refused(cifar_dir, tmp_path):
    _refused(_edit(cifar_dir, tmp_path, "model_index.json", vqvae=["diffusers", "VQModel"]), "vqvae")


# ----------------------------------------------------------------------------- damaged weights


def _weights(folder):
    return folder / "unet" / "diffusion_pytorch_model.safetensors"


def test_truncated_weights_are_refused(cifar_dir, tmp_path):
    folder = shutil.copytree(cifar_dir, tmp_path / "cut")
    data = _weights(folder).read_bytes()
    _weights(folder).write_bytes(data[: len(data) // 2])
    _refused(folder, "truncated or corrupt")


def test_altered_weights_are_refused(cifar_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(_weights(cifar_dir))
    key = "mid_block.attentions.0.to_q.weight"
    for i, change in enumerate(
        [
            {key: state[key][:, :-1].contiguous()},
            {key: state[key].clone().fill_(float("nan"))},
            {"extra.weight": torch.zeros(2)},
        ]
    ):
        folder = shutil.copytree(cifar_dir, tmp_path / str(i))
        save_file(dict(state, **change), _weights(folder))
        _refused(folder, key if i < 2 else "extra.weight")
    folder = shutil.copytree(cifar_dir, tmp_path / "missing")
    save_file({k: v for k, v in state.items() if k != key}, _weights(folder))
    _refused(folder, "lacks", key)
    folder = shutil.copytree(cifar_dir, tmp_path / "header")
    data = bytearray(_weights(cifar_dir).read_bytes())
    data[10:14] = b"\xff\xff\xff\xff"
    _weights(folder).write_bytes(bytes(data))
    _refused(folder, "truncated or corrupt")


# ----------------------------------------------------------------------------- the Hugging Face cache


def _cache_entry(cache, folder, repo="google/ddpm-cifar10-32"):
    """folder as the hub's cache lays it out: snapshots/REV/... links to blobs named by their hashes."""
    import hashlib

    entry = cache / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / "abc123"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        big = path.suffix in (".safetensors", ".bin")
        name = hashlib.sha256(data).hexdigest() if big else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (entry / "blobs").mkdir(parents=True, exist_ok=True)
        (entry / "blobs" / name).write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(entry / "blobs" / name, link.parent), link)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    return entry


def test_a_hub_id_is_read_from_the_local_cache_only(cifar_dir, tmp_path, monkeypatch):
    entry = _cache_entry(tmp_path / "hub", cifar_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    pretrained = read_diffusers("google/ddpm-cifar10-32")
    assert is_diffusers_source("google/ddpm-cifar10-32") and is_diffusers_source(entry)
    assert pretrained.config.name == "ddpm-cifar10-32"
    assert read_diffusers(entry).source == pretrained.source
    message = _refused_id("google/ddpm-church-256")
    assert not is_diffusers_source("google/ddpm-church-256")  # not cached: Run.load keeps a run's own message
    assert "never downloads" in message and "google/ddpm-church-256" in message
    weights = entry / "snapshots" / "abc123" / "unet" / "diffusion_pytorch_model.safetensors"
    blob = weights.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    blob.write_bytes(bytes(data))
    _refused(entry, "altered")


def _refused_id(repo):
    with pytest.raises(UserError) as info:
        read_diffusers(repo)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_not_a_folder(tmp_path):
    assert "not a diffusers DDPM folder" in _refused_id(tmp_path)
    assert "no such folder" in _refused_id(tmp_path / "a" / "b" / "c")
