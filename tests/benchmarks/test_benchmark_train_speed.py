"""benchmarks/train_speed.py: its architectures really match, and a quick run completes."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from ddpmkit.config import load_config
from helpers import BENCHMARKS

pytestmark = pytest.mark.bench

BENCHMARK = "train_speed"  # the script conftest.py's ``bench`` fixture imports
SCRIPT = BENCHMARKS / f"{BENCHMARK}.py"


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_cifar10_arch_is_the_preset_model(bench, tmp_path: Path) -> None:
    preset = load_config("cifar10").model
    assert bench.OURS_CIFAR10["kind"] == preset.kind == "unet"
    # the benchmark trains on a folder of unlabelled 32x32 RGB images, so the data fields come from those
    rgb32 = dict(in_channels=3, image_size=32, out_channels=3, num_classes=None)
    expected = dataclasses.replace(preset, **rgb32)
    trained = bench.ours_trainer(bench.Mode(), bench.Bench(torch.device("cpu"), "cifar10", 2), tmp_path).model
    assert trained.config == expected  # the network the benchmark trains
    assert bench.unet_config("cifar10") == expected  # and the one it samples with


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
    assert names == [
        "fp32 eager",
        "fp32 eager channels-last",
        "bf16 autocast eager",
        "bf16 autocast eager channels-last",
    ]
    names = [
        m.name
        for m in bench.pick_modes(gpu, bf16=True, compile_too=True, compile_mode="reduce-overhead", compiled_only=True)
    ]
    assert names == ["bf16 autocast compile (reduce-overhead) channels-last"]
    assert bench.main(["--compiled-only"]) == 2  # without --compile there is nothing to time


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_cuda_without_gpu_is_a_clean_error(bench, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_quick_run_prints_the_ratio(bench, one_thread, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("diffusers")
    assert (
        bench.main(
            [
                "--quick",
                "--batch",
                "2",
                "--sample-batch",
                "2",
                "--no-lucidrains",
                "--bf16",
                "off",
                "--system-malloc",
                "--profile",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("ratio_vs_best_anchor=") and float(last.split("=")[1]) > 0
    assert "| ddpmkit (fp32 eager channels-last) | 6.47M | " in out
    assert "| diffusers (fp32 eager) | 6.47M | " in out
    # --profile: one operator table per network, each listing the convolutions it ran
    profiles = out.split("Profile of ")[1:]
    assert [p.split(",")[0].split(" (")[0] for p in profiles] == ["ddpmkit", "diffusers"]
    assert all("aten::conv" in p or "convolution" in p for p in profiles)


def test_modes_name_the_compile_mode(bench) -> None:
    gpu = bench.Bench(torch.device("cuda"), "cifar10", 128)
    compiled = bench.pick_modes(gpu, bf16=True, compile_too=True, compile_mode="reduce-overhead")[-1]
    assert compiled.name == "bf16 autocast compile (reduce-overhead) channels-last" and compiled.cuda_graphs
    plain = bench.pick_modes(gpu, bf16=True, compile_too=True)[-1]
    assert plain.name == "bf16 autocast compile channels-last" and not plain.cuda_graphs


def test_a_failing_configuration_is_reported_and_left_out(
    bench, one_thread, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("diffusers")
    real = bench.make_anchor

    def flaky(family, mode, b):
        if mode == bench.Mode():
            raise RuntimeError("boom\nsecond line")
        return real(family, mode, b)

    monkeypatch.setattr(bench, "make_anchor", flaky)
    args = ["--quick", "--batch", "2", "--sample-batch", "2", "--no-lucidrains", "--bf16", "off", "--system-malloc"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "# FAILED diffusers (fp32 eager), left out: RuntimeError: boom\n" in out
    assert "| diffusers (fp32 eager channels-last) | 6.47M | " in out
    assert "| diffusers (fp32 eager) |" not in out
    assert float(out.strip().splitlines()[-1].split("=")[1]) > 0  # ranked against the configuration left

    monkeypatch.setattr(bench, "make_ours", lambda *a: flaky("ddpmkit", bench.Mode(), None))
    monkeypatch.setattr(bench, "pick_modes", lambda *a: [bench.Mode()])
    assert bench.main(args) == 1
    assert "every ddpmkit configuration failed" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_gpu_check_without_gpu_is_a_clean_error(tmp_path: Path) -> None:
    import os
    import subprocess

    script = SCRIPT.parent / "gpu_check.sh"
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: no CUDA GPU is available to PyTorch here"
    assert not (tmp_path / "out").exists()  # nothing written
