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


class RecordError(ValueError):
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
