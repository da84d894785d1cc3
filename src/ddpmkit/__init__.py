"""ddpmkit: denoising diffusion probabilistic models in PyTorch.

The public API in one import::

    import ddpmkit
    diffusion = ddpmkit.GaussianDiffusion(ddpmkit.linear_beta_schedule(1000))
    net = ddpmkit.UNet(ddpmkit.UNetConfig(in_channels=1, base_channels=32, num_classes=10))
    x0 = diffusion.sample(net, (16, 1, 8, 8), sampler="dpm++2m", steps=20, y=labels)

    run = ddpmkit.Run.load("runs/digits")          # a trained run (see ddpmkit.runs)
    samples = run.sample(16, labels=[3], steps=20)
"""

from .diffusion import GaussianDiffusion
from .ema import EMA, unwrap_model
from .errors import UserError
from .nn import MLPConfig, MLPDenoiser, UNet, UNetConfig, num_parameters
from .oracles import GaussianMixtureOracle
from .runs import Run, Samples
from .config import ExperimentConfig, load_config
from .samplers import SAMPLERS, Denoised, sampling_timesteps
from .schedules import cosine_beta_schedule, linear_beta_schedule, make_beta_schedule
from .timestep_sampling import LossAwareTimesteps, UniformTimesteps, make_timestep_sampler

from .version import __version__

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
