"""A generation job's bar moves per sample (issue 29, item 4): each writer tells a tally how many
samples of its shard it has synthesized; the driver shows committed shards plus that count and
never moves back when a shard is retried."""

from __future__ import annotations

import dataclasses
import io

import pytest
from tqdm import tqdm

from tumorforge.cluster import tally as tally_module
from tumorforge.cluster.plan import make_plan
from tumorforge.cluster.tally import BarCount, SampleTally, reporter
from tumorforge.cluster.worker import ShardWorker
from tumorforge.manifests.schema import read_manifest
from cluster_fixtures import healthy_manifest, small_spec


class Recording(SampleTally):
    def __init__(self):
        super().__init__()
        self.calls = []

    def count(self, shard, n):
        self.calls.append((shard, n))
        super().count(shard, n)


def test_a_writer_reports_each_sample_of_its_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(tally_module, "TALLY_EVERY_S", 0.0)
    manifest = healthy_manifest(tmp_path / "scan", n_scans=1)
    spec = dataclasses.replace(small_spec(manifest, tmp_path / "ds", samples=6,
                                          samples_per_shard=4), backend="numpy")
    plan = make_plan(spec, read_manifest(str(manifest)))
    from tumorforge.cluster.job import prepare_output
    from tumorforge.manifests.dataset.store import Objects
    prepare_output(plan, Objects(spec.output))
    seen = Recording()
    record = ShardWorker(plan).write_shard(1, tally=seen)
    assert record.count == 2 and seen.calls == [(1, 1), (1, 2)]      # samples 4 and 5, one by one
    assert seen.snapshot() == {1: 2}


def test_reports_are_throttled_but_the_last_one_always_arrives(monkeypatch):
    clock = iter([0.0, 0.1, 0.2, 0.7, 0.8, 0.9])
    monkeypatch.setattr(tally_module.time, "monotonic", lambda: next(clock))
    seen = Recording()
    on_sample = reporter(seen, 3, 4)
    for n in (1, 2, 3, 4):
        on_sample(n)
    # 0.1 and 0.2 s after the start: too soon; 0.7 s: reported; the 4th is the shard's last.
    assert seen.calls == [(3, 3), (3, 4)]
    assert reporter(None, 3, 4) is None


def test_the_bar_adds_samples_in_flight_and_never_moves_back():
    out = io.StringIO()
    bar = tqdm(total=12, file=out, mininterval=0)
    shown = BarCount(bar)
    shown.partial(3)                 # two shards in flight, 3 samples made
    assert bar.n == 3
    shown.committed(4)               # one shard of 4 committed; the other's count comes next poll
    assert bar.n == 4
    shown.partial(1)                 # the other shard was retried: it counts from 0 again
    assert bar.n == 5
    shown.partial(0)
    assert bar.n == 5                # held, not moved back
    shown.committed(4)
    shown.committed(4)
    assert bar.n == 12
    shown.partial(7)                 # a stale count after the end changes nothing
    assert bar.n == 12
    bar.close()
    assert "12/12" in out.getvalue()


@pytest.mark.parametrize("count", [0, 5])
def test_bar_count_stays_within_the_total(count):
    bar = tqdm(total=4, file=io.StringIO())
    BarCount(bar).partial(count)
    assert bar.n == min(count, 4)
