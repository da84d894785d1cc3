"""Exact denoisers for Gaussian-mixture data: ground truth for testing samplers and training.

For data x0 ~ sum_k w_k N(mu_k, Sigma_k) and q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I),
each component gives x_t ~ N(sqrt(abar_t) mu_k, abar_t Sigma_k + (1 - abar_t) I), so the
posterior over components and E[x0 | x_t] are closed-form (Gaussian conditioning). The optimal
noise prediction, the minimiser of the DDPM loss, is E[eps | x_t] = (x_t - sqrt(abar_t)
E[x0 | x_t]) / sqrt(1 - abar_t). A sampler driven by it samples the mixture up to its own
discretisation error, which is what the tests and ``benchmarks/sampler_quality.py`` measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .errors import UserError
from .samplers import Denoised

__all__ = ["GaussianMixtureOracle", "MixtureFit", "sliced_wasserstein"]


class MixtureFit(NamedTuple):
    """How well samples match a mixture, each sample assigned to its most likely component."""

    weight_tv: float  # total variation between assigned-component frequencies and the weights
    mean_error: float  # weighted mean over components of ||sample mean - mu_k|| / mean component std
    std_error: float  # weighted mean over components and principal axes of |sample std / true std - 1|


class GaussianMixtureOracle:
    """The exact E[eps | x_t] of a Gaussian mixture: call it as ``model(x_t, t, y=None) -> eps``.

    Args:
        weights: [K] positive component weights (normalised here).
        means: [K, D] component means.
        covs: [K, D, D] symmetric positive semi-definite component covariances.
        alphas_cumprod: [T] alpha-bar of the diffusion, indexed by the timestep t.

    ``x_t`` is [B, D] or [B, *shape] with prod(shape) = D (flattened inside). With labels
    ``y`` (int64 [B] in 0..K-1) the oracle is class-conditional: component y alone. All the
    arithmetic is float64; outputs take ``x_t``'s dtype. A single Gaussian is K = 1.
    """

    def __init__(self, weights, means, covs, alphas_cumprod) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covs, dtype=torch.float64)
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        K = w.numel()
        if K < 1 or not bool((w > 0).all()):
            raise UserError("mixture weights must be positive")
        if mu.ndim != 2 or mu.shape[0] != K:
            raise UserError(f"means must have shape [K={K}, D], got {tuple(mu.shape)}")
        D = mu.shape[1]
        if cov.shape != (K, D, D) or not torch.allclose(cov, cov.transpose(1, 2)):
            raise UserError(f"covs must be symmetric with shape [{K}, {D}, {D}], got {tuple(cov.shape)}")
        if abar.numel() < 1 or not bool(((abar > 0) & (abar < 1)).all()):
            raise UserError("alphas_cumprod must lie in (0, 1)")
        lam, U = torch.linalg.eigh(cov)
        if bool((lam < -1e-12 * lam.abs().max().clamp(min=1.0)).any()):
            raise UserError("component covariances must be positive semi-definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covs = cov
        self.alphas_cumprod = abar
        self.num_components, self.dim = K, D
        self._lam = lam.clamp(min=0.0)  # [K, D] eigenvalues of Sigma_k
        self._U = U  # [K, D, D] eigenvectors (columns)
        self._mu_rot = torch.einsum("kd,kde->ke", mu, U)  # mu_k in its eigenbasis

    # ------------------------------------------------------------------ exact posterior
    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """E[eps | x_t]: the optimal noise prediction at timestep t."""
        x, a = self._flat(x_t), self._abar(t, x_t)
        x0 = self._x0(x, a, y)
        eps = (x - a.sqrt()[:, None] * x0) / (1.0 - a).sqrt()[:, None]
        return eps.reshape(x_t.shape).to(x_t.dtype)

    def x0_prediction(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x0 | x_t]: the optimal clean-data prediction at timestep t."""
        x0 = self._x0(self._flat(x_t), self._abar(t, x_t), y)
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def denoise(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Denoised:
        """The exact :class:`~ddpmkit.samplers.Denoised` (x0, eps, no learned variance) for the samplers."""
        x, a = self._flat(x_t), self._abar(t, x_t)
        x0 = self._x0(x, a, y)
        eps = (x - a.sqrt()[:, None] * x0) / (1.0 - a).sqrt()[:, None]
        return Denoised(x0.reshape(x_t.shape).to(x_t.dtype), eps.reshape(x_t.shape).to(x_t.dtype), None)

    def responsibilities(self, x_t: Tensor, t: Tensor) -> Tensor:
        """p(k | x_t) for every component, float64 [B, K]."""
        x, a = self._flat(x_t), self._abar(t, x_t)
        z, dvar = self._rotated(x, a)
        return self._log_resp(z, dvar).exp()

    def _x0(self, x: Tensor, a: Tensor, y: Tensor | None) -> Tensor:
        z, dvar = self._rotated(x, a)  # [B, K, D] each
        log_r = self._log_resp(z, dvar)
        if y is not None:
            y = torch.as_tensor(y, device=log_r.device).long().flatten()
            if y.numel() != x.shape[0] or bool(((y < 0) | (y >= self.num_components)).any()):
                raise UserError(f"labels must be one per sample in [0, {self.num_components - 1}]")
            log_r = torch.full_like(log_r, -math.inf).scatter(1, y[:, None], 0.0)
        r = log_r.softmax(dim=1)
        # E[x0 | x_t, k] = mu_k + Sigma_k sqrt(a) (a Sigma_k + (1 - a) I)^-1 (x_t - sqrt(a) mu_k)
        lam, U = self._lam.to(x.device), self._U.to(x.device)
        shift_rot = a.sqrt()[:, None, None] * lam[None] / dvar * z
        x0_k = self.means.to(x.device)[None] + torch.einsum("bke,kde->bkd", shift_rot, U)
        return (r[:, None, :] @ x0_k).squeeze(1)  # sum_k r_k x0_k, as a batched matmul

    def _rotated(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """x_t - sqrt(a) mu_k in the eigenbasis of Sigma_k, and the per-axis variance of x_t."""
        U, lam, mu_rot = self._U.to(x.device), self._lam.to(x.device), self._mu_rot.to(x.device)
        z = torch.einsum("bd,kde->bke", x, U) - a.sqrt()[:, None, None] * mu_rot[None]
        dvar = a[:, None, None] * lam[None] + (1.0 - a)[:, None, None]
        return z, dvar

    def _log_resp(self, z: Tensor, dvar: Tensor) -> Tensor:
        log_n = -0.5 * _sum_last((z * z) / dvar + dvar.log() + math.log(2 * math.pi))
        log_r = self.weights.to(z.device).log()[None] + log_n
        return log_r - log_r.logsumexp(dim=1, keepdim=True)

    def _flat(self, x_t: Tensor) -> Tensor:
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        if x.shape[1] != self.dim:
            raise UserError(f"the oracle's data has {self.dim} dimensions, x_t has {x.shape[1]} per sample")
        return x

    def _abar(self, t: Tensor, x_t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device).long().flatten()
        if t.numel() == 1:
            t = t.expand(x_t.shape[0])
        if t.numel() != x_t.shape[0]:
            raise UserError(f"need one timestep per sample, got {t.numel()} for {x_t.shape[0]}")
        return self.alphas_cumprod.to(x_t.device)[t]

    # ------------------------------------------------------------------ data
    def sample(
        self, n: int, generator: torch.Generator | None = None, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` exact draws from the mixture, float64 [n, D] (and their components with ``return_labels``)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nkd,nd->nk", self._U[k], self._lam[k].sqrt() * z)
        return (x, k) if return_labels else x

    def log_prob(self, x: Tensor) -> Tensor:
        """log density of clean data under the mixture, float64 [n] (needs non-singular covariances)."""
        z, dvar = self._data_rotated(x)
        log_n = -0.5 * _sum_last((z * z) / dvar + dvar.log() + math.log(2 * math.pi))
        return (self.weights.log()[None] + log_n).logsumexp(dim=1)

    def component_of(self, x: Tensor) -> Tensor:
        """The most likely component of each clean sample, int64 [n]."""
        z, dvar = self._data_rotated(x)
        log_n = -0.5 * _sum_last((z * z) / dvar + dvar.log())
        return (self.weights.log()[None] + log_n).argmax(dim=1)

    def _data_rotated(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.reshape(x.shape[0], -1).to("cpu", torch.float64)
        z = torch.einsum("bd,kde->bke", x, self._U) - self._mu_rot[None]
        dvar = self._lam.clamp(min=torch.finfo(torch.float64).tiny)[None].expand_as(z)
        return z, dvar

    def compare(self, samples: Tensor) -> MixtureFit:
        """Component weights, means and stds of ``samples`` against the mixture's (see :class:`MixtureFit`)."""
        x = samples.reshape(samples.shape[0], -1).to("cpu", torch.float64)
        k = self.component_of(x)
        freq = torch.bincount(k, minlength=self.num_components).to(torch.float64) / x.shape[0]
        weight_tv = 0.5 * float((freq - self.weights).abs().sum())
        mean_err = std_err = total = 0.0
        for j in range(self.num_components):
            xs = x[k == j]
            if xs.shape[0] < 2:
                continue
            w = float(self.weights[j])
            scale = float(self._lam[j].mean().sqrt().clamp(min=1e-12))
            mean_err += w * float((xs.mean(0) - self.means[j]).norm()) / scale
            proj = (xs - xs.mean(0)) @ self._U[j]  # along the true principal axes
            ok = self._lam[j] > 0
            ratio = proj.std(dim=0)[ok] / self._lam[j][ok].sqrt()
            std_err += w * float((ratio - 1.0).abs().mean())
            total += w
        total = max(total, 1e-300)
        return MixtureFit(weight_tv, mean_err / total, std_err / total)

    # ------------------------------------------------------------------ presets
    @classmethod
    def ring(
        cls,
        alphas_cumprod: Tensor,
        num: int = 8,
        radius: float = 2.0,
        std: float | Sequence[float] = 0.05,
        weights: Sequence[float] | None = None,
    ) -> GaussianMixtureOracle:
        """``num`` isotropic 2-D Gaussians evenly spaced on a circle (the classic 8-Gaussians toy)."""
        angle = torch.arange(num, dtype=torch.float64) * (2 * math.pi / num)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        stds = torch.as_tensor(std, dtype=torch.float64).expand(num)
        covs = stds[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
        w = torch.ones(num, dtype=torch.float64) if weights is None else weights
        return cls(w, means, covs, alphas_cumprod)


def _sum_last(x: Tensor) -> Tensor:
    """x.sum(-1) as a matrix product: several times faster than a reduction over a short last axis."""
    return x @ torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)


def sliced_wasserstein(
    a: Tensor, b: Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-2 distance between two sample sets (Rabin et al. 2011), via sorted 1-D projections."""
    a = a.reshape(a.shape[0], -1).to("cpu", torch.float64)
    b = b.reshape(b.shape[0], -1).to("cpu", torch.float64)
    if a.shape[1] != b.shape[1]:
        raise UserError(f"sample sets differ in dimension: {a.shape[1]} and {b.shape[1]}")
    d = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    d = d / d.norm(dim=0, keepdim=True)
    pa, pb = (a @ d).sort(dim=0).values, (b @ d).sort(dim=0).values
    m = max(a.shape[0], b.shape[0])
    q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    qa, qb = pa[(q * a.shape[0]).long()], pb[(q * b.shape[0]).long()]
    return float(((qa - qb) ** 2).mean().sqrt())
