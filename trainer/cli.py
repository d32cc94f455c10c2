"""The trainer's commands: ``train``, and ``bench loader`` / ``bench train`` (registered into the
front door's ``bench`` group)."""

from __future__ import annotations

import argparse
import os

from .config import DEVICES


def _cmd_train(args) -> int:
    from tumorforge.manifests.flags import config_overrides
    from .config import load_config
    from .train import launch_local, train
    cfg = load_config(args.config, config_overrides(args, "train."))
    if args.print_config:
        from tumorforge.manifests.flags import config_yaml
        print(config_yaml(cfg.to_json()), end="")
        return 0
    if args.nproc_per_node > 1 and "RANK" not in os.environ:
        return launch_local(args.nproc_per_node, without_flag(args.argv, "--nproc-per-node"))
    summary = train(cfg, resume=args.resume)
    if summary["rank"] != 0:
        return 0
    print(f"finished at step {summary['step']} in {summary['seconds']} s "
          f"({summary['samples_per_s']} samples/s), {summary['corrupt']} corrupt sample(s) "
          f"skipped; checkpoints and metrics in {cfg.out}")
    return 0


def without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE`` (what the ranks of a local launch run)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            out.append(token)
    return out


def _source_flag(text: str) -> dict:
    from .config import ConfigError, parse_source
    try:
        return parse_source(text)
    except (ConfigError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc))


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.manifests.flags import add_config_flags, add_print_config
    from .config import TrainConfig
    from .models import MODELS
    t = sub.add_parser("train", help="train a segmentation model from generated datasets",
                       description="Stream crops from one or more datasets (local or s3://) and "
                                   "train a MONAI model. CONFIG is YAML (trainer/configs/); every "
                                   "field is also a flag and flags override it. Real, synthetic "
                                   "or real+synthetic training is the choice of --source datasets.")
    t.add_argument("config", nargs="?", help="training config YAML")
    source = "URL[,weight=W][,format=zarr|wds]"
    add_config_flags(t, TrainConfig, prefix="train.", nested=False, flags={
        "sources": ["--source"], "out": ["--out", "--output", "-o"]}, options={
        "sources": {"type": _source_flag, "action": "append", "metavar": source,
                    "help": "a training dataset (repeatable; replaces the config's sources)"},
        "val": {"type": _source_flag, "metavar": source,
                "help": "held-out dataset for a periodic validation Dice"},
        "model": {"choices": MODELS}, "device": {"choices": DEVICES}})
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    add_print_config(t, "training config")
    t.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="DDP ranks on this machine (CPU gloo or one GPU each), with the "
                        "rendezvous store and the ranks' sockets on 127.0.0.1 only; use this "
                        "instead of `torchrun --standalone`, whose store listens on every "
                        "interface (default 1)")
    t.set_defaults(func=_cmd_train)


def register_bench(bsub: argparse._SubParsersAction) -> None:
    from tumorforge.manifests.dataset.formats import FORMATS
    from .models import MODELS
    lo = bsub.add_parser("loader", help="samples/s the training reader delivers",
                         description="Samples per second delivered by the DataLoader over a "
                                     "dataset (local or s3://) with N workers.")
    lo.add_argument("dataset")
    lo.add_argument("--format", choices=list(FORMATS), default="zarr")
    lo.add_argument("--workers", type=int, default=2)
    lo.add_argument("--batch-size", type=int, default=2)
    lo.add_argument("--batches", type=int, default=30)
    lo.add_argument("--json", help="also write the report as JSON here")
    lo.set_defaults(func=_bench_loader)
    tr = bsub.add_parser("train", help="training samples/s of a model",
                         description="Forward, DiceCE, backward and AdamW step on random crops.")
    tr.add_argument("--model", default="unet", choices=MODELS)
    tr.add_argument("--batch-size", type=int, default=2)
    tr.add_argument("--steps", type=int, default=5)
    tr.add_argument("--crop-size", "--crop", dest="crop", type=int, default=96)
    tr.add_argument("--device", choices=DEVICES, default="auto")
    tr.add_argument("--json", help="also write the report as JSON here")
    tr.set_defaults(func=_bench_train)


def _bench_loader(args) -> int:
    from tumorforge.manifests.bench_report import finish_report
    from .bench import bench_loader
    print(f"loader benchmark: {args.dataset} ({args.format}), {args.workers} worker(s)")
    return finish_report(bench_loader(args.dataset, args.format, args.workers, args.batch_size,
                                      args.batches), args.json)


def _bench_train(args) -> int:
    from tumorforge.manifests.bench_report import finish_report
    from .bench import bench_train
    print(f"training benchmark: {args.model}, batch {args.batch_size}, {args.crop}^3 crops")
    return finish_report(bench_train(args.model, args.batch_size, args.steps, args.crop,
                                     args.device), args.json)
