"""Helpers for the strict, versioned JSON records of every stage (manifest entries, dataset index,
shard commits, provenance, job specs, training configs).

A reader refuses what it does not understand: unknown or missing fields are named with where the
record came from. Written JSON is strict (no NaN or infinities) and, where bytes must repeat,
canonical (sorted keys, no spaces).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing

from .errors import UserError


class RecordError(UserError, ValueError):
    """A JSON record that does not follow its contract; the message names where it came from."""


def check_fields(cls, obj, where: str, optional=()) -> dict:
    """``obj`` as a dict whose keys are exactly ``cls``'s dataclass fields (those in ``optional``
    or with a default may be absent). Raises :class:`RecordError` naming the offending fields."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {unknown}; expected only {sorted(known)}")
    missing = sorted(f.name for f in fields if f.name not in obj and f.name not in optional
                     and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing}")
    return dict(obj)


def typed_fields(cls, obj, where: str, optional=()) -> dict:
    """:func:`check_fields`, then every value against its field's annotation: ``bool``, ``int``,
    ``float`` (an int is accepted and kept as it is, so a record's text does not change), ``str``,
    ``dict``, ``tuple[...]`` (a list becomes a tuple and each item is checked), ``X | None`` and a
    nested dataclass (read the same way). Raises :class:`RecordError` naming ``where``, the field,
    what was expected and what was found. Returns the checked fields, ready for ``cls(**fields)``."""
    data = check_fields(cls, obj, where, optional)
    hints = typing.get_type_hints(cls)
    return {name: typed_value(value, hints.get(name, typing.Any), f"{where}: {name}")
            for name, value in data.items()}


def from_fields(cls, obj, where: str, optional=()):
    """``cls`` built from a JSON object through :func:`typed_fields`; what ``cls`` itself refuses
    (its ``__post_init__`` checks, a ``ValueError``) is re-raised naming ``where``."""
    fields = typed_fields(cls, obj, where, optional)
    try:
        return cls(**fields)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{where}: {exc}") from None


def typed_value(value, hint, where: str):
    """``value`` checked against the annotation ``hint`` (see :func:`typed_fields`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return typed_value(value, rest[0], where) if len(rest) == 1 else value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_fields(hint, value, where)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is dict or origin is dict:
        ok = isinstance(value, dict)
    elif hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}: expected a list, found {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            items = args[:1] * len(value)
        elif args:
            items = args
            if len(value) != len(args):
                raise RecordError(f"{where}: expected {len(args)} values, found {len(value)}")
        else:
            items = (typing.Any,) * len(value)
        return tuple(typed_value(v, h, f"{where}[{n}]") for n, (v, h) in enumerate(zip(value, items)))
    else:
        return value
    if not ok:
        raise RecordError(f"{where}: expected {hint.__name__}, found {_kind(value)}")
    return value


def _kind(value) -> str:
    """What a JSON value is, for messages: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def json_safe(obj):
    """A copy that strict JSON can hold: NaN and infinities become null, tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def canonical_json(obj) -> str:
    """Sorted keys, no spaces: the same record always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def pretty_json(obj) -> bytes:
    """Sorted keys, one-space indents: for records people read (index, plan, commits)."""
    return json.dumps(obj, sort_keys=True, indent=1).encode()


def loads(text, where: str):
    """``json.loads`` whose error names ``where``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"{where}: not valid JSON ({exc})") from None
