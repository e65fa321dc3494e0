"""What every command that trains shares: its arguments (`--config`, `--set`) and `with_trainer_setup`, which
loads the config, sets up the process group and turns the known failures into one-line errors.

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
