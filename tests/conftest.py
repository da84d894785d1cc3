"""Shared fixtures: a tiny config for fast end-to-end runs, and one run trained with it for the whole session."""

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ddpmkit.schedules import linear_beta_schedule
from helpers import BENCHMARKS, gaussian_oracle, mixture_oracle, train_digits_args

torch.set_num_threads(2)
# Deterministic training on a GPU needs this before cuBLAS starts; tests run many trainers in one process.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# The digits preset shrunk to seconds (benchmarks/fault_injection.py trains it too).
TINY_DIGITS = yaml.safe_load((Path(__file__).resolve().parent / "fixtures" / "tiny_digits.yaml").read_text())


@pytest.fixture
def tiny_config(tmp_path):
    """A YAML file that shrinks the digits preset to seconds."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_DIGITS))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A digits run trained once per session with TINY_DIGITS (4 steps): a test that changes it copies it first."""
    from ddpmkit.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_DIGITS))
    out = root / "run"
    assert main(train_digits_args(root / "tiny.yaml", out)) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads and lose a lot to OpenMP spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def benchmark_script(name: str):
    """benchmarks/NAME.py imported as a module (registered while in use: dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def bench(request):
    """benchmarks/<BENCHMARK>.py as a module, BENCHMARK the requesting test module's."""
    with benchmark_script(request.module.BENCHMARK) as module:
        yield module


# The maths tests' 2-D Gaussian-mixture oracles, on the linear schedule of T = 1000 steps those tests share.
# (Here, not in tests/maths/conftest.py: a second conftest module would hide this one from `from conftest import`.)
@pytest.fixture(scope="module")
def mixture():
    return mixture_oracle(_linear_abar())


@pytest.fixture(scope="module")
def gaussian():
    return gaussian_oracle(_linear_abar())


def _linear_abar() -> torch.Tensor:
    return torch.cumprod(1.0 - linear_beta_schedule(1000), 0)
