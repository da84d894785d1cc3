"""Read a diffusers DDPM folder (UNet2DModel + DDPMScheduler) and map it onto ddpmkit, exactly or not at all.

    Run(**run_fields_from_diffusers("ddpm-cifar10-32"))   # a loaded run, nothing written (what Run.load does)

The folder is a ``DDPMPipeline`` folder, a folder with ``unet/`` and ``scheduler/``, a Hugging Face
cache snapshot of one, or a hub id found in the local cache; nothing is ever downloaded. The network
is mapped module by module through the table export uses (``diffusers_names``); a setting
ddpmkit cannot compute exactly is refused with one line naming it. ``pretrained.import_diffusers`` writes
the result as a run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..config import ExperimentConfig, experiment_from_dict
from ..errors import UserError
from ..nn.unet import UNetConfig
from ..options import Device, Variance, choices
from ..schedules import cosine_beta_schedule, linear_beta_schedule, scaled_linear_beta_schedule
from ..train.distributed import DistInfo, device_for
from .build import build_diffusion, build_model, check_state_dict
from .diffusers_names import diffusers_names

__all__ = [
    "Pretrained",
    "read_diffusers",
    "run_fields_from_diffusers",
    "find_diffusers_folder",
    "is_diffusers_folder",
    "is_diffusers_source",
    "unet_config_from_diffusers",
    "state_from_diffusers",
    "diffusion_from_scheduler",
    "UNET_DEFAULTS",
    "SCHEDULER_DEFAULTS",
]

# UNet2DModel's and DDPMScheduler's constructor defaults (diffusers 0.42.1): a key a config leaves out has these
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14


class Pretrained(NamedTuple):
    """A diffusers folder read and mapped: ddpmkit's config, the network's state dict, where it came from."""

    config: ExperimentConfig
    state: dict[str, Tensor]  # our UNet's state dict, float32
    source: dict  # {"format", "folder", "files": {relative path: sha256}}
    weights: Path  # the weights file read


# ----------------------------------------------------------------------------- finding the folder


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a diffusers UNet (a DDPMPipeline folder or unet/ + scheduler/)."""
    path = Path(path)
    return (path / "unet" / "config.json").is_file() and (path / "scheduler").is_dir()


def is_diffusers_source(src: str | Path) -> bool:
    """Whether ``src`` names a diffusers folder on this machine rather than a run: such a folder, a cache entry,
    or an ``owner/name`` hub id found in the local cache (what ``Run.load`` hands to ``run_fields_from_diffusers``;
    a missing path keeps the run's own message)."""
    path = Path(src).expanduser()
    if path.is_dir():
        return is_diffusers_folder(path) or (path / "snapshots").is_dir()
    return not path.exists() and _cached(str(src)) is not None


def _cache_dirs() -> list[Path]:
    """Where the Hugging Face hub keeps downloaded repositories, as huggingface_hub looks them up."""
    found = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE")]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return [Path(p) for p in found if p] + [Path(home) / "hub"]


def _snapshot(repo: Path) -> Path | None:
    """The snapshot of a cached repository that refs/main names, else its only (or newest) snapshot."""
    ref = repo / "refs" / "main"
    if ref.is_file() and (repo / "snapshots" / ref.read_text().strip()).is_dir():
        return repo / "snapshots" / ref.read_text().strip()
    snapshots = sorted((p for p in (repo / "snapshots").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def _cached(name: str) -> Path | None:
    """The local cache's snapshot of the hub repository ``owner/name``, if it holds a diffusers folder."""
    name = name.strip("/")
    if name.count("/") != 1:
        return None
    for cache in _cache_dirs():
        snap = _snapshot(cache / f"models--{name.replace('/', '--')}") if cache.is_dir() else None
        if snap is not None and is_diffusers_folder(snap):
            return snap
    return None


def find_diffusers_folder(src: str | Path) -> Path:
    """The folder to read: ``src`` itself, the snapshot of a cached repository, or a hub id's local snapshot."""
    path = Path(src).expanduser()
    if path.is_dir() and (path / "snapshots").is_dir():  # a cache entry models--owner--name
        path = _snapshot(path) or path
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise UserError(f"{str(src)!r} is not a diffusers DDPM folder (it needs unet/config.json and scheduler/)")
        return path
    name = str(src).strip("/")
    if name.count("/") == 1 and not path.exists():
        snap = _cached(name)
        if snap is not None:
            return snap
        raise UserError(
            f"{name!r} is not a folder and not in the local Hugging Face cache ({_cache_dirs()[-1]}); "
            f"ddpmkit never downloads: put the DDPMPipeline folder (model_index.json, unet/, "
            f"scheduler/) on this machine and pass its path"
        )
    raise UserError(f"no such folder: {str(src)!r}")


# ----------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_cached_blob(path: Path, sha256: str) -> None:
    """A cache snapshot's file is a link to a blob named by its hash: refuse one whose bytes changed."""
    if not path.is_symlink():
        return
    blob = path.resolve().name
    if len(blob) == 64:  # large files: the sha256 of their bytes
        ok = blob == sha256
    elif len(blob) == 40:  # small files: git's blob hash
        data = path.read_bytes()
        ok = blob == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    else:
        return
    if not ok:
        raise UserError(f"{path} does not match the hash its cache entry is named by (the file was altered)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def _load_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors or PyTorch (weights_only) state dict; a damaged file is one UserError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: the export extra

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise UserError("reading a .safetensors file needs the safetensors package: pip install safetensors") from None
    except pickle.UnpicklingError as exc:
        what = "asks to import or run code" if "GLOBAL" in str(exc) else "is truncated or corrupt"
        raise UserError(f"cannot read the weights {path}: the file {what}") from None
    except Exception:  # noqa: BLE001 - safetensors and torch raise many kinds for a damaged file
        raise UserError(f"cannot read the weights {path}: the file is truncated or corrupt") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"the weights {path} hold no state dict of tensors")
    for key, value in state.items():
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise UserError(f"the weights {path} are altered: tensor {key!r} is not finite floating point")
    return state


def _files(folder: Path) -> tuple[Path, dict[str, str]]:
    """The weights file and the sha256 of every file read, each checked against its cache blob."""
    weights = next((folder / "unet" / w for w in _WEIGHTS if (folder / "unet" / w).is_file()), None)
    if weights is None:
        sharded = any((folder / "unet").glob("*.index.json"))
        what = "sharded weights, which ddpmkit does not read" if sharded else "no " + " or ".join(_WEIGHTS)
        raise UserError(f"{folder / 'unet'} has {what}")
    paths = [
        folder / "model_index.json",
        folder / "unet" / "config.json",
        weights,
        folder / "scheduler" / "scheduler_config.json",
    ]
    sums = {}
    for path in paths:
        if path.is_file():
            sums[path.relative_to(folder).as_posix()] = digest = _sha256(path)
            _check_cached_blob(path, digest)
    return weights, sums


# ----------------------------------------------------------------------------- the UNet


def _refuse(setting: str, value: Any, why: str) -> UserError:
    return UserError(f"cannot import exactly: {setting} is {value!r}: {why}")


_UNET_FIXED = {  # settings that must have this value, and why
    "time_embedding_type": ("positional", "ddpmkit's time embedding is the sinusoidal table"),
    "center_input_sample": (False, "ddpmkit's network takes x_t as it is"),
    "class_embed_type": (None, "ddpmkit has no class embedding added to the time embedding"),
    "num_class_embeds": (
        None,
        "UNet2DModel adds the class embedding to the time embedding before the blocks' SiLU; "
        "ddpmkit's class label is each residual block's own bias, which cannot express it",
    ),
    "resnet_time_scale_shift": (
        "default",
        "ddpmkit's residual blocks add the time embedding as a bias (no scale-shift normalisation)",
    ),
    "mid_block_type": ("UNetMidBlock2D", "ddpmkit's middle is residual block, attention, residual block"),
    "add_attention": (True, "ddpmkit's middle always has attention"),
    "mid_block_scale_factor": (1, "ddpmkit's middle blocks do not rescale their output"),
    "downsample_type": ("conv", "ddpmkit downsamples with a stride-2 convolution"),
    "upsample_type": ("conv", "ddpmkit upsamples by nearest neighbour and a convolution"),
}


def _check_unet(c: dict) -> None:
    """Refuse, with one line naming it, every setting whose computation ddpmkit's UNet does not have."""
    unknown = [k for k in c if not k.startswith("_") and k not in UNET_DEFAULTS]
    if unknown:
        raise _refuse(
            f"unet setting {unknown[0]!r}",
            c[unknown[0]],
            "this ddpmkit does not know it (its mapping was checked against diffusers 0.42.1)",
        )
    if c.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _refuse("unet _class_name", c["_class_name"], "ddpmkit maps UNet2DModel only")
    for key, (value, why) in _UNET_FIXED.items():
        if c[key] != value:
            raise _refuse(key, c[key], why)
    if c["act_fn"] not in ("silu", "swish"):
        raise _refuse("act_fn", c["act_fn"], "ddpmkit's blocks use SiLU")
    if c["attn_norm_num_groups"] not in (None, c["norm_num_groups"]):
        raise _refuse(
            "attn_norm_num_groups",
            c["attn_norm_num_groups"],
            "ddpmkit's attention normalises with norm_num_groups groups",
        )
    if c["downsample_padding"] not in (0, 1):
        raise _refuse("downsample_padding", c["downsample_padding"], "ddpmkit pads by 1, or (0) right and below")
    down, up, widths = list(c["down_block_types"]), list(c["up_block_types"]), list(c["block_out_channels"])
    if not len(down) == len(up) == len(widths):
        raise _refuse("down_block_types", down, "it needs as many entries as up_block_types and block_out_channels")
    for key, types in (("down_block_types", down), ("up_block_types", up)):
        known = ("DownBlock2D", "AttnDownBlock2D") if key == "down_block_types" else ("UpBlock2D", "AttnUpBlock2D")
        bad = [t for t in types if t not in known]
        if bad:
            raise _refuse(key, types, f"ddpmkit's levels are {' and '.join(known)} ({bad[0]} is not)")
    if [t.startswith("Attn") for t in up] != [t.startswith("Attn") for t in reversed(down)]:
        raise _refuse("up_block_types", up, "ddpmkit's levels attend on the way up where they do on the way down")
    if any(w % widths[0] for w in widths):
        raise _refuse("block_out_channels", widths, "each must be a multiple of the first (ddpmkit's channel_mults)")
    if c["sample_size"] is None:
        raise _refuse("sample_size", None, "the image size is needed")
    if c["in_channels"] not in (1, 3):
        raise _refuse("in_channels", c["in_channels"], "ddpmkit models images of 1 or 3 channels")


def _head_channels(c: dict, widths: list[int], attends: list[bool]) -> int:
    """ddpmkit's head width for UNet2DModel's attention_head_dim (null: one head of full width everywhere)."""
    attending = [w for w, a in zip(widths, attends) if a] + [widths[-1]]  # the middle attends
    d = c["attention_head_dim"]
    if d is None:
        return max(attending)  # max(1, channels // head_channels) = 1 head in every attention layer
    if isinstance(d, bool) or not isinstance(d, int) or any(w % d or w < d for w in attending):
        raise _refuse("attention_head_dim", d, f"it must divide the width of every attention layer ({attending})")
    return d


def unet_config_from_diffusers(config: dict, out_channels: int | None = None) -> UNetConfig:
    """ddpmkit's UNetConfig for a UNet2DModel config (its missing keys at diffusers' defaults); refuses what
    ddpmkit cannot compute exactly. ``flip_sin_to_cos`` is absorbed by the weights (see ``state_from_diffusers``)."""
    c = {**UNET_DEFAULTS, **config}
    _check_unet(c)
    widths = [int(w) for w in c["block_out_channels"]]
    given = c["sample_size"]
    size = given if isinstance(given, int) else (int(given[0]), int(given[1]))
    h, w = (size, size) if isinstance(size, int) else size
    attends = [t.startswith("Attn") for t in c["down_block_types"]]
    shift = c["freq_shift"]
    if isinstance(shift, bool) or not float(shift).is_integer() or not 0 <= shift < widths[0] // 2:
        raise _refuse("freq_shift", shift, f"ddpmkit's shift is a whole number in [0, {widths[0] // 2})")
    return UNetConfig(
        in_channels=c["in_channels"],
        base_channels=widths[0],
        channel_mults=tuple(x // widths[0] for x in widths),
        num_res_blocks=c["layers_per_block"],
        dropout=float(c["dropout"]),
        num_groups=c["norm_num_groups"],
        attention_resolutions=tuple(min(h, w) // 2**i for i, a in enumerate(attends) if a),
        image_size=size,
        out_channels=out_channels if out_channels is not None else c["out_channels"],
        time_emb_dim=c["time_embedding_dim"],
        head_channels=_head_channels(c, widths, attends),
        time_freq_shift=int(shift),
        downsample_padding=c["downsample_padding"],
        norm_eps=float(c["norm_eps"]),
    )


def _renamed(key: str) -> str:
    """A key of diffusers' attention before 0.14 (query, key, value, proj_attn) under today's name."""
    parts = key.split(".")
    if "attentions" in parts and len(parts) >= 2 and parts[-2] in _OLD_ATTENTION:
        return ".".join([*parts[:-2], _OLD_ATTENTION[parts[-2]], parts[-1]])
    return key


def state_from_diffusers(
    theirs: dict[str, Tensor], m: UNetConfig, flip_sin_to_cos: bool, where: str
) -> dict[str, Tensor]:
    """Our UNet's state dict from UNet2DModel's, through ``diffusers_names``; every tensor used once."""
    theirs = {_renamed(k): v for k, v in theirs.items()}
    names = diffusers_names(m)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_model(m).state_dict().items()}
    ours: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> Tensor:
        if key not in theirs:
            raise UserError(f"{where} lacks the tensor {key!r} of the UNet its config describes")
        if tuple(theirs[key].shape) != shape:
            raise UserError(
                f"{where}: tensor {key!r} has shape {tuple(theirs[key].shape)}, the UNet its config "
                f"describes needs {shape}"
            )
        used.add(key)
        return theirs[key].to(torch.float32)

    for key, shape in shapes.items():
        module, _, param = key.rpartition(".")
        if module.endswith(".attention.qkv"):
            part = (shape[0] // 3, *shape[1:])
            ours[key] = torch.cat([take(f"{names[module[:-4]]}.{n}.{param}", part) for n in ("to_q", "to_k", "to_v")])
        else:
            ours[key] = take(f"{names[module]}.{param}", shape)
    extra = sorted(theirs.keys() - used)
    if extra:
        raise UserError(f"{where} has a tensor {extra[0]!r} that the UNet its config describes does not have")
    if flip_sin_to_cos:  # their table is cat(cos, sin), ours cat(sin, cos): swap the halves of the first layer
        w = ours["time_embedding.1.weight"]
        ours["time_embedding.1.weight"] = torch.cat(w.chunk(2, dim=1)[::-1], dim=1)
    check_state_dict(m, ours, where)
    return ours


# ----------------------------------------------------------------------------- the scheduler


def _betas_schedule(s: dict) -> dict:
    """ddpmkit's schedule fields for the scheduler's betas; ``trained_betas`` only when they are one of them."""
    T, name = s["num_train_timesteps"], s["beta_schedule"]
    if s["trained_betas"] is not None:
        betas = torch.tensor(s["trained_betas"], dtype=torch.float64)
        if betas.ndim != 1 or len(betas) != T:
            raise _refuse("trained_betas", f"{len(betas)} values", f"num_train_timesteps is {T}")
        start, end = float(betas[0]), float(betas[-1])
        for kind, schedule in (("linear", linear_beta_schedule), ("scaled_linear", scaled_linear_beta_schedule)):
            if 0 < start <= end < 1 and torch.allclose(schedule(T, start, end), betas, rtol=1e-12, atol=0.0):
                return {"schedule": kind, "beta_start": start, "beta_end": end}
        if torch.allclose(cosine_beta_schedule(T, 0.008), betas, rtol=1e-12, atol=0.0):
            return {"schedule": "cosine", "cosine_s": 0.008}
        raise _refuse(
            "trained_betas",
            "a list",
            "they are none of linear, scaled_linear and the cosine schedule, the ones ddpmkit's diffusion config names",
        )
    if name in ("linear", "scaled_linear"):  # scaled_linear: linear in sqrt(beta), as diffusers computes it
        return {"schedule": name, "beta_start": float(s["beta_start"]), "beta_end": float(s["beta_end"])}
    if name == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine with s = 0.008, betas capped at 0.999, as ours
        return {"schedule": "cosine", "cosine_s": 0.008}
    raise _refuse("beta_schedule", name, "ddpmkit's schedules are linear, scaled_linear and cosine (squaredcos_cap_v2)")


def diffusion_from_scheduler(config: dict) -> dict:
    """ddpmkit's diffusion config (as a dict) for a DDPMScheduler config (its missing keys at diffusers' defaults)."""
    s = {**SCHEDULER_DEFAULTS, **config}
    if s.get("_class_name", "DDPMScheduler") != "DDPMScheduler":
        raise _refuse("scheduler _class_name", s["_class_name"], "ddpmkit maps DDPMScheduler's diffusion only")
    if s["prediction_type"] not in _PREDICTIONS:
        raise _refuse("prediction_type", s["prediction_type"], f"ddpmkit's are {', '.join(_PREDICTIONS)}")
    if s["variance_type"] not in choices(Variance):  # diffusers names ddpmkit's three variances alike
        raise _refuse("variance_type", s["variance_type"], f"ddpmkit's are {', '.join(choices(Variance))}")
    if s["thresholding"]:
        raise _refuse("thresholding", True, "ddpmkit clips x0 to [-1, 1] (no dynamic thresholding)")
    if s["clip_sample"] and float(s["clip_sample_range"]) != 1.0:
        raise _refuse("clip_sample_range", s["clip_sample_range"], "ddpmkit clips the predicted x0 to [-1, 1] only")
    if s["rescale_betas_zero_snr"]:
        raise _refuse("rescale_betas_zero_snr", True, "ddpmkit does not rescale its betas")
    T = s["num_train_timesteps"]
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise _refuse("num_train_timesteps", T, "it must be a whole number, at least 2")
    return {
        "timesteps": T,
        **_betas_schedule(s),
        "prediction": _PREDICTIONS[s["prediction_type"]],
        "variance": s["variance_type"],
        "clip_denoised": bool(s["clip_sample"]),
    }


# ----------------------------------------------------------------------------- reading, writing, loading


def _check_index(folder: Path) -> None:
    """A model_index.json, where there is one, names a UNet and a scheduler only (no VAE, text encoder...)."""
    if not (folder / "model_index.json").is_file():
        return
    index = _read_json(folder / "model_index.json")
    parts = [k for k, v in index.items() if not k.startswith("_") and v not in (None, [None, None])]
    other = [k for k in parts if k not in ("unet", "scheduler")]
    if other:
        raise _refuse("the pipeline's component", other[0], "ddpmkit imports a pixel-space UNet and its scheduler")


def _data_section(kind: str | None, m: UNetConfig) -> dict:
    """The data section: ``kind``'s own (at the model's size), or a folder of images of the model's shape."""
    if kind is None or kind == "folder":
        return {"kind": "folder", "image_size": m.image_size, "channels": m.in_channels, "conditional": False}
    native = getattr(experiment_from_dict({"data": {"kind": kind}}).data, "native", None)  # (channels, size, classes)
    if native is None:
        raise UserError(f"dataset {kind!r} is not a kind of images")
    data: dict[str, Any] = {"kind": kind, "conditional": False}
    if m.image_size != native[1]:
        data["image_size"] = m.image_size
    if m.in_channels != native[0]:
        data["channels"] = m.in_channels
    return data


def _name(folder: Path) -> str:
    """The repository's name for a cache snapshot (models--owner--name/snapshots/HASH), else the folder's."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return folder.resolve().name


def read_diffusers(src: str | Path, dataset: str | None = None) -> Pretrained:
    """Read and map a diffusers DDPM folder (see the module docstring); ``dataset``: the data kind the model was
    trained on (cifar10, ...: what ``eval`` compares with), None for a folder of images of the model's shape."""
    folder = find_diffusers_folder(src)
    weights, sums = _files(folder)
    _check_index(folder)
    unet = _read_json(folder / "unet" / "config.json")
    diffusion = diffusion_from_scheduler(_read_json(folder / "scheduler" / "scheduler_config.json"))
    m = unet_config_from_diffusers(unet)
    width = 2 if diffusion["variance"] == "learned_range" else 1
    if m.resolved_out_channels != width * m.resolved_in_channels:
        raise _refuse(
            "out_channels",
            m.out_channels,
            f"with variance_type {diffusion['variance']!r} ddpmkit's "
            f"network outputs {'2 x ' if width == 2 else ''}in_channels = {width * m.resolved_in_channels}",
        )
    model = {"kind": "unet", **m.to_dict()}
    for key in ("in_channels", "image_size", "num_classes"):  # the data section gives these
        model.pop(key)
    cfg = experiment_from_dict(
        {"name": _name(folder), "data": _data_section(dataset, m), "model": model, "diffusion": diffusion}
    )
    state = state_from_diffusers(
        _load_weights(weights), m, bool({**UNET_DEFAULTS, **unet}["flip_sin_to_cos"]), f"the weights {weights}"
    )
    source = {"format": "diffusers", "folder": str(folder.resolve()), "files": sums}
    return Pretrained(cfg, state, source, weights)


def run_fields_from_diffusers(src: str | Path, device: Device = "auto", dataset: str | None = None) -> dict:
    """The fields of a loaded ``Run`` for a diffusers DDPM folder, nothing written: ``Run(**fields)``."""
    pretrained = read_diffusers(src, dataset)
    cfg = pretrained.config
    model = build_model(cfg.model)
    model.load_state_dict(pretrained.state)
    model = model.to(device_for(DistInfo(), device)).eval()
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # as Run.load
    return {
        "config": cfg,
        "model": model,
        "diffusion": build_diffusion(cfg.diffusion, images=True),
        "class_names": None,
        "step": 0,
        "checkpoint": pretrained.weights,
        "ema": True,
    }
