"""The table of storage formats: every way a dataset can keep its samples, by the name job specs
and ``index.json`` use. The writer encodes a shard in each format its job names, the reader opens
each format an index lists, and verify, inspect, the dry run and the trainer look formats up here;
none of them branches on a format's name. A new format is a :class:`StorageFormat` (over its codec
module) and one entry below.

The table's order is the readers' preference where a dataset has several formats: a single
sample and a shard's provenance are read from the first format the dataset has.
"""

from __future__ import annotations

from .storage_format import StorageFormat
from .wds_format import WdsFormat
from .zarr_format import ZarrFormat

FORMATS: dict[str, StorageFormat] = {f.name: f for f in (ZarrFormat(), WdsFormat())}


def random_access_formats(names) -> list[str]:
    """Those of the formats ``names`` that read one sample without its shard, in table order."""
    return [f for f, fmt in FORMATS.items() if f in names and fmt.random_access]


def owner(key: str) -> str | None:
    """The name of the format whose object ``key`` (relative to a dataset's root) is, or None."""
    return next((name for name, fmt in FORMATS.items() if fmt.owns(key)), None)
