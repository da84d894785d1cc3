"""The package's layers, read from its source: imports point one way, no cycles, no private names across modules.

Every rule is a function from parsed modules to a list of offenders, so each is tested on small synthetic
packages below (it cannot pass by finding nothing) and then run over src/ddpmkit.
"""

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "ddpmkit"
SRC = Path(__file__).resolve().parents[1] / "src"

# A module may import its own layer or a lower one. Top-level modules are the maths; the package root and
# `python -m ddpmkit` sit above everything as the public API and the entry point.
LAYERS = {
    "maths": 0,
    "nn": 1,
    "data": 1,
    "eval": 1,
    "config": 2,
    "train": 3,
    "runs": 4,
    "cli": 5,
    "entry": 6,
}

MAX_FUNCTION_LINES = 60
MAX_CLI_FILE_LINES = 300  # the command line only parses, calls the run layer and prints: small files, one theme each
# Comments that tell a tool something rather than a reader why.
PRAGMA = re.compile(r"noqa(:\s*[A-Z0-9, ]+)?|type:\s*ignore(\[[^\]]*\])?|pragma:.*|fmt:\s*\w+")


@dataclass(frozen=True)
class Import:
    """One internal import: the module it brings in, the names it takes from a module (not submodules), the line."""

    target: str
    names: tuple[str, ...]
    line: int
    root: bool  # imports a name of the package root itself (`import ddpmkit`, `from .. import X`)


@dataclass
class Module:
    name: str
    path: str
    is_package: bool
    tree: ast.Module
    lines: list[str]
    comments: dict[int, str]
    imports: list[Import] = field(default_factory=list)

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def parse_package(files: dict[str, str]) -> dict[str, Module]:
    """Modules from {path relative to src: source}, e.g. {"ddpmkit/runs/run.py": "..."}."""
    modules = {}
    for path, source in files.items():
        parts = path.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        comments = {
            tok.start[0]: tok.string
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT
        }
        tree = ast.parse(source, filename=path)
        modules[name] = Module(name, path, is_package, tree, source.splitlines(), comments)
    for module in modules.values():
        module.imports = list(_imports_of(module, modules))
    return modules


def read_package() -> dict[str, Module]:
    files = {p.relative_to(SRC).as_posix(): p.read_text() for p in sorted((SRC / PACKAGE).rglob("*.py"))}
    return parse_package(files)


def _function_scoped(tree: ast.AST) -> set[int]:
    """ids of the nodes that lie inside a function body."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
    return inside


def _from_base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from."""
    if not node.level:
        return node.module or ""
    parts = module.package.split(".")
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _imports_of(module: Module, modules: dict[str, Module]):
    """Every import of the package, at module level or inside functions alike."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _internal(alias.name):  # `import ddpmkit.x` binds the root unless renamed
                    yield Import(alias.name, (), node.lineno, root=alias.asname is None or alias.name == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and _internal(base := _from_base(module, node)):
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    yield Import(f"{base}.{alias.name}", (), node.lineno, root=False)
                else:
                    yield Import(base, (alias.name,), node.lineno, root=base == PACKAGE)


def layer_of(name: str, modules: dict[str, Module]) -> str:
    """The root and __main__ are the entry, other top-level modules the maths, a subpackage its own name."""
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "entry"
    top = modules.get(f"{PACKAGE}.{parts[1]}")
    if len(parts) == 2 and not (top and top.is_package):
        return "maths"
    return parts[1]


def _where(module: Module, line: int) -> str:
    return f"{module.path}:{line}"


# ---------------------------------------------------------------------------------------------------- the rules


def check_layers(modules: dict[str, Module]) -> list[str]:
    """(a) A module imports only its own layer or a lower one; every subpackage has a layer."""
    offenders = []
    for module in modules.values():
        own = layer_of(module.name, modules)
        if own not in LAYERS:
            offenders.append(f"{module.path}: package {PACKAGE}.{own} has no layer: add it to LAYERS")
            continue
        for imp in module.imports:
            theirs = layer_of(imp.target, modules)
            if imp.target != PACKAGE and LAYERS.get(theirs, -1) > LAYERS[own]:
                offenders.append(f"{_where(module, imp.line)}: {module.name} ({own}) imports {imp.target} ({theirs})")
    return list(dict.fromkeys(offenders))  # one line per statement, not per imported name


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {imported module: line}; importing a.b.c from outside package a.b also runs a.b's __init__."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        for imp in module.imports:
            targets = [imp.target]
            parts = imp.target.split(".")
            for depth in range(2, len(parts)):
                package = ".".join(parts[:depth])
                if not (module.name == package or module.name.startswith(package + ".")):
                    targets.append(package)
            for target in targets:
                if target in modules and target != module.name:
                    graph[module.name].setdefault(target, imp.line)
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_through(start: str, members: set[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    previous = {start: start}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if nxt in members and nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def check_cycles(modules: dict[str, Module]) -> list[str]:
    """(b) The import graph (imports at module level and inside functions alike) has no cycle."""
    graph = import_graph(modules)
    offenders = []
    for component in _strongly_connected(graph):
        path = _cycle_through(component[0], set(component), graph)
        steps = " -> ".join(f"{a} ({modules[a].path}:{graph[a][b]})" for a, b in zip(path, path[1:]))
        edges = [
            f"{modules[a].path}:{line} -> {b}" for a in component for b, line in graph[a].items() if b in component
        ]
        offenders.append(
            f"cycle of {len(component)} modules, e.g. {steps} -> {path[-1]}; all its imports: " + ", ".join(edges)
        )
    return offenders


def check_root_imports(modules: dict[str, Module]) -> list[str]:
    """(c) Nothing inside the package imports the package root (`import ddpmkit`, `from .. import X`)."""
    return [
        f"{_where(module, imp.line)}: {module.name} imports the package root"
        + (f" for {', '.join(imp.names)}" if imp.names else "")
        for module in modules.values()
        if module.name not in (PACKAGE, f"{PACKAGE}.__main__")
        for imp in module.imports
        if imp.root
    ]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def check_private_names(modules: dict[str, Module]) -> list[str]:
    """(d) No private name (`_x`, not a dunder) is imported from, or read off, another module."""
    offenders = []
    for module in modules.values():
        for imp in module.imports:
            for name in imp.names:
                if _private(name):
                    offenders.append(f"{_where(module, imp.line)}: {module.name} imports {imp.target}.{name}")
        bound = _module_aliases(module, modules)
        for node in ast.walk(module.tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and _private(node.attr)
            ):
                read = f"{bound[node.value.id]}.{node.attr}"
                offenders.append(f"{_where(module, node.lineno)}: {module.name} reads {read}")
    return offenders


def _module_aliases(module: Module, modules: dict[str, Module]) -> dict[str, str]:
    """Local names bound to an internal module (`from . import samplers as S`, `import ddpmkit.samplers as S`)."""
    bound = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            bound.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _is_reason(comment: str) -> bool:
    return bool(re.search(r"[A-Za-z]{2}", PRAGMA.sub("", comment.lstrip("#"))))


def check_lazy_import_reasons(modules: dict[str, Module]) -> list[str]:
    """(e) Every import inside a function says why on its line or in a comment line just above its block.

    Applies to every import in a function body, of the package or not (an optional dependency, a start-up cost).
    """
    offenders = []
    for module in modules.values():
        inside = _function_scoped(module.tree)
        lazy = [n for n in ast.walk(module.tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) in inside]
        import_lines = {line for n in lazy for line in range(n.lineno, (n.end_lineno or n.lineno) + 1)}
        for node in lazy:
            end = node.end_lineno or node.lineno
            if any(_is_reason(module.comments.get(line, "")) for line in range(node.lineno, end + 1)):
                continue
            above = node.lineno - 1
            while above in import_lines:  # a block of imports under one comment
                above -= 1
            text = module.lines[above - 1].strip() if above >= 1 else ""
            if text.startswith("#") and _is_reason(text):
                continue
            names = ", ".join(alias.name for alias in node.names)
            source = f"from {'.' * node.level}{node.module or ''} " if isinstance(node, ast.ImportFrom) else ""
            offenders.append(f"{_where(module, node.lineno)}: {source}import {names} (inside a function, no reason)")
    return offenders


def check_function_length(modules: dict[str, Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """(f) No function or method is over `limit` lines, from its `def` line to the last line of its body."""
    offenders = []
    for module in modules.values():
        for qualname, node in _functions(module.tree):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                offenders.append(f"{_where(module, node.lineno)}: {qualname} is {length} lines")
    return offenders


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def check_cli_file_size(modules: dict[str, Module], limit: int = MAX_CLI_FILE_LINES) -> list[str]:
    """(g) No file of the command line (ddpmkit.cli and below) is over `limit` lines."""
    return [
        f"{module.path}:{len(module.lines)}: {module.name} is {len(module.lines)} lines (at most {limit})"
        for module in modules.values()
        if layer_of(module.name, modules) == "cli" and len(module.lines) > limit
    ]


def check_choice_lists(modules: dict[str, Module]) -> list[str]:
    """(h) Every named choice is declared once, in ddpmkit.options: no `Literal` of values and no literal `choices=`
    tuple elsewhere (`Literal[True]`/`Literal[False]` of typing overloads are not choices)."""
    home = f"{PACKAGE}.options"
    found = []
    for module in modules.values():
        if module.name == home:
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Subscript) and _name_of(node.value) == "Literal":
                values = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
                if not all(isinstance(v, ast.Constant) and isinstance(v.value, bool) for v in values):
                    found.append(f"{module.path}:{node.lineno}: a Literal of choices outside {home}")
            elif (
                isinstance(node, ast.keyword)
                and node.arg == "choices"
                and isinstance(node.value, (ast.Tuple, ast.List))
            ):
                found.append(f"{module.path}:{node.value.lineno}: a literal choices= list outside {home}")
    return found


def _name_of(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


RULES = {
    "layers": check_layers,
    "cycles": check_cycles,
    "root imports": check_root_imports,
    "private names": check_private_names,
    "lazy import reasons": check_lazy_import_reasons,
    "function length": check_function_length,
    "cli file size": check_cli_file_size,
    "choice lists": check_choice_lists,
}


# ------------------------------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def package():
    return read_package()


def test_every_module_is_read(package):
    assert f"{PACKAGE}.samplers" in package and f"{PACKAGE}.cli" in package and len(package) > 40


@pytest.mark.parametrize("rule", RULES)
def test_package_keeps_the_rule(package, rule):
    offenders = sorted(RULES[rule](package), key=_by_place)
    if offenders:
        pytest.fail(f"{len(offenders)} offender(s) of the rule '{rule}':\n  " + "\n  ".join(offenders), pytrace=False)


def _by_place(offender: str):
    path, _, rest = offender.partition(":")
    line = rest.split(":")[0]
    return (path, int(line) if line.isdigit() else 0, offender)


# ------------------------------------------------------------------------------------- the checker on small trees


def tree(**files: str) -> dict[str, Module]:
    """A synthetic package: keyword `runs__run="..."` is the file ddpmkit/runs/run.py."""
    sources = {"ddpmkit/__init__.py": ""}
    for key, source in files.items():
        path = key.replace("__", "/")
        if path.endswith("/init"):
            path = path.removesuffix("init") + "__init__"
        sources[f"ddpmkit/{path}.py"] = source
    for path in list(sources):  # every folder is a package
        parts = path.split("/")[:-1]
        for depth in range(2, len(parts) + 1):
            sources.setdefault("/".join(parts[:depth]) + "/__init__.py", "")
    return parse_package(sources)


CLEAN = dict(
    schedules="import math\n",
    samplers="from .schedules import math\nfrom .version import __version__\n",
    nn__unet="from ..samplers import math\n",
    runs__init="from .run import Run\n",
    runs__run="from ..nn.unet import math\n\n\nclass Run:\n    pass\n",
    cli__init="def main():\n    # lazy: the run layer imports torch\n    from ..runs import Run\n    import json\n",
    version="__version__ = '1'\n",
)


def test_checker_passes_a_clean_tree():
    modules = tree(**CLEAN)
    assert {name: rule(modules) for name, rule in RULES.items()} == {name: [] for name in RULES}


def test_checker_finds_an_upward_import():
    offenders = check_layers(tree(**CLEAN, nn__blocks="from ..runs.run import Run\n"))
    assert offenders == ["ddpmkit/nn/blocks.py:1: ddpmkit.nn.blocks (nn) imports ddpmkit.runs.run (runs)"]
    assert check_layers(tree(**CLEAN, train__loop="def f():\n    from ..cli import main  # lazy\n"))
    assert check_layers(tree(**CLEAN, config__init="import ddpmkit.train.loop as loop\n", train__loop=""))


def test_checker_finds_a_package_without_a_layer():
    assert "has no layer" in check_layers(tree(**CLEAN, kernels__conv="x = 1\n"))[0]


def test_checker_finds_cycles_at_module_and_function_level():
    cycle = tree(schedules="from .samplers import x\n", samplers="def f():\n    from .schedules import y  # lazy\n")
    (offender,) = check_cycles(cycle)
    assert "ddpmkit.samplers" in offender and "ddpmkit.schedules" in offender and "samplers.py:2" in offender
    three = tree(a="from .b import x\n", b="from . import c\n", c="from .a import z\n")
    assert "cycle of 3 modules" in check_cycles(three)[0]


def test_checker_finds_a_cycle_through_a_package_init():
    modules = tree(
        runs__init="from .run import Run\n", runs__run="from .bpd import b\n", runs__bpd="from . import Run\n"
    )
    assert check_cycles(modules)
    # importing data.base from nn runs data/__init__, which imports back into nn
    modules = tree(
        nn__unet="from ..data.base import x\n",
        data__init="from .base import x\n",
        data__base="from ..nn.unet import y\n",
    )
    assert check_cycles(modules)


def test_checker_finds_imports_of_the_package_root():
    for source in (
        "import ddpmkit\n",
        "from ddpmkit import Run\n",
        "from .. import __version__\n",
        "import ddpmkit.samplers\n",
    ):
        assert check_root_imports(tree(samplers="", runs__report=source)), source
    assert not check_root_imports(tree(samplers="", runs__report="from .. import samplers\n"))
    assert not check_root_imports(tree(samplers="", runs__report="import ddpmkit.samplers as samplers\n"))


def test_checker_finds_private_names():
    assert check_private_names(tree(samplers="", editing="from .samplers import _chain\n"))
    assert check_private_names(tree(samplers="", editing="from .samplers import _chain as chain\n"))
    assert check_private_names(tree(samplers="", editing="from . import samplers as S\nS._chain(1)\n"))
    assert check_private_names(tree(samplers="", editing="import ddpmkit.samplers as S\nS._chain(1)\n"))
    assert not check_private_names(tree(version="", editing="from .version import __version__\n"))
    assert not check_private_names(tree(editing="from math import _private\nx._y\n"))


def test_checker_finds_uncommented_lazy_imports():
    bare = "def f():\n    import torch\n"
    assert check_lazy_import_reasons(tree(samplers=bare)) == [
        "ddpmkit/samplers.py:2: import torch (inside a function, no reason)"
    ]
    assert check_lazy_import_reasons(tree(samplers="def f():\n    from .x import y  # noqa: F401\n"))
    assert check_lazy_import_reasons(tree(samplers="def f():\n    x = 1  # lazy: no\n    import torch\n"))
    assert check_lazy_import_reasons(tree(samplers="class A:\n    def f(self):\n        import torch\n"))
    fine = (
        "def f():\n    import torch  # lazy: torch is slow to import\n",
        "def f():\n    # optional: tensorboard\n    import tensorboard\n    from torch import nn\n",
        "def f():\n    from torch import (  # lazy: start-up\n        nn,\n        optim,\n    )\n",
    )
    for source in fine:
        assert not check_lazy_import_reasons(tree(samplers=source)), source
    assert not check_lazy_import_reasons(tree(samplers="import torch\n"))


def test_checker_finds_long_functions():
    def function(lines: int, indent: str = "") -> str:
        return f"{indent}@decorator\n{indent}def f():\n" + f"{indent}    x = 1\n" * (lines - 1)

    assert not check_function_length(tree(samplers=function(60)))
    assert check_function_length(tree(samplers=function(61))) == ["ddpmkit/samplers.py:2: f is 61 lines"]
    method = "class A:\n" + function(61, "    ")
    assert check_function_length(tree(samplers=method)) == ["ddpmkit/samplers.py:3: A.f is 61 lines"]


def test_checker_finds_long_cli_files():
    lines = "x = 1\n"
    assert not check_cli_file_size(tree(cli__parser=lines * 300, runs__run=lines * 400))
    assert check_cli_file_size(tree(cli__parser=lines * 301, runs__run=lines * 400)) == [
        "ddpmkit/cli/parser.py:301: ddpmkit.cli.parser is 301 lines (at most 300)"
    ]
    assert check_cli_file_size(tree(cli__init=lines * 301))


def test_checker_finds_choice_lists_outside_options():
    options = 'from typing import Literal\nSplit = Literal["train", "test"]\n'
    overload = "import typing\ndef f(x: typing.Literal[True]) -> int: ...\n"
    clean = dict(options=options, eval__metrics=overload, cli__parser="p.add_argument('--x', choices=choices(Split))\n")
    assert not check_choice_lists(tree(**clean))
    found = check_choice_lists(
        tree(
            options=options,
            consistency='from typing import Literal\nDistance = Literal["l2", "pseudo_huber"]\n',
            cli__parser="p.add_argument('--order', type=int, choices=(1, 2, 3))\n",
            eval__digits="import typing\ndef f(ref: typing.Literal['test', 'train']): ...\n",
        )
    )
    assert sorted(found) == [
        "ddpmkit/cli/parser.py:1: a literal choices= list outside ddpmkit.options",
        "ddpmkit/consistency.py:2: a Literal of choices outside ddpmkit.options",
        "ddpmkit/eval/digits.py:2: a Literal of choices outside ddpmkit.options",
    ]
