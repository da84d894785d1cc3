"""The Gaussian diffusion process: forward noising, its posterior, the reverse model's
distribution, the training losses and the variational bound.

References: Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (improved DDPM), Salimans & Ho 2022
(v-prediction), Hang et al. 2023 (min-SNR weighting). The class never owns a network: every
method that needs one receives ``model``, a callable ``model(x_t, t, y=None)``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from . import editing
from .errors import UserError
from .likelihood import LOG2, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .options import LossType, Prediction, SamplerName, Spacing, Variance, check_choice
from .samplers import SAMPLERS, Denoised, ddim_invert, randn
from .sampling_options import SamplingOptions
from .schedules import step_coefficients
from .timestep_grids import sampling_timesteps

__all__ = ["GaussianDiffusion", "MeanVariance", "PMeanVariance", "VBTerms"]

Model = Callable[..., Tensor]


class MeanVariance(NamedTuple):
    """A diagonal Gaussian: mean, variance and log-variance (broadcastable to x)."""

    mean: Tensor
    var: Tensor
    log_var: Tensor


class PMeanVariance(NamedTuple):
    """The reverse step p(x_{t-1} | x_t) and the model's estimate of x0 behind its mean."""

    mean: Tensor
    var: Tensor
    log_var: Tensor
    pred_x0: Tensor


class VBTerms(NamedTuple):
    """The variational bound per example, in bits/dim (Ho et al. 2020, eq. 5)."""

    prior: Tensor  # [B]  L_T = KL(q(x_T | x0) || N(0, I))
    terms: Tensor  # [B, T]  terms[:, 0] = L_0 (decoder NLL), terms[:, t] = L_t (KL) for t > 0
    total: Tensor  # [B]  prior + terms.sum(1)


class GaussianDiffusion:
    """q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) and a learned reverse process.

    Args:
        betas: the noise schedule, 1-D, values in (0, 1); index t holds beta_{t+1} of the paper.
        prediction: what the network outputs: the noise "eps", the clean data "x0", or "v".
        variance: the reverse variance: "fixed_large" (sigma^2 = beta_t, Ho et al. 2020 sec. 3.2),
            "fixed_small" (the posterior variance beta~_t) or "learned_range" (improved DDPM).
        loss: "l2" or "l1" on the prediction target (L_simple), or "hybrid" = L_simple +
            vlb_weight * L_vlb (needs learned variances).
        clip_denoised: clip each predicted x0 to [-1, 1] when sampling (for image data).
        vlb_weight: lambda of the hybrid loss (0.001 in improved DDPM).
        min_snr_gamma: if set, weight L_simple by min(SNR, gamma) as in Hang et al. 2023.
    """

    def __init__(
        self,
        betas: Tensor,
        prediction: Prediction = "eps",
        variance: Variance = "fixed_large",
        loss: LossType = "l2",
        clip_denoised: bool = False,
        vlb_weight: float = 0.001,
        min_snr_gamma: float | None = None,
    ):
        check_choice("prediction", prediction, Prediction)
        check_choice("variance", variance, Variance)
        check_choice("loss", loss, LossType)
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UserError("betas must be a 1-D schedule of at least 2 values in (0, 1)")
        if loss == "hybrid" and variance != "learned_range":
            raise UserError("loss 'hybrid' trains the variance: it needs variance 'learned_range'")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise UserError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.prediction = prediction
        self.variance = variance
        self.loss_type = loss
        self.clip_denoised = bool(clip_denoised)
        self.vlb_weight = float(vlb_weight)
        self.min_snr_gamma = min_snr_gamma
        self.num_timesteps = int(betas.numel())

        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        post = step_coefficients(alphas_cumprod, alphas_cumprod_prev)
        # fixed_large uses beta_t, with beta~_1 in place of beta_0 at the decoder (DDPM code).
        large_var = torch.cat([post.posterior_variance[1:2], betas[1:]])
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = alphas_cumprod_prev
        self._tables64: dict[str, Tensor] = {
            "sqrt_abar": alphas_cumprod.sqrt(),
            "sqrt_one_minus_abar": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_abar": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_abar": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "post_var": post.posterior_variance,
            "post_log_var": post.posterior_log_variance,
            "post_coef_x0": post.coef_x0,
            "post_coef_xt": post.coef_xt,
            "large_var": large_var,
            "large_log_var": large_var.log(),
            "log_beta": betas.log(),
            "snr": alphas_cumprod / (1.0 - alphas_cumprod),
        }
        self._cache: dict[tuple, dict[str, Tensor]] = {}

    # ------------------------------------------------------------------ coefficients
    def _coef(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Coefficient ``name`` at timesteps t, shaped [B, 1, ...] to broadcast over x."""
        self._check_timesteps(t)
        key = (x.device, x.dtype)
        tables = self._cache.get(key)
        if tables is None:
            tables = {k: v.to(device=x.device, dtype=x.dtype) for k, v in self._tables64.items()}
            self._cache[key] = tables
        return tables[name][t].reshape(t.shape[0], *([1] * (x.ndim - 1)))

    def _check_timesteps(self, t: Tensor) -> None:
        """t must hold integer timesteps in [0, T): indexing would wrap -1 round to T - 1 silently.

        The range is checked where it costs no host synchronisation (CPU tensors); on a GPU an index
        of T or more still fails in the kernel, and a negative one is not caught.
        """
        if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(
                f"timesteps t must be an integer tensor (0-based, in [0, {self.num_timesteps})), got {t.dtype}"
            )
        if t.device.type == "cpu" and t.numel() and not (0 <= int(t.min()) and int(t.max()) < self.num_timesteps):
            raise ValueError(
                f"timesteps t must lie in [0, {self.num_timesteps}) (0-based), "
                f"got values from {int(t.min())} to {int(t.max())}"
            )

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> MeanVariance:
        """q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (Ho et al. 2020, eq. 4)."""
        mean = self._coef("sqrt_abar", t, x0) * x0
        var = self._coef("sqrt_one_minus_abar", t, x0) ** 2
        return MeanVariance(mean, var.expand_as(x0), torch.log(var).expand_as(x0))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, in one step (Ho et al. 2020, eq. 4 reparametrised)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return self._coef("sqrt_abar", t, x0) * x0 + self._coef("sqrt_one_minus_abar", t, x0) * noise

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> MeanVariance:
        """q(x_{t-1} | x_t, x0) = N(mu~_t, beta~_t I) (Ho et al. 2020, eqs. 6-7)."""
        mean = self._coef("post_coef_x0", t, x_t) * x0 + self._coef("post_coef_xt", t, x_t) * x_t
        var = self._coef("post_var", t, x_t).expand_as(x_t)
        log_var = self._coef("post_log_var", t, x_t).expand_as(x_t)
        return MeanVariance(mean, var, log_var)

    # ------------------------------------------------------------------ parameterisations
    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (inverse of eq. 2)."""
        return self._coef("sqrt_recip_abar", t, x_t) * x_t - self._coef("sqrt_recipm1_abar", t, x_t) * eps

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
        return (self._coef("sqrt_recip_abar", t, x_t) * x_t - x0) / self._coef("sqrt_recipm1_abar", t, x_t)

    def v_from_x0_eps(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, sec. 4)."""
        return self._coef("sqrt_abar", t, x0) * eps - self._coef("sqrt_one_minus_abar", t, x0) * x0

    def x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return self._coef("sqrt_abar", t, x_t) * x_t - self._coef("sqrt_one_minus_abar", t, x_t) * v

    def x0_from_prediction(self, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        """The x0 implied by the network's output under this diffusion's ``prediction``."""
        if self.prediction == "eps":
            return self.x0_from_eps(x_t, t, pred)
        if self.prediction == "x0":
            return pred
        return self.x0_from_v(x_t, t, pred)

    def prediction_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.v_from_x0_eps(x0, noise, t)

    # ------------------------------------------------------------------ the model
    def model_output(
        self, model: Model, x_t: Tensor, t: Tensor, y: Tensor | None = None, guidance_scale: float = 1.0
    ) -> tuple[Tensor, Tensor | None]:
        """Run the network; return (prediction, variance output v or None).

        With ``guidance_scale`` w != 1 and labels y, the conditional and unconditional
        predictions come from one batched call and combine as u + w (c - u)
        (classifier-free guidance, Ho & Salimans 2022); the variance output is the conditional one.
        """
        if guidance_scale != 1.0 and y is not None:
            null = getattr(model, "null_class", None)
            if null is None:
                raise UserError("classifier-free guidance needs a class-conditional model with a null class")
            out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
            pred, var_out = self._split(out, (2 * x_t.shape[0], *x_t.shape[1:]))
            cond, uncond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
            var_out = None if var_out is None else var_out.chunk(2)[0]
            return pred, var_out
        return self._split(_call(model, x_t, t, y), x_t.shape)

    def _split(self, out: Tensor, shape) -> tuple[Tensor, Tensor | None]:
        if self.variance != "learned_range":
            if out.shape != shape:
                raise ValueError(f"the model returned shape {tuple(out.shape)}, expected {tuple(shape)}")
            return out, None
        if out.shape[0] != shape[0] or out.shape[1] != 2 * shape[1]:
            raise ValueError("a learned-variance model must output twice the input channels")
        pred, var_out = out.chunk(2, dim=1)
        return pred, var_out

    def denoise(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        guidance_scale: float = 1.0,
        clip_denoised: bool | None = None,
    ):
        """The model's x0, the matching eps and the variance fraction: what every sampler needs."""
        pred, var_out = self.model_output(model, x_t, t, y, guidance_scale)
        x0 = self.x0_from_prediction(x_t, t, pred)
        clip = self.clip_denoised if clip_denoised is None else clip_denoised
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        if self.prediction == "eps" and not clip:
            eps = pred
        else:
            eps = self.eps_from_x0(x_t, t, x0)
        frac = None if var_out is None else (var_out + 1.0) / 2.0
        return Denoised(x0, eps, frac)

    def _model_log_variance(self, t: Tensor, x_t: Tensor, frac: Tensor | None) -> Tensor:
        if self.variance == "fixed_large":
            return self._coef("large_log_var", t, x_t).expand_as(x_t)
        if self.variance == "fixed_small":
            return self._coef("post_log_var", t, x_t).expand_as(x_t)
        # learned_range: log sigma^2 = v log beta_t + (1 - v) log beta~_t (improved DDPM eq. 15)
        max_log = self._coef("log_beta", t, x_t)
        min_log = self._coef("post_log_var", t, x_t)
        assert frac is not None  # a learned_range network outputs v
        return frac * max_log + (1.0 - frac) * min_log

    def p_mean_variance(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        clip_denoised: bool | None = None,
        guidance_scale: float = 1.0,
    ) -> PMeanVariance:
        """p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), sigma_t^2 I) with x0_hat from the network."""
        d = self.denoise(model, x_t, t, y, guidance_scale, clip_denoised)
        mean = self.q_posterior_mean_variance(d.x0, x_t, t).mean
        log_var = self._model_log_variance(t, x_t, d.var_frac)
        return PMeanVariance(mean, torch.exp(log_var), log_var, d.x0)

    def p_sample(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool | None = None,
        guidance_scale: float = 1.0,
    ) -> Tensor:
        """One ancestral step x_{t-1} = mu + sigma z, with no noise added at t = 0."""
        out = self.p_mean_variance(model, x_t, t, y, clip_denoised, guidance_scale)
        noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return out.mean + nonzero * torch.exp(0.5 * out.log_var) * noise

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        sampler: SamplerName = "ddpm",
        steps: int | None = None,
        y: Tensor | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        progress: bool = False,
        *,
        eta: float | None = None,
        spacing: Spacing | None = None,
        clip_denoised: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        x_T: Tensor | None = None,
        callback: Callable | None = None,
        timesteps: Tensor | None = None,
        order: int | None = None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """Draw samples x0 of shape ``shape`` with a sampler of ``ddpmkit.samplers`` (a convenience over them).

        Args:
            model: the network, ``model(x_t, t, y=None)``.
            shape: the output shape, batch first.
            sampler: "ddpm" (ancestral, with this diffusion's variance), "ddim", "dpm++2m", "dpm++3m",
                "unipc-bh1" or "unipc-bh2".
            steps: network evaluations; None means all T steps.
            y: class labels [B] for a conditional model.
            guidance_scale: classifier-free guidance weight w (1 = plain conditional).
            generator: a torch.Generator, or one per sample so results do not depend on batching.
            progress: show a progress bar.
            eta: DDIM's stochasticity in [0, 1] (0 = deterministic, 1 = ancestral with beta~); "ddim"
                only, None = 0. Given to any other sampler it is a UserError.
            spacing: how the kept timesteps are spread (None = the sampler's default).
            clip_denoised: clip predicted x0 to [-1, 1] (None = the diffusion's setting).
            device, dtype: where and in what precision x_T is drawn (default: the model's device).
            x_T: start from this noise instead of drawing it.
            callback: called as callback(i, t, x_t, denoised) after every network call.
            timesteps: explicit kept timesteps, strictly decreasing (e.g. a tuned grid); they replace
                ``steps`` and ``spacing``.
            order: the UniPC samplers' order, 1-3 (None = 2); given to any other sampler it is a UserError.
            options: sampler, steps, spacing, eta, order, timesteps and guidance as one checked
                :class:`SamplingOptions`, instead of those keywords.
        """
        opts = _options(
            options, sampler, guidance_scale, steps=steps, spacing=spacing, eta=eta, order=order, timesteps=timesteps
        )
        if x_T is None:
            x_T = randn(tuple(shape), generator, _model_device(model) if device is None else device, dtype)
        return self._run_sampler(model, opts, x_T, y, generator, progress, clip_denoised, callback)

    def _run_sampler(
        self,
        model: Model,
        opts: SamplingOptions,
        x_T: Tensor,
        y: Tensor | None,
        generator: torch.Generator | list[torch.Generator] | None,
        progress: bool,
        clip_denoised: bool | None,
        callback: Callable | None,
    ) -> Tensor:
        """Run the options' sampler from x_T down its timestep grid (``sample``'s body, after the checks)."""
        timesteps = opts.grid(self.num_timesteps, self.alphas_cumprod)
        denoiser = self._denoiser(model, y, x_T, opts.guidance, clip_denoised)
        with _progress(progress, len(timesteps), f"sampling ({opts.sampler})", callback) as on_step:
            return SAMPLERS[opts.sampler](
                denoiser,
                x_T,
                timesteps,
                self.alphas_cumprod,
                generator=generator,
                callback=on_step,
                **opts.sampler_kwargs(self.variance),
            )

    # ------------------------------------------------------------------ editing (ddpmkit.editing)
    @torch.inference_mode()
    def inpaint(
        self,
        model: Model,
        x_known: Tensor,
        mask: Tensor,
        sampler: SamplerName = "ddpm",
        steps: int | None = None,
        resample: int = 1,
        jump_length: int = 1,
        y: Tensor | None = None,
        guidance_scale: float = 1.0,
        generator=None,
        progress: bool = False,
        *,
        eta: float | None = None,
        spacing: Spacing | None = None,
        clip_denoised: bool | None = None,
        x_T: Tensor | None = None,
        callback: Callable | None = None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """RePaint inpainting: x0 equal to ``x_known`` where ``mask`` is 1, generated elsewhere (``editing.inpaint``).

        ``resample`` R and ``jump_length`` J follow Lugmayr et al. 2022 (R = 1: plain replacement);
        the other arguments are :meth:`sample`'s. Network calls: ``steps`` plus (R - 1) J per jump.
        """
        opts = _options(options, sampler, guidance_scale, steps=steps, spacing=spacing, eta=eta)
        timesteps = opts.grid(self.num_timesteps, self.alphas_cumprod)
        denoiser = self._denoiser(model, y, x_known, opts.guidance, clip_denoised)
        levels = editing.repaint_schedule(len(timesteps), jump_length, resample)
        calls = sum(b < a for a, b in zip(levels, levels[1:]))
        with _progress(progress, calls, f"inpainting ({opts.sampler})", callback) as on_step:
            return editing.inpaint(
                denoiser,
                x_known,
                mask,
                timesteps,
                self.alphas_cumprod,
                resample=resample,
                jump_length=jump_length,
                sampler=opts.sampler,
                generator=generator,
                x_T=x_T,
                callback=on_step,
                **opts.sampler_kwargs(self.variance),
            )

    @torch.inference_mode()
    def edit(
        self,
        model: Model,
        x: Tensor,
        strength: float,
        sampler: SamplerName = "ddpm",
        steps: int | None = None,
        y: Tensor | None = None,
        guidance_scale: float = 1.0,
        generator=None,
        progress: bool = False,
        *,
        eta: float | None = None,
        spacing: Spacing | None = None,
        clip_denoised: bool | None = None,
        callback: Callable | None = None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """SDEdit image-to-image: noise ``x`` to t0 = ``strength`` T, then denoise with ``sampler`` (editing.sdedit).

        ``steps`` are the calls of a full-strength edit (None: all T); a strength-S edit makes about S of them.
        Strength 0 returns ``x``; strength 1 is :meth:`sample` from pure noise with the same generator.
        """
        opts = _options(options, sampler, guidance_scale, steps=steps, spacing=spacing, eta=eta)
        steps = opts.calls(self.num_timesteps)
        sampling_timesteps(self.num_timesteps, steps, "linspace")  # checks steps
        timesteps = editing.edit_timesteps(self.num_timesteps, strength, steps, opts.grid_spacing, self.alphas_cumprod)
        denoiser = self._denoiser(model, y, x, opts.guidance, clip_denoised)
        calls = 0 if timesteps is None else len(timesteps)
        with _progress(progress, calls, f"editing ({opts.sampler})", callback) as on_step:
            return editing.sdedit(
                denoiser,
                x,
                strength,
                timesteps,
                self.alphas_cumprod,
                sampler=opts.sampler,
                generator=generator,
                callback=on_step,
                **opts.sampler_kwargs(self.variance),
            )

    @torch.inference_mode()
    def invert(
        self,
        model: Model,
        x0: Tensor,
        steps: int | None = None,
        y: Tensor | None = None,
        guidance_scale: float = 1.0,
        *,
        spacing: Spacing | None = None,
        clip_denoised: bool | None = None,
        callback: Callable | None = None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """DDIM inversion x0 -> x_T on the kept timesteps of ``sample(..., sampler="ddim", steps, spacing)``.

        Decoding the result with those same arguments (``x_T=``) returns about x0 (Song et al. 2021, sec. 4.3).
        ``options`` (with sampler "ddim") replaces steps, spacing and guidance_scale.
        """
        opts = _options(options, "ddim", guidance_scale, steps=steps, spacing=spacing)
        timesteps = opts.grid(self.num_timesteps, self.alphas_cumprod)
        denoiser = self._denoiser(model, y, x0, opts.guidance, clip_denoised)
        return ddim_invert(denoiser, x0, timesteps.flip(0), self.alphas_cumprod, callback=callback)

    def _denoiser(self, model: Model, y, x: Tensor, guidance_scale: float, clip_denoised: bool | None) -> Callable:
        """The samplers' denoiser over ``model`` with labels ``y`` (one per sample of ``x``) and guidance."""
        y = _labels(y, x.shape[0], x.device)
        if guidance_scale != 1.0 and y is None:
            raise UserError(f"guidance_scale {guidance_scale} needs class labels y (classifier-free guidance)")
        return lambda x_t, t: self.denoise(model, x_t, t, y, guidance_scale, clip_denoised)

    # ------------------------------------------------------------------ losses
    def training_losses(
        self,
        model: Model,
        x0: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The per-example training loss [B] at timesteps t (Ho et al. 2020, Algorithm 1).

        L_simple is the mean over dimensions of the L2 (or L1) error of the prediction target,
        optionally min-SNR weighted. The hybrid loss adds lambda * T * L_t, the bound term
        with the network's mean frozen, so L_vlb trains only the variance (improved DDPM sec. 3.1).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        pred, var_out = self._split(_call(model, x_t, t, y), x_t.shape)
        target = self.prediction_target(x0, noise, t)
        err = pred.float() - target.float()
        per_example = mean_flat(err.abs() if self.loss_type == "l1" else err**2)
        if self.min_snr_gamma is not None:
            per_example = per_example * self._min_snr_weight(t).to(per_example.dtype)
        if self.loss_type == "hybrid":
            assert var_out is not None  # the hybrid loss trains a learned_range network, which outputs v
            frozen = self.x0_from_prediction(x_t, t, pred.detach().to(x_t.dtype))
            vb = self._vb_term_bits(x0, x_t, t, frozen, (var_out.to(x_t.dtype) + 1.0) / 2.0)
            per_example = per_example + self.vlb_weight * self.num_timesteps * vb.float()
        return per_example

    def _min_snr_weight(self, t: Tensor) -> Tensor:
        """min(SNR, gamma) expressed for the prediction target (Hang et al. 2023, eq. 9)."""
        snr = self._tables64["snr"].to(t.device)[t]
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            return clipped / snr
        if self.prediction == "x0":
            return clipped
        return clipped / (snr + 1.0)

    def _vb_term_bits(self, x0: Tensor, x_t: Tensor, t: Tensor, pred_x0: Tensor, frac: Tensor | None) -> Tensor:
        """L_t in bits/dim per example: KL for t > 0, decoder NLL at t = 0 (Ho et al. eq. 5)."""
        true = self.q_posterior_mean_variance(x0, x_t, t)
        mean = self.q_posterior_mean_variance(pred_x0, x_t, t).mean
        log_var = self._model_log_variance(t, x_t, frac)
        kl = mean_flat(normal_kl(true.mean, true.log_var, mean, log_var)) / LOG2
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / LOG2
        return torch.where(t == 0, nll, kl)

    # ------------------------------------------------------------------ the bound
    def prior_bpd(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x0) || N(0, I)) in bits/dim, per example."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        q = self.q_mean_variance(x0, t)
        zero = torch.zeros_like(x0)
        return mean_flat(normal_kl(q.mean, q.log_var, zero, zero)) / LOG2

    @torch.inference_mode()
    def vb_terms(
        self,
        model: Model,
        x0: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> VBTerms:
        """Every term of the variational bound, one network call per timestep (x_t drawn once per t).

        ``x0`` must lie on the 256-level grid of [-1, 1] (uint8 data scaled as v / 127.5 - 1).
        """
        B = x0.shape[0]
        terms = torch.zeros(B, self.num_timesteps, dtype=torch.float64, device=x0.device)
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            # deferred: tqdm costs start-up and only a shown progress bar needs it
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="bits/dim", leave=False)
        for i in steps:
            t = torch.full((B,), i, device=x0.device, dtype=torch.long)
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
            x_t = self.q_sample(x0, t, noise)
            d = self.denoise(model, x_t, t, y, clip_denoised=True)
            terms[:, i] = self._vb_term_bits(x0, x_t, t, d.x0, d.var_frac).double()
        prior = self.prior_bpd(x0).double()
        return VBTerms(prior, terms, prior + terms.sum(dim=1))

    def bits_per_dim(self, model: Model, x0: Tensor, y: Tensor | None = None, generator=None) -> Tensor:
        """The variational bound on -log p(x0) in bits per dimension, per example [B]."""
        return self.vb_terms(model, x0, y, generator).total


def _options(options: SamplingOptions | None, sampler: SamplerName, guidance: float, **given) -> SamplingOptions:
    """The one options object: built from the keywords, or ``options`` where the keywords are left at their defaults."""
    if options is None:
        return SamplingOptions(sampler=sampler, guidance=guidance, **given)
    if sampler not in ("ddpm", options.sampler) or guidance != 1.0 or any(v is not None for v in given.values()):
        raise UserError("give the sampling options as keywords or as one SamplingOptions (options=), not both")
    return options


def _labels(y, batch: int, device: torch.device) -> Tensor | None:
    """Class labels as int64 on ``device``, one per sample, or None."""
    if y is None:
        return None
    y = torch.as_tensor(y, device=device, dtype=torch.long)
    if y.shape != (batch,):
        raise UserError(f"need one label per sample: {batch} samples, labels of shape {tuple(y.shape)}")
    return y


@contextmanager
def _progress(show: bool, total: int, desc: str, callback: Callable | None):
    """The sampler callback: ``callback``, plus one tick of a progress bar per network call when ``show``."""
    if not show:
        yield callback
        return
    # deferred: tqdm costs start-up and only a shown progress bar needs it
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)

    def on_step(i, t, x, d):
        bar.update(1)
        if callback is not None:
            callback(i, t, x, d)

    try:
        yield on_step
    finally:
        bar.close()


def _call(model: Model, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
    """``model(x_t, t, y)``; an unconditional call leaves y out, so ``model(x_t, t)`` callables work too."""
    return model(x_t, t) if y is None else model(x_t, t, y)


def _model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")
