"""The ``tumorforge`` command: one front door with a subcommand per stage.

It lives here because the cluster service is what operators run; it imports each stage's command
module only to register its subcommands, and the heavy work of a subcommand is imported when it runs.
"""

from __future__ import annotations

import argparse
import sys

from tumorforge.generator import __version__


def build_parser() -> argparse.ArgumentParser:
    from tumorforge.manifests import cli as manifests_cli
    from tumorforge.evaluation import evaluate as evaluation_cli
    from tumorforge.evaluation import robustness, vtt
    from tumorforge.trainer import cli as trainer_cli
    from . import audit, bench, demo, generate, preview

    parser = argparse.ArgumentParser(
        prog="tumorforge",
        description="Synthetic liver tumors at cluster scale: phantoms and scan manifests, tumor "
                    "synthesis, sharded generation, training and evaluation.")
    parser.add_argument("--version", action="version", version=f"tumorforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    manifests_cli.register(sub)
    preview.register(sub)
    generate.register(sub)
    audit.register(sub)
    trainer_cli.register(sub)
    evaluation_cli.register(sub)
    robustness.register(sub)
    vtt.register(sub)
    bench.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
