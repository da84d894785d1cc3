"""ddpmkit: denoising diffusion probabilistic models in PyTorch.

The public API in one import::

    import ddpmkit
    diffusion = ddpmkit.GaussianDiffusion(ddpmkit.linear_beta_schedule(1000))
    net = ddpmkit.UNet(ddpmkit.UNetConfig(in_channels=1, base_channels=32, num_classes=10))
    x0 = diffusion.sample(net, (16, 1, 8, 8), sampler="dpm++2m", steps=20, y=labels)

    run = ddpmkit.Run.load("runs/digits")          # a trained run (see ddpmkit.runs)
    samples = run.sample(16, labels=[3], steps=20)

The names load on first use (PEP 562), so ``import ddpmkit`` and the command line's ``--help`` do not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_names
from .version import __version__ as __version__

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use
    from .config import ExperimentConfig, load_config
    from .diffusion import GaussianDiffusion
    from .ema import EMA, unwrap_model
    from .errors import UserError
    from .nn import MLPConfig, MLPDenoiser, UNet, UNetConfig, num_parameters
    from .oracles import GaussianMixtureOracle
    from .runs import Run, Samples
    from .samplers import SAMPLERS, Denoised
    from .schedules import cosine_beta_schedule, linear_beta_schedule, make_beta_schedule
    from .timestep_grids import sampling_timesteps
    from .timestep_sampling import LossAwareTimesteps, UniformTimesteps, make_timestep_sampler

# Each module (relative to this package) -> the public names it defines.
_MODULES = {
    "diffusion": ("GaussianDiffusion",),
    "nn": ("UNet", "UNetConfig", "MLPDenoiser", "MLPConfig", "num_parameters"),
    "ema": ("EMA", "unwrap_model"),
    "samplers": ("SAMPLERS", "Denoised"),
    "timestep_grids": ("sampling_timesteps",),
    "oracles": ("GaussianMixtureOracle",),
    "schedules": ("linear_beta_schedule", "cosine_beta_schedule", "make_beta_schedule"),
    "timestep_sampling": ("UniformTimesteps", "LossAwareTimesteps", "make_timestep_sampler"),
    "errors": ("UserError",),
    "runs": ("Run", "Samples"),
    "config": ("ExperimentConfig", "load_config"),
}

__all__ = [
    "GaussianDiffusion",
    "UNet",
    "UNetConfig",
    "MLPDenoiser",
    "MLPConfig",
    "EMA",
    "unwrap_model",
    "num_parameters",
    "SAMPLERS",
    "Denoised",
    "sampling_timesteps",
    "GaussianMixtureOracle",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "make_beta_schedule",
    "UniformTimesteps",
    "LossAwareTimesteps",
    "make_timestep_sampler",
    "UserError",
    "Run",
    "Samples",
    "ExperimentConfig",
    "load_config",
]

__getattr__, __dir__ = lazy_names(__name__, _MODULES)
