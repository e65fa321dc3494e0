"""The console script imports only the stage a command names: the worker processes of `synth` and `prepare`
re-run its imports, and torch + DeepSpeed would cost each of them ~20 s and ~900 MB."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastprod.cli import STAGES, build_parser

PROBE = """
import sys
from fastprod.cli import main
try:
    main([{args}])
except SystemExit:
    pass
print(sorted(m for m in ("torch", "deepspeed") if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["synth", "prepare"])
def test_image_stages_do_not_import_torch(command):
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=f"{command!r}, '--help'")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_stage_registers_its_command():
    parser = build_parser()
    commands = next(a.choices for a in parser._actions if a.dest == "command")
    assert sorted(commands) == sorted(STAGES)
