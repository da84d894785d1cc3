"""benchmarks/fault_injection.py: its moments stay where they may, and a quick run finds nothing wrong."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import BENCHMARKS

pytestmark = pytest.mark.bench

BENCHMARK = "fault_injection"  # the script conftest.py's ``bench`` fixture imports
SCRIPT = BENCHMARKS / f"{BENCHMARK}.py"


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


def test_checks_find_what_is_wrong(bench, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "samples").mkdir()
    lines = [{"step": s, "time": 1.0} for s in (1, 2, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert bench.check_metrics(run, 3) == ["repeated steps"]
    assert bench.check_metrics(run, 4) == ["repeated steps", "missing steps"]
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"st\n{"step": 2}\n')  # a broken line that is not the last
    assert bench.check_metrics(run, 2) == ["half-written"]
    assert bench.stray_files(run) == []
    (run / "checkpoints" / ".step_00000002.pt.123.0a1b2c3d.tmp").write_bytes(b"")
    (run / "samples" / "grid.tmp").write_bytes(b"")
    assert bench.stray_files(run) == ["checkpoints/.step_00000002.pt.123.0a1b2c3d.tmp", "samples/grid.tmp"]
    assert bench.check_run(run, 4, tmp_path / "reference", 0)[0] == "runs lost"  # no checkpoint of step 4


def test_signal_checks(bench) -> None:
    def attempt(returncode: int, stderr: str, checkpoint: int | None, signalled: bool = True):
        return bench.Attempt(False, bench.Moment("step", 3), signalled, returncode, stderr, checkpoint, 0)

    said = "interrupted at step 5: checkpoint written, --resume continues\n"
    term = bench.Trial(1, signal.SIGTERM, [attempt(143, said, 5), attempt(0, "", 8, signalled=False)])
    assert bench.check_signals(term) == []
    term.attempts[0] = attempt(-15, "", 4)  # killed by the signal's default action
    assert bench.check_signals(term) == ["wrong exit code", "without checkpoint"]
    term.attempts[0] = attempt(143, said, 4)  # says step 5, but step 4 is the latest
    assert bench.check_signals(term) == ["without checkpoint"]
    kill = bench.Trial(2, signal.SIGKILL, [attempt(-9, "", 4), attempt(1, "Traceback (most recent call last)", 4)])
    assert bench.check_signals(kill) == ["tracebacks"]


def test_same(bench) -> None:
    a = {"w": torch.zeros(3), "n": 1}
    assert bench.same(a, {"w": torch.zeros(3), "n": 1})
    assert not bench.same(a, {"w": torch.tensor([0.0, 0.0, 1e-30]), "n": 1})
    assert not bench.same(a, {"w": torch.zeros(3, dtype=torch.float64), "n": 1})
    assert not bench.same(a, {"w": torch.zeros(3)})


@pytest.mark.system  # kills real training processes
def test_quick_run_finds_nothing_wrong(bench, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--kills", "2", "--terms", "1", "--steps", "8", "-v", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert "| fault injection: 3 trials (2 SIGKILL, 1 SIGTERM), 8 steps | count |" in out, proc.stderr
    assert out.count("\ntrial ") + out.startswith("trial ") == 3  # one line per trial
    for name in bench.BAD:  # every count the script reports
        assert f"| {name} | 0 |" in out, out
    assert "| SIGTERM/SIGINT exits correct | 1/1 |" in out, out
    assert out.strip().endswith("result: ok")
    assert proc.returncode == 0, out + proc.stderr
