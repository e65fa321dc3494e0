"""The README's commands as tests run them (a helper module, not a test): the bash blocks under each
heading, and the demo config made small."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from training import LAUNCHER_VARIABLES

ROOT = Path(__file__).resolve().parents[1]


def readme_sections() -> dict[str, list[str]]:
    """Command lines of the bash blocks under each heading (comments stripped)."""
    sections: dict[str, list[str]] = {}
    heading, in_block = None, False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_block = line == "```bash"
        elif in_block and heading:
            command = line.split("#")[0].strip()
            if command:
                sections.setdefault(heading, []).append(command)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return sections


def tiny_demo_config(path: Path, settings: dict[str, object]) -> None:
    """The real configs/demo.yaml with `settings` ({"section.key": value}) applied, written to `path`."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for key, value in settings.items():
        section, name = key.split(".")
        config.setdefault(section, {})[name] = value
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))


def run_as_written(command: str, cwd: Path) -> str:
    """Run one README command line with bash in `cwd`, as a user would (the `fastprod` script on PATH, no
    launcher variables), asserting it succeeds; returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout
