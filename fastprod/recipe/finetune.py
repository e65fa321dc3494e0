"""The finetune of seed section 4: a trained run's model, trained on for a few epochs on the balanced
subset that cleaning made (fastprod/recipe/clean.py).

    fastprod finetune --run RUN --data DIR/balanced-k3 --out RUN-finetune [--lr LR] [--epochs 6] [--set key=value ...]

The finetune inherits the run's resolved config (`RUN/resolved.yaml`: model, loss, O2U, augmentation,
precision, ...) and starts from its final weights (`RUN/final/model.pt`); it trains on `--data` for
`--epochs` epochs (SGDR cycles as configured) at `--lr` (default: the run's `optim.lr` / 10, as in the
ladder), writing the run directory `--out`. `--set` overrides any other key. A balanced subset is
small (k images per class): when `data.batch_size` x ranks exceeds its training images, the batch
size is capped to what fits, with a printed note; a subset with fewer images than ranks is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from fastprod.config import Config, ConfigError, load_config
from fastprod.train.distributed import Dist


def fit_batch_size(cfg: Config, dist: Dist) -> Config:
    """`cfg` with `data.batch_size` capped so that every rank gets a full batch of the training split."""
    from fastprod.data.manifest import Manifest

    images = len(Manifest.load(cfg.data.manifest).split(cfg.data.train_split))
    fits = images // dist.world
    if fits == 0:
        raise ConfigError(f"data.manifest: {cfg.data.manifest} has {images} training images for {dist.world} ranks; "
                          "finetune on fewer ranks or on a larger subset (clean --k)")
    if cfg.data.batch_size <= fits:
        return cfg
    if dist.is_main:
        print(f"finetune: data.batch_size {cfg.data.batch_size} -> {fits}, as {cfg.data.manifest} has {images} "
              f"training images for {dist.world} rank(s)")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=fits))


def run(args: argparse.Namespace) -> int:
    from fastprod.recipe.train import train
    from fastprod.train.cli import with_trainer_setup

    resolved = Path(args.run) / "resolved.yaml"
    inherited = argparse.Namespace(config=resolved, overrides=[
        f"data.manifest={args.data}", f"model.init_from={Path(args.run) / 'final' / 'model.pt'}",
        f"run.dir={args.out}", f"schedule.epochs={args.epochs}", *args.overrides])

    def job(cfg: Config, dist: Dist) -> dict:
        if any(o.split("=")[0].strip() == "optim.lr" for o in args.overrides):
            raise ConfigError("--set optim.lr: the finetune's LR is --lr (default: the run's optim.lr / 10)")
        lr = args.lr if args.lr is not None else load_config(resolved).optim.lr / 10
        return train(fit_batch_size(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr)), dist), dist)

    return with_trainer_setup(inherited, job)


def register(subparsers) -> None:
    parser = subparsers.add_parser("finetune", help="finetune a trained run on the balanced subset (seed section 4)")
    parser.add_argument("--run", required=True, help="the trained run directory (its resolved.yaml and final/model.pt)")
    parser.add_argument("--data", required=True, help="the prepared subset to finetune on, e.g. DIR/balanced-k3")
    parser.add_argument("--out", required=True, help="the finetune's run directory")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the run's optim.lr / 10)")
    parser.add_argument("--epochs", type=int, default=6,
                        help="epochs (default 6: on the ladder 6 beat 3 and 1, and a tenth of the run's LR beat a hundredth)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any other config key (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)
