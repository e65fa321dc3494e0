"""The export backends' registry: every backend declares what it exports, `fastprod export` offers exactly
the registered ones, refusals follow the declarations, and fastprod.score imports in one direction only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fastprod.score.backends import BACKENDS, PRECISIONS, Backend, backend_for

SCORE = Path(__file__).resolve().parents[2] / "fastprod" / "score"


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_declares_its_precisions(name):
    backend = BACKENDS[name]
    assert isinstance(backend, Backend) and backend.name == name
    assert backend.precisions and set(backend.precisions) <= set(PRECISIONS)
    assert set(backend.cpu_precisions) <= set(backend.precisions)
    assert callable(backend.export) and callable(backend.load)
    for precision in PRECISIONS:
        for device in ("cpu", "cuda"):
            allowed = precision in (backend.cpu_precisions if device == "cpu" else backend.precisions)
            if allowed:
                assert backend_for(name, precision, device) is backend
            else:
                with pytest.raises(ValueError, match="--precision|--backend"):
                    backend_for(name, precision, device)


def test_export_help_lists_exactly_the_registered_backends(capsys):
    from fastprod.cli import main

    with pytest.raises(SystemExit) as done:
        main(["export", "--help"])
    assert done.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    backends = re.search(r"--backend \{([^}]*)\}", usage).group(1).split(",")
    precisions = re.search(r"--precision \{([^}]*)\}", usage).group(1).split(",")
    assert backends == list(BACKENDS) and precisions == list(PRECISIONS)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The fastprod.score modules `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_fastprod_score_has_no_import_cycle():
    modules = {}
    for path in SCORE.rglob("*.py"):
        parts = path.relative_to(SCORE.parents[1]).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(name):] + [name])}")
        if name not in done:
            for dep in sorted(graph[name]):
                visit(dep, stack + [name])
            done.add(name)

    for name in sorted(graph):
        visit(name, [])
