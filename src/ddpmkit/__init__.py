"""ddpmkit: denoising diffusion probabilistic models in PyTorch."""

from .errors import UserError
from .schedules import cosine_beta_schedule, linear_beta_schedule, make_beta_schedule

__version__ = "0.1.0"
from .diffusion import GaussianDiffusion
