"""The dependency rule of docs/architecture.md, checked on the source.

Every module under lepjax/ is parsed, imports inside functions included. Nothing outside
lepjax/cli/ may import the command layer, the module import graph has no cycle, and each package
depends only on the packages below it.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lepjax")

# What each top-level unit of lepjax may import (besides itself); docs/architecture.md.
LIBRARIES = {"files", "config", "parallel", "answers", "tokenizer", "models", "data", "train",
             "generate", "vocab", "lep", "eval", "augment", "adapt", "compile"}
ALLOWED = {  # `files` (atomic writes) is the floor every unit may stand on
    "files": set(),
    "config": {"files"},
    "parallel": {"files", "config"},
    "answers": set(),
    "tokenizer": {"files", "config"},
    "models": {"files", "config", "parallel"},
    "data": {"files", "config", "parallel", "tokenizer"},
    "train": {"files", "config", "parallel", "tokenizer", "models", "data"},
    "generate": {"files", "config", "parallel", "tokenizer", "models", "data"},
    "vocab": {"files", "config", "parallel", "tokenizer", "models", "data", "generate"},
    "lep": {"files", "config", "parallel", "tokenizer", "models", "data", "vocab"},
    "eval": {"files", "config", "parallel", "answers", "tokenizer", "models", "data", "generate",
             "vocab"},
    "augment": {"files", "config", "parallel", "answers", "tokenizer", "models", "data",
                "generate", "train"},
    "adapt": LIBRARIES - {"adapt", "compile"},
    "compile": {"files", "config", "parallel", "models", "data", "train", "tokenizer"},
    "cli": LIBRARIES,
}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                out[_module_name(path)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The lepjax module a dotted import name refers to (a submodule or its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        for n in names:
            if n == "lepjax" or n.startswith("lepjax."):
                target = _resolve(n)
                if target and target != module:
                    out.add(target)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lepjax"


def test_the_graph_is_read():
    assert "lepjax.cli.main" in GRAPH and "lepjax.models" in GRAPH
    assert "lepjax.cli.train" in GRAPH["lepjax.cli.main"]


def test_nothing_outside_cli_imports_cli():
    offenders = sorted(f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts
                       if _unit(t) == "cli" and _unit(m) != "cli")
    assert not offenders, offenders


def test_import_graph_has_no_cycle():
    # Package __init__ -> its own submodules is structure, not a dependency; a submodule
    # importing its package's __init__ (which imports the submodule back) is a cycle.
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_dependencies_point_down(unit):
    wrong = sorted(f"{m} imports {t}" for m, ts in GRAPH.items() if _unit(m) == unit
                   for t in ts if _unit(t) != unit and _unit(t) not in ALLOWED[unit])
    assert not wrong, wrong


def test_every_unit_is_placed():
    units = {_unit(m) for m in GRAPH} - {"lepjax"}
    assert units <= set(ALLOWED), f"modules outside the layering: {sorted(units - set(ALLOWED))}"
