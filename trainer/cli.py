"""``tumorforge train``."""

from __future__ import annotations

import argparse
import sys


def _cmd_train(args) -> int:
    from tumorforge.manifests.dataset.reader import DatasetError
    from .config import ConfigError, load_config, parse_source
    from .train import TrainError, train
    overrides = {k: getattr(args, k) for k in ("out", "model", "steps", "batch_size", "accumulate",
                                              "lr", "workers", "seed", "checkpoint_every",
                                              "log_every", "device", "val_every", "val_samples")}
    try:
        if args.source:
            overrides["sources"] = [parse_source(s) for s in args.source]
        if args.val:
            overrides["val"] = parse_source(args.val)
        cfg = load_config(args.config, overrides)
        summary = train(cfg, resume=args.resume)
    except (ConfigError, DatasetError, TrainError) as exc:
        sys.exit(f"train: {exc}")
    if summary["rank"] != 0:
        return 0
    print(f"finished at step {summary['step']} in {summary['seconds']} s "
          f"({summary['samples_per_s']} samples/s), {summary['corrupt']} corrupt sample(s) "
          f"skipped; checkpoints and metrics in {cfg.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .models import MODELS
    t = sub.add_parser("train", help="train a segmentation model from generated datasets",
                       description="Stream crops from one or more datasets (local or s3://) and "
                                   "train a MONAI model. CONFIG is YAML (trainer/configs/); flags "
                                   "override it. Real, synthetic or real+synthetic training is "
                                   "the choice of --source datasets.")
    t.add_argument("config", nargs="?", help="training config YAML")
    t.add_argument("--source", action="append", metavar="URL[,weight=W][,format=zarr|wds]",
                   help="a training dataset (repeatable; replaces the config's sources)")
    t.add_argument("--val", metavar="URL", help="held-out dataset for validation Dice")
    t.add_argument("--out")
    t.add_argument("--model", choices=MODELS)
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--accumulate", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--workers", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--log-every", type=int)
    t.add_argument("--val-every", type=int)
    t.add_argument("--val-samples", type=int)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"))
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    t.set_defaults(func=_cmd_train)
