"""Importing the library is cheap, and its modules do not import each other in a circle.

What it checks:
1. each light module, imported alone in a fresh interpreter, loads none of torch, transformers,
   accelerate or streamlit (the app and the run store read runs without them);
2. the graph of ``core`` modules importing ``core`` modules, counting imports inside functions too,
   has no cycle (a lazy import that hides a cycle still makes the two modules one unit).

    .venv/bin/python -m pytest tests/test_imports.py -q
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "accelerate", "streamlit")
LIGHT = ["core", "core.paths", "core.metrics", "core.runstore", "core.data", "core.rewards", "core.rewards.store",
         "core.feedback", "core.feedback.store", "core.feedback.sampling", "core.feedback.export", "core.feedback.agreement",
         "core.trainers", "core.paired", "core.rewards.scales"]


@pytest.mark.parametrize("module", LIGHT)
def test_light_module_imports_nothing_heavy(module):
    code = f"import sys, {module}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], f"import {module} loads {out.stdout.split()}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_import_graph() -> dict[str, set[str]]:
    """{module: the core modules it imports anywhere in its file}, packages' own __init__ excluded as targets."""
    modules = {_module_name(p): p for p in (PROJECT_ROOT / "core").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("core"):
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)  # `from core import data`
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name and not (modules[t].name == "__init__.py")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the graph, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_core_modules_import_each_other_without_cycles():
    graph = core_import_graph()
    assert graph["core.trainers.finegrained"] >= {"core.rewards.finegrained", "core.rewards.store"}  # the graph sees them
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
