"""`fastprod train` / `launch/train.py`: load the config, set up the process group, train.

Works under `python`, `torchrun` and `deepspeed` (which appends `--local_rank=N`, ignored here
because LOCAL_RANK is also in the environment).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastprod.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from fastprod.train.distributed import Dist


def add_arguments(parser: argparse.ArgumentParser, default_config: str | None = None) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=default_config is None, default=default_config,
                        help="YAML run config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def with_trainer_setup(args: argparse.Namespace, job: Callable[[Config, Dist], dict]) -> int:
    """Load the config, set up the process group and run `job`; config and dataset errors print one
    line naming the key or file and exit 2, a run that had to stop (`RunError`) prints why and exits 1.
    The main rank prints the job's result as JSON."""
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from fastprod.data.manifest import DatasetError  # heavy imports after the config is valid
    from fastprod.train.distributed import init_distributed
    from fastprod.train.errors import RunError

    dist = init_distributed()
    try:
        result = job(cfg, dist)
    except (ConfigError, DatasetError) as err:
        print(f"{'config' if isinstance(err, ConfigError) else 'dataset'} error: {err}", file=sys.stderr)
        return 2
    except RunError as err:  # the run stopped on purpose and says why; nothing is reported as done
        print(f"run error: {err}", file=sys.stderr)
        return 1
    if dist.is_main:
        print(json.dumps(result, indent=2))
    return 0


def train(cfg: Config, dist: Dist) -> dict:
    from fastprod.train.engine import Trainer

    summary = Trainer(cfg, dist).fit()
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
