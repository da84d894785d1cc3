"""A trained run, loaded: its config, network, diffusion and class names, ready to sample from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import ExperimentConfig, Toy2DData, config_from_checkpoint
from ..diffusion import GaussianDiffusion
from ..errors import UserError
from ..nn import UNetConfig
from ..options import Device, Precision, SamplerName, Spacing
from ..samplers import seeded_generators
from ..sampling_options import SamplingOptions
from ..train.runtime import autocast_context, autocast_dtype, compute_device
from .bpd import evaluate_bpd
from .build import build_diffusion, build_model, check_state_dict
from .consistency_model import check_consistency_options, is_consistency, sample_consistency
from .diffusers_folder import is_diffusers_source, run_fields_from_diffusers
from .rundir import read_named_checkpoint, resolve_checkpoint, run_dir_of
from .sampling import Labels, SamplingRequest, check_draws, default_steps, parse_labels, run_sampling_options
from .tuning import load_tuned

__all__ = ["Run", "Samples", "class_names_of", "parse_labels", "default_steps", "describe_checkpoint"]


class Samples(NamedTuple):
    """What ``Run.sample`` draws: x0 (float32, CPU) and the labels it was conditioned on."""

    x: Tensor  # [N, C, H, W] images in [-1, 1], or [N, D] points
    labels: Tensor | None  # int64 [N], or None for an unconditional model
    sampler: str
    steps: int  # network calls per sample
    trajectory: list | None  # (t, x_t [k], predicted x0 [k]) at about 10 steps of the first batch, if asked
    timesteps_file: str | None = None  # the tuned grid used (RUN/timesteps/<sampler>-<K>.json), if any


class SamplingPlan(NamedTuple):
    """What ``Run.sample`` resolved and checked before its first network call."""

    options: SamplingOptions  # the sampler and its grid, eta, order and guidance
    labels: Tensor | None  # int64 [num], or None for an unconditional model
    calls: int  # network calls per sample
    tuned_file: str | None  # the tuned grid used, if any


def class_names_of(ckpt: dict) -> list[str] | None:
    """The names of a checkpoint's labels (label i is names[i]), where its data named them."""
    return (ckpt.get("extra") or {}).get("class_names")


@dataclass
class Run:
    """A trained model as a checkpoint describes it; ``Run.load(path)`` makes one."""

    config: ExperimentConfig  # the resolved experiment config the run trained with
    model: nn.Module  # the network (EMA weights unless loaded with ema=False), eval mode
    diffusion: GaussianDiffusion
    class_names: list[str] | None  # label i is class_names[i], where the data named its classes
    step: int  # optimizer steps the weights have seen
    checkpoint: Path  # the file loaded
    ema: bool  # whether the weights are the EMA's

    @classmethod
    def load(cls, path: str | Path, ema: bool = True, device: Device = "auto") -> Run:
        """Load a run directory (its latest checkpoint), a checkpoint file, or a diffusers DDPM folder (mapped
        exactly as ``ddpmkit import`` maps it, nothing written)."""
        if is_diffusers_source(path):
            return cls(**{**run_fields_from_diffusers(path, device), "ema": ema})  # its one set of weights
        file = resolve_checkpoint(path)
        ckpt = read_named_checkpoint(file)
        use_ema = ema and ckpt.get("ema") is not None
        try:
            cfg = config_from_checkpoint(ckpt["config"], ckpt["version"])
        except UserError as e:
            raise UserError(f"checkpoint {str(file)!r} holds a bad config: {e}") from None
        state = ckpt["ema"] if use_ema else ckpt["model"]
        check_state_dict(cfg.model, state, f"checkpoint {str(file)!r}")
        model = build_model(cfg.model)
        model.load_state_dict(state)
        model = model.to(compute_device(device)).eval()
        images = cfg.model.kind == "unet"
        if images:  # channels-last convolutions are faster on CPU and GPU
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return cls(
            cfg,
            model,
            build_diffusion(cfg.diffusion, images=images),
            class_names_of(ckpt),
            int(ckpt["step"]),
            file,
            use_ema,
        )

    def check_diffusion(self, command: str) -> None:
        """UserError for a consistency model: ``command`` runs the diffusion's chain, which it was not tuned for."""
        if is_consistency(self.config):
            raise UserError(
                f"{command} runs a diffusion's sampler; {str(self.checkpoint)!r} is a consistency model "
                f"(ddpmkit distill): sample it with `ddpmkit sample RUN --steps 1`, 2 or 4"
            )

    def evaluate_bpd(self, **options) -> dict:
        """The variational bound in bits/dim on held-out data (see ``runs.bpd.evaluate_bpd``)."""
        if is_consistency(self.config):
            raise UserError(
                "bits/dim is refused for a consistency model: it defines no likelihood bound "
                "(evaluate it with --metric fid, kid, pr or digits)"
            )
        return evaluate_bpd(self, **options)

    @property
    def is_image(self) -> bool:
        """True for an image model (UNet), False for a 2-D point model."""
        return self.config.model.kind == "unet"

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model, else None."""
        return self.config.model.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for images, (D,) for points."""
        m = self.config.model
        if isinstance(m, UNetConfig):  # is_image; a loaded run's config has its shape filled in
            return (m.resolved_in_channels, *m.resolved_image_hw)
        return (m.dim,)

    @property
    def run_dir(self) -> Path | None:
        """The run directory of the checkpoint (RUN/checkpoints/step_*.pt), or None for a loose file."""
        return run_dir_of(self.checkpoint)

    @property
    def device(self) -> torch.device:
        """Where the network's weights live."""
        return next(self.model.parameters()).device

    def sample(
        self,
        num: int,
        *,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        eta: float | None = None,
        spacing: Spacing | None = None,
        labels: Labels = None,
        guidance: float | None = None,
        seed: int = 0,
        batch_size: int = 256,
        precision: Precision | None = None,
        trajectory: bool = False,
        progress: bool = False,
        order: int | None = None,
    ) -> Samples:
        """Draw ``num`` samples; sample i uses seed + i, whatever the batch size.

        Options left None take the run's ``sample`` config (sampler, steps, eta, spacing, guidance, order), except
        that a grid saved by ``ddpmkit tune-steps`` for this sampler and number of calls replaces the
        config's spacing (``spacing=`` named here still wins);
        ``labels``: "all" (the default of a conditional model: classes cycled), a class number or
        name, a comma list "0,1" or "cat,dog", or a sequence; ``precision``: autocast dtype (default
        "auto" for images, "fp32" for points). Everything is checked before the first network call.
        A consistency model (``ddpmkit distill``) samples with its multistep sampler, ``steps`` calls.
        """
        asked = SamplingRequest(sampler, steps, eta, spacing, order, guidance)
        if is_consistency(self.config):
            return self._sample_consistency(num, asked, labels, seed, batch_size, precision, trajectory)
        plan = self._plan(num, seed, batch_size, trajectory, labels, asked)
        amp = autocast_dtype(precision or ("auto" if self.is_image else "fp32"), self.device)
        # deferred: tqdm costs start-up and only a shown progress bar needs it
        from tqdm.auto import tqdm

        chunks: list[Tensor] = []
        rows: list | None = [] if trajectory else None
        sampler_name = plan.options.sampler
        with tqdm(total=num, desc=f"sampling {sampler_name}", disable=not progress, leave=False) as bar:
            for start in range(0, num, batch_size):
                chunks.append(
                    self._draw(plan, start, min(batch_size, num - start), seed, amp, rows if start == 0 else None)
                )
                bar.update(chunks[-1].shape[0])
        return Samples(torch.cat(chunks), plan.labels, sampler_name, plan.calls, rows, plan.tuned_file)

    def _sample_consistency(
        self, num: int, asked: SamplingRequest, labels: Labels, seed: int, batch_size: int, precision, trajectory: bool
    ) -> Samples:
        """``asked.steps`` calls (default: the run's sample.steps) of the consistency sampler; sample i: seed + i."""
        check_draws(num, seed, batch_size)
        if trajectory:
            raise UserError("a trajectory follows a diffusion sampler's steps; a consistency model makes a few jumps")
        calls = check_consistency_options(self.config.sample, asked)
        y = parse_labels(labels, num, self.num_classes, self.class_names)
        amp = autocast_dtype(precision or ("auto" if self.is_image else "fp32"), self.device)
        chunks = []
        for start in range(0, num, batch_size):
            n = min(batch_size, num - start)
            gens = seeded_generators(seed, range(start, start + n), self.device)
            part = None if y is None else y[start : start + n].to(self.device)
            with torch.no_grad(), autocast_context(self.device, amp):
                x = sample_consistency(
                    self.config,
                    self.model,
                    self.diffusion,
                    (n, *self.sample_shape),
                    calls,
                    y=part,
                    generator=gens,
                    device=self.device,
                )
            chunks.append(x.float().cpu())
        return Samples(torch.cat(chunks), y, "consistency", calls, None)

    def _plan(
        self, num: int, seed: int, batch_size: int, trajectory: bool, labels: Labels, asked: SamplingRequest
    ) -> SamplingPlan:
        """Every option resolved against the run's config and checked."""
        check_draws(num, seed, batch_size)
        if trajectory and not self.is_image:
            raise UserError("a trajectory draws images; this model makes 2-D points")
        T = self.diffusion.num_timesteps
        opts = run_sampling_options(self.config.sample, T, asked)
        y = parse_labels(labels, num, self.num_classes, self.class_names)
        if opts.guidance != 1.0 and y is None:
            raise UserError("guidance needs a class-conditional model")
        tuned = None
        if asked.spacing is None and opts.steps is not None and self.run_dir is not None:  # a named spacing wins
            tuned = load_tuned(self.run_dir, opts.sampler, opts.steps, T)
        if tuned:
            opts = dataclasses.replace(opts, timesteps=torch.tensor(tuned[0]))
        return SamplingPlan(opts, y, opts.calls(T), tuned and str(tuned[1]))

    def _draw(self, plan: SamplingPlan, start: int, n: int, seed: int, amp, rows: list | None) -> Tensor:
        device = self.device
        gens = seeded_generators(seed, range(start, start + n), device)
        y = None if plan.labels is None else plan.labels[start : start + n].to(device)
        callback = None if rows is None else _trajectory_callback(rows, plan.calls)
        with autocast_context(device, amp):
            x = self.diffusion.sample(
                self.model,
                (n, *self.sample_shape),
                y=y,
                generator=gens,
                device=device,
                callback=callback,
                options=plan.options,
            )
        return x.float().cpu()


def describe_checkpoint(path: str | Path) -> dict[str, str]:
    """What ``ddpmkit info`` prints: the checkpoint, its step, data, network, diffusion, classes, EMA, source."""
    file = resolve_checkpoint(path)
    ckpt = read_named_checkpoint(file)
    cfg = config_from_checkpoint(ckpt["config"], ckpt["version"])
    d, classes, names = cfg.diffusion, cfg.model.num_classes, class_names_of(ckpt)
    named = f" (labels 0..{classes - 1}: {', '.join(names)})" if classes and names else ""
    data = cfg.data.kind + (f" ({cfg.data.distribution})" if isinstance(cfg.data, Toy2DData) else "")
    if isinstance(cfg.model, UNetConfig):  # images as H x W x C (H: height), whatever the checkpoint's age
        data += " ({}x{}x{} images, H x W x C)".format(*cfg.model.resolved_image_hw, cfg.model.resolved_in_channels)
    about = {
        "checkpoint": str(file),
        "step": f"{ckpt['step']} of {cfg.train.steps}",
        "data": data,
        "model": f"{cfg.model.kind}, {_count(ckpt['model']) / 1e6:.3f} M parameters",
        "diffusion": f"T={d.timesteps} {d.schedule}, prediction={d.prediction}, variance={d.variance}, loss={d.loss}",
        "classes": f"{classes if classes else 'unconditional'}{named}"
        + (f", p_uncond={d.p_uncond}" if classes else ""),
        "ema": f"{'yes' if ckpt.get('ema') is not None else 'no'} ({_ema_kind(cfg, ckpt)})",
    }
    if cfg.distill is not None:  # a consistency model: its method and teacher
        dc = cfg.distill
        about["distill"] = f"{dc.method} from {dc.teacher} (step {dc.teacher_step}), {dc.stage_steps} steps per stage"
    source = (ckpt.get("extra") or {}).get("source")
    if source:  # an imported run: where its weights came from
        about["source"] = f"{source['format']} folder {source['folder']}"
    return about


def _ema_kind(cfg: ExperimentConfig, ckpt: dict) -> str:
    """How the EMA weights were averaged: the fixed decay, or the power EMA's width (rebuilt by `ddpmkit ema`)."""
    if cfg.train.ema_kind != "power":
        return f"decay {cfg.train.ema_decay}"
    rebuilt = (ckpt.get("extra") or {}).get("posthoc_ema")
    if rebuilt is not None:
        return f"power, sigma_rel {rebuilt['sigma_rel']:g} rebuilt from snapshots"
    kept = ", ".join(f"{s:g}" for s in cfg.train.ema_sigma_rels)
    return f"power, sigma_rel {cfg.train.ema_sigma_rels[0]:g} of {kept}"


def _count(state: dict) -> int:
    """Parameters in a state dict (the networks keep no persistent buffers), without building the network."""
    return sum(v.numel() for v in state.values() if isinstance(v, Tensor))


def _trajectory_callback(rows: list, calls: int) -> Callable:
    """Keep x_t and the predicted x0 of the first 8 samples at about 10 evenly spaced calls."""
    keep = {round(i * (calls - 1) / 9) for i in range(10)} if calls > 1 else {0}

    def callback(i, t, x, d):
        if i in keep:
            rows.append((int(t[0]) if hasattr(t, "__len__") else int(t), x[:8].float().cpu(), d.x0[:8].float().cpu()))

    return callback
