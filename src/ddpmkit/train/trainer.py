"""The training loop: generic machinery that calls an objective and knows nothing about diffusion.

What it trains (the model, its dataset, the objective) and where it writes (a ``RunFiles``: the run
directory, runs/rundir.py) come from the caller, as does the sample grid drawn now and then (a hook).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..config import CUDA_GRAPH_MODES, ExperimentConfig
from ..data import batches
from ..errors import UserError
from ..nn import num_parameters
from .averages import Average, FixedAverage
from .checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from .distributed import DistInfo, all_reduce_mean_, barrier, per_rank_batch_size, wrap_ddp
from .loggers import RunLoggers
from .objective import Objective
from .runtime import autocast_context, autocast_dtype, cpu_threads
from .signals import StopSignals, TrainingInterrupted

__all__ = ["Trainer", "RunFiles", "make_optimizer", "lr_at"]


class RunFiles(Protocol):
    """Where a trainer writes (runs.rundir.RunDir)."""

    metrics: Path
    tensorboard: Path

    def checkpoint(self, step: int) -> Path: ...

    def latest_checkpoint(self) -> Path | None: ...

    def prune_checkpoints(self, keep: int) -> list[Path]: ...

    def lay_out(self, cfg: ExperimentConfig) -> None: ...


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
    """Trains ``model`` on ``dataset`` by ``objective``, as ``cfg.train`` says, writing into ``files``.

    Args:
        cfg: the resolved experiment; the loop reads its train section, checkpoints keep all of it.
        model: the network, seeded and placed on ``device`` by the caller.
        dataset: the training data, in memory (streamed by ``data.batches``).
        objective: the loss and everything behind it (draws, metric bins, the state it checkpoints).
        files: where config, checkpoints and metrics go (runs.rundir.RunDir).
        device: where this process computes.
        checkpoint: a loaded checkpoint of this run to continue from (its config is ``cfg``).
        dist: this process's place among torchrun processes.
        progress: show a tqdm bar (main process only).
        grid: ``grid(trainer, step)`` draws the sample grid due after ``step`` steps (main process only).
        ema: the averaged weights kept and sampled (train.averages; None: the fixed-decay EMA of ``cfg.train``).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        dataset: Any,
        objective: Objective,
        files: RunFiles,
        *,
        device: torch.device,
        checkpoint: dict | None = None,
        dist: DistInfo | None = None,
        progress: bool = True,
        grid: Callable[[Trainer, int], Path | None] | None = None,
        ema: Average | None = None,
    ):
        tc = cfg.train
        self.cfg, self.model, self.dataset, self.objective, self.files = cfg, model, dataset, objective, files
        self.dist = dist or DistInfo()
        self.device, self.grid = device, grid
        self.progress = progress and self.dist.is_main
        self.images = dataset.kind == "image"
        self.start_step = 0
        self.ema = ema if ema is not None else FixedAverage(self.model, tc.ema_decay, tc.ema_start, tc.ema_every)
        self.optimizer = make_optimizer(self.model, tc, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.amp = autocast_dtype(tc.precision, self.device)  # None: fp32
        # fp16 gradients underflow without loss scaling; disabled, the scaler passes everything through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.step = 0  # optimizer steps done; train_step advances it
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first diverged step
        if checkpoint is not None:
            self._load(checkpoint)
        self.ddp = wrap_ddp(self.model, self.dist, self.device)  # the model itself in one process
        compiled = self.ddp if tc.compile_mode is None else torch.compile(self.ddp, mode=tc.compile_mode)
        self.net = cast(nn.Module, compiled)  # torch.compile of a module is a module (OptimizedModule)
        # CUDA graphs replay into the same output buffers: each step must say where it begins
        self._cuda_graphs = tc.compile_mode in CUDA_GRAPH_MODES and self.device.type == "cuda"
        self.logger = RunLoggers(files.metrics, files.tensorboard, tc.loggers, enabled=self.dist.is_main)
        self.interval = _Interval(self.start_step, self.device, objective.num_bins)  # sums since the last line

    @staticmethod
    def check_batch(batch_size: int, dist: DistInfo) -> None:
        """UserError unless the global batch splits evenly over the processes."""
        if batch_size % dist.world_size:
            raise UserError(f"batch size {batch_size} is not divisible by the {dist.world_size} processes")

    def describe(self) -> str:
        """One line of what this run does and how: steps, network, batch, device, precision, speed-ups."""
        tc = self.cfg.train
        batch = f"batch {tc.batch_size}"
        if self.dist.world_size > 1:
            batch += f" over {self.dist.world_size} processes"
        if tc.microbatch is not None and tc.microbatch < per_rank_batch_size(tc.batch_size, self.dist):
            batch += f" in chunks of {tc.microbatch}"
        where = f"{self.device}" + (f" ({cpu_threads()})" if self.device.type == "cpu" else "")
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + loss scaling"}
        extras = [
            x
            for x, on in (
                ("channels-last", self.images and tc.channels_last),
                (f"compiled ({tc.compile_mode})", tc.compile_mode is not None),
            )
            if on
        ]
        network = f"{self.cfg.model.kind} {num_parameters(self.model) / 1e6:.2f}M parameters"
        steps = f"steps {self.start_step} -> {tc.steps}"
        return ", ".join([steps, network, batch, where, precision[self.amp], *extras])

    def speed_hint(self) -> str | None:
        """A hint for an eager image run on one GPU long enough (half a million images) for compiling with
        CUDA graphs to pay back its compile time (measured: docs/performance.md, "Compiling"), else None."""
        tc = self.cfg.train
        images = (tc.steps - self.start_step) * tc.batch_size
        if (
            self.device.type != "cuda"
            or not self.images
            or tc.compile_mode
            or tc.microbatch is not None
            or self.dist.world_size > 1
            or images < 500_000
        ):
            return None
        return (
            "hint: on a GPU, --compile-mode reduce-overhead (torch.compile with CUDA graphs) pays back its "
            "compile time on a run this long (docs/performance.md#compiling)"
        )

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
            print(
                f"note: {self.files} was trained on another kind of device: its noise stream goes on from "
                f"a fresh seed, so the run continues, but not bit for bit as it would have",
                file=sys.stderr,
            )
        self.objective.load_state_dict(extra)
        self.ema.load_extra_state(extra)
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
            self.files.checkpoint(step),
            step=step,
            config=self.cfg.to_dict(),
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            rng=capture_rng_state(),
            extra={
                "generator": self.generator.get_state(),
                **self.objective.state_dict(),
                "class_names": self.dataset.class_names,  # label i is class_names[i]; None when unnamed
                "grad_scaler": self.scaler.state_dict(),  # {} unless fp16
                **self.ema.extra_state(),  # {} for the fixed-decay EMA
            },
        )
        if self.cfg.train.keep_checkpoints > 0:
            self.files.prune_checkpoints(self.cfg.train.keep_checkpoints)
        return path

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run until cfg.train.steps; return the last logged metrics."""
        tc = self.cfg.train
        stream = self._begin()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm  # lazy: only a progress bar needs it (start-up)

            bar = tqdm(total=tc.steps, initial=self.start_step, desc="train", dynamic_ncols=True)
        self.interval.reset(self.start_step)
        last: dict = {}
        self.step = self.start_step
        self.net.train()
        try:
            with StopSignals() as stop:
                for step in range(self.start_step, tc.steps):
                    x0, y = next(stream)
                    if self.cfg.model.num_classes is None:  # labelled data trained unconditionally
                        y = None
                    self.train_step(x0, y)
                    done = step + 1
                    if bar is not None:
                        bar.update(1)
                    if done % tc.log_every == 0 or done == tc.steps:
                        last = self._log(self.interval, done, bar)
                    saved = self._periodic(done, bar)
                    signum = stop.requested(done, self.dist, self.device)
                    if signum is not None and done < tc.steps:  # on the last step the run simply ends as usual
                        self._interrupt(done, signum, saved, bar)
            if bar is not None:
                bar.close()
            if self.start_step < tc.steps or self.files.latest_checkpoint() is None:
                self.save(tc.steps)
                if tc.sample_every:
                    self.write_grid(tc.steps)
        finally:
            self.logger.close()  # TensorBoard's event file is complete even when training stops early
        barrier(self.dist)
        return last

    def _periodic(self, done: int, bar) -> bool:
        """The sample grid and checkpoint due after ``done`` steps (the last step's come after the loop);
        True when a checkpoint was written."""
        tc = self.cfg.train
        if done == tc.steps:
            return False
        if tc.sample_every and done % tc.sample_every == 0:
            self.write_grid(done)
        if tc.checkpoint_every and done % tc.checkpoint_every == 0:
            self._log_pending(done, bar)
            self.save(done)
            return True
        return False

    def _log_pending(self, done: int, bar) -> None:
        """The metrics line of the steps since the last one, if any: a checkpoint's steps are all in metrics.jsonl."""
        if self.interval.count:
            self._log(self.interval, done, bar)

    def _interrupt(self, done: int, signum: int, saved: bool, bar) -> None:
        """Stop on a signal: checkpoint this step (unless just done) after its metrics line, then raise
        TrainingInterrupted."""
        if not saved:
            self._log_pending(done, bar)
            self.save(done)
        if bar is not None:
            bar.close()
        barrier(self.dist)
        raise TrainingInterrupted(signum, done)

    def _begin(self):
        """Lay out the run directory (main process) and return this process's batch stream."""
        tc = self.cfg.train
        if self.dist.is_main:
            self.files.lay_out(self.cfg)
            self.logger.open(self.start_step)
        barrier(self.dist)
        return batches(
            self.dataset,
            tc.batch_size,
            seed=tc.seed,
            start_step=self.start_step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            hflip=getattr(self.cfg.data, "hflip", False),
            device=self.device,
        )

    def _log(self, interval: _Interval, done: int, bar) -> dict:
        """One metrics line for the steps since the last one (averaged over every process): the loss, the loss
        in each of the objective's bins (loss_q0, loss_q1, ...), lr, the gradient norm."""
        self.check_finite(weights=False)
        all_reduce_mean_(interval.sums, self.dist)
        sums = interval.sums.tolist()  # the one host sync of the interval
        elapsed = time.perf_counter() - interval.tick
        record = {"step": done, "loss": sums[0] / interval.count}
        bins = interval.bins
        for q in range(bins):
            if sums[2 + bins + q] > 0:  # a bin no example fell in (tiny batches) has no line
                record[f"loss_q{q}"] = sums[2 + q] / sums[2 + bins + q]
        record.update(
            {
                "lr": lr_at(done - 1, self.cfg.train),
                "grad_norm": sums[1] / interval.count,
                "images_per_s": (done - interval.start) * self.cfg.train.batch_size / max(elapsed, 1e-9),
                "time": time.time(),
            }
        )
        record.update(self.objective.log_fields(done))  # what the objective adds (a consistency run's stage)
        self.logger.log(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        interval.reset(done)
        return record

    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """One optimizer step on this process's rows (x0, y) of the global batch; returns the loss.

        The objective draws its randomness for the whole global batch and this rank keeps its rows
        (rank::world_size), so 1 and N processes compute the same step. With ``train.microbatch`` the rows go through
        the network in chunks whose gradients add up to the whole share's (each chunk's mean loss
        weighted by its size), all-reduced once, after the last chunk. Advances ``self.step``;
        no host sync.
        """
        tc = self.cfg.train
        step = self.step
        rows = slice(self.dist.rank, None, self.dist.world_size)
        draws = self.objective.draw(tc.batch_size, self.dataset.shape, self.device, self.generator)
        draws = tuple(d[rows] for d in draws)
        if self.images and tc.channels_last:  # the batch, and what is drawn in its shape, go channels-last
            x0 = x0.contiguous(memory_format=torch.channels_last)
            draws = tuple(d.contiguous(memory_format=torch.channels_last) if d.dim() == 4 else d for d in draws)
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
                    part_loss, part_losses = self.objective(
                        self.net, x0[chunk], None if y is None else y[chunk], *(d[chunk] for d in draws)
                    )
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
        self.objective.observe(draws, losses)
        self.interval.add(loss, norm, self.objective.bins(draws), losses)
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
        latest = self.files.latest_checkpoint()
        raise UserError(
            f"training diverged {at}: the loss, its gradient or the weights are not finite; no "
            f"checkpoint is written after it (latest: {latest.name if latest else 'none'}); lower "
            f"train.lr or set train.grad_clip"
        )

    def _no_sync(self, last: bool):
        """DDP's no_sync() for all but the last chunk of a step: gradients are all-reduced once."""
        if last or not isinstance(self.ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def write_grid(self, step: int) -> Path | None:
        """The sample grid due after ``step`` steps, drawn by the caller's hook (main process only)."""
        if not self.dist.is_main:
            return None
        self.check_finite()
        if self.grid is None:
            return None
        began = time.perf_counter()
        path = self.grid(self, step)
        self.interval.tick += time.perf_counter() - began  # drawing is not training: images/s leaves it out
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
    count in each of the objective's bins), kept on the device: no host sync per step."""

    def __init__(self, step: int, device: torch.device, bins: int):
        self.bins = bins
        self.sums = torch.zeros(2 + 2 * bins, device=device)  # loss, grad norm, loss per bin, count per bin
        self.reset(step)

    def add(self, loss: torch.Tensor, norm: torch.Tensor, bin_: torch.Tensor, losses: torch.Tensor) -> None:
        self.sums[0] += loss
        self.sums[1] += norm.float()
        self.sums.index_add_(0, 2 + bin_, losses.float())
        self.sums.index_add_(0, 2 + self.bins + bin_, torch.ones_like(losses, dtype=self.sums.dtype))
        self.count += 1

    def reset(self, step: int) -> None:
        self.sums.zero_()
        self.count, self.start, self.tick = 0, step, time.perf_counter()
