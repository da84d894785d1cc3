"""The training loop. It knows nothing about diffusion beyond calling the objective.

Run directory layout: ``config.yaml`` (resolved), ``checkpoints/step_XXXXXXXX.pt``,
``metrics.jsonl`` (one JSON object per log interval), ``samples/step_XXXXXXXX.png`` and, with
``train.loggers: [jsonl, tensorboard]``, TensorBoard event files in ``tb/`` (``loggers.py``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..ema import EMA
from ..errors import UserError
from ..files import WriteError
from ..nn import num_parameters
from ..timestep_sampling import make_timestep_sampler
from ..runs.build import build_dataset, build_diffusion, build_model, resolve_model_config
from .checkpoint import (
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from ..config import CUDA_GRAPH_MODES, ExperimentConfig, save_config
from .distributed import DistInfo, all_reduce_mean_, barrier, device_for, per_rank_batch_size, wrap_ddp
from .runtime import autocast_context, autocast_dtype, use_deterministic_algorithms
from .loggers import RunLoggers
from .objective import DiffusionObjective
from .signals import StopSignals, TrainingInterrupted

__all__ = ["Trainer", "make_optimizer", "lr_at"]

def make_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay), fused where PyTorch has the kernel (CPU from torch 2.4), multi-tensor
    (foreach) otherwise: the fused step is several times faster (docs/performance.md)."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    if device.type == "cuda" or (device.type == "cpu" and _torch_at_least(2, 4)):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    return cls(model.parameters(), **kwargs)


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


def lr_at(step: int, cfg) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Trains the model an ExperimentConfig describes into ``run_dir``.

    Args:
        cfg: the experiment (validated).
        run_dir: where config, checkpoints, metrics and sample grids go.
        checkpoint: a loaded checkpoint of this run to continue from (its config is ``cfg``).
        dist: this process's place among torchrun processes.
        progress: show a tqdm bar (main process only).
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, checkpoint: dict | None = None,
                 dist: DistInfo | None = None, progress: bool = True):
        self.dist = dist or DistInfo()
        self.run_dir = Path(run_dir)
        self.progress = progress and self.dist.is_main
        tc = cfg.train
        if tc.batch_size % self.dist.world_size:
            raise UserError(f"batch size {tc.batch_size} is not divisible by the {self.dist.world_size} processes")
        self.start_step = 0
        self.device = device_for(self.dist, tc.device)
        if tc.deterministic:
            use_deterministic_algorithms(self.device)
        self.dataset = build_dataset(cfg.data, "train", seed=tc.seed)
        self.cfg = resolve_model_config(cfg, self.dataset)
        self.images = self.dataset.kind == "image"
        torch.manual_seed(tc.seed)
        self.model = build_model(self.cfg.model).to(self.device)
        if self.images and tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.diffusion = build_diffusion(self.cfg.diffusion, images=self.images)
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_start, tc.ema_every)
        self.optimizer = make_optimizer(self.model, tc, self.device)
        self.timesteps = make_timestep_sampler(self.cfg.diffusion.timestep_sampler, self.diffusion.num_timesteps)
        self.objective = DiffusionObjective(self.diffusion, self.timesteps, self.cfg.diffusion.p_uncond,
                                            getattr(self.model, "null_class", None))
        self.generator = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.amp = autocast_dtype(tc.precision, self.device)  # None: fp32
        # fp16 gradients underflow without loss scaling; disabled, the scaler passes everything through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.step = 0  # optimizer steps done; train_step advances it
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first diverged step
        if checkpoint is not None:
            self._load(checkpoint)
        self.ddp = wrap_ddp(self.model, self.dist, self.device)  # the model itself in one process
        self.net = self.ddp if tc.compile_mode is None else torch.compile(self.ddp, mode=tc.compile_mode)
        # CUDA graphs replay into the same output buffers: each step must say where it begins
        self._cuda_graphs = tc.compile_mode in CUDA_GRAPH_MODES and self.device.type == "cuda"
        self.logger = RunLoggers(self.run_dir, tc.loggers, enabled=self.dist.is_main)
        self.interval = _Interval(self.start_step, self.device)  # sums of the steps since the last metrics line

    def describe(self) -> str:
        """One line of what this run does and how: steps, network, batch, device, precision, speed-ups."""
        tc = self.cfg.train
        batch = f"batch {tc.batch_size}"
        if self.dist.world_size > 1:
            batch += f" over {self.dist.world_size} processes"
        if tc.microbatch is not None and tc.microbatch < per_rank_batch_size(tc.batch_size, self.dist):
            batch += f" in chunks of {tc.microbatch}"
        where = f"{self.device}" + (f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else "")
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + loss scaling"}
        extras = [x for x, on in (("channels-last", self.images and tc.channels_last),
                                  (f"compiled ({tc.compile_mode})", tc.compile_mode is not None)) if on]
        network = f"{self.cfg.model.kind} {num_parameters(self.model) / 1e6:.2f}M parameters"
        return ", ".join([f"steps {self.start_step} -> {tc.steps}", network, batch, where, precision[self.amp], *extras])

    def speed_hint(self) -> str | None:
        """A hint for an eager image run on one GPU long enough (half a million images) for compiling with
        CUDA graphs to pay back its compile time (measured: docs/performance.md, "Compiling"), else None."""
        tc = self.cfg.train
        images = (tc.steps - self.start_step) * tc.batch_size
        if (self.device.type != "cuda" or not self.images or tc.compile_mode or tc.microbatch is not None
                or self.dist.world_size > 1 or images < 500_000):
            return None
        return ("hint: on a GPU, --compile-mode reduce-overhead (torch.compile with CUDA graphs) pays back its "
                "compile time on a run this long (docs/performance.md#compiling)")

    # ------------------------------------------------------------------ state
    def _load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        extra = ckpt.get("extra") or {}
        saved = extra.get("generator")
        if saved is not None and saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved.cpu())
        elif saved is not None:  # saved on another kind of device (a CUDA Philox state is 16 bytes, a CPU one 5 KB)
            self.generator.manual_seed(self.cfg.train.seed + 1 + int(ckpt["step"]))
            print(f"note: {self.run_dir} was trained on another kind of device: its noise stream goes on from "
                  f"a fresh seed, so the run continues, but not bit for bit as it would have", file=sys.stderr)
        if "timesteps" in extra:
            self.timesteps.load_state_dict(extra["timesteps"])
        if extra.get("grad_scaler") and self.scaler.is_enabled():  # an fp16 run goes on with its loss scale
            self.scaler.load_state_dict(extra["grad_scaler"])
        restore_rng_state(ckpt["rng"])
        self.start_step = self.step = int(ckpt["step"])

    def save(self, step: int) -> Path | None:
        """Write a checkpoint (main process only) and prune old ones; never one of a diverged run."""
        if not self.dist.is_main:
            return None
        self.check_finite()
        path = save_checkpoint(
            checkpoint_path(self.run_dir, step),
            step=step,
            config=self.cfg.to_dict(),
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            rng=capture_rng_state(),
            extra={"generator": self.generator.get_state(), "timesteps": self.timesteps.state_dict(),
                   "class_names": self.dataset.class_names,  # label i is class_names[i]; None when unnamed
                   "grad_scaler": self.scaler.state_dict()},  # {} unless fp16
        )
        if self.cfg.train.keep_checkpoints > 0:
            prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        return path

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run until cfg.train.steps; return the last logged metrics."""
        tc = self.cfg.train
        stream = self._begin()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=self.start_step, desc="train", dynamic_ncols=True)
        self.interval.reset(self.start_step)
        last: dict = {}
        self.step = self.start_step
        self.net.train()
        try:
            with StopSignals() as stop:
                for step in range(self.start_step, tc.steps):
                    x0, y = next(stream)
                    if self.cfg.model.num_classes is None:  # labelled data trained unconditionally (data.conditional: false)
                        y = None
                    self.train_step(x0, y)
                    done = step + 1
                    if bar is not None:
                        bar.update(1)
                    if done % tc.log_every == 0 or done == tc.steps:
                        last = self._log(self.interval, done, bar)
                    saved = self._periodic(done)
                    signum = stop.requested(done, self.dist, self.device)
                    if signum is not None and done < tc.steps:  # on the last step the run simply ends as usual
                        self._interrupt(done, signum, saved, bar)
            if bar is not None:
                bar.close()
            if self.start_step < tc.steps or latest_checkpoint(self.run_dir) is None:
                self.save(tc.steps)
                if tc.sample_every:
                    self.write_grid(tc.steps)
        finally:
            self.logger.close()  # TensorBoard's event file is complete even when training stops early
        barrier(self.dist)
        return last

    def _periodic(self, done: int) -> bool:
        """The sample grid and checkpoint due after ``done`` steps (the last step's come after the loop);
        True when a checkpoint was written."""
        tc = self.cfg.train
        if done == tc.steps:
            return False
        if tc.sample_every and done % tc.sample_every == 0:
            self.write_grid(done)
        if tc.checkpoint_every and done % tc.checkpoint_every == 0:
            self.save(done)
            return True
        return False

    def _interrupt(self, done: int, signum: int, saved: bool, bar) -> None:
        """Stop on a signal: checkpoint this step (unless just done), then raise TrainingInterrupted."""
        if bar is not None:
            bar.close()
        if not saved:
            self.save(done)
        barrier(self.dist)
        raise TrainingInterrupted(signum, done)

    def _begin(self):
        """Lay out the run directory (main process) and return this process's batch stream."""
        from ..data import batches

        tc = self.cfg.train
        if self.dist.is_main:
            for folder in (self.run_dir / "checkpoints", self.run_dir / "samples"):
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise WriteError(folder, e) from None
            save_config(self.cfg, self.run_dir / "config.yaml")
            self.logger.open(self.start_step)
        barrier(self.dist)
        return batches(self.dataset, tc.batch_size, seed=tc.seed, start_step=self.start_step, rank=self.dist.rank,
                       world_size=self.dist.world_size, hflip=getattr(self.cfg.data, "hflip", False),
                       device=self.device)

    def _log(self, interval: "_Interval", done: int, bar) -> dict:
        """One metrics line for the steps since the last one (averaged over every process): the loss, the loss
        of each quarter of the timesteps (loss_q0: the smallest t; improved DDPM's), lr, the gradient norm."""
        self.check_finite(weights=False)
        all_reduce_mean_(interval.sums, self.dist)
        sums = interval.sums.tolist()  # the one host sync of the interval
        elapsed = time.perf_counter() - interval.tick
        record = {"step": done, "loss": sums[0] / interval.count}
        for q in range(4):
            if sums[6 + q] > 0:  # a quarter no example fell in (tiny batches) has no line
                record[f"loss_q{q}"] = sums[2 + q] / sums[6 + q]
        record.update({
            "lr": lr_at(done - 1, self.cfg.train),
            "grad_norm": sums[1] / interval.count,
            "images_per_s": (done - interval.start) * self.cfg.train.batch_size / max(elapsed, 1e-9),
            "time": time.time(),
        })
        self.logger.log(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        interval.reset(done)
        return record

    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """One optimizer step on this process's rows (x0, y) of the global batch; returns the loss.

        Draws t and noise for the whole global batch and keeps this rank's rows (rank::world_size),
        so 1 and N processes compute the same step. With ``train.microbatch`` the rows go through
        the network in chunks whose gradients add up to the whole share's (each chunk's mean loss
        weighted by its size), all-reduced once, after the last chunk. Advances ``self.step``;
        no host sync.
        """
        tc = self.cfg.train
        step = self.step
        rows = slice(self.dist.rank, None, self.dist.world_size)
        t, w, noise, drop = self.objective.draw(tc.batch_size, self.dataset.shape, self.device, self.generator)
        t, w, noise, drop = t[rows], w[rows], noise[rows], drop[rows]
        if self.images and tc.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        self.optimizer.zero_grad(set_to_none=True)
        share = x0.shape[0]
        size = min(tc.microbatch or share, share)
        loss = torch.zeros((), device=self.device)
        parts = []
        for start in range(0, share, size):
            chunk = slice(start, start + size)
            weight = (min(start + size, share) - start) / share
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self._no_sync(last=start + size >= share):
                with autocast_context(self.device, self.amp):
                    part_loss, part_losses = self.objective(self.net, x0[chunk], None if y is None else y[chunk],
                                                            t[chunk], w[chunk], noise[chunk], drop[chunk])
                self.scaler.scale(part_loss * weight).backward()
            loss += part_loss.detach() * weight
            parts.append(part_losses)
        losses = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.scaler.unscale_(self.optimizer)  # clip and measure the true gradient (a no-op without fp16)
        norm = _grad_norm(self.model, tc.grad_clip)
        if not self.scaler.is_enabled():  # with fp16 loss scaling an overflow only skips the step
            self._note_finite(step, loss, norm if tc.grad_clip is not None else None)
        self.scaler.step(self.optimizer)  # with fp16: skipped when a gradient overflowed
        self.scaler.update()
        self.ema.update(self.model, step + 1)
        self._update_timestep_sampler(t, losses)
        self.interval.add(loss, norm, t * 4 // self.diffusion.num_timesteps, losses)
        self.step = step + 1
        return loss

    def _note_finite(self, step: int, loss: torch.Tensor, norm: torch.Tensor | None) -> None:
        """Remember (on the device: no host sync) the first step whose loss or gradient norm was not finite."""
        bad = ~torch.isfinite(loss) if norm is None else ~(torch.isfinite(loss) & torch.isfinite(norm))
        self._first_bad = torch.where(bad & (self._first_bad < 0), step + 1, self._first_bad)

    def check_finite(self, weights: bool = True) -> None:
        """UserError when training has diverged: a non-finite loss or gradient norm (or weights, if asked)."""
        first = int(self._first_bad.item())
        if first < 0 and (not weights or all(bool(torch.isfinite(p).all()) for p in self.model.parameters())):
            return
        at = f"at step {first}" if first >= 0 else f"by step {self.step}"
        latest = latest_checkpoint(self.run_dir)
        raise UserError(f"training diverged {at}: the loss, its gradient or the weights are not finite; no "
                        f"checkpoint is written after it (latest: {latest.name if latest else 'none'}); lower "
                        f"train.lr or set train.grad_clip")

    def _no_sync(self, last: bool):
        """DDP's no_sync() for all but the last chunk of a step: gradients are all-reduced once."""
        if last or not isinstance(self.ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _update_timestep_sampler(self, t, losses) -> None:
        if self.cfg.diffusion.timestep_sampler != "loss_aware":
            return
        from .distributed import all_gather_cat

        self.timesteps.update(all_gather_cat(t, self.dist), all_gather_cat(losses, self.dist))

    @torch.no_grad()
    def write_grid(self, step: int) -> Path | None:
        """A PNG of EMA samples (main process only); labels cycle through the classes."""
        if not self.dist.is_main:
            return None
        self.check_finite()
        import numpy as np
        from PIL import Image

        from ..images import sample_grid, save_png, save_points_png, to_uint8

        sc = self.cfg.sample
        n = self.cfg.train.num_grid_samples
        model = self.ema.model
        null = getattr(model, "null_class", None)
        y = None if null is None else torch.arange(n, device=self.device) % null
        gen = torch.Generator(device=self.device).manual_seed(1234)
        with autocast_context(self.device, self.amp):
            x = self.diffusion.sample(model, (n, *self.dataset.shape), sampler=sc.grid_sampler, steps=sc.grid_steps,
                                      y=y, generator=gen, device=self.device)
        path = self.run_dir / "samples" / f"step_{step:08d}.png"
        if self.images:  # labels cycle through the classes: one class per row
            grid = sample_grid(to_uint8(x.float()), None if y is None else y.cpu().numpy())
            save_png(path, grid)
        else:
            save_points_png(path, x.float().cpu().numpy())
            grid = np.asarray(Image.open(path).convert("RGB")) if self.logger.tensorboard is not None else None
        if grid is not None:
            self.logger.image("samples", grid, step)
        return path


def _grad_norm(model: nn.Module, clip: float | None) -> torch.Tensor:
    """The total gradient norm (before clipping to ``clip``, when set), on the device."""
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class _Interval:
    """Sums over the steps since the last metrics line (loss, gradient norm, and the per-example loss and
    count in each quarter of the timesteps), kept on the device: no host sync per step."""

    def __init__(self, step: int, device: torch.device):
        self.sums = torch.zeros(10, device=device)  # loss, grad norm, loss per quarter (4), count per quarter (4)
        self.reset(step)

    def add(self, loss: torch.Tensor, norm: torch.Tensor, quarter: torch.Tensor, losses: torch.Tensor) -> None:
        self.sums[0] += loss
        self.sums[1] += norm.float()
        self.sums.index_add_(0, 2 + quarter, losses.float())
        self.sums.index_add_(0, 6 + quarter, torch.ones_like(losses, dtype=self.sums.dtype))
        self.count += 1

    def reset(self, step: int) -> None:
        self.sums.zero_()
        self.count, self.start, self.tick = 0, step, time.perf_counter()
