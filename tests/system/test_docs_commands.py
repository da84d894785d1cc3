"""Docs agree with the tool: every `ddpmkit ...` command line in a bash block of the docs or the README parses
with the real parser, so no page can name a command or a flag that does not exist; every test file or module a
page, a benchmark or a docstring points to exists."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from ddpmkit.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"^```(?:bash|sh|console)\n(.*?)^```", re.S | re.M)


def command_lines(page: Path) -> list[str]:
    """The `ddpmkit` lines of a page's shell blocks, continuations joined and comments dropped."""
    found = []
    for block in BLOCK.findall(page.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("ddpmkit "):
                found.append(" ".join(synopsis(shlex.split(line, comments=True))))
    return found


def synopsis(words: list[str]) -> list[str]:
    """A synopsis as one command: [optional] parts given, the first of a|b alternatives, `...` dropped."""
    out = []
    for word in words:
        word = word.strip("[]")
        if word and word != "...":
            out.append(word.split("|")[0] if "|" in word and not word.startswith("-") else word)
    return out


CASES = [(page.name, line) for page in PAGES for line in command_lines(page)]


def test_the_docs_have_commands_to_check():
    assert len(CASES) > 20 and "FID is not available" not in (ROOT / "docs" / "training-on-your-images.md").read_text()


@pytest.mark.parametrize("page, line", CASES)
def test_every_documented_command_parses(page, line):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as stop:
        assert stop.code == 0, f"{page}: `{line}` does not parse: {err.getvalue().strip().splitlines()[-1:]}"


# a path into the repository named in prose: tests/..., benchmarks/..., docs/... or src/... ending in a file type
REPO_PATH = re.compile(r"(?<![\w/.-])((?:tests|benchmarks|docs|src)/[\w/.-]+?\.(?:py|md|sh|yaml))\b")
POINTING = PAGES + sorted((ROOT / "benchmarks").glob("*.[ps][yh]")) + sorted((ROOT / "src").rglob("*.py"))


def test_the_paths_the_docs_and_code_name_exist():
    named = {
        (f.relative_to(ROOT).as_posix(), path)
        for f in POINTING
        for path in REPO_PATH.findall(f.read_text(encoding="utf-8"))
    }
    assert len(named) > 20  # the pattern finds what the pages cite
    missing = sorted(f"{f}: {path}" for f, path in named if not (ROOT / path).exists())
    assert not missing, "named but not in the repository (moved or renamed?):\n" + "\n".join(missing)
