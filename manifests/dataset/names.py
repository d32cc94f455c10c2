"""Object names inside a generated dataset (relative to its root URL), and the functions that
parse them back. The generation service writes these names; the trainer, audit and verify read
them; nothing else spells them.

    index.json                      the dataset's table of contents, written last
    plan.json                       the job's plan (its hash is the dataset_id)
    job_report.json                 how the last run went (not part of the dataset's identity)
    DATASET.md                      the dataset's card for people: what, how many, how, from what
    _lock.json                      held by the run writing the dataset (owner, heartbeat)
    _commits/shard-000123.json      one commit record per finished shard
    shards/shard-000123.json        the shard's record: its objects and samples' digests (2-3)
    dataset.zarr/...                the Zarr v3 store (formats.FORMATS["zarr"])
    wds/shard-000123.tar            one WebDataset tar per shard (formats.FORMATS["wds"])
"""

from __future__ import annotations

import re

INDEX = "index.json"
PLAN = "plan.json"
REPORT = "job_report.json"
CARD = "DATASET.md"
LOCK = "_lock.json"
COMMITS = "_commits"
ZARR_ROOT = "dataset.zarr"
WDS_DIR = "wds"
RECORDS = "shards"
TOP_LEVEL = (INDEX, PLAN, REPORT, CARD, LOCK)
# The storage formats a job writes unless its spec names others. Which formats exist, and what
# each writes and reads, is the format table (formats.FORMATS).
DEFAULT_FORMATS = ("zarr", "wds")

_SHARD = re.compile(r"(?:^|/)shard-(\d{6,})(?:\.tar|\.json)?$")


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def commit_key(shard: int) -> str:
    return f"{COMMITS}/{shard_name(shard)}.json"


def record_key(shard: int) -> str:
    return f"{RECORDS}/{shard_name(shard)}.json"


def tar_name(shard: int) -> str:
    return f"{WDS_DIR}/{shard_name(shard)}.tar"


def parse_shard(name: str) -> int:
    """The shard number in a shard, tar or commit name (``wds/shard-000123.tar`` -> 123)."""
    m = _SHARD.search(name)
    if m is None:
        raise ValueError(f"{name!r} is not a shard, tar or commit name (expected shard-NNNNNN)")
    return int(m.group(1))


def sample_key(dataset_id: str, index: int) -> str:
    """A sample's key: unique across datasets, no dots (WebDataset splits member names on dots)."""
    return f"tf{dataset_id[:12]}_{index:010d}"


def sample_index(dataset_id: str, key: str) -> int | None:
    """The sample number a key of ``dataset_id`` names, or None if it is not one of its keys."""
    prefix = f"tf{dataset_id[:12]}_"
    digits = key[len(prefix):] if isinstance(key, str) and key.startswith(prefix) else ""
    return int(digits) if len(digits) == 10 and digits.isdigit() else None
