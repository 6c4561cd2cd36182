"""Imports point one way (issue 11): no cycles between the package's modules, and a light package face."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("da", "benchmarks")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def _modules() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    out[_module_name(path)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: str, name: str, known: set[str]) -> set[str]:
    """Internal modules ``name`` imports anywhere (functions included), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from da.methods import dann` imports the module da.methods.dann
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(path, name, set(modules)) for name, path in modules.items()}
    assert "da.losses" in graph and graph["da.methods.dann"]  # the scan sees the package
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_losses_and_validators_import_light():
    code = (
        "import sys, da.losses, da.validators; "
        "heavy = [m for m in ('hydra', 'omegaconf', 'torchvision', 'da.train', 'da.experiment', 'da.data') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_losses_are_pure_and_benchmarks_use_the_public_api():
    """``da/losses.py`` needs no process group (a method passes a cross-rank sum in), and nothing under
    ``benchmarks/`` reaches into the training loop: benchmarks go through ``da.fit``, ``load_run`` and listeners."""
    modules = _modules()
    known = set(modules)
    assert "da.distributed" not in _imports(modules["da.losses"], "da.losses", known)
    reaching = {
        n for n, path in modules.items() if n.startswith("benchmarks") and "da.train" in _imports(path, n, known)
    }
    assert not reaching, reaching


def test_the_loop_is_small_and_no_class_is_a_hub():
    """``da/train.py`` reads as a training loop (≤ 250 lines) and no class under ``da/`` exceeds 200 lines."""
    with open(os.path.join(ROOT, "da", "train.py")) as fh:
        assert len(fh.read().splitlines()) <= 250
    long = []
    for name, path in _modules().items():
        if name.startswith("da"):
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                    long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
