"""Every command the README shows is real: each `fastprod SUBCOMMAND` in a code block or in the
stages table exists, and every --flag it uses is one that subcommand accepts; every script and
config file it names exists. (The two commands at the top are what CI and the demo run.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fastprod.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """`fastprod ...` command lines from bash blocks and from inline code spans."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [ln.split("#")[0].strip() for block in blocks for ln in block.splitlines()]
    spans = re.findall(r"`(fastprod [^`]+)`", README)
    return sorted({ln for ln in lines + spans if ln.startswith("fastprod ")})


def subcommand_flags() -> dict[str, set[str]]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {opt for action in sub._actions for opt in action.option_strings}
            for name, sub in subparsers.choices.items()}


@pytest.mark.parametrize("command", readme_commands())
def test_fastprod_command_is_valid(command):
    words = shlex.split(command.replace("[", " ").replace("]", " ").replace("|", " "))
    flags = subcommand_flags()
    assert words[1] in flags, f"README uses unknown subcommand: {command}"
    used = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
    assert used <= flags[words[1]], f"{command}: unknown flags {used - flags[words[1]]}"


def test_named_scripts_and_configs_exist():
    for path in set(re.findall(r"\b((?:launch|bench|configs)/[\w./-]+\.(?:sh|py|yaml))", README)):
        assert (ROOT / path).is_file(), f"README names {path}, which does not exist"
