"""Helpers shared by the test folders: the command line in this process or in a subprocess, the one-line error
contract, a stand-in feature network, the 2-D Gaussian-mixture oracles the sampler tests solve exactly."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpmkit.nn import UNet, UNetConfig
from ddpmkit.oracles import GaussianMixtureOracle

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"  # the scripts tests/benchmarks/ checks


def run_cli(*args, cwd=None):
    """Run ``ddpmkit.cli.main`` in this process (as the console script would, minus the interpreter's start-up);
    return (code, stderr)."""
    code, _, err = run_cli_streams(*args, cwd=cwd)
    return code, err


def run_cli_out(*args, cwd=None):
    """``run_cli`` for a command whose answer is on stdout; return (code, stdout)."""
    code, out, _ = run_cli_streams(*args, cwd=cwd)
    return code, out


def run_cli_streams(*args, cwd=None):
    """``ddpmkit.cli.main`` in this process, in ``cwd`` if given; return (code, stdout, stderr)."""
    from ddpmkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main([str(a) for a in args])
            except SystemExit as stop:  # argparse's usage errors and --help
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def run_cli_process(*args, cwd=None):
    """Run the real console entry point in a subprocess; return (code, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ddpmkit", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    return proc.returncode, proc.stderr


def train_digits_args(config, out, *extra) -> list[str]:
    """The command line (after ``ddpmkit``) of a digits run with the overrides of ``config`` written to ``out``."""
    return [
        "train",
        "--preset",
        "digits",
        "--config",
        str(config),
        "--out",
        str(out),
        "--no-progress",
        *map(str, extra),
    ]


def resume_args(out, *extra) -> list[str]:
    """The command line (after ``ddpmkit``) that resumes the run in ``out`` with ``extra`` flags."""
    return ["train", "--out", str(out), "--resume", "--no-progress", *map(str, extra)]


def sample_args(run, *extra) -> list[str]:
    """The command line (after ``ddpmkit``) that samples from ``run`` with ``extra`` flags, progress bar off."""
    return ["sample", str(run), "--no-progress", *map(str, extra)]


# a few-step ECT tuning of a tiny teacher: small batch, a log line, checkpoint and grid every 2 steps, stages of 2
DISTILL_TINY = [
    *("--set", "train.batch_size=8", "--set", "train.log_every=2", "--set", "train.checkpoint_every=2"),
    *("--set", "train.sample_every=2", "--set", "train.num_grid_samples=4", "--set", "distill.stage_steps=2"),
    *("--set", "train.ema_decay=0.5"),
    "--no-progress",
]


def distill_args(teacher, out, *extra) -> list[str]:
    """``ddpmkit distill TEACHER --method ect --out OUT`` with the tiny settings, then ``extra``."""
    return ["distill", str(teacher), "--method", "ect", "--out", str(out), *DISTILL_TINY, *map(str, extra)]


def assert_user_error(code, err, *words):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


class StandIn(torch.nn.Module):
    """[N, 3, 299, 299] -> [N, 256]: fixed random 9x9 conv, ReLU, 4x4 pooling, projection.

    256-d rather than 2048-d keeps the covariance square roots cheap; nothing depends on D.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("conv", torch.randn(16, 3, 9, 9, generator=g) / 15)
        self.register_buffer("proj", torch.randn(16 * 16, 256, generator=g) / 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.conv2d(x, self.conv, stride=6))
        return F.adaptive_avg_pool2d(h, (4, 4)).flatten(1) @ self.proj


def mixture_oracle(abar: torch.Tensor) -> GaussianMixtureOracle:
    """Three anisotropic components (principal stds 0.22-0.45), at least 8 stds apart, unequal weights."""
    mu = torch.tensor([[-2.0, 1.0], [2.0, 2.0], [1.0, -2.5]], dtype=torch.float64)
    cov = torch.tensor(
        [[[0.16, 0.06], [0.06, 0.08]], [[0.06, 0.0], [0.0, 0.2]], [[0.12, -0.04], [-0.04, 0.09]]], dtype=torch.float64
    )
    return GaussianMixtureOracle([0.5, 0.3, 0.2], mu, cov, abar)


def gaussian_oracle(abar: torch.Tensor) -> GaussianMixtureOracle:
    """A single smooth Gaussian, whose probability-flow map is known in closed form."""
    mu = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    cov = torch.tensor([[[0.25, 0.1], [0.1, 0.15]]], dtype=torch.float64)
    return GaussianMixtureOracle([1.0], mu, cov, abar)


TINY_UNET = dict(  # a UNet on 8x8 grey images: milliseconds a call
    in_channels=1,
    base_channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    dropout=0.0,
    num_groups=4,
    image_size=8,
)


def tiny_unet(seed: int = 0, randomize_out: bool = True, **overrides) -> UNet:
    """A small UNet in eval mode; its zero-initialised output conv gets random weights."""
    torch.manual_seed(seed)
    net = UNet(UNetConfig(**{**TINY_UNET, **overrides})).eval()
    if randomize_out:
        with torch.no_grad():
            net.out_conv.weight.normal_(0.0, 0.1)
            net.out_conv.bias.normal_(0.0, 0.1)
    return net


def tiny_model(seed: int = 0) -> nn.Module:
    """Two linear layers around a batch norm: parameters and buffers for the EMA tests."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def perturb(model: nn.Module, gen: torch.Generator) -> None:
    """Stand-in for an optimizer step: change every parameter and the norm statistics."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        bn = model[1]
        bn.running_mean.add_(torch.randn(4, generator=gen))
        bn.num_batches_tracked += 1
