"""benchmarks/fault_injection.py: its moments stay where they may, and a quick run finds nothing wrong."""

from __future__ import annotations

import importlib.util
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_injection"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fault_injection", None)


def test_moments(bench) -> None:
    rng = random.Random(0)
    for _ in range(500):
        done = rng.choice([0, 2, 5, 10])
        term = bench.pick_moment(rng, signal.SIGTERM, done, 20, startup=4.0)
        # SIGTERM only while the run trains, late enough to be after a step, early enough that it must stop it
        assert term.kind in ("step", "save")
        if term.kind == "step":
            assert done < term.n <= 17
        kill = bench.pick_moment(rng, signal.SIGKILL, done, 20, startup=4.0)
        if kill.kind == "start":
            assert 0 <= kill.n <= 4.0
        elif kill.kind == "step":
            assert done < kill.n <= 20
    assert bench.pick_moment(rng, signal.SIGTERM, 17, 20, startup=4.0) is None  # too late to stop it


@pytest.mark.slow
def test_quick_run_finds_nothing_wrong(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--kills", "2", "--terms", "1", "--steps", "8", "-v",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert "| fault injection: 3 trials (2 SIGKILL, 1 SIGTERM), 8 steps | count |" in out, proc.stderr
    assert out.count("\ntrial ") + out.startswith("trial ") == 3  # one line per trial
    for name in ("runs lost", "mismatches", "half-written", "stray files", "repeated steps", "missing steps",
                 "tracebacks", "wrong exit code", "without checkpoint"):
        assert f"| {name} | 0 |" in out, out
    assert "| SIGTERM/SIGINT exits correct | 1/1 |" in out, out
    assert out.strip().endswith("result: ok")
    assert proc.returncode == 0, out + proc.stderr
