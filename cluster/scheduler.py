"""The bookkeeping of a generation job, apart from the work: which shards are pending, which
actor writes which shard, what failed and why. Plain Python, no Ray: ``cluster.job`` drives it
with Ray's events, tests drive it directly.

Rules:
- an idle actor gets a pending shard that shares scans with what it loaded recently (of the lowest
  pending shard of each such scan and the lowest pending shard overall, the one sharing the most;
  lowest shard number on ties), so scans are loaded once and reused, at a cost per shard that does
  not grow with the number pending;
- a shard whose actor died goes back to the front of the queue, up to ``shard_retries`` times;
- a shard that failed in the worker is not retried; if a scan could not be loaded, every pending
  shard that needs that scan fails with the same reason (it would fail the same way);
- a shard is never held by two actors at once, and every shard ends written or failed.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field

HELD_SCANS = 8        # scans an actor is assumed to still hold (its cache keeps the recent ones)


@dataclass
class Scheduler:
    """Pending shards are indexed by the scans they need, so handing one out costs the same
    whatever the number pending (a few heap operations per scan an actor holds): the candidates are
    the lowest pending shard of each scan the actor holds and the lowest pending shard overall, and
    the one sharing the most scans with the actor wins (lowest number on ties). Heaps drop taken
    shards lazily."""

    scans: dict[int, tuple[str, ...]]          # shard -> the scans it needs
    pending_shards: list[int]                  # shards still to write
    shard_retries: int = 3
    actor_start_budget: int = 0                # replacement actors allowed after failed starts
    live: set = field(default_factory=set)     # actors ready for work
    busy: dict = field(default_factory=dict)   # actor -> shard it is writing
    held: dict = field(default_factory=dict)   # actor -> recently loaded scans
    attempts: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)  # shard -> reason
    written: list = field(default_factory=list)
    failed_starts: int = 0
    examined: int = 0                          # candidates and heap entries looked at (cost)

    def __post_init__(self):
        self._pending: set[int] = set()
        self._all: list[int] = []
        self._by_scan: dict[str, list[int]] = defaultdict(list)
        for k in self.pending_shards:
            self._put(k)
        self.pending_shards = []               # the index is the truth from here on

    @property
    def pending(self) -> list[int]:
        """The pending shards, sorted (a copy: for reports and tests, not for the hot path)."""
        return sorted(self._pending)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def finished(self) -> bool:
        return not self._pending and not self.busy

    def _put(self, k: int) -> None:
        self._pending.add(k)
        heapq.heappush(self._all, k)
        for scan in set(self.scans[k]):
            heapq.heappush(self._by_scan[scan], k)

    def _first(self, heap: list[int] | None) -> int | None:
        """The lowest pending shard of ``heap`` (taken ones are dropped on the way)."""
        while heap and heap[0] not in self._pending:
            heapq.heappop(heap)
            self.examined += 1
        return heap[0] if heap else None

    def actor_started(self, actor) -> None:
        self.live.add(actor)

    def actor_start_failed(self) -> bool:
        """An actor could not start; True if a replacement may be started."""
        self.failed_starts += 1
        return self.failed_starts <= self.actor_start_budget

    def assignments(self) -> list[tuple[object, int]]:
        """(actor, shard) for every idle live actor while shards are pending; marks them busy."""
        out = []
        for actor in sorted(a for a in self.live if a not in self.busy):
            if not self._pending:
                break
            held = set(self.held.get(actor, ()))
            candidates = {self._first(self._by_scan.get(scan)) for scan in held}
            candidates.add(self._first(self._all))
            candidates.discard(None)
            self.examined += len(candidates)
            best = max(candidates, key=lambda k: (len(held & set(self.scans[k])), -k))
            self._pending.remove(best)
            self.busy[actor] = best
            self.held[actor] = (list(self.held.get(actor, ())) + list(self.scans[best]))[-HELD_SCANS:]
            out.append((actor, best))
        return out

    def shard_written(self, actor) -> int:
        shard = self.busy.pop(actor)
        self.written.append(shard)
        return shard

    def actor_died(self, actor, reason: str) -> tuple[int, bool]:
        """The actor writing a shard died; returns (shard, whether it will be retried)."""
        shard = self.busy.pop(actor)
        self.live.discard(actor)
        self.held.pop(actor, None)
        self.attempts[shard] = self.attempts.get(shard, 0) + 1
        retry = self.attempts[shard] <= self.shard_retries
        if retry:
            self._put(shard)
        else:
            self.failed[shard] = f"actor died {self.attempts[shard]} time(s): {reason}"
        return shard, retry

    def shard_failed(self, actor, reason: str, scan_id: str | None = None) -> list[int]:
        """The worker raised while writing a shard; with ``scan_id`` (a scan that cannot be
        loaded) every pending shard needing that scan fails too. Returns the failed shards."""
        shard = self.busy.pop(actor)
        self.failed[shard] = reason
        out = [shard]
        if scan_id is not None:
            for k in sorted(k for k in set(self._by_scan.get(scan_id, ())) if k in self._pending):
                self._pending.remove(k)
                self.failed[k] = reason
                out.append(k)
        return out

    def give_up(self, reason: str) -> None:
        """No actor can run: every pending shard fails with ``reason``."""
        for k in sorted(self._pending):
            self.failed[k] = reason
        self._pending.clear()
