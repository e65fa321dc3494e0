"""The loss kernels are imported only as `fastprod.kernels`: the top-level folder kernels/ installs under that
name (pyproject.toml maps it), because `import kernels` may find PyPI's `kernels` package instead."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("fastprod", "kernels", "tests", "bench", "launch")


def package_folders() -> dict[str, Path]:
    """Every folder with an __init__.py, by the package name it installs as (kernels/... -> fastprod.kernels...)."""
    found = {}
    for top, name in [("fastprod", "fastprod"), ("kernels", "fastprod.kernels")]:
        for folder, dirs, files in os.walk(ROOT / top):  # not into links (a local fastprod/kernels -> ../kernels)
            dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink() and d != "__pycache__"]
            if "__init__.py" in files:
                found[".".join([name, *Path(folder).relative_to(ROOT / top).parts])] = Path(folder)
    return found


def test_pyproject_installs_every_package_and_no_top_level_kernels():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(package_folders())
    assert setuptools["package-dir"] == {"fastprod.kernels": "kernels"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file at `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def sources(*tops: str) -> list[Path]:
    """The .py files under the given top-level folders (not through the local link fastprod/kernels)."""
    return [path for top in tops for path in sorted((ROOT / top).rglob("*.py"))
            if not path.relative_to(ROOT).as_posix().startswith("fastprod/kernels/")]


def test_no_source_imports_the_top_level_kernels():
    offenders = [f"{path.relative_to(ROOT)}:{line}" for path in sources(*SOURCE_DIRS)
                 for line, module in imported_modules(path) if module == "kernels" or module.startswith("kernels.")]
    assert not offenders, f"import fastprod.kernels..., not kernels...: {offenders}"


def test_kernels_import_no_fastprod_layer_above_them():
    """Dependencies point one way: fastprod.losses imports the kernels; the kernels import from fastprod only
    themselves and fastprod.config (the lowest layer)."""
    offenders = [f"{path.relative_to(ROOT)}:{line} {module}" for path in sources("kernels")
                 for line, module in imported_modules(path)
                 if module.split(".")[:2] not in (["fastprod", "config"], ["fastprod", "kernels"])
                 and module.split(".")[0] == "fastprod"]
    assert not offenders, offenders


SHADOWED = """
import sys
import fastprod.kernels, fastprod.kernels.reference, fastprod.losses, fastprod.train.engine
from fastprod.kernels import fused_loss, linear_cross_entropy
from fastprod.config import LossConfig
from fastprod.losses import create_loss
import torch
assert "kernels" not in sys.modules, "a fastprod module imported the top-level kernels"
print("module", linear_cross_entropy.__module__, sys.modules[linear_cross_entropy.__module__].__file__)
print("module", fused_loss.__module__, sys.modules[fused_loss.__module__].__file__)
x, w, target = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 4, 2])
fused = create_loss(LossConfig(name="sce", impl="fused_linear"))(x, w, None, target)
ref = create_loss(LossConfig(name="sce"))(x @ w.T, target)
torch.testing.assert_close(fused.loss, ref.loss)
"""


@pytest.mark.e2e
def test_fastprod_kernels_win_over_another_kernels_module(tmp_path):
    """With a foreign `kernels` package first on sys.path (as PyPI's `kernels` would be), fastprod imports and
    runs its own kernels and never the foreign one (which refuses to be imported)."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("raise ImportError('the foreign kernels package was imported')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SHADOWED], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import fastprod.kernels

    own = Path(fastprod.kernels.__file__).resolve().parent
    modules = dict(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("module "))
    assert modules.keys() == {"fastprod.kernels.linear_loss.autograd", "fastprod.kernels.row_loss.autograd"}
    for file in modules.values():
        assert Path(file).resolve().is_relative_to(own), f"{file} is not under {own}"
