"""The README's Python example runs as written."""

import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.system

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs(one_thread):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S)
    assert block, "the README lost its Python API example"
    scope: dict = {}
    exec(compile(block.group(1), str(README), "exec"), scope)
    assert scope["samples"].shape == (10, 1, 8, 8)
    assert scope["loss"].ndim == 0 and torch.isfinite(scope["loss"])
    bpd = scope["bpd"]
    assert bpd.shape == (16,) and torch.isfinite(bpd).all() and (bpd > 0).all()
