"""Command-line flags shared by every stage: ``--allow-root``, and flags generated from the fields
of a configuration dataclass (so every field is a flag by construction, defaults shown in --help).
"""

from __future__ import annotations

import argparse


def add_allow_root(p) -> None:
    """``--allow-root``: folders or s3:// prefixes a manifest's paths may point into (repeatable)."""
    p.add_argument("--allow-root", action="append", default=[], metavar="DIR_OR_URI",
                   help="a folder or s3:// prefix manifest paths may point into (repeatable); the "
                        "manifest's folder and $TUMORFORGE_ALLOWED_ROOTS are always allowed")


# -- flags from dataclass fields -------------------------------------------------------------
#
# ``add_config_flags(parser, Config)`` adds one flag per field (``samples_per_shard`` ->
# ``--samples-per-shard``), typed from the field's annotation; ``config_overrides(args)`` gives back
# the fields the user set, as the nested dict a config file would hold. Defaults stay in the
# dataclass (argparse defaults are None, so a flag that is not given never overrides a file) and
# are shown in --help next to the field's comment in the source.
DEST = "config:"


def _comments(cls) -> dict[str, str]:
    """``name: type = default   # comment`` -> {name: comment}, from the class source."""
    import inspect
    import re
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*\S)\s*$", line)
        if m and not line.lstrip().startswith("#"):
            out[m.group(1)] = m.group(2)
    return out


def _show(value) -> str:
    """A default as help text shows it: no Python reprs, "" for an empty string."""
    import dataclasses
    if dataclasses.is_dataclass(value):
        return type(value).__name__
    if value == "":
        return '""'
    if isinstance(value, dict) and value and all(dataclasses.is_dataclass(v)
                                                 for v in value.values()):
        return "presets " + ", ".join(map(str, value))     # records: their names, not reprs
    if isinstance(value, tuple) and value and len(set(value)) == 1 and len(value) == 3:
        return str(value[0])
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def parse_mapping(text: str) -> dict:
    """A JSON object, or ``key=number,key=number``."""
    import json
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: not a JSON object ({exc})")
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object")
        return value
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=NUMBER (or a JSON object)")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=NUMBER (or a JSON object)")
    return out


def _sequence(kind, length: int | None):
    """Comma-separated values of ``kind``; a single value fills a fixed-length tuple."""
    def parse(text: str):
        try:
            items = [kind(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated "
                                             f"{kind.__name__} values")
        if length is not None:
            if len(items) == 1:
                items = items * length
            if len(items) != length:
                raise argparse.ArgumentTypeError(f"{text!r}: expected {length} values (or one)")
        return items
    parse.__name__ = f"{kind.__name__} list"
    return parse


_METAVAR = {int: "N", float: "X", str: "TEXT"}


def _kind(hint):
    """(argparse keyword arguments, nested dataclass or None) for a field annotation."""
    import dataclasses
    import types
    import typing
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _kind(rest[0]) if len(rest) == 1 else ({"type": str}, None)
    if dataclasses.is_dataclass(hint):
        return None, hint
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}, None
    if hint in (int, float, str):
        return {"type": hint, "metavar": _METAVAR[hint]}, None
    if origin is tuple:
        fixed = None if (len(args) == 2 and args[1] is Ellipsis) else len(args)
        elem = args[0] if args and args[0] in _METAVAR else str
        metavar = ",".join([_METAVAR[elem]] * fixed) if fixed else f"{_METAVAR[elem]},..."
        return {"type": _sequence(elem, fixed), "metavar": metavar}, None
    if origin is dict or hint is dict:
        return {"type": parse_mapping, "metavar": "K=V,..|JSON"}, None
    return {"type": str}, None


def add_config_flags(parser, cls, *, prefix: str = "", flag_prefix: str = "", skip=(),
                     flags: dict | None = None, options: dict | None = None,
                     nested: bool = True) -> None:
    """One flag per field of dataclass ``cls`` on ``parser`` (a parser or an argument group).

    ``prefix`` is where the values go in :func:`config_overrides` (``generator.``);
    ``flag_prefix`` starts the flag names (``paper-`` -> ``--paper-sigma-b``); ``flags`` gives a field
    other spellings (``{"output": ["--out", "--output", "-o"]}``, the first is shown);
    ``options`` adds or replaces argparse keywords per field (``choices``, ``type``, ``action``).
    Nested dataclass fields get their own prefixed flags unless listed in ``skip``.
    """
    import dataclasses
    import typing
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs, sub = _kind(hints[f.name])
        if sub is not None and "type" in (options or {}).get(f.name, {}):
            kwargs, sub = {}, None          # a nested record given one flag with its own parser
        if sub is not None:
            if nested:
                add_config_flags(parser, sub, prefix=f"{prefix}{f.name}.",
                                 flag_prefix=f"{flag_prefix}{f.name}-")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        names = (flags or {}).get(f.name) or ["--" + f"{flag_prefix}{f.name}".replace("_", "-")]
        kwargs = {**kwargs, **(options or {}).get(f.name, {})}
        if "choices" in kwargs and "metavar" not in (options or {}).get(f.name, {}):
            kwargs.pop("metavar", None)
        text = kwargs.pop("help", None) or comments.get(f.name, "")
        shown = "no default" if default is None and f.default is dataclasses.MISSING \
            and f.default_factory is dataclasses.MISSING else f"default: {_show(default)}"
        if len(shown) > 70:
            shown = shown[:67] + "..."
        kwargs["help"] = f"{text} ({shown})" if text else f"({shown})"
        kwargs["help"] = kwargs["help"].replace("%", "%%")
        parser.add_argument(*names, dest=f"{DEST}{prefix}{f.name}", default=None, **kwargs)


def config_overrides(args, prefix: str = "") -> dict:
    """The fields set on the command line under ``prefix``, nested as a config file holds them."""
    out: dict = {}
    for dest, value in vars(args).items():
        if not dest.startswith(DEST + prefix) or value is None:
            continue
        *parents, name = dest[len(DEST + prefix):].split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = value
    return out


def merged(base: dict, overrides: dict, sections=()) -> dict:
    """``base`` with ``overrides`` laid over it. Keys named in ``sections`` hold nested configs
    and are merged field by field (dotted names reach deeper: ``generator.paper``); any other
    value, mappings included, is replaced whole."""
    out = dict(base)
    for key, value in overrides.items():
        if key in {s.split(".")[0] for s in sections} and isinstance(value, dict) \
                and isinstance(out.get(key), dict):
            inner = [s.split(".", 1)[1] for s in sections if s.startswith(key + ".")]
            out[key] = merged(out[key], value, inner)
        else:
            out[key] = value
    return out


def add_print_config(parser, what: str) -> None:
    """``--print-config``: print the effective ``what`` (file and flags merged) as YAML and exit."""
    parser.add_argument("--print-config", action="store_true",
                        help=f"print the {what} that would run (the file with the flags on top) "
                             f"as YAML a run takes back, and exit")


def config_yaml(record: dict) -> str:
    """A config record (``to_json()``) as YAML, in field order, lists for tuples."""
    import json
    import yaml
    return yaml.safe_dump(json.loads(json.dumps(record)), sort_keys=False)
