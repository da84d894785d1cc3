"""Typed experiment configuration: dataclasses, strict loading from YAML, presets.

A config is four sections (data, model, diffusion, train) plus sampling defaults. Loading is
strict: an unknown key or a value of the wrong type is a UserError naming the key. The resolved
config (every default filled in, the model's shape derived from the data) is saved in the run
directory and inside every checkpoint, so sampling needs nothing but the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ..errors import UserError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "DiffusionConfig",
    "TrainConfig",
    "SampleConfig",
    "ExperimentConfig",
    "from_dict",
    "load_config",
    "preset_names",
    "preset_path",
]

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    name: Literal["digits", "toy2d", "folder", "cifar10", "mnist"] = "digits"  # which dataset
    root: Optional[str] = None  # directory of the data (folder, cifar10, mnist)
    image_size: Optional[int] = None  # resize to this size (None: native size; required for folder)
    toy2d: Optional[str] = None  # the 2-D distribution (moons, swissroll, 8gaussians, checkerboard)
    num_samples: int = 20000  # size of a generated 2-D dataset
    class_labels: bool = False  # folder: class labels from sub-folder names
    conditional: bool = True  # train class-conditionally when the data has labels
    channels: Optional[int] = None  # folder: force 1 or 3 channels (None: detect)
    hflip: bool = False  # random horizontal flips


@dataclass
class ModelConfig:
    kind: Literal["unet", "mlp"] = "unet"  # the network family
    params: dict = field(default_factory=dict)  # UNetConfig / MLPConfig fields (the rest of the section)


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T
    schedule: Literal["linear", "cosine"] = "linear"  # beta schedule
    beta_start: float = 1e-4  # linear schedule: beta_1
    beta_end: float = 0.02  # linear schedule: beta_T
    cosine_s: float = 0.008  # cosine schedule offset s
    prediction: Literal["eps", "x0", "v"] = "eps"  # network target
    variance: Literal["fixed_large", "fixed_small", "learned_range"] = "fixed_large"  # reverse variance
    loss: Literal["l2", "l1", "hybrid"] = "l2"  # training loss
    clip_denoised: bool = True  # clip predicted x0 to [-1, 1] while sampling images
    vlb_weight: float = 0.001  # lambda of the hybrid loss
    min_snr_gamma: Optional[float] = None  # min-SNR-gamma loss weighting (None: off)
    timestep_sampler: Literal["uniform", "loss_aware"] = "uniform"  # how training draws t
    p_uncond: float = 0.0  # probability of dropping the label (classifier-free guidance)

    def __post_init__(self) -> None:
        if not self.vlb_weight >= 0:
            raise UserError(f"config key 'diffusion.vlb_weight' must be at least 0, got {self.vlb_weight}")


# torch.compile's modes; the ones that capture CUDA graphs on GPUs (a no-op on CPUs)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class TrainConfig:
    steps: int = 10000  # optimizer steps
    batch_size: int = 128  # GLOBAL batch size (split across torchrun processes)
    microbatch: Optional[int] = None  # run each process's share in chunks of at most this many examples,
    # accumulating gradients: the same optimizer step in less memory (None: the whole share at once)
    lr: float = 2e-4  # Adam learning rate for the global batch
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr_ratio: float = 0.0  # cosine schedule floor, as a fraction of lr
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: Optional[float] = 1.0  # clip the gradient norm (None: off)
    ema_decay: float = 0.9999  # EMA decay per optimizer step
    ema_start: int = 0  # before this step the EMA copies the weights
    ema_every: int = 1  # update the EMA every this many steps
    log_every: int = 100  # steps between metrics lines
    sample_every: int = 2000  # steps between PNG grids of EMA samples (0: never)
    checkpoint_every: int = 5000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept (0: keep all)
    num_grid_samples: int = 64  # samples in each training grid
    seed: int = 0  # seeds weights, batches, noise and timesteps
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast where the hardware has bf16
    # matrix units, else fp32; fp16: float16 autocast with loss scaling, for GPUs without native bf16 (V100, T4)
    compile: bool = False  # torch.compile the network
    compile_mode: CompileMode = "default"  # torch.compile's mode; reduce-overhead, max-autotune: + CUDA graphs on GPUs
    channels_last: bool = True  # NHWC memory format for image networks
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to train
    deterministic: bool = False  # torch.use_deterministic_algorithms

    def __post_init__(self) -> None:
        at_least = {"steps": 1, "batch_size": 1, "microbatch": 1, "log_every": 1, "ema_every": 1,
                    "num_grid_samples": 1, "warmup_steps": 0, "ema_start": 0, "sample_every": 0,
                    "checkpoint_every": 0, "keep_checkpoints": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:  # None: only microbatch may be null
                raise UserError(f"config key 'train.{name}' must be at least {low}, got {value}")
        ranges = {"lr": (math.isfinite(self.lr) and self.lr > 0, "a positive number"),
                  "weight_decay": (self.weight_decay >= 0, "at least 0"),
                  "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                  "ema_decay": (0 <= self.ema_decay < 1, "in [0, 1)"),
                  "grad_clip": (self.grad_clip is None or self.grad_clip > 0, "positive or null (no clipping)"),
                  "adam_betas": (all(0 <= b < 1 for b in self.adam_betas), "two numbers in [0, 1)")}
        if self.microbatch is not None and self.compile and self.compile_mode in CUDA_GRAPH_MODES:
            raise UserError(f"config key 'train.microbatch' cannot be combined with compile_mode "
                            f"{self.compile_mode!r}: its CUDA graphs replay into the buffers of the gradients "
                            f"being accumulated (use compile_mode 'default' or 'max-autotune-no-cudagraphs')")
        for name, (ok, what) in ranges.items():
            if not ok:
                raise UserError(f"config key 'train.{name}' must be {what}, got {getattr(self, name)!r}")


@dataclass
class SampleConfig:
    sampler: Literal["ddpm", "ddim", "dpm++2m", "dpm++3m"] = "ddpm"  # default sampler of `ddpmkit sample`
    steps: Optional[int] = None  # network calls (None: all T)
    guidance: float = 1.0  # classifier-free guidance weight
    eta: float = 0.0  # DDIM eta
    spacing: Optional[str] = None  # timestep spacing (None: the sampler's default)
    grid_sampler: Literal["ddpm", "ddim", "dpm++2m", "dpm++3m"] = "dpm++2m"  # sampler for training grids
    grid_steps: int = 50  # its network calls
    levels: Optional[int] = None  # snap saved pixels to this many grey levels (the data's own; digits: 17)

    def __post_init__(self) -> None:
        if self.levels is not None and not 2 <= self.levels <= 256:
            raise UserError(f"config key 'sample.levels' must be in 2..256, got {self.levels}")
        for name, ok, what in [("steps", self.steps is None or self.steps >= 1, "at least 1 or null (all T)"),
                               ("grid_steps", self.grid_steps >= 1, "at least 1"),
                               ("eta", 0 <= self.eta <= 1, "in [0, 1]"),
                               ("guidance", math.isfinite(self.guidance) and self.guidance >= 0,
                                "a number >= 0 (1: no guidance)")]:
            if not ok:
                raise UserError(f"config key 'sample.{name}' must be {what}, got {getattr(self, name)}")


@dataclass
class ExperimentConfig:
    name: str = "run"  # a label for the run
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        """A plain dict (YAML- and checkpoint-safe); the model section is flat."""
        d = dataclasses.asdict(self)
        d["model"] = {"kind": self.model.kind, **self.model.params}
        d["train"]["adam_betas"] = list(self.train.adam_betas)
        return d


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise UserError(f"config section {where or 'top level'} must be a mapping, got {type(data).__name__}")
    if cls is ModelConfig:
        data = dict(data)
        kind = data.pop("kind", "unet")
        if kind not in ("unet", "mlp"):
            raise UserError(f"config key model.kind must be 'unet' or 'mlp', got {kind!r}")
        return ModelConfig(kind=kind, params=data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise UserError(f"config key {key!r} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"config key {key!r} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key!r} must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML reads 1e-4 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key!r} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug, not a user error


def preset_names() -> list[str]:
    """The presets shipped under ddpmkit/configs (toy2d-<name> presets expand from toy2d.yaml)."""
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    return names


def preset_path(name: str) -> Path:
    """The YAML file of a preset; ``toy2d-NAME`` maps to toy2d.yaml with data.toy2d = NAME."""
    base = "toy2d" if name.startswith("toy2d-") else name
    path = PRESET_DIR / f"{base}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} (toy2d as toy2d-<name>)")
    return path


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, merging nested mappings."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: dict | None = None
) -> ExperimentConfig:
    """Preset, then the user's YAML file, then command-line overrides, validated strictly."""
    data: dict = {}
    if preset is not None:
        data = read_yaml(preset_path(preset))
        if preset.startswith("toy2d-"):
            data = deep_merge(data, {"name": preset, "data": {"toy2d": preset[len("toy2d-"):]}})
    if config_file is not None:
        data = deep_merge(data, read_yaml(config_file))
    if overrides:
        data = deep_merge(data, overrides)
    if preset is None and config_file is None:
        raise UserError("give a --preset or a --config file")
    return from_dict(ExperimentConfig, data)


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_from_checkpoint(d: dict) -> ExperimentConfig:
    """Rebuild the config stored inside a checkpoint."""
    return from_dict(ExperimentConfig, d, "")
