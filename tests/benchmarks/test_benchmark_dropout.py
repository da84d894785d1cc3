"""benchmarks/dropout_speed.py: a quick run completes and prints its tables and ratio."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.bench


def test_quick_run_prints_both_tables_and_the_step_ratio(capsys):
    from conftest import benchmark_script

    with benchmark_script("dropout_speed") as module:
        assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| bfloat16 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", out, re.M)
    assert re.search(r"^\| float32 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", out, re.M)
    assert re.search(r"^\| nn\.Dropout \| [\d.]+ \|$", out, re.M) and re.search(
        r"^\| ddpmkit Dropout \| [\d.]+ \|$", out, re.M
    )
    assert float(out.strip().splitlines()[-1].removeprefix("step_speedup=")) > 0
