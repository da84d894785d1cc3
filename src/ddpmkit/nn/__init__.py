"""Denoising networks: the DDPM UNet, a small MLP for 2-D data, timestep embeddings."""

from torch import nn

from .embeddings import SinusoidalEmbedding, TimeEmbedding
from .mlp import MLPConfig, MLPDenoiser
from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "MLPDenoiser", "MLPConfig", "SinusoidalEmbedding", "TimeEmbedding", "num_parameters"]


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of a module (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
