"""No import cycles between ``saferl`` modules, and the packages' one direction of dependency
(docs/architecture.md §1): ``core ← data/models ← runtime ← learners/setups ← eval ← config/cli``.

The import graph is read statically (``ast``, nothing is imported): a node per module under
``saferl/`` (``saferl/x/__init__.py`` is the node ``saferl.x``), an edge per import of another
``saferl`` module. Every import counts: at module level, inside functions (deferred) and under
``if TYPE_CHECKING:``; messages name the kind of each import so a cycle's edges can be told apart.

Resolution (what Python would load last):

* ``import saferl.x.y`` → ``saferl.x.y``;
* ``from saferl.x import y`` → ``saferl.x.y`` when that is a module, else ``saferl.x`` (``y`` is a
  name in ``saferl/x/__init__.py`` or ``saferl/x.py``);
* relative imports resolve against the importing module's package (``from . import y`` in
  ``saferl/x/z.py`` is ``from saferl.x import y``);
* an import that names no existing module resolves to its longest existing prefix.

Importing ``saferl.x.y`` also runs ``saferl/x/__init__.py``; that implicit parent edge is not
drawn (a package's ``__init__`` re-exporting its submodules would otherwise make every submodule
that imports a sibling a cycle, though Python loads such trees without trouble).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import saferl

SAFERL_ROOT = Path(saferl.__file__).resolve().parent
TOP_LEVEL = "module level"
DEFERRED = "inside a function"
TYPE_CHECKING_ONLY = "under TYPE_CHECKING"



@dataclass(frozen=True)
class Import:
    """One import of a ``saferl`` module by another.

    Attributes:
        source, target: dotted module names (a package is its ``__init__``).
        line: the import statement's line in ``source``'s file.
        kind: :data:`TOP_LEVEL`, :data:`DEFERRED` or :data:`TYPE_CHECKING_ONLY`.
    """

    source: str
    target: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.source} → {self.target} (line {self.line}, {self.kind})"


# --------------------------------------------------------------------------------------------
# Reading the graph
# --------------------------------------------------------------------------------------------
def module_files(root: Path, package: str = "saferl") -> dict[str, Path]:
    """``dotted name → file`` for every ``.py`` file under ``root`` (the package ``package``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportVisitor(ast.NodeVisitor):
    """Collects ``(dotted names, line, kind)`` of every import statement, resolved to absolute
    names (``from a import b`` yields both ``a.b`` and ``a``; the caller keeps what exists)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[list[str], int, str]] = []
        self._kinds = [TOP_LEVEL]

    def _visit_with(self, kind: str, nodes: Iterable[ast.AST]) -> None:
        self._kinds.append(kind)
        for node in nodes:
            self.visit(node)
        self._kinds.pop()

    def _kind(self, kind: str) -> str:
        # TYPE_CHECKING wins over "deferred": such an import never runs.
        current = self._kinds[-1]
        return current if current == TYPE_CHECKING_ONLY else kind

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._visit_with(self._kind(DEFERRED), node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._visit_with(TYPE_CHECKING_ONLY, node.body)
            self._visit_with(self._kinds[-1], node.orelse)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(([alias.name], node.lineno, self._kinds[-1]))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        for alias in node.names:
            # The submodule first: `from saferl.x import y` imports saferl.x.y when it exists.
            candidates = [module] if alias.name == "*" else [f"{module}.{alias.name}", module]
            self.found.append((candidates, node.lineno, self._kinds[-1]))


def _resolve(candidates: list[str], modules: Mapping[str, Path]) -> str | None:
    """The first candidate that is a module, or the longest existing prefix of the last one."""
    for name in candidates:
        if name in modules:
            return name
    parts = candidates[-1].split(".")
    while parts:
        parts.pop()
        if ".".join(parts) in modules:
            return ".".join(parts)
    return None


def read_imports(root: Path, package: str = "saferl") -> tuple[list[str], list[Import]]:
    """The modules of the package at ``root`` and every import of one of them by another."""
    modules = module_files(root, package)
    imports = []
    for module, path in modules.items():
        visitor = _ImportVisitor(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for candidates, line, kind in visitor.found:
            if not (candidates[-1] == package or candidates[-1].startswith(f"{package}.")):
                continue  # another library
            target = _resolve(candidates, modules)
            if target is not None and target != module:
                imports.append(Import(module, target, line, kind))
    # One record per statement and target (`from a import b, c` names `a` once).
    return list(modules), list(dict.fromkeys(imports))


# --------------------------------------------------------------------------------------------
# Cycles
# --------------------------------------------------------------------------------------------
def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component that has one.

    Args:
        graph: ``node → nodes it points to`` (targets need not be keys).

    Returns:
        Cycles as node lists ``[a, b, …, a]`` (first and last equal), each starting at its
        component's smallest node, sorted; a self-loop is ``[a, a]``. Empty when acyclic.
    """
    edges = {node: sorted(set(targets)) for node, targets in graph.items()}
    for targets in list(edges.values()):
        for target in targets:
            edges.setdefault(target, [])

    # Tarjan's strongly connected components, iteratively (no recursion limit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if position < len(targets):
                work.append((node, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    cycles = []
    for component in components:
        members = set(component)
        first = min(component)
        if len(component) == 1 and first not in edges[first]:
            continue
        # Breadth-first from `first` back to itself, inside the component: a shortest cycle.
        previous: dict[str, str] = {}
        frontier = [first]
        while frontier and first not in previous:
            following = []
            for node in frontier:
                for target in edges[node]:
                    if target in members and target not in previous:
                        previous[target] = node
                        following.append(target)
            frontier = following
        cycle = [first]
        node = previous[first]
        while node != first:
            cycle.append(node)
            node = previous[node]
        cycles.append([first, *reversed(cycle[1:]), first])
    return sorted(cycles)


def _describe(cycle: list[str], imports: Iterable[Import]) -> str:
    by_edge: dict[tuple[str, str], list[Import]] = {}
    for item in imports:
        by_edge.setdefault((item.source, item.target), []).append(item)
    lines = [" → ".join(cycle)]
    for source, target in zip(cycle, cycle[1:], strict=False):
        lines += [f"    {item}" for item in by_edge[(source, target)]]
    return "\n".join(lines)


def _graph(modules: Iterable[str], imports: Iterable[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for item in imports:
        graph[item.source].add(item.target)
    return graph


def _package(module: str) -> str:
    """``saferl.learners.ppo_lag`` → ``saferl.learners``; a top-level module is itself."""
    return ".".join(module.split(".")[:2])


# --------------------------------------------------------------------------------------------
# The cycle finder and the reader on small known inputs (these must pass: they prove the
# whole-tree tests below can see a cycle)
# --------------------------------------------------------------------------------------------
def test_find_cycles_on_a_synthetic_graph() -> None:
    # {a, b, c} is one component: a → b → c → a, and with the chord a → c also a → c → a, the
    # shorter, which is the one reported. d → a hangs off it (not in a cycle); e ↔ f is a second
    # cycle; g → g a self-loop; h → i → j is acyclic.
    graph = {
        "a": ["b", "c"],
        "b": ["c"],
        "c": ["a"],
        "d": ["a"],
        "e": ["f"],
        "f": ["e"],
        "g": ["g"],
        "h": ["i"],
        "i": ["j"],
    }
    assert find_cycles(graph) == [["a", "c", "a"], ["e", "f", "e"], ["g", "g"]]
    # Without the chord: the three-node cycle, started at its smallest node.
    graph["a"] = ["b"]
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"], ["g", "g"]]
    # Acyclic graphs, including a diamond (two paths to one node are no cycle).
    assert find_cycles({"h": ["i"], "i": ["j"]}) == []
    assert find_cycles({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}) == []
    assert find_cycles({}) == []
    # A long chain closed at the end: iterative, no recursion limit.
    chain = {f"n{i:05d}": [f"n{i + 1:05d}"] for i in range(5000)}
    chain["n05000"] = ["n00000"]
    (cycle,) = find_cycles(chain)
    assert len(cycle) == 5002 and cycle[0] == cycle[-1] == "n00000"


def test_read_imports_resolves_every_form_of_import(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    files = {
        "__init__.py": "",
        "core/__init__.py": "from pkg.core.math import add\n",
        "core/math.py": "import os\n\ndef add(a, b):\n    return a + b\n",
        "learners/__init__.py": "",
        "learners/algo.py": (
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "import pkg.core.math\n"  # absolute, a module
            "from pkg.core import add\n"  # a name of the package: its __init__
            "from pkg import core\n"  # a subpackage: its __init__
            "from . import helper\n"  # relative, a module
            "from .helper import thing, missing\n"  # relative, names of a module
            "if TYPE_CHECKING:\n"
            "    from pkg.eval import report\n"
            "def run():\n"
            "    from ..eval.report import show\n"  # deferred, two levels up
            "    if TYPE_CHECKING:\n"
            "        import pkg.core.math\n"
        ),
        "learners/helper.py": "thing = 1\nfrom pkg.nothing.here import x\n",
        "eval/__init__.py": "from .report import show\n",
        "eval/report.py": "from pkg.learners import algo\ndef show(): ...\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)

    modules, imports = read_imports(root, "pkg")
    assert sorted(modules) == [
        "pkg",
        "pkg.core",
        "pkg.core.math",
        "pkg.eval",
        "pkg.eval.report",
        "pkg.learners",
        "pkg.learners.algo",
        "pkg.learners.helper",
    ]
    found = {(i.source, i.target, i.line, i.kind) for i in imports}
    assert found == {
        ("pkg.core", "pkg.core.math", 1, TOP_LEVEL),
        ("pkg.learners.algo", "pkg.core.math", 3, TOP_LEVEL),
        ("pkg.learners.algo", "pkg.core", 4, TOP_LEVEL),
        ("pkg.learners.algo", "pkg.core", 5, TOP_LEVEL),
        ("pkg.learners.algo", "pkg.learners.helper", 6, TOP_LEVEL),
        ("pkg.learners.algo", "pkg.learners.helper", 7, TOP_LEVEL),
        ("pkg.learners.algo", "pkg.eval.report", 9, TYPE_CHECKING_ONLY),
        ("pkg.learners.algo", "pkg.eval.report", 11, DEFERRED),
        ("pkg.learners.algo", "pkg.core.math", 13, TYPE_CHECKING_ONLY),
        ("pkg.learners.helper", "pkg", 2, TOP_LEVEL),  # no such module: its existing prefix
        ("pkg.eval", "pkg.eval.report", 1, TOP_LEVEL),
        ("pkg.eval.report", "pkg.learners.algo", 1, TOP_LEVEL),
    }
    cycles = find_cycles(_graph(modules, imports))
    assert cycles == [["pkg.eval.report", "pkg.learners.algo", "pkg.eval.report"]]
    message = _describe(cycles[0], imports)
    assert "pkg.learners.algo → pkg.eval.report (line 9, under TYPE_CHECKING)" in message
    assert "pkg.learners.algo → pkg.eval.report (line 11, inside a function)" in message


# --------------------------------------------------------------------------------------------
# The whole tree
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saferl_imports() -> tuple[list[str], list[Import]]:
    return read_imports(SAFERL_ROOT)


def test_the_reader_sees_the_tree(saferl_imports) -> None:
    """Guards the tests below against passing on an empty graph."""
    modules, imports = saferl_imports
    assert {"saferl", "saferl.cli", "saferl.config", "saferl.core"} <= set(modules)
    assert len(modules) > 30 and len(imports) > 50
    assert any(item.source == "saferl.cli" and item.kind == DEFERRED for item in imports)


def test_no_import_cycle_between_saferl_modules(saferl_imports) -> None:
    modules, imports = saferl_imports
    cycles = find_cycles(_graph(modules, imports))
    assert not cycles, f"{len(cycles)} import cycle(s) between saferl modules:\n" + "\n".join(
        _describe(cycle, imports) for cycle in cycles
    )


def test_core_imports_no_other_saferl_package(saferl_imports) -> None:
    _, imports = saferl_imports
    bad = [
        str(item)
        for item in imports
        if _package(item.source) == "saferl.core" and _package(item.target) != "saferl.core"
    ]
    assert not bad, "saferl.core must import no other saferl package:\n" + "\n".join(bad)


#: Packages below the evaluation layer, and what they must not import.
LOWER_LAYERS = (
    "saferl.core",
    "saferl.data",
    "saferl.models",
    "saferl.rbr",
    "saferl.runtime",
    "saferl.learners",
    "saferl.setups",
)
UPPER_LAYERS = ("saferl.eval", "saferl.config", "saferl.cli")


def test_lower_layers_do_not_import_eval_config_or_cli(saferl_imports) -> None:
    _, imports = saferl_imports
    bad = [
        str(item)
        for item in imports
        if _package(item.source) in LOWER_LAYERS and _package(item.target) in UPPER_LAYERS
    ]
    assert not bad, (
        f"{', '.join(LOWER_LAYERS)} must not import {', '.join(UPPER_LAYERS)} "
        "(core ← data/models ← runtime ← learners/setups ← eval ← config/cli):\n" + "\n".join(bad)
    )
