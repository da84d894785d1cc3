"""Start-up: --help, --version and a command line the parser refuses answer without importing torch."""

import subprocess
import sys

import pytest

CHECK = """
import sys
import ddpmkit.cli
try:
    ddpmkit.cli.main({argv!r})
except SystemExit as stop:
    code = stop.code
else:
    code = None
print(code, sorted(m for m in ("torch", "numpy", "sklearn", "PIL") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["--version"], 0),
        (["sample", "--help"], 0),
        (["bogus"], 2),
        (["sample"], 2),
        (["eval", "x.npz", "--metric", "nope"], 2),
        (["train", "--steps", "x"], 2),
    ],
)
def test_answers_without_importing_torch(argv, code):
    proc = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"{code} []", proc.stdout


def test_the_package_imports_without_torch_and_loads_its_names_on_use():
    code = (
        "import sys, ddpmkit; assert 'torch' not in sys.modules; from ddpmkit import Run; "
        "assert ddpmkit.GaussianDiffusion.__name__ == 'GaussianDiffusion'; assert 'torch' in sys.modules; "
        "assert set(ddpmkit.__all__) <= set(dir(ddpmkit)); print(Run.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "Run", proc.stderr


@pytest.mark.parametrize("argv", [["--version"], ["info"]])
def test_the_console_entry_point_parses_before_it_imports_torch(argv):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ddpmkit", *argv], capture_output=True, text=True, timeout=120
    )
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert proc.returncode == (0 if argv == ["--version"] else 2), proc.stderr
    assert "ddpmkit.cli" in imported and "torch" not in imported
