"""The plan: which samples each shard holds and which scans they use, as a pure function of the
spec, the manifest's scan hashes and the generator version. Its hash is the ``dataset_id``.

Shard k holds samples [k*S, min((k+1)*S, N)). Sample i draws every random choice from
``SeedSequence(root_seed, spawn_key=(i,))``. The healthy scans are dealt to shards in a fixed
shuffled order, ``scans_per_shard`` per shard, and sample j of a shard uses the shard's scan
``j % scans_per_shard``: every scan is used about equally, and an actor loads a few scans per
shard and keeps them for the next shard that needs them. Nothing here depends on which worker runs
what, or when.

The ``real`` profile crops scans with real tumors (role ``tumor``) and, when the manifest has them,
healthy scans too, so that its crops follow the synthetic profiles' policy: a sample drawn negative
(its rng's first draw below ``negative_fraction``, exactly as :func:`sample_params` draws it) cycles
through all of the shard's scans, tumor and healthy; a positive sample cycles through its tumor
scans only. Each shard then holds ``scans_per_shard`` tumor scans and as many healthy ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from tumorforge.generator import GENERATOR_VERSION
from tumorforge.generator.sample import draws_negative
from tumorforge.generator.scans import organ_mismatch
from tumorforge.manifests.dataset.names import sample_key, shard_name
from tumorforge.manifests.records import canonical_json
from tumorforge.manifests.schema import ScanEntry

from .spec import JobSpec
from tumorforge.manifests.errors import UserError

PLAN_VERSION = 2       # 2: the dataset id leaves out `samples` (datasets grow); 1 had it


class PlanError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class ShardPlan:
    index: int
    start: int
    count: int
    scans: tuple[str, ...]      # scan_ids, in the order samples cycle through them
    tumor_scans: int = 0        # real profile with healthy scans: the first this many have tumors

    def scan_of(self, sample_index: int, negative: bool = False) -> str:
        """The scan of a sample; ``negative`` (real profile only): the sample was drawn negative,
        so it may use a healthy scan too."""
        pool = self.scans if negative or not self.tumor_scans else self.scans[:self.tumor_scans]
        return pool[(sample_index - self.start) % len(pool)]

    def name(self) -> str:
        return shard_name(self.index)


@dataclass(frozen=True)
class Plan:
    dataset_id: str
    spec: JobSpec
    scans: dict[str, ScanEntry]      # the scans samples are made from, by id
    shards: tuple[ShardPlan, ...]

    def to_json(self) -> dict:
        return {"plan_version": PLAN_VERSION, "dataset_id": self.dataset_id,
                "generator_version": GENERATOR_VERSION, "identity": self.spec.identity(),
                "samples": self.spec.samples,
                # Format 2's plans (written before format 3) name none: keep them as they were.
                **({"dataset_format": self.spec.dataset_format}
                   if self.spec.dataset_format != 2 else {}),
                "scans": {sid: e.sha256 for sid, e in sorted(self.scans.items())},
                "shards": [{"index": s.index, "start": s.start, "count": s.count,
                            "scans": list(s.scans),
                            **({"tumor_scans": s.tumor_scans} if s.tumor_scans else {})}
                           for s in self.shards]}

    def key(self, sample_index: int) -> str:
        return sample_key(self.dataset_id, sample_index)

    def skeleton(self) -> "Plan":
        """This plan without its shards and scans: what an actor needs besides each shard's own
        layout and scans (sent with the shard), whatever the size of the dataset."""
        return Plan(self.dataset_id, self.spec, {}, ())

    def task(self, k: int) -> tuple[ShardPlan, dict]:
        """What an actor needs to write shard ``k``: its layout and its scans' manifest entries."""
        shard = self.shards[k]
        return shard, {sid: self.scans[sid] for sid in shard.scans}

    def scan_of(self, shard: ShardPlan, sample_index: int) -> str:
        """The scan sample ``sample_index`` of ``shard`` is made from (see the module's text)."""
        if not shard.tumor_scans:
            return shard.scan_of(sample_index)
        return shard.scan_of(sample_index, draws_negative(self.spec.root_seed, sample_index,
                                                          self.spec.generator))


def make_plan(spec: JobSpec, entries: list[ScanEntry]) -> Plan:
    """Plan ``spec`` over the scans of ``entries`` it can use (healthy ones; annotated ones for the
    real profile). ``spec.backend`` must be resolved."""
    if spec.backend == "auto":
        raise PlanError("resolve backend 'auto' to numpy or cupy before planning")
    # Synthetic tumors go into healthy livers; the real profile crops scans with real tumors, and
    # healthy scans for some of its negative crops when the manifest has them.
    real = spec.generator.profile == "real"
    role = "tumor" if real else "healthy"
    wrong = next((w for e in entries if (w := organ_mismatch(e, spec.generator.organ))), None)
    if wrong:
        raise PlanError(f"{spec.manifest}: {wrong}")
    pool = {e.scan_id: e for e in entries if e.role == role}
    if not pool:
        raise PlanError(f"{spec.manifest}: no scan with role {role!r} among its {len(entries)} "
                        f"(profile {spec.generator.profile})")
    healthy = {e.scan_id: e for e in entries if real and e.role == "healthy"}
    # A two-word spawn key never equals a sample's one-word key (index,).
    deal = np.random.default_rng(np.random.SeedSequence(spec.root_seed, spawn_key=(0x5CA, 0x25)))
    order = _dealt(deal, sorted(pool))
    extra = _dealt(deal, sorted(healthy))
    per = min(spec.scans_per_shard, len(order))
    per_healthy = min(spec.scans_per_shard, len(extra))
    shards = []
    for k in range(spec.shards):
        start = k * spec.samples_per_shard
        count = min(spec.samples_per_shard, spec.samples - start)
        group = tuple(order[(k * per + t) % len(order)] for t in range(per))
        group += tuple(extra[(k * per_healthy + t) % len(extra)] for t in range(per_healthy))
        shards.append(ShardPlan(k, start, count, group, per if per_healthy else 0))
    pool.update(healthy)
    ids = sorted(pool)
    identity = {"plan_version": PLAN_VERSION, "generator_version": GENERATOR_VERSION,
                "identity": spec.identity(),
                "scans": {sid: pool[sid].sha256 for sid in ids}}
    return Plan(plan_id(identity), spec, pool, tuple(shards))


def _dealt(rng: np.random.Generator, ids: list[str]) -> list[str]:
    """``ids`` in the plan's shuffled order (no draw when there are none, so plans without healthy
    scans for the real profile deal exactly as before)."""
    return [ids[i] for i in rng.permutation(len(ids))] if ids else []


PLAN_ID_FIELDS = ("plan_version", "generator_version", "identity", "scans")


def plan_id(record: dict) -> str:
    """The dataset_id: the hash of what determines the dataset's bytes (``PLAN_ID_FIELDS`` of a
    plan record), so ``verify`` can recompute it from ``plan.json``."""
    identity = {k: record.get(k) for k in PLAN_ID_FIELDS}
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:24]
