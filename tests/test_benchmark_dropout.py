"""benchmarks/dropout_speed.py: a quick run completes and prints its tables and ratio."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dropout_speed.py"


def test_quick_run_prints_both_tables_and_the_step_ratio(capsys):
    spec = importlib.util.spec_from_file_location("dropout_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| bfloat16 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", out, re.M)
    assert re.search(r"^\| float32 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", out, re.M)
    assert re.search(r"^\| nn\.Dropout \| [\d.]+ \|$", out, re.M) and re.search(r"^\| ddpmkit Dropout \| [\d.]+ \|$", out, re.M)
    assert float(out.strip().splitlines()[-1].removeprefix("step_speedup=")) > 0
