"""The options of one sampling call (sampler, grid, eta, order, guidance) as one object, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .errors import UserError
from .options import SamplerName, Spacing, Variance, check_choice
from .samplers import DEFAULT_SPACING, check_eta, check_unipc_order
from .timestep_grids import sampling_timesteps

__all__ = ["SamplingOptions"]


@dataclass(frozen=True)
class SamplingOptions:
    """Everything a sampler call takes besides the network, the noise and the labels; an option that the
    sampler does not take is a UserError when the object is made, before any work."""

    sampler: SamplerName = "ddpm"
    steps: int | None = None  # network calls; None: all T (checked against T by :meth:`grid`)
    spacing: Spacing | None = None  # how the kept timesteps are spread; None: the sampler's DEFAULT_SPACING
    eta: float | None = None  # DDIM's stochasticity in [0, 1], "ddim" only; None: 0
    order: int | None = None  # the UniPC order 1-3, the unipc samplers only; None: UNIPC_ORDER
    timesteps: Tensor | None = field(default=None, compare=False)  # an explicit grid: replaces steps and spacing
    guidance: float = 1.0  # classifier-free guidance weight w (1: plain conditional)

    def __post_init__(self) -> None:
        check_choice("sampler", self.sampler, SamplerName)
        if self.eta is not None:
            if self.sampler != "ddim":
                kind = (
                    "ancestral (its noise follows the diffusion's variance)"
                    if self.sampler == "ddpm"
                    else "deterministic"
                )
                raise UserError(f"eta applies to the ddim sampler only; {self.sampler} is {kind}")
            check_eta(self.eta)
        if self.order is not None:
            if not self.sampler.startswith("unipc"):
                raise UserError(
                    f"order applies to the unipc samplers only; {self.sampler} has a fixed order "
                    "(dpm++2m: 2, dpm++3m: 3)"
                )
            check_unipc_order(self.order)
        if self.spacing is not None:
            check_choice("spacing", self.spacing, Spacing)

    @property
    def grid_spacing(self) -> Spacing:
        """The spacing of the kept timesteps: the one named, else the sampler's default."""
        return self.spacing or DEFAULT_SPACING[self.sampler]

    def calls(self, num_timesteps: int) -> int:
        """Network calls per sample (RePaint's jumps add more)."""
        if self.timesteps is not None:
            return len(self.timesteps)
        return num_timesteps if self.steps is None else self.steps

    def grid(self, num_timesteps: int, alphas_cumprod: Tensor) -> Tensor:
        """The kept timesteps, strictly decreasing: the explicit grid, else ``steps`` spread by the spacing."""
        if self.timesteps is not None:
            return self.timesteps
        steps = num_timesteps if self.steps is None else self.steps
        return sampling_timesteps(num_timesteps, steps, self.grid_spacing, alphas_cumprod)

    def sampler_kwargs(self, variance: Variance) -> dict:
        """The keyword options of ``SAMPLERS[sampler]``: ddpm's variance, ddim's eta or a unipc order."""
        if self.order is not None:
            return {"order": self.order}
        if self.sampler == "ddim":
            return {"eta": 0.0 if self.eta is None else self.eta}
        return {"variance": variance} if self.sampler == "ddpm" else {}
