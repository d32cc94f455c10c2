"""Command-line options that describe a generator configuration, shared by every subcommand that
synthesizes (preview, bench generator, generate, robustness, vtt)."""

from __future__ import annotations

import argparse
import sys

from tumorforge.manifests.errors import UserError, one_line
from tumorforge.manifests.flags import add_config_flags, config_overrides, merged

from .config import PROFILES, SCENARIOS, SIZE_TYPES, GeneratorConfig


def parse_mix(text: str) -> tuple[dict, dict]:
    """``mix`` -> only mix; ``tiny=0.5,large=0.5,satellite=0.1`` -> weights. Returns (sizes, scenarios)."""
    names = SIZE_TYPES + SCENARIOS
    if "=" not in text:
        items = {text.strip(): 1.0}
    else:
        items = {}
        for item in text.split(","):
            name, _, weight = item.partition("=")
            try:
                items[name.strip()] = float(weight)
            except ValueError:
                raise argparse.ArgumentTypeError(f"size mix item {item!r}: expected NAME=WEIGHT")
    unknown = sorted(set(items) - set(names))
    if unknown:
        raise argparse.ArgumentTypeError(f"size mix names {unknown}; expected some of {list(names)}")
    return ({k: v for k, v in items.items() if k in SIZE_TYPES},
            {k: v for k, v in items.items() if k in SCENARIOS})


def _mix_flag(text: str) -> dict:
    sizes, scenarios = parse_mix(text)
    return {**sizes, **scenarios}


def add_generator_options(p: argparse.ArgumentParser) -> None:
    """A flag for every GeneratorConfig field (nested PaperParams / ReleasedParams fields as
    ``--paper-...`` / ``--released-...``), plus ``--generator-config FILE``. An absent flag stays
    None: the file (job spec or --generator-config) or the config's default decides."""
    g = p.add_argument_group("generator (every GeneratorConfig field; flags override files)")
    g.add_argument("--generator-config", metavar="FILE",
                   help="YAML or JSON with any GeneratorConfig fields (every probability and range "
                        "of the method); the flags below override it")
    add_config_flags(g, GeneratorConfig, prefix="generator.", flags={
        "target_spacing_mm": ["--spacing", "--target-spacing-mm"]}, options={
        "profile": {"choices": PROFILES},
        "size_mix": {"type": _mix_flag, "metavar": "MIX",
                     "help": "size type or weights, e.g. 'mix' or 'tiny=0.2,small=0.2,medium=0.2,"
                             "large=0.2,mix=0.2' (the default); scenarios too: "
                             "'single=1,satellite=1'"}})


def generator_overrides(args) -> dict:
    """GeneratorConfig fields given in --generator-config and on the command line (flags win)."""
    import yaml
    out: dict = {}
    if args.generator_config:
        try:
            with open(args.generator_config) as f:
                out = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{args.generator_config}: cannot read the generator config "
                            f"({one_line(exc)})") from None
        if not isinstance(out, dict):
            raise UserError(f"{args.generator_config}: expected a mapping of GeneratorConfig "
                            f"fields, found {type(out).__name__}")
    flags = config_overrides(args, "generator.")
    mix = flags.pop("size_mix", None)
    if mix is not None:
        flags["size_mix"] = {k: v for k, v in mix.items() if k in SIZE_TYPES}
        flags["scenario_mix"] = {k: v for k, v in mix.items() if k in SCENARIOS}
    return merged(out, flags, sections=("paper", "released"))


def print_warnings(config: GeneratorConfig) -> None:
    """``config.warnings()`` on stderr, one ``warning:`` line each."""
    for line in config.warnings():
        print(f"warning: {line}", file=sys.stderr)


def config_from_args(args, **defaults) -> GeneratorConfig:
    """The configuration the flags and ``--generator-config`` describe (``defaults`` fill fields
    neither names); checked by the strict-record reader, so a bad field is a one-line error."""
    where = (f"generator configuration ({args.generator_config} and flags)"
             if args.generator_config else "generator configuration")
    return GeneratorConfig.from_json({**defaults, **generator_overrides(args)}, where)
