"""The package layers, checked on the source (AST, nothing is imported or executed).

    entry points (train.py, train_ag.py, infer.py, demo.py, scripts/)
       └─ reenact: the application (pipeline, stages, pose, render, video I/O, evaluation, demo)
            ├─ edtn: the method ──► deca_edit
            └─ anime_generator
       every package ──► infra: the base (assets, checkpoint I/O, runtime, typed config, image I/O)

Every import counts, also the ones inside functions (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("infra", "deca_edit", "anime_generator", "edtn", "reenact")
# what each package may import besides itself
ALLOWED = {
    "infra": set(),
    "deca_edit": {"infra"},
    "anime_generator": {"infra"},
    "edtn": {"infra", "deca_edit"},
    "reenact": {"infra", "deca_edit", "anime_generator", "edtn"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute module names an ImportFrom refers to (``from . import x`` -> ``pkg.x``)."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> set of project modules it imports (any depth in the file)."""
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(name, path.name == "__init__.py", node)
            else:
                continue
            for target in targets:
                # the longest project module that the target names (x.y.func -> x.y)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
        graph.setdefault(name, set())
    return dict(graph)


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_walk_sees_every_package(graph):
    top = {m.split(".")[0] for m in graph}
    assert top == set(PACKAGES)
    assert "reenact.pipeline" in graph and "infra.assets" in graph
    assert "reenact.stages" in graph["reenact.pipeline"]   # imports are really found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below(graph, package):
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() if m.split(".")[0] == package
                 for t in targets if t.split(".")[0] not in ALLOWED[package] | {package})
    assert not bad, "\n".join(bad)


def test_no_import_cycles(graph):
    """No module reaches itself through imports (module level, lazy imports included)."""
    state: dict[str, int] = {}   # 1: on the stack, 2: done
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself fails on an upward import and on a cycle (it can fail)."""
    fake = tmp_path / "repo"
    for pkg in PACKAGES:
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("")
    (fake / "infra" / "a.py").write_text("from deca_edit import b\n")
    (fake / "deca_edit" / "b.py").write_text("def f():\n    from infra.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", fake)
    g = import_graph()
    assert "deca_edit.b" in g["infra.a"] and "infra.a" in g["deca_edit.b"]
    with pytest.raises(AssertionError, match="infra.a imports deca_edit.b"):
        test_package_imports_only_the_layers_below(g, "infra")
    with pytest.raises(AssertionError, match="deca_edit.b -> infra.a -> deca_edit.b"):
        test_no_import_cycles(g)
