"""Turn a config into the objects it describes: dataset, network, diffusion."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import DataConfig, DiffusionConfig, ExperimentConfig, ModelConfig, Toy2DData, model_shape
from ..diffusion import GaussianDiffusion
from ..errors import UserError
from ..fields import require
from ..nn import MLPDenoiser, UNet, UNetConfig
from ..schedules import cosine_beta_schedule, linear_beta_schedule, scaled_linear_beta_schedule

__all__ = ["build_dataset", "resolve_model_config", "build_model", "check_state_dict", "build_diffusion"]


def build_dataset(cfg: DataConfig, split: str = "train", seed: int = 0):
    """Load the dataset a data config names (in memory)."""
    # lazy: the data package imports PIL, which loading a run to sample does not need (start-up)
    from ..data import load_dataset

    if isinstance(cfg, Toy2DData):
        return load_dataset("toy2d", split=split, toy2d=cfg.distribution, num_samples=cfg.num_samples, seed=seed)
    return load_dataset(
        cfg.kind,
        root=getattr(cfg, "root", None),
        image_size=cfg.image_size,
        split=split,
        class_labels=getattr(cfg, "class_labels", False),
        channels=cfg.channels,
    )


def resolve_model_config(cfg: ExperimentConfig, dataset) -> ExperimentConfig:
    """The config with the network's shape filled from the data (a value given must agree)."""
    derived = model_shape(cfg.data, dataset, learned_variance=cfg.diffusion.variance == "learned_range")
    for key, value in derived.items():
        given = getattr(cfg.model, key)
        require(given is None or given == value, f"model.{key}", f"{value!r}, as the data gives", given)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **derived))


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network of a resolved model config."""
    return UNet(cfg) if isinstance(cfg, UNetConfig) else MLPDenoiser(cfg)


def check_state_dict(cfg: ModelConfig, state: dict, where: str) -> None:
    """UserError unless ``state`` holds exactly the tensors of the network ``cfg`` describes, shape for shape.

    The network is laid out on the meta device (no memory), so a config that asks for a far larger
    network than its weights is refused before anything is allocated.
    """
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    except (RuntimeError, ValueError, OverflowError) as e:  # a size past what any tensor can hold
        raise UserError(f"{where}: the network of its config cannot be laid out ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{where} holds no state dict of tensors")
    for key in sorted(expected.keys() | state.keys()):
        if key not in state:
            raise UserError(f"{where} lacks the tensor {key!r} of the network its config describes")
        if key not in expected:
            raise UserError(f"{where} has a tensor {key!r} that the network of its config does not have")
        if tuple(state[key].shape) != expected[key]:
            raise UserError(
                f"{where}: tensor {key!r} has shape {tuple(state[key].shape)}, the network of its "
                f"config needs {expected[key]}"
            )


def build_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """The beta schedule of a diffusion config, float64."""
    if cfg.schedule == "linear":
        return linear_beta_schedule(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    if cfg.schedule == "scaled_linear":
        return scaled_linear_beta_schedule(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return cosine_beta_schedule(cfg.timesteps, cfg.cosine_s)


def build_diffusion(cfg: DiffusionConfig, images: bool = True) -> GaussianDiffusion:
    """The GaussianDiffusion of a diffusion config (clipping only applies to image data)."""
    return GaussianDiffusion(
        build_betas(cfg),
        prediction=cfg.prediction,
        variance=cfg.variance,
        loss=cfg.loss,
        clip_denoised=cfg.clip_denoised and images,
        vlb_weight=cfg.vlb_weight,
        min_snr_gamma=cfg.min_snr_gamma,
    )
