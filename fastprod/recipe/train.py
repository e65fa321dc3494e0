"""`fastprod train` / `launch/train.py`: the recipe's training stage (seed sections 1-3).

`create_trainer` builds the `Trainer` (fastprod/train/engine.py) for a config and attaches what the recipe
adds on top of plain training: O2U per-sample weights (`o2u.enabled`). Every stage that trains (train, clean,
ladder) builds its trainers here.
"""

from __future__ import annotations

import argparse
import sys

from fastprod.config import Config
from fastprod.recipe.o2u import O2UWeights
from fastprod.train.cli import add_arguments, with_trainer_setup
from fastprod.train.distributed import Dist
from fastprod.train.engine import Trainer


def create_trainer(cfg: Config, dist: Dist) -> Trainer:
    o2u = (lambda samples, device: O2UWeights(samples, cfg.o2u, device)) if cfg.o2u.enabled else None
    return Trainer(cfg, dist, sample_weights=o2u)


def train(cfg: Config, dist: Dist) -> dict:
    summary = create_trainer(cfg, dist).fit()
    if dist.is_main:
        print(f"final validation top-1 error: {100 * summary['val_top1_error']:.2f}%")
    return summary


def run(args: argparse.Namespace) -> int:
    return with_trainer_setup(args, train)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model (single process; use deepspeed/torchrun for more)")
    add_arguments(parser).set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description="fastprod training entry point"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
