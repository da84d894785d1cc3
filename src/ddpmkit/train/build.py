"""Turn a config into the objects it describes: dataset, network, diffusion."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..errors import UserError
from ..schedules import cosine_beta_schedule, linear_beta_schedule
from .config import DataConfig, DiffusionConfig, ExperimentConfig, ModelConfig

__all__ = ["build_dataset", "resolve_model_config", "build_model", "build_diffusion"]


def build_dataset(cfg: DataConfig, split: str = "train", seed: int = 0):
    """Load the dataset a data config names (in memory)."""
    from ..data import load_dataset

    if cfg.name == "toy2d":
        return load_dataset("toy2d", split=split, toy2d=cfg.toy2d, num_samples=cfg.num_samples, seed=seed)
    return load_dataset(
        cfg.name,
        root=cfg.root,
        image_size=cfg.image_size,
        split=split,
        class_labels=cfg.class_labels,
        channels=cfg.channels,
    )


def resolve_model_config(cfg: ExperimentConfig, dataset) -> ExperimentConfig:
    """Fill the network's shape from the data and validate every model field."""
    conditional = cfg.data.conditional and dataset.labels is not None
    num_classes = dataset.num_classes if conditional else None
    learned = cfg.diffusion.variance == "learned_range"
    params = dict(cfg.model.params)
    if cfg.model.kind == "unet":
        if dataset.kind != "image":
            raise UserError("a 'unet' model needs image data; use model kind 'mlp' for 2-D data")
        c, h, w = dataset.shape
        if h != w:
            raise UserError(f"the UNet needs square images, the data is {h}x{w}")
        derived = {"in_channels": c, "image_size": h, "num_classes": num_classes, "out_channels": 2 * c if learned else c}
    else:
        if dataset.kind != "points":
            raise UserError("an 'mlp' model is for 2-D point data; use model kind 'unet' for images")
        (d,) = dataset.shape
        derived = {"dim": d, "num_classes": num_classes, "out_dim": 2 * d if learned else d}
    for key, value in derived.items():
        if key in params and params[key] is not None and params[key] != value:
            raise UserError(f"config key model.{key} = {params[key]!r} does not match the data (needs {value!r})")
        params[key] = value
    full = _model_config_class(cfg.model.kind).from_dict(params).to_dict()
    return dataclasses.replace(cfg, model=ModelConfig(kind=cfg.model.kind, params=full))


def _model_config_class(kind: str):
    from ..nn import MLPConfig, UNetConfig

    return UNetConfig if kind == "unet" else MLPConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network of a resolved model config."""
    from ..nn import MLPDenoiser, UNet

    config = _model_config_class(cfg.kind).from_dict(dict(cfg.params))
    return UNet(config) if cfg.kind == "unet" else MLPDenoiser(config)


def build_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """The beta schedule of a diffusion config, float64."""
    if cfg.schedule == "linear":
        return linear_beta_schedule(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return cosine_beta_schedule(cfg.timesteps, cfg.cosine_s)


def build_diffusion(cfg: DiffusionConfig, images: bool = True) -> GaussianDiffusion:
    """The GaussianDiffusion of a diffusion config (clipping only applies to image data)."""
    if not 0.0 <= cfg.p_uncond < 1.0:
        raise UserError(f"config key diffusion.p_uncond must be in [0, 1), got {cfg.p_uncond}")
    return GaussianDiffusion(
        build_betas(cfg),
        prediction=cfg.prediction,
        variance=cfg.variance,
        loss=cfg.loss,
        clip_denoised=cfg.clip_denoised and images,
        vlb_weight=cfg.vlb_weight,
        min_snr_gamma=cfg.min_snr_gamma,
    )
