"""Every named choice of ddpmkit, declared once: configs, functions and the command line reuse these.

``choices(Literal)`` gives the tuple of allowed values (for argparse ``choices=`` and messages);
``check_choice`` refuses anything else with one wording.
"""

from __future__ import annotations

import reprlib
from typing import Literal, get_args

from .errors import UserError

__all__ = [
    "Prediction",
    "Variance",
    "LossType",
    "Schedule",
    "TimestepSampler",
    "SamplerName",
    "UniPCVariant",
    "UniPCOrder",
    "Spacing",
    "Precision",
    "Device",
    "CompileMode",
    "LRSchedule",
    "EMAKind",
    "EMASweepMetric",
    "Toy2DName",
    "DataKind",
    "ModelKind",
    "DatasetKind",
    "Split",
    "DigitsSubset",
    "Channels",
    "QualityMetric",
    "Resize",
    "Layout",
    "Logger",
    "ExportFormat",
    "DistillMethod",
    "ConsistencyDistance",
    "CUDA_GRAPH_MODES",
    "choices",
    "check_choice",
    "short",
]

Prediction = Literal["eps", "x0", "v"]  # what the network outputs
Variance = Literal["fixed_large", "fixed_small", "learned_range"]  # the reverse process's variance
LossType = Literal["l2", "l1", "hybrid"]  # L_simple in L2 or L1, or improved DDPM's hybrid
Schedule = Literal["linear", "cosine", "scaled_linear"]  # beta schedule
TimestepSampler = Literal["uniform", "loss_aware"]  # how training draws t
SamplerName = Literal["ddpm", "ddim", "dpm++2m", "dpm++3m", "unipc-bh1", "unipc-bh2"]  # reverse-process samplers
UniPCVariant = Literal["bh1", "bh2"]  # UniPC's B(h): h (bh1) or e^h - 1 (bh2), Zhao et al. 2023
UniPCOrder = Literal[1, 2, 3]  # the UniPC samplers' solver order
Spacing = Literal["linspace", "leading", "trailing", "quadratic", "logsnr", "karras", "snr_root"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # autocast dtype of the network
Device = Literal["auto", "cpu", "cuda"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
LRSchedule = Literal["constant", "cosine"]  # after warm-up
EMAKind = Literal["fixed", "power"]  # the averaged weights: one fixed decay, or power-function EMAs (EDM2)
EMASweepMetric = Literal["digits", "fid", "bpd"]  # what `ddpmkit ema --sweep` scores each width with
Toy2DName = Literal["moons", "swissroll", "8gaussians", "checkerboard"]  # the 2-D point distributions
DataKind = Literal["digits", "toy2d", "folder", "cifar10", "mnist"]  # the config's data.kind: which loader
ModelKind = Literal["unet", "mlp"]  # the config's model.kind: which network
DatasetKind = Literal["image", "points"]  # what a loaded dataset holds: uint8 images or float 2-D points
Split = Literal["train", "test"]
DigitsSubset = Literal["train", "test", "all"]  # the digits' fixed split, or all 1,797 images
Channels = Literal[1, 3]  # image channels a dataset can be converted to: grey or RGB
QualityMetric = Literal["fid", "kid", "pr"]  # Inception-feature scores of samples
Resize = Literal["pytorch-fid", "clean-fid"]  # how images reach the Inception network's 299x299
Layout = Literal["NCHW", "NHWC"]  # the axis order of an array of images
Logger = Literal["jsonl", "tensorboard"]  # where training metrics go: metrics.jsonl, TensorBoard event files
ExportFormat = Literal["safetensors", "diffusers"]  # what `ddpmkit export` writes
DistillMethod = Literal["ect"]  # how `ddpmkit distill` tunes a consistency model: Easy Consistency Tuning
ConsistencyDistance = Literal["l2", "pseudo_huber"]  # ECT's ||.||_2 or iCT's pseudo-Huber sqrt(||.||^2 + c^2) - c

# torch.compile modes that capture CUDA graphs on GPUs (a no-op on CPUs)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def choices(literal) -> tuple:
    """The allowed values of a Literal, in declaration order."""
    return get_args(literal)


def check_choice(what: str, value, literal) -> None:
    """UserError unless ``value`` is one of the Literal's values."""
    allowed = get_args(literal)
    if value not in allowed:
        raise UserError(f"unknown {what} {short(value)}; choose one of {', '.join(map(repr, allowed))}")


_REPR = reprlib.Repr()  # keyword arguments arrived in Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 6, 4, 60, 60


def short(value, limit: int = 80) -> str:
    """A short repr of a value (reprlib: never walks a huge nested value), so a message stays one line."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
