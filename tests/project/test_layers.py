"""The architecture as a test: dependencies inside the project point one way,
config/files -> data -> model/losses/kernels -> train -> recipe stages -> score -> cli,
and no module imports another in a circle (function-level imports and package __init__ files count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Source folders and the import name they install under.
PACKAGES = {ROOT / "fastprod": "fastprod", ROOT / "kernels": "fastprod.kernels"}
LAYERS = [
    ("fastprod", "fastprod.config", "fastprod.files"),
    ("fastprod.data",),
    ("fastprod.models", "fastprod.optim", "fastprod.schedule", "fastprod.losses", "fastprod.kernels"),
    ("fastprod.train",),
    ("fastprod.recipe",),
    ("fastprod.score",),
    ("fastprod.cli",),
]


def modules() -> dict[str, Path]:
    found = {}
    for folder, name in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([name, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file, with the packages whose __init__ that runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    closed = set()
    for target in targets:
        parts = target.split(".")
        closed.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {t for t in closed if t in known and t != name and not name.startswith(t + ".")}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
    best = max((prefix for row in LAYERS for prefix in row if name == prefix or name.startswith(prefix + ".")),
               key=len)
    return next(i for i, row in enumerate(LAYERS) if best in row)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert not cycles(graph()), f"import cycles: {cycles(graph())}"


def test_dependencies_point_down_the_layers():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_checker_sees_cycles_and_upward_imports(tmp_path):
    """The checks above can fail: a planted three-module cycle, a function-level import and an upward
    import are all found."""
    planted = {"fastprod.score.a": {"fastprod.score.b"}, "fastprod.score.b": {"fastprod.score.c"},
               "fastprod.score.c": {"fastprod.score.a"}, "fastprod.score.d": {"fastprod.score.a"}}
    assert cycles(planted) == [["fastprod.score.a", "fastprod.score.b", "fastprod.score.c"]]
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from fastprod.recipe.o2u import O2UWeights\n")
    found = imports("fastprod.train.x", src, {"fastprod.recipe", "fastprod.recipe.o2u"})
    assert found == {"fastprod.recipe", "fastprod.recipe.o2u"}
    assert all(layer(b) > layer("fastprod.train.x") for b in found)
    assert layer("fastprod.kernels.common") == layer("fastprod.losses.factory") < layer("fastprod.train.engine")
