"""Training and sampling speed of ddpmkit's UNet against public anchors, at matched FLOPs.

    python benchmarks/train_speed.py [--threads N] [--repeats R] [--steps S] [--compile] [--quick]
    python benchmarks/train_speed.py --device cuda [--compile [--compile-mode reduce-overhead]]  # CIFAR-10 model

What it measures, all in one process, configurations alternating within every repeat (so a
slow spell on a shared machine hits every configuration alike), medians over the repeats:

* training throughput (images/s) of one optimizer step on a batch of random 32x32x3 images:
  noise, q_sample, network, MSE to the noise, backward, Adam. ddpmkit goes through its real
  training path (``Trainer.train_step``: objective, make_optimizer's Adam (fused where available), autocast,
  channels-last, gradient clipping and the EMA update included); the anchors use the same
  loop written plainly (foreach Adam, no clipping, no EMA);
* the anchors: diffusers' ``UNet2DModel`` (6.47M parameters) and, when it imports,
  lucidrains' ``denoising_diffusion_pytorch.Unet(dim=64, dim_mults=(1, 2, 2))``. ddpmkit's
  UNet is configured to the diffusers architecture, so parameters and FLOPs per image match;
* each network in each mode: fp32 eager (contiguous and channels-last), bf16 autocast, and
  with ``--compile`` torch.compile. Every network is ranked by its best mode;
* FLOPs per image counted with ``torch.utils.flop_counter.FlopCounterMode`` over one training
  step (forward + backward), with attention run through the math backend so its matrix
  products are counted (PyTorch's fused CPU attention kernel is invisible to the counter);
* sampling throughput: images/s of ONE network evaluation at batch 64 under
  ``torch.inference_mode`` (a sampler makes one such call per step), timed over ``--steps`` calls;
* glibc's malloc set to keep freed memory, as the ``ddpmkit`` command sets it (process-wide, so
  for every contender; ``--system-malloc`` leaves it alone);
* the matrix-multiply peaks (2048 x 2048 on the CPU, 8192 x 8192 on a GPU; fp32 and bf16) of
  this machine, and the fraction of each peak every configuration achieves.

Two architectures (``--model``): ``matched`` (the default on the CPU) is the 6.47M-parameter
network above at batch 16; ``cifar10`` (the default with ``--device cuda``) is the DDPM paper's
CIFAR-10 model (ddpmkit's ``cifar10`` preset, 35.7M parameters, dropout 0.1) against
``UNet2DModel`` built to the same size (35,746,307 parameters each) at batch 128. On CUDA the
modes are fp32 (TF32 allowed for everyone), bf16 autocast, bf16 channels-last, and with
``--compile`` compiled bf16 (``--compile-mode reduce-overhead`` adds CUDA graphs, for every
contender alike); every timed round ends with ``torch.cuda.synchronize``. A configuration that
fails to build or warm up is reported (``# FAILED ...``) and left out; the others still run.

The last line is ``ratio_vs_best_anchor=X``: ddpmkit's best training images/s over the best
anchor configuration's. Anchors are optional benchmark dependencies (``pip install
diffusers``), never runtime dependencies of ddpmkit.

Measured results, and their history, are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ddpmkit
from ddpmkit.config import load_config
from ddpmkit.nn import num_parameters
from ddpmkit.options import CUDA_GRAPH_MODES, CompileMode
from ddpmkit.train.runtime import autocast_context, autocast_dtype

IMAGE = (3, 32, 32)
DATA_FIELDS = ("in_channels", "image_size", "num_classes", "out_channels")  # network fields the data sets


def preset_model(preset: str) -> dict:
    """The network of a ddpmkit preset as a config's model section, less the fields the data sets."""
    model = load_config(preset).model
    return {"kind": model.kind, **{k: v for k, v in model.to_dict().items() if k not in DATA_FIELDS and v is not None}}


# diffusers' UNet2DModel of the issue; ddpmkit's UNetConfig below builds the same network
DIFFUSERS_KWARGS = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(64, 128, 128),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)
OURS_MODEL = dict(
    kind="unet",
    base_channels=64,
    channel_mults=[1, 2, 2],
    num_res_blocks=2,
    attention_resolutions=[16],
    num_groups=32,
    dropout=0.0,
)
# the DDPM paper's CIFAR-10 model: ddpmkit's cifar10 preset, and diffusers built to the same size
DIFFUSERS_CIFAR10_KWARGS = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    dropout=0.1,
    attention_head_dim=64,
)
OURS_CIFAR10 = preset_model("cifar10")
# --model name -> (diffusers UNet2DModel kwargs, ddpmkit model config section)
ARCHS = {"matched": (DIFFUSERS_KWARGS, OURS_MODEL), "cifar10": (DIFFUSERS_CIFAR10_KWARGS, OURS_CIFAR10)}


def unet_config(arch: str) -> ddpmkit.UNetConfig:
    """ddpmkit's network of ``arch`` for unconditional 32x32 RGB images, as the trainer resolves it."""
    fields = {k: v for k, v in ARCHS[arch][1].items() if k != "kind"}
    return ddpmkit.UNetConfig(in_channels=3, image_size=32, out_channels=3, num_classes=None, **fields)


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Bench:
    """Where and what is measured: the device, the architecture (a key of ARCHS), the batch."""

    device: torch.device
    arch: str
    batch: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        """Wait for queued GPU work, so wall time measures it (no-op on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


def median_time(fn: Callable[[], object], repeats: int = 3, sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of fn() over ``repeats`` calls after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, bench: Bench, quick: bool = False) -> tuple[float, int]:
    """(FLOP/s of a size x size matrix product in ``dtype`` on the bench's device, the size used).

    2048 on the CPU, 8192 on a GPU. A dtype the CPU has no fast kernels for (bf16 without
    AVX512-BF16/AMX runs a reference loop a hundred times slower) is probed at 256 first and,
    when one product would take over 10 s, measured at the largest size that does not, so the
    benchmark does not stall. fp32 is always measured at the full size. ``quick``: the probe only.
    """
    size, probe = (8192, 1024) if bench.cuda else (2048, 256)
    if quick:
        size = probe

    def rate_at(n: int, repeats: int) -> float:
        a = torch.randn(n, n, device=bench.device).to(dtype)
        b = torch.randn(n, n, device=bench.device).to(dtype)
        return 2 * n**3 / median_time(lambda: a @ b, repeats, bench.sync)

    rate = rate_at(probe, 2)
    while dtype != torch.float32 and size > probe and 2 * size**3 / rate > 10.0:
        size //= 2
    return rate_at(size, 3), size


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of fn() by FlopCounterMode, attention forced onto the math backend (counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- the contenders


@dataclass(frozen=True)
class Mode:
    """How a network is run: precision, memory format, compilation."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode, when compile is on

    @property
    def precision(self) -> str:
        """The trainer's precision option for this mode."""
        return "bf16" if self.bf16 else "fp32"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        """The autocast context of this mode's precision on ``device`` (a no-op for fp32)."""
        return autocast_context(device, autocast_dtype(self.precision, device))

    @property
    def cuda_graphs(self) -> bool:
        """Whether this mode replays CUDA graphs on a GPU (each step must then be marked)."""
        return self.compile and self.compile_mode in CUDA_GRAPH_MODES

    @property
    def short_name(self) -> str:
        """Precision and memory format, as the sampling lines name a mode."""
        return self.precision + (" channels-last" if self.channels_last else "")

    @property
    def name(self) -> str:
        parts = ["bf16 autocast" if self.bf16 else "fp32"]
        if not self.compile:
            parts.append("eager")
        else:
            parts.append("compile" if self.compile_mode == "default" else f"compile ({self.compile_mode})")
        if self.channels_last:
            parts.append("channels-last")
        return " ".join(parts)


@dataclass
class Contender:
    """One network in one mode, ready to time."""

    family: str  # "ddpmkit", "diffusers", "lucidrains"
    mode: Mode
    train_step: Callable[[], object]  # one optimizer step on a fresh batch
    params: int
    flops_per_image: float = 0.0  # one training step (forward + backward) per image
    rates: list[float] = field(default_factory=list)  # images/s, one per repeat

    @property
    def label(self) -> str:
        return f"{self.family} ({self.mode.name})"

    @property
    def img_s(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")


def ours_trainer(mode: Mode, bench: Bench, workdir: Path):
    """A real ddpmkit Trainer, built on a folder of random 32x32 RGB images."""
    from PIL import Image

    from ddpmkit.runs import start_training

    data = workdir / "images"
    if not data.is_dir():
        data.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i:03d}.png")
    cfg = load_config(
        "folder",
        overrides={
            "data": {"root": str(data), "image_size": 32, "hflip": False},
            "model": ARCHS[bench.arch][1],
            "train": {
                "batch_size": bench.batch,
                "precision": mode.precision,
                "channels_last": mode.channels_last,
                "compile_mode": mode.compile_mode if mode.compile else None,
                "device": bench.device.type,
                "warmup_steps": 0,
                "ema_start": 0,
            },
        },
    )
    run = workdir / (
        f"run-{bench.arch}-{bench.device.type}-{mode.precision}-{int(mode.channels_last)}"
        f"-{int(mode.compile)}-{mode.compile_mode}"
    )
    return start_training(cfg, run, progress=False)


def make_ours(mode: Mode, bench: Bench, workdir: Path) -> Contender:
    trainer = ours_trainer(mode, bench, workdir)
    g = bench.generator(0)

    def step():
        x0 = torch.rand((bench.batch, *IMAGE), generator=g, device=bench.device) * 2 - 1
        return trainer.train_step(x0, None)

    return Contender("ddpmkit", mode, step, num_parameters(trainer.model))


class _SampleOnly(nn.Module):
    """diffusers' UNet2DModel returns an output object; this returns its tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t).sample


def build_anchor(family: str, arch: str) -> nn.Module:
    if family == "diffusers":
        from diffusers import UNet2DModel

        return _SampleOnly(UNet2DModel(**ARCHS[arch][0]))
    from denoising_diffusion_pytorch import Unet

    return Unet(dim=64, dim_mults=(1, 2, 2), channels=3)


def make_anchor(family: str, mode: Mode, bench: Bench) -> Contender:
    """The plain loop: q_sample, network, MSE to the noise, backward, Adam (fused on CUDA)."""
    torch.manual_seed(0)
    model = build_anchor(family, bench.arch).to(bench.device, memory_format=mode.memory_format)
    net = torch.compile(model, mode=mode.compile_mode) if mode.compile else model
    mark_steps = mode.cuda_graphs and bench.cuda
    fused = {"fused": True} if bench.cuda else {"foreach": True}
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, **fused)
    abar = ddpmkit.GaussianDiffusion(ddpmkit.linear_beta_schedule(1000)).alphas_cumprod.float().to(bench.device)
    g = bench.generator(0)
    batch, dev, fmt = bench.batch, bench.device, mode.memory_format

    def step():
        if mark_steps:
            torch.compiler.cudagraph_mark_step_begin()
        x0 = (torch.rand((batch, *IMAGE), generator=g, device=dev) * 2 - 1).contiguous(memory_format=fmt)
        t = torch.randint(0, len(abar), (batch,), generator=g, device=dev)
        noise = torch.randn(x0.shape, generator=g, device=dev).contiguous(memory_format=fmt)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with mode.autocast(dev):
            pred = net(x_t, t)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return Contender(family, mode, step, num_parameters(model))


def train_flops(family: str, arch: str, workdir: Path, batch: int = 2) -> float:
    """FLOPs of one training step (forward + backward) per image, fp32 on the CPU (counts do not
    depend on the device)."""
    x = torch.randn(batch, *IMAGE)
    t = torch.randint(0, 1000, (batch,))
    if family == "ddpmkit":
        model = ours_trainer(Mode(), Bench(torch.device("cpu"), arch, batch), workdir).model
    else:
        model = build_anchor(family, arch)
    return count_flops(lambda: F.mse_loss(model(x, t), x).backward()) / batch


def pick_modes(
    bench: Bench, bf16: bool, compile_too: bool, compile_mode: str = "default", compiled_only: bool = False
) -> list[Mode]:
    """The modes every network is timed in; each network is then ranked by its best one."""
    modes = [Mode(), Mode(channels_last=True)]
    if bf16:
        if bench.cuda:
            modes.append(Mode(bf16=True))
        modes.append(Mode(bf16=True, channels_last=True))
    if compile_too:
        if not bench.cuda:
            modes.append(Mode(channels_last=True, compile=True, compile_mode=compile_mode))
        if bf16:
            modes.append(Mode(bf16=True, channels_last=True, compile=True, compile_mode=compile_mode))
    return [m for m in modes if m.compile] if compiled_only else modes


def families(arch: str, lucidrains: bool) -> list[str]:
    """ddpmkit and the anchors that import; a note on each one left out."""
    found, notes = ["ddpmkit"], []
    try:
        import diffusers  # noqa: F401

        found.append("diffusers")
    except ImportError:
        notes.append("diffusers not installed: no diffusers anchor (pip install diffusers)")
    if arch != "matched":
        notes.append(f"lucidrains' Unet has no configuration matching the {arch} model; anchor skipped")
    elif lucidrains:
        try:
            import denoising_diffusion_pytorch  # noqa: F401

            found.append("lucidrains")
        except ImportError as e:
            notes.append(f"lucidrains' denoising_diffusion_pytorch does not import ({e}); anchor skipped")
    for n in notes:
        print(f"# {n}", flush=True)
    return found


def warmed_up(names: list[str], modes: list[Mode], bench: Bench, warmup: int) -> list[Contender]:
    """Every family in every mode, built and warmed up; a configuration that fails is reported and left out."""
    workdir = Path(tempfile.mkdtemp(prefix="ddpmkit-bench-"))
    flops = {fam: train_flops(fam, bench.arch, workdir) for fam in names}
    contenders = []
    for fam in names:
        for mode in modes:
            t0 = time.perf_counter()
            try:  # one configuration failing (a compiler error, out of memory) must not lose the others
                c = make_ours(mode, bench, workdir) if fam == "ddpmkit" else make_anchor(fam, mode, bench)
                for _ in range(warmup):
                    c.train_step()
                bench.sync()
            except Exception as e:  # noqa: BLE001 - reported, and the configuration is left out
                print(
                    f"# FAILED {fam} ({mode.name}), left out: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                    flush=True,
                )
                continue
            c.flops_per_image = flops[fam]
            print(f"# warmed up {c.label} in {time.perf_counter() - t0:.1f} s", flush=True)
            contenders.append(c)
    return contenders


def time_rounds(contenders: list[Contender], bench: Bench, repeats: int, steps: int) -> None:
    """``repeats`` rounds, every configuration once per round for ``steps`` steps (alternating)."""
    for rep in range(repeats):
        for c in contenders:
            bench.sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                c.train_step()
            bench.sync()
            c.rates.append(steps * bench.batch / (time.perf_counter() - t0))
        print(
            f"# round {rep + 1}/{repeats}: "
            + ", ".join(f"{c.family}/{c.mode.name} {c.rates[-1]:.2f}" for c in contenders),
            flush=True,
        )


# ----------------------------------------------------------------------------- sampling


def sampling_nets(arch: str) -> dict[str, nn.Module]:
    """ddpmkit's network and diffusers' (when it imports) of ``arch``, in eval mode on the CPU."""
    torch.manual_seed(0)
    ours = ddpmkit.UNet(unet_config(arch)).eval()
    with torch.no_grad():  # the zero-initialised output layer would make the last conv trivial
        ours.out_conv.weight.normal_(0, 0.02)
    nets = {"ddpmkit": ours}
    try:
        nets["diffusers"] = build_anchor("diffusers", arch).eval()
    except ImportError:
        pass
    return nets


def eval_rates(net: nn.Module, x, t, modes: list[Mode], bench: Bench, repeats: int, calls: int) -> dict[Mode, float]:
    """Median images/s of ``calls`` evaluations of ``net`` in each mode, the modes alternating within each repeat."""
    rates: dict[Mode, list[float]] = {m: [] for m in modes}
    for rep in range(repeats):
        for mode in modes:
            m = net.to(memory_format=mode.memory_format)
            xi = x.contiguous(memory_format=mode.memory_format)
            with torch.inference_mode(), mode.autocast(bench.device):
                if rep == 0:
                    m(xi, t)
                    bench.sync()
                t0 = time.perf_counter()
                for _ in range(calls):
                    m(xi, t)
                bench.sync()
                rates[mode].append(calls * len(x) / (time.perf_counter() - t0))
    return {m: statistics.median(v) for m, v in rates.items()}


def sampling_rates(bench: Bench, batch: int, repeats: int, calls: int, bf16_ok: bool) -> list[tuple[str, float, float]]:
    """(label, images/s of one network call at ``batch``, forward GFLOP/img), best mode per network;
    each repeat times ``calls`` calls."""
    nets = sampling_nets(bench.arch)
    x = torch.randn(batch, *IMAGE)
    t = torch.randint(0, 1000, (batch,))
    modes = [Mode(), Mode(channels_last=True)]
    modes += [Mode(bf16=True), Mode(bf16=True, channels_last=True)] if bf16_ok else []
    results = []
    for name, net in nets.items():
        flops = count_flops(lambda: net(x, t)) / batch
        medians = eval_rates(net.to(bench.device), x.to(bench.device), t.to(bench.device), modes, bench, repeats, calls)
        print(
            f"# sampling {name}: " + ", ".join(f"{m.short_name} {r:.1f} img/s" for m, r in medians.items()), flush=True
        )
        best = max(medians, key=medians.get)
        results.append((f"{name} ({best.short_name})", medians[best], flops / 1e9))
    return results


# ----------------------------------------------------------------------------- reports


def print_profile(c: Contender, steps: int, bench: Bench) -> None:
    """The 15 operators (GPU kernels on CUDA) of ``steps`` training steps of ``c`` that take the
    most time, with their share: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    bench.sync()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            c.train_step()
        bench.sync()
    key = "self_device_time_total" if bench.cuda else "self_cpu_time_total"
    print(f"\nProfile of {c.label}, {steps} steps, sorted by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=70), flush=True)


def print_training(contenders: list[Contender], bench: Bench, rounds: str, peaks: tuple[float, float]) -> None:
    """The training table: every configuration's images/s and the fraction of each matmul peak it achieves."""
    where = torch.cuda.get_device_name(bench.device) if bench.cuda else f"{torch.get_num_threads()} CPU threads"
    print()
    print(
        f"Training ({bench.arch} model): batch {bench.batch} of random 32x32x3, MSE, Adam; median of {rounds}; {where}"
    )
    print()
    print(
        "| config | params | GFLOP/img (fwd+bwd) | img/s | achieved TFLOP/s | of fp32 matmul peak "
        "| of bf16 matmul peak |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in contenders:
        flops = c.img_s * c.flops_per_image
        print(
            f"| {c.label} | {c.params / 1e6:.2f}M | {c.flops_per_image / 1e9:.2f} | {c.img_s:.2f} | "
            f"{flops / 1e12:.4f} | {100 * flops / peaks[0]:.0f}% | {100 * flops / peaks[1]:.0f}% |"
        )


def print_best(contenders: list[Contender]) -> tuple[Contender, list[Contender]]:
    """ddpmkit's best configuration against each anchor's best; returns (ours, the anchors' bests)."""
    bests: dict[str, Contender] = {}
    for c in contenders:  # in family order, the first of equals
        if c.family not in bests or c.img_s > bests[c.family].img_s:
            bests[c.family] = c
    ours = bests.pop("ddpmkit")
    print()
    print(f"best ddpmkit: {ours.label} {ours.img_s:.2f} img/s")
    for a in bests.values():
        print(f"best {a.family}: {a.label} {a.img_s:.2f} img/s -> ddpmkit is {ours.img_s / a.img_s:.2f}x")
    base = next((c for c in contenders if c.family == "diffusers" and c.mode == Mode()), None)
    if base is not None:
        print(f"ddpmkit best vs diffusers fp32 eager (contiguous): {ours.img_s / base.img_s:.2f}x")
    return ours, list(bests.values())


def print_sampling(samp: list[tuple[str, float, float]], batch: int) -> None:
    print()
    print(f"Sampling: one network evaluation at batch {batch} under torch.inference_mode, best mode per network")
    print()
    print("| network | GFLOP/img (fwd) | img/s per evaluation |")
    print("| --- | ---: | ---: |")
    for label, rate, gf in samp:
        print(f"| {label} | {gf:.2f} | {rate:.1f} |")
    if len(samp) > 1:
        print(f"sampling ratio ddpmkit / diffusers: {samp[0][1] / samp[1][1]:.2f}x")
    print()


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to measure")
    p.add_argument(
        "--model",
        choices=sorted(ARCHS),
        default=None,
        help="architecture (default: matched on the CPU, cifar10 on CUDA)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds; every configuration once per round")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps (and sampling calls) timed per configuration per round "
        "(default 2 on the CPU, 20 on CUDA)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per configuration before the rounds (default 2 on the CPU, 10 on CUDA)",
    )
    p.add_argument(
        "--batch", type=int, default=None, help="training batch size (default 16 for matched, 128 for cifar10)"
    )
    p.add_argument("--sample-batch", type=int, default=64, help="batch of the sampling measurement")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    p.add_argument(
        "--compile-mode",
        choices=list(get_args(CompileMode)),
        default="default",
        help="torch.compile's mode for --compile (reduce-overhead: CUDA graphs on a GPU)",
    )
    p.add_argument(
        "--compiled-only",
        action="store_true",
        help="with --compile: time only the compiled modes (when the eager ones ran in another call)",
    )
    p.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="time bf16 autocast modes (auto: on GPUs with bf16, and on CPUs where bf16 matmul beats fp32)",
    )
    p.add_argument("--no-lucidrains", action="store_true", help="skip the denoising_diffusion_pytorch anchor")
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep freed memory, as the ddpmkit command does)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the timing, profile STEPS training steps of each network's best configuration "
        "and print its 15 costliest operators (GPU kernel time on CUDA)",
    )
    p.add_argument(
        "--quick", action="store_true", help="2 rounds of 1 step, 1 warm-up step, small matmul probe: a smoke test"
    )
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.model = args.model or ("cifar10" if cuda else "matched")
    args.batch = args.batch or (128 if args.model == "cifar10" else 16)
    args.steps = args.steps or (20 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    if args.quick:
        args.repeats, args.steps, args.warmup = 2, 1, 1
    return args


def setup(args: argparse.Namespace) -> Bench:
    """Threads, malloc, seed and (on CUDA) TF32 and cuDNN autotuning, the same for every contender; prints them."""
    bench = Bench(torch.device(args.device), args.model, args.batch)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.system_malloc:
        from ddpmkit.train.runtime import keep_freed_memory

        kept = keep_freed_memory()  # process-wide: every contender gets it
        kept_text = "yes" if kept else "no (not glibc, or MALLOC_* set)"
        print(f"# malloc keeps freed memory for every contender: {kept_text}", flush=True)
    torch.manual_seed(0)
    if bench.cuda:  # the same matmul/conv precision for every contender
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(
            f"# torch {torch.__version__}, {torch.cuda.get_device_name(bench.device)}, "
            f"CUDA {torch.version.cuda}, TF32 allowed",
            flush=True,
        )
    else:
        print(
            f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
            flush=True,
        )
    return bench


def matmul_peaks(bench: Bench, quick: bool, bf16: str) -> tuple[tuple[float, float], bool]:
    """((fp32 peak, bf16 peak) in FLOP/s, whether to time the bf16 modes), printed."""
    from ddpmkit.train.runtime import cpu_has_bf16_matmul, cuda_has_bf16_matmul

    fp32_peak, fp32_size = matmul_peak(torch.float32, bench, quick)
    bf16_peak, bf16_size = matmul_peak(torch.bfloat16, bench, quick)
    units = cuda_has_bf16_matmul(bench.device) if bench.cuda else cpu_has_bf16_matmul()
    print(
        f"# matmul peak: fp32{' (TF32)' if bench.cuda else ''} {fp32_peak / 1e12:.3f} TFLOP/s ({fp32_size}^2), "
        f"bf16 {bf16_peak / 1e12:.3f} TFLOP/s ({bf16_size}^2); bf16 matrix units detected: {units}",
        flush=True,
    )
    use_bf16 = bf16 == "on" or (bf16 == "auto" and (units if bench.cuda else bf16_peak > fp32_peak))
    if not use_bf16:
        print(
            f"# bf16 autocast modes skipped: bf16 matmul runs at {bf16_peak / fp32_peak:.3g}x fp32 here "
            f"(--bf16 on to time them anyway)",
            flush=True,
        )
    return (fp32_peak, bf16_peak), use_bf16


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compiled_only and not args.compile:
        print("error: --compiled-only needs --compile", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but no CUDA GPU is available", file=sys.stderr)
        return 2
    bench = setup(args)
    peaks, use_bf16 = matmul_peaks(bench, args.quick, args.bf16)
    modes = pick_modes(bench, use_bf16, args.compile, args.compile_mode, args.compiled_only)
    contenders = warmed_up(families(bench.arch, not args.no_lucidrains), modes, bench, args.warmup)
    if not any(c.family == "ddpmkit" for c in contenders):
        print("error: every ddpmkit configuration failed", file=sys.stderr)
        return 1
    time_rounds(contenders, bench, args.repeats, args.steps)
    print_training(contenders, bench, f"{args.repeats} rounds x {args.steps} steps", peaks)
    ours, anchors = print_best(contenders)
    if args.profile > 0:
        for c in [ours, *anchors]:
            print_profile(c, args.profile, bench)
    print(flush=True)
    print_sampling(
        sampling_rates(bench, args.sample_batch, max(3, args.repeats), args.steps, use_bf16), args.sample_batch
    )
    best_anchor = max(anchors, key=lambda c: c.img_s) if anchors else None
    print(f"ratio_vs_best_anchor={ours.img_s / best_anchor.img_s if best_anchor else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
