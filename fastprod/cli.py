"""The `fastprod` console script: one sub-command per stage of the recipe.

Each stage module exposes `register(subparsers)`, which adds its sub-command and sets `func`
(a callable taking the parsed `argparse.Namespace` and returning an exit code).
"""

from __future__ import annotations

import argparse
import sys

from fastprod.data import ffcv_writer, prepare, synth
from fastprod.recipe import clean, finetune, ladder, lr_find
from fastprod.recipe import train as train_stage
from fastprod.score import engine as score_engine
from fastprod.score import ensemble as score_ensemble
from fastprod.score import score as score_score

STAGES = (synth, prepare, ffcv_writer, train_stage, lr_find, clean, finetune, ladder, score_engine, score_score, score_ensemble)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastprod", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        stage.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
