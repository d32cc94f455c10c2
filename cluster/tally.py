"""Per-sample progress of a generation job: each writer tells a small tally how many samples of its
shard it has synthesized; the driver reads the tally and moves its bar per sample instead of per
shard (a shard of 64 crops at 1 mm takes minutes on a CPU). Standard library only: the job runs the
tally as a Ray actor without CPUs, and its process imports nothing else."""

from __future__ import annotations

import time


# How often a writer tells the job's progress bar how far its shard is (a call to a Ray actor).
TALLY_EVERY_S = 0.5


class SampleTally:
    """Samples synthesized so far in each shard being written, as writers report them: the job's
    progress bar moves per sample, not per shard. A retried shard starts again from 0. Plain
    Python; the job runs it as a Ray actor without CPUs."""

    def __init__(self):
        self.counts: dict[int, int] = {}

    def count(self, shard: int, n: int) -> None:
        self.counts[shard] = n

    def snapshot(self) -> dict[int, int]:
        return dict(self.counts)


def reporter(tally, shard: int, total: int):
    """``on_sample`` for ``cluster.worker.make_samples`` that tells ``tally`` (an object or a Ray
    actor handle) the count of ``shard``, throttled to ``TALLY_EVERY_S``; None without a tally."""
    if tally is None:
        return None
    tell = tally.count.remote if hasattr(tally.count, "remote") else tally.count
    last = [time.monotonic()]

    def on_sample(n: int) -> None:
        now = time.monotonic()
        if n == total or now - last[0] >= TALLY_EVERY_S:
            last[0] = now
            tell(shard, n)
    return on_sample


# Seconds between the driver's reads of the writers' sample tally while shards are in flight.
TALLY_POLL_S = 1.0


class BarCount:
    """What the job's bar shows: samples of committed shards plus the last reported count of the
    shards in flight. It never moves back (a retried shard's count restarts at 0; the bar waits)."""

    def __init__(self, bar):
        self.bar, self.done, self.in_flight = bar, 0, 0

    def partial(self, in_flight: int) -> None:
        self.in_flight = in_flight
        self._show()

    def committed(self, count: int) -> None:
        self.done += count
        self.in_flight = 0                # the next poll counts the shards still in flight
        self._show()

    def _show(self) -> None:
        target = min(self.bar.total or 0, self.done + self.in_flight)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
