"""Power-function EMA (Karras et al. 2024, EDM2, section 3) and its post-hoc reconstruction from snapshots.

The average read at step t weights the training weights at time tau by the power profile
``p_t(tau) = (gamma + 1) tau**gamma / t**(gamma + 1)`` on [0, t]. Its width relative to t, sigma_rel, does not
depend on t, so the average covers a fixed fraction of training whatever the run's length. Because the profiles
of different (gamma, t) span a rich family, averages of two widths saved now and then determine, by a least-squares
fit over tau, the average of any other width read at any step: the EMA length can be chosen after training.

Updating after every optimizer step with ``beta_t = (1 - 1/t)**(gamma + 1)`` gives exactly the continuous average
of the piecewise-constant weight trajectory (the weights of step tau held on (tau - 1, tau]), so the closed-form
integrals of the reconstruction hold exactly for the discrete run too; updating every k steps does the same with
``(1 - k/t)**(gamma + 1)``.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .ema import mismatch, unwrap_model
from .errors import UserError
from .validate import positive_int

__all__ = [
    "GAMMA_PEAK",
    "SIGMA_REL_MAX",
    "PowerProfile",
    "sigma_rel_from_gamma",
    "gamma_from_sigma_rel",
    "power_ema_beta",
    "power_ema_weight",
    "power_profile",
    "power_profile_weights",
    "profile_inner_product",
    "posthoc_coefficients",
    "profile_fit_error",
    "reconstruct_tensor",
    "reconstruct_state_dict",
    "PowerEMA",
]

_GOLDEN = (1 + math.sqrt(5)) / 2
GAMMA_PEAK = 1 / _GOLDEN - 1  # sigma_rel(gamma) is largest here ((gamma + 1)**2 + (gamma + 1) = 1); ~ -0.382
SIGMA_REL_MAX = _GOLDEN**-2.5  # that largest relative width, ~0.3003: no power profile is wider


class PowerProfile(NamedTuple):
    """A power-function EMA profile: exponent ``gamma``, read at step ``t`` (its last update)."""

    gamma: float
    t: float


def _check_gamma(gamma: float) -> float:
    """``gamma`` as a float if the profile it names integrates (gamma > -1)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)) or not gamma > -1:
        raise ValueError(f"power profile exponent gamma must be a number > -1, got {gamma!r}")
    return float(gamma)


def sigma_rel_from_gamma(gamma: float) -> float:
    """Standard deviation of the profile over tau, relative to t (the profile over tau / t is Beta(gamma + 1, 1))."""
    g = _check_gamma(gamma)
    # EDM2 eq. 3 (appendix eq. 123): sigma_rel = (gamma + 1)**0.5 (gamma + 2)**-1 (gamma + 3)**-0.5
    return math.sqrt(g + 1) / ((g + 2) * math.sqrt(g + 3))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent whose profile has relative width ``sigma_rel`` (the root above GAMMA_PEAK; the other is spikier)."""
    if (
        isinstance(sigma_rel, bool)
        or not isinstance(sigma_rel, (int, float, np.floating))
        or not 0 < sigma_rel < SIGMA_REL_MAX
    ):
        raise UserError(f"sigma_rel must be a number in (0, {SIGMA_REL_MAX:.5f}), got {sigma_rel!r}")
    s = float(sigma_rel) ** -2
    # EDM2 eq. 3 squared, fractions cleared (appendix eq. 126): gamma**3 + 7 gamma**2 + (16 - s) gamma + 12 - s = 0
    coeffs = (1.0, 7.0, 16.0 - s, 12.0 - s)
    g = max(float(r.real) for r in np.roots(coeffs))
    for _ in range(3):  # Newton steps polish the eigenvalue solver's root to float64 precision
        f = ((g + 7) * g + 16 - s) * g + 12 - s
        df = (3 * g + 14) * g + 16 - s
        if df == 0:
            break
        g -= f / df
    return max(g, GAMMA_PEAK)


def power_ema_beta(gamma: float, step: int, interval: int = 1) -> float:
    """Decay applied when the weights of ``step`` are folded in, ``interval`` steps after the previous update."""
    _check_steps(step, interval)
    # EDM2 eq. 2 (appendix eq. 127): beta = (1 - interval / step)**(gamma + 1); 0 on the first update
    return (1.0 - interval / step) ** (_check_gamma(gamma) + 1)


def power_ema_weight(gamma: float, step: int, interval: int = 1) -> float:
    """``1 - beta``, the weight of the new weights, without the cancellation of 1 - beta late in training."""
    _check_steps(step, interval)
    if interval == step:
        return 1.0
    # 1 - (1 - interval / step)**(gamma + 1) = -expm1((gamma + 1) log1p(-interval / step))
    return -math.expm1((_check_gamma(gamma) + 1) * math.log1p(-interval / step))


def _check_steps(step: int, interval: int) -> None:
    """An update folds in step >= interval >= 1 (steps count optimizer steps from 1)."""
    if not 1 <= interval <= step:
        raise ValueError(f"a power EMA update needs 1 <= interval <= step, got interval {interval}, step {step}")


def power_profile(gamma: float, t: float, tau: Any) -> np.ndarray:
    """Density over training time ``tau`` of the average read at ``t``; it integrates to 1 over [0, t]."""
    g = _check_gamma(gamma)
    tau = np.asarray(tau, dtype=np.float64)
    inside = (tau > 0) & (tau <= t)
    # EDM2 eq. 1: p_t(tau) = (gamma + 1) tau**gamma / t**(gamma + 1) on (0, t], 0 elsewhere
    return np.where(inside, (g + 1) / t * (np.where(inside, tau, t) / t) ** g, 0.0)


def power_profile_weights(gamma: float, t: int, tau: Any, interval: int = 1) -> np.ndarray:
    """Weight the per-step average read at step ``t`` gives the weights of step ``tau`` (updated every ``interval``)."""
    g = _check_gamma(gamma)
    t_last = interval * (int(t) // interval)  # the average read at t is the one of its last update
    tau = np.asarray(tau, dtype=np.int64)
    on = (tau > 0) & (tau <= t_last) & (tau % interval == 0)
    hi = np.where(on, tau, 0) / max(t_last, 1)
    lo = np.where(on, tau - interval, 0) / max(t_last, 1)
    # EDM2 eq. 1 integrated over the interval (tau - interval, tau] that the update at tau stands for
    return np.where(on, hi ** (g + 1) - lo ** (g + 1), 0.0)


def profile_inner_product(a: PowerProfile, b: PowerProfile) -> float:
    """The integral over tau of ``p_a(tau) p_b(tau)``, in closed form."""
    ga, gb = _check_gamma(a.gamma), _check_gamma(b.gamma)
    if ga + gb <= -1:
        raise ValueError(f"profiles with gamma {ga} and {gb} have no finite inner product (need a sum > -1)")
    t_lo, t_hi = min(a.t, b.t), max(a.t, b.t)
    g_hi = gb if b.t >= a.t else ga  # the exponent of the profile that ends later
    # EDM2 appendix eq. 151: (ga + 1)(gb + 1) / (ga + gb + 1) * (t_lo / t_hi)**g_hi / t_hi
    return (ga + 1) * (gb + 1) / (ga + gb + 1) * (t_lo / t_hi) ** g_hi / t_hi


def _gram(profiles: Sequence[PowerProfile], others: Sequence[PowerProfile]) -> np.ndarray:
    """Matrix of inner products <p_i, q_j> in float64."""
    return np.array([[profile_inner_product(p, q) for q in others] for p in profiles], dtype=np.float64)


def _as_profiles(profiles: Sequence[PowerProfile]) -> list[PowerProfile]:
    """Profiles as float pairs, each read at a step t > 0 (an average read at step 0 holds no training)."""
    out = [PowerProfile(float(g), float(t)) for g, t in profiles]
    for p in out:
        if not p.t > 0:
            raise UserError(f"a power EMA profile must be read at a step > 0, got {p}")
    return out


def posthoc_coefficients(snapshots: Sequence[PowerProfile], target: PowerProfile) -> np.ndarray:
    """Coefficients of the snapshots whose combined profile is closest in L2 over tau to ``target``'s, summing to 1."""
    if not snapshots:
        raise UserError("post-hoc EMA needs at least one snapshot")
    snapshots = _as_profiles(snapshots)
    if len(set(snapshots)) != len(snapshots):
        raise UserError("post-hoc EMA snapshots repeat a profile (the same width read at the same step)")
    # EDM2 appendix, algorithm 3: normal equations A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_target>
    a = _gram(snapshots, snapshots)
    b = _gram(snapshots, _as_profiles([target]))[:, 0]
    x = np.linalg.solve(a, b)
    # each profile integrates to 1, so sum(x) = 1 keeps the combination an average (constants reproduced exactly)
    return x / x.sum()


def profile_fit_error(snapshots: Sequence[PowerProfile], coefficients: Any, target: PowerProfile) -> float:
    """Relative L2 distance over tau between the combined profile and ``target``'s (0: an exact reconstruction)."""
    x = np.asarray(coefficients, dtype=np.float64)
    snapshots, (tgt,) = _as_profiles(snapshots), _as_profiles([target])
    a = _gram(snapshots, snapshots)
    b = _gram(snapshots, [tgt])[:, 0]
    c = profile_inner_product(tgt, tgt)
    # ||sum_i x_i p_i - p*||**2 = x'Ax - 2 x'b + <p*, p*>, rounding can leave it a hair below 0
    return math.sqrt(max(float(x @ a @ x - 2 * x @ b + c), 0.0) / c)


def _accumulator_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 for the sum, except on Apple's MPS, which has none."""
    return torch.float32 if tensor.device.type == "mps" else torch.float64


def reconstruct_tensor(tensors: Sequence[torch.Tensor], coefficients: Any) -> torch.Tensor:
    """``sum_i x_i tensors[i]``, summed in float64 and returned in the tensors' dtype."""
    x = [float(c) for c in np.asarray(coefficients, dtype=np.float64).reshape(-1)]
    if len(x) != len(tensors) or not tensors:
        raise ValueError(f"{len(tensors)} tensors for {len(x)} coefficients")
    first = tensors[0]
    total = torch.zeros(first.shape, dtype=_accumulator_dtype(first), device=first.device)
    for c, tensor in zip(x, tensors):
        if tensor.shape != first.shape:
            raise ValueError(f"snapshot tensors differ in shape: {tuple(tensor.shape)} and {tuple(first.shape)}")
        total.add_(tensor.to(total.dtype), alpha=c)
    return total.to(first.dtype)


def reconstruct_state_dict(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    coefficients: Any,
    copied: Collection[str] = (),  # entries that are not averaged (buffers such as norm statistics)
) -> dict[str, torch.Tensor]:
    """The combination of every floating-point entry; other entries and ``copied`` ones from the last state dict."""
    if not state_dicts:
        raise ValueError("no state dicts to reconstruct from")
    last = state_dicts[-1]
    for i, sd in enumerate(state_dicts):
        if sd.keys() != last.keys():
            raise UserError(f"snapshot {i} holds other entries than the last one: {sorted(sd.keys() ^ last.keys())}")
    out = {}
    for name, value in last.items():
        if name in copied or not value.is_floating_point():
            out[name] = value.clone()
        else:
            out[name] = reconstruct_tensor([sd[name] for sd in state_dicts], coefficients)
    return out


class PowerEMA:
    """Shadow copies of a model whose weights follow power-function EMAs of several relative widths at once."""

    def __init__(
        self,
        model: nn.Module,
        sigma_rels: Sequence[float] = (0.05, 0.10),  # relative widths of the profiles kept, each in (0, ~0.3)
        update_every: int = 1,  # fold in the weights every k optimizer steps, with beta = (1 - k/t)**(gamma + 1)
    ) -> None:
        """Deep-copy the (unwrapped) model once per width into ``self.models``, in eval mode, without gradients."""
        positive_int("power EMA update_every", update_every)
        if not sigma_rels:
            raise UserError("power EMA needs at least one sigma_rel")
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(gamma_from_sigma_rel(s) for s in sigma_rels)
        self.update_every = update_every
        self.step = 0  # the last step folded in: every average is read at this t
        base = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self.models = [copy.deepcopy(base) for _ in self.sigma_rels]
        params = list(base.parameters())
        self._float_idx = [i for i, p in enumerate(params) if p.is_floating_point()]
        self._other_idx = [i for i, p in enumerate(params) if not p.is_floating_point()]
        self._live_ref: weakref.ref[nn.Module] | None = None
        self._live_params: list[torch.Tensor] = []

    @property
    def profiles(self) -> list[PowerProfile]:
        """The profile of each average now, in the order of ``sigma_rels`` and of ``state_dict()['averages']``."""
        return [PowerProfile(g, float(self.step)) for g in self.gammas]

    def _bind(self, model: nn.Module) -> nn.Module:
        """The unwrapped live model, its parameter list cached once per model object."""
        live = unwrap_model(model)
        if self._live_ref is None or self._live_ref() is not live:
            params: list[torch.Tensor] = list(live.parameters())
            if len(params) != len(self._float_idx) + len(self._other_idx):
                raise ValueError("PowerEMA.update got a model whose structure differs from the EMA's model")
            self._live_params = params
            self._live_ref = weakref.ref(live)
        return live

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the live weights after ``step`` optimizer steps, if ``step`` is a multiple of ``update_every``."""
        if step % self.update_every != 0:
            return
        if step <= self.step:
            raise ValueError(f"power EMA updates must move forward: step {step} after step {self.step}")
        live = self._bind(model)
        live_float = [self._live_params[i] for i in self._float_idx]
        live_other = [self._live_params[i] for i in self._other_idx]
        live_buffers = list(live.buffers())  # re-read: .to(device) replaces buffer tensors
        for gamma, shadow in zip(self.gammas, self.models):
            params: list[torch.Tensor] = list(shadow.parameters())
            weight = power_ema_weight(gamma, step, step - self.step)
            if self._float_idx:
                torch._foreach_lerp_([params[i] for i in self._float_idx], live_float, weight)
            for dst, src in zip(
                [params[i] for i in self._other_idx] + list(shadow.buffers()), live_other + live_buffers
            ):
                dst.copy_(src)
        self.step = step

    def state_dict(self) -> dict[str, Any]:
        """The last update's step, the widths and one shadow state dict per width (bit-for-bit resume)."""
        return {
            "step": self.step,
            "sigma_rels": list(self.sigma_rels),
            "averages": [m.state_dict() for m in self.models],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` with the same widths (in place: cached lists stay valid)."""
        if [float(s) for s in state["sigma_rels"]] != list(self.sigma_rels):
            raise UserError(
                f"power EMA state has sigma_rels {list(state['sigma_rels'])}, this run {list(self.sigma_rels)}"
            )
        if len(state["averages"]) != len(self.models):
            raise UserError("power EMA state holds a different number of averages than its sigma_rels")
        for model, average in zip(self.models, state["averages"]):
            try:
                model.load_state_dict(average)
            except RuntimeError as exc:
                raise UserError(f"power EMA state does not match the model: {mismatch(exc)}") from None
        self.step = int(state["step"])
