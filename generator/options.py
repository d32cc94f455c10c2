"""Command-line options that describe a generator configuration, shared by every subcommand that
synthesizes (preview, bench, generate)."""

from __future__ import annotations

import argparse

from tumorforge.generator.config import PROFILES, SCENARIOS, SIZE_TYPES, GeneratorConfig

DEFAULTS = {"profile": "paper", "crop_size": 96, "spacing": 1.0, "negative_fraction": 0.1}


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


def add_generator_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Generator flags. With ``defaults=False`` an absent flag stays None (a job file decides)."""
    d = DEFAULTS if defaults else dict.fromkeys(DEFAULTS)
    g = p.add_argument_group("generator")
    g.add_argument("--generator-config", metavar="FILE",
                   help="YAML or JSON with any GeneratorConfig fields (every probability and range "
                        "of the method); the options below override it")
    g.add_argument("--profile", choices=PROFILES, default=d["profile"],
                   help="paper: the full method (default); released: the authors' reduced recipe")
    g.add_argument("--size-mix", default=None, metavar="MIX",
                   help="size type or weights, e.g. 'mix' or 'tiny=0.2,small=0.2,medium=0.2,"
                        "large=0.2,mix=0.2' (the default) or with scenarios 'single=1,satellite=1'")
    g.add_argument("--crop-size", type=int, default=d["crop_size"],
                   help="crop side in voxels (default 96)")
    g.add_argument("--spacing", type=float, default=d["spacing"],
                   help="target isotropic spacing in mm (default 1)")
    g.add_argument("--negative-fraction", type=float, default=d["negative_fraction"],
                   help="fraction of liver-only crops without tumor (default 0.1)")


def generator_overrides(args) -> dict:
    """GeneratorConfig fields given on the command line (and in --generator-config)."""
    import yaml
    out: dict = {}
    if args.generator_config:
        with open(args.generator_config) as f:
            out = yaml.safe_load(f) or {}
        if not isinstance(out, dict):
            raise SystemExit(f"{args.generator_config}: expected a mapping of GeneratorConfig fields")
    if args.profile is not None:
        out["profile"] = args.profile
    if args.crop_size is not None:
        out["crop_size"] = [args.crop_size] * 3
    if args.spacing is not None:
        out["target_spacing_mm"] = [args.spacing] * 3
    if args.negative_fraction is not None:
        out["negative_fraction"] = args.negative_fraction
    if args.size_mix:
        sizes, scenarios = parse_mix(args.size_mix)
        out.update(size_mix=sizes, scenario_mix=scenarios)
    return out


def config_from_args(args) -> GeneratorConfig:
    try:
        return GeneratorConfig.from_json(generator_overrides(args))
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"generator configuration: {exc}")
