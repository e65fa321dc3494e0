"""The `fastprod` console script: one sub-command per stage of the recipe.

Each stage module exposes `register(subparsers)`, which adds its sub-command and sets `func`
(a callable taking the parsed `argparse.Namespace` and returning an exit code). Only the stage a command names
is imported (all of them for `--help` or an unknown command): the worker processes of `synth` and `prepare`
re-run this script's imports, and the training stages import torch and DeepSpeed (~20 s, ~900 MB each).
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGES = {  # command -> the module that registers it
    "synth": "fastprod.data.synth", "prepare": "fastprod.data.prepare", "write-ffcv": "fastprod.data.ffcv_writer",
    "train": "fastprod.recipe.train", "lr-find": "fastprod.recipe.lr_find", "clean": "fastprod.recipe.clean",
    "finetune": "fastprod.recipe.finetune", "ladder": "fastprod.recipe.ladder", "export": "fastprod.score.engine", "score": "fastprod.score.score",
    "ensemble": "fastprod.score.ensemble",
}


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the sub-commands `commands` (default: all of them)."""
    parser = argparse.ArgumentParser(prog="fastprod", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands or STAGES:
        importlib.import_module(STAGES[command]).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([command] if command in STAGES else None).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
