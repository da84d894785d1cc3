"""benchmarks/train_speed.py: its architectures really match, and a quick run completes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ddpmkit.train.config import load_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("train_speed", None)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_cifar10_arch_is_the_preset_model(bench) -> None:
    preset = load_config("cifar10").model
    ours = dict(bench.OURS_CIFAR10)
    assert ours.pop("kind") == preset.kind
    assert ours == preset.params


@pytest.mark.parametrize("arch, expected", [("matched", 6_472_195), ("cifar10", 35_746_307)])
def test_anchor_has_our_parameter_count(bench, arch: str, expected: int, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    cpu = bench.Bench(torch.device("cpu"), arch, 2)
    ours = bench.ours_trainer(bench.Mode(), cpu, tmp_path).model
    assert n_params(ours) == expected  # 35.7M: the DDPM paper's CIFAR-10 model
    assert n_params(bench.build_anchor("diffusers", arch)) == expected


def test_modes(bench) -> None:
    cpu = bench.Bench(torch.device("cpu"), "matched", 16)
    names = [m.name for m in bench.pick_modes(cpu, bf16=False, compile_too=True)]
    assert names == ["fp32 eager", "fp32 eager channels-last", "fp32 compile channels-last"]
    gpu = bench.Bench(torch.device("cuda"), "cifar10", 128)
    names = [m.name for m in bench.pick_modes(gpu, bf16=True, compile_too=False)]
    assert names == ["fp32 eager", "fp32 eager channels-last", "bf16 autocast eager",
                     "bf16 autocast eager channels-last"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_cuda_without_gpu_is_a_clean_error(bench, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_quick_run_prints_the_ratio(bench, one_thread, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("diffusers")
    assert bench.main(["--quick", "--batch", "2", "--sample-batch", "2", "--no-lucidrains", "--bf16", "off",
                       "--system-malloc"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("ratio_vs_best_anchor=") and float(last.split("=")[1]) > 0
    assert "| ddpmkit (fp32 eager channels-last) | 6.47M | " in out
    assert "| diffusers (fp32 eager) | 6.47M | " in out
