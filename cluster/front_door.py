"""The ``tumorforge`` command (also ``python -m tumorforge.cluster``): one front door composing
each stage's ``cli.py``.

It lives in ``cluster/`` because the layout is fixed to the five stage folders and the generation
service is what operators run; it is the one module (with the demo) allowed to import every stage.
Each stage's ``cli.py`` imports its heavy modules only when a subcommand runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys

from tumorforge.generator import __version__


def build_parser() -> argparse.ArgumentParser:
    from tumorforge.evaluation import cli as evaluation_cli
    from tumorforge.generator import cli as generator_cli
    from tumorforge.manifests import cli as manifests_cli
    from tumorforge.trainer import cli as trainer_cli
    from . import cli as cluster_cli
    from . import demo, experiment

    parser = argparse.ArgumentParser(
        prog="tumorforge",
        description="Synthetic liver tumors at cluster scale: phantoms and scan manifests, tumor "
                    "synthesis, sharded generation, training and evaluation.")
    parser.add_argument("--version", action="version", version=f"tumorforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    experiment.register(sub)
    manifest_sub = manifests_cli.register(sub)
    generator_cli.register(sub)
    cluster_cli.register(sub)
    trainer_cli.register(sub)
    evaluation_cli.register(sub)
    evaluation_cli.register_manifest(manifest_sub)
    bench = sub.add_parser("bench", help="benchmarks (figures for the README's performance section)")
    bsub = bench.add_subparsers(dest="bench_cmd", required=True,
                                metavar="{generator,loader,train,encode,scale,generate}")
    generator_cli.register_bench(bsub)
    trainer_cli.register_bench(bsub)
    cluster_cli.register_bench(bsub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
