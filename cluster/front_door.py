"""The ``tumorforge`` command (also ``python -m tumorforge.cluster``): one front door composing
each stage's ``cli.py``.

It lives in ``cluster/`` because the layout is fixed to the five stage folders and the generation
service is what operators run; it is the one module (with the demo) allowed to import every stage.
Each stage's ``cli.py`` imports its heavy modules only when a subcommand runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from importlib import metadata

from tumorforge.generator import GENERATOR_VERSION
from tumorforge.manifests.errors import UserError, one_line


def version_text() -> str:
    """The package's one version (pyproject.toml, as installed) and the generator's output version
    (what dataset ids and golden hashes depend on)."""
    try:
        package = metadata.version("tumorforge")
    except metadata.PackageNotFoundError:          # run from a source tree without installing
        package = "(not installed)"
    return f"tumorforge {package} (generator output version {GENERATOR_VERSION})"


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``tumorforge generate: unrecognized arguments: --x
    (see tumorforge generate --help)`` instead of the usage block first (subcommand parsers are of
    this class too: argparse makes them with their parent's)."""

    def error(self, message: str):
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if found:                                      # a typo: name the nearest choice
            choices = re.findall(r"'([^']*)'", found.group(2))
            near = difflib.get_close_matches(found.group(1), choices, n=1)
            if near:
                message = f"{message[:found.start()]}invalid choice: {found.group(1)!r}; " \
                          f"did you mean {near[0]!r}?"
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parse_command(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with unknown arguments reported by the subcommand they were
    given to (``tumorforge generate: unrecognized arguments: --x``), not by the top parser."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = parser
        for word in command_words(parser, argv).split():
            sub = next(a for a in target._actions if isinstance(a, argparse._SubParsersAction))
            target = sub.choices[word]
        target.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# The commands as ``tumorforge --help`` lists them: by stage, in the order a user meets them.
STAGES = (
    ("start here", ("demo", "experiment")),
    ("data", ("phantoms", "manifest")),
    ("tumors", ("preview", "synthesize", "generate", "submit")),
    ("datasets", ("verify", "inspect", "audit")),
    ("models", ("train", "evaluate", "compare", "robustness", "vtt", "stats")),
    ("speed", ("bench",)),
)


def _group_commands(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Move the command list of ``--help`` into an epilog grouped by :data:`STAGES`."""
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    listed = [name for _, names in STAGES for name in names]
    if sorted(listed) != sorted(helps):
        raise AssertionError(f"STAGES lists {sorted(listed)}, the parser has {sorted(helps)}")
    width = max(map(len, listed)) + 2
    lines = []
    for stage, names in STAGES:
        lines.append(f"{stage}:")
        lines += [f"  {name:<{width}}{helps[name]}" for name in names]
    sub._choices_actions.clear()
    sub.help = "one of the commands below; tumorforge COMMAND --help for its options"
    parser.epilog = "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from tumorforge.evaluation import cli as evaluation_cli
    from tumorforge.generator import cli as generator_cli
    from tumorforge.manifests import cli as manifests_cli
    from tumorforge.trainer import cli as trainer_cli
    from . import cli as cluster_cli
    from . import demo, experiment

    parser = Parser(
        prog="tumorforge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Synthetic liver tumors at cluster scale: phantoms and scan manifests, tumor\n"
                    "synthesis, sharded generation, training and evaluation.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    experiment.register(sub)
    manifest_sub = manifests_cli.register(sub)
    generator_cli.register(sub)
    cluster_cli.register(sub)
    trainer_cli.register(sub)
    evaluation_cli.register(sub)
    evaluation_cli.register_manifest(manifest_sub)
    bench = sub.add_parser("bench", help="benchmarks (the figures of docs/results/performance.md)")
    bsub = bench.add_subparsers(dest="bench_cmd", required=True,
                                metavar="{generator,transform,loader,train,encode,scale,generate}")
    generator_cli.register_bench(bsub)
    trainer_cli.register_bench(bsub)
    cluster_cli.register_bench(bsub)
    _group_commands(parser, sub)
    return parser


def command_words(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """The subcommand path of ``argv`` ("generate", "manifest validate", "bench loader")."""
    words = []
    for token in argv:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or token not in sub.choices:
            break
        words.append(token)
        parser = sub.choices[token]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    """Run one command. The one error boundary: a :class:`UserError` from any stage is printed as
    ``<command>: <message>`` on one line of stderr and the command exits with its code (2); any
    other exception is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parse_command(parser, argv)
    args.argv = argv                 # what a command that re-launches itself passes on
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"{command_words(parser, argv)}: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
