"""Every command the README shows is real: each `fastprod SUBCOMMAND` in a code block or in the
stages table exists, and every --flag it uses is one that subcommand accepts; every script and
config file it names exists. (The two commands at the top are what CI and the demo run.)"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from fastprod.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """`fastprod ...` command lines from bash blocks and from inline code spans."""
    blocks = re.findall(r"```(?:bash|text)\n(.*?)```", README, flags=re.S)
    lines = [ln.split("#")[0].strip() for block in blocks for ln in block.splitlines()]
    spans = re.findall(r"`(fastprod [^`]+)`", README)
    return sorted({ln for ln in lines + spans if ln.startswith("fastprod ")})


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


@pytest.mark.parametrize("command", readme_commands())
def test_fastprod_command_is_valid(command):
    words = shlex.split(command.replace("[", " ").replace("]", " ").replace("|", " "))[1:]
    parser = build_parser()
    while subcommands(parser):  # fastprod ensemble fit ...: descend one level per subcommand word
        assert words and words[0] in subcommands(parser), f"README uses an unknown subcommand: {command}"
        parser, words = subcommands(parser)[words[0]], words[1:]
    flags = {opt for action in parser._actions for opt in action.option_strings}
    used = {w.split("=")[0] for w in words if w.startswith("--")}
    assert used <= flags, f"{command}: unknown flags {used - flags}"


def test_named_scripts_and_configs_exist():
    for path in set(re.findall(r"\b((?:launch|bench|configs)/[\w./-]+\.(?:sh|py|yaml))", README)):
        assert (ROOT / path).is_file(), f"README names {path}, which does not exist"
