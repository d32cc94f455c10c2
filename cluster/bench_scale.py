"""``tumorforge bench scale --samples N``: the bookkeeping of a dataset of N samples, without
synthesis. It runs the real plan, scheduler, commit-record, index and reader code on fake scans
and fake shard contents (no image is made or stored; every object a commit lists is a stand-in
name with a made-up size and hash) and measures:

- plan: time to make the plan of N samples over ``--scans`` fake scans;
- dispatch: driver CPU per shard handed out by the scheduler, with every shard pending and
  again with 1,000 pending (the cost must not grow with the number pending);
- commit: time to write every shard's record and commit record (plain local files);
- index: time to read the commits and write ``index.json`` (the job's ``_write_index``), its
  bytes, and the driver's memory growth meanwhile;
- reader: time and memory for a fresh process to open the dataset (``Dataset(url)``) and check
  one sample's expected hashes (its shard's record read), as every DataLoader worker does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _fake_entries(n: int):
    from tumorforge.manifests.schema import LabelMap, ScanEntry
    return [ScanEntry(scan_id=f"fake-{i:05d}", image=f"/fake/{i}.nii.gz",
                      label=f"/fake/{i}-label.nii.gz", label_map=LabelMap(organ=(1,)),
                      role="healthy", source="bench",
                      sha256={"image": hashlib.sha256(b"i%d" % i).hexdigest(),
                              "label": hashlib.sha256(b"l%d" % i).hexdigest()},
                      shape=(512, 512, 100), spacing_mm=(0.8, 0.8, 2.5), orientation="LPS",
                      organ_volume_ml=1500.0, tumor_volume_ml=0.0) for i in range(n)]


def _dispatch_ms(shards: dict, pending: list[int], handouts: int = 2000) -> float:
    """Driver CPU (ms) per shard handed out, 4 actors writing in turn."""
    from .scheduler import Scheduler
    sched = Scheduler(shards, list(pending))
    for a in range(4):
        sched.actor_started(a)
    done = 0
    t0 = time.process_time()
    while done < handouts and sched.pending_count:
        for actor, _ in sched.assignments():
            sched.shard_written(actor)
            done += 1
    return 1000.0 * (time.process_time() - t0) / max(1, done)


def _fake_shard(plan, shard) -> dict[str, bytes]:
    """The shard's record and commit as a worker writes them, with made-up data objects and
    hashes: {object name: bytes}."""
    from tumorforge.manifests.dataset import names
    from tumorforge.manifests.dataset.formats import FORMATS
    from tumorforge.manifests.dataset.records import (FORMAT_CHECKS, FileRecord, SampleHashes,
                                                      ShardCommit, ShardEntry, hex_digest)
    from tumorforge.manifests.records import pretty_json
    fmt = plan.spec.dataset_format
    check, sample_digest = FORMAT_CHECKS[fmt]
    digest = lambda text, by: hex_digest(text.encode(), by)
    # The objects each storage format writes, about 0.3 MB per sample each (sizes only go into
    # the records).
    files = {key: FileRecord(300_000 * shard.count, digest(key, check), check)
             for name in plan.spec.formats for key in FORMATS[name].objects(shard.index)}
    samples = tuple(SampleHashes(plan.key(i), digest(f"i{i}", sample_digest),
                                 digest(f"l{i}", sample_digest), sample_digest)
                    for i in range(shard.start, shard.start + shard.count))
    record = ShardEntry.build(fmt, dataset_id=plan.dataset_id, shard=shard.index,
                              start=shard.start, count=shard.count, scans=tuple(shard.scans),
                              files=dict(files), samples=samples).record_bytes()
    files[names.record_key(shard.index)] = FileRecord.of(record)
    commit = ShardCommit(dataset_id=plan.dataset_id, shard=shard.index, start=shard.start,
                         count=shard.count, scans=tuple(shard.scans), files=files,
                         seconds={"load": 0.0, "synthesize": 0.0, "encode_write": 0.0},
                         worker={"pid": 0, "backend": "numpy", "scan_loads": 0})
    return {names.record_key(shard.index): record,
            names.commit_key(shard.index): pretty_json(commit.to_json())}


_READER = """
import json, os, sys, time
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e6
from tumorforge.manifests.dataset.reader import Dataset
before = rss()
t0 = time.perf_counter()
ds = Dataset(sys.argv[1])
assert ds.hashes(ds.keys[len(ds) // 2]) is not None      # one shard opened: its record read
print(json.dumps({"seconds": time.perf_counter() - t0, "mb": rss() - before}))
"""


def bench_scale(samples: int, samples_per_shard: int = 64, scans: int = 100,
                workdir: str | None = None, keep: bool = False, log=print) -> dict:
    from tumorforge.cluster.job import _write_index
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.manifests.dataset.store import Objects
    from tumorforge.manifests.records import pretty_json
    from .plan import make_plan
    from .spec import JobSpec
    root = workdir or tempfile.mkdtemp(prefix="tumorforge-bench-scale-")
    out_url = os.path.join(root, "dataset")
    try:
        spec = JobSpec(manifest=os.path.join(root, "fake.jsonl"), output=out_url,
                       samples=samples, samples_per_shard=samples_per_shard, backend="numpy",
                       formats=("zarr",), generator=GeneratorConfig(crop_size=(96, 96, 96)))
        entries = _fake_entries(scans)
        t0 = time.perf_counter()
        plan = make_plan(spec, entries)
        t_plan = time.perf_counter() - t0
        log(f"plan: {len(plan.shards)} shards in {t_plan:.2f} s")
        needs = {s.index: s.scans for s in plan.shards}
        all_pending = list(needs)
        dispatch_all = _dispatch_ms(needs, all_pending)
        dispatch_1k = _dispatch_ms(needs, all_pending[:1000])
        log(f"dispatch: {dispatch_all:.4f} ms per shard with {len(all_pending)} pending, "
            f"{dispatch_1k:.4f} ms with 1,000")
        out = Objects(out_url)
        out.put("plan.json", pretty_json(plan.to_json()))
        t0 = time.perf_counter()
        # As the workers would have left them; written plainly (no temporary, no fsync: that
        # is the workers' cost, not the bookkeeping's, and 312,500 fsyncs would take half an
        # hour at 10 million samples).
        from tumorforge.manifests.dataset.names import COMMITS, RECORDS
        for folder in (RECORDS, COMMITS):
            os.makedirs(out.path(folder), exist_ok=True)
        for shard in plan.shards:
            for key, data in _fake_shard(plan, shard).items():
                with open(out.path(key), "wb") as f:
                    f.write(data)
        t_commit = time.perf_counter() - t0
        log(f"shard and commit records: {len(plan.shards)} of each written in {t_commit:.1f} s")
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        _write_index(plan, out, {"bench": "scale"})
        t_index = time.perf_counter() - t0
        driver_mb = _rss_mb() - rss0
        index_bytes = os.path.getsize(os.path.join(out_url, "index.json"))
        log(f"index: {index_bytes / 1e6:.1f} MB written in {t_index:.1f} s")
        reader = json.loads(subprocess.run([sys.executable, "-c", _READER, out_url], check=True,
                                           capture_output=True, text=True).stdout)
        log(f"reader: opens in {reader['seconds']:.2f} s, +{reader['mb']:.0f} MB")
        return {"benchmark": "scale", "samples": samples, "samples_per_shard": samples_per_shard,
                "shards": len(plan.shards), "scans": scans, "plan_seconds": round(t_plan, 3),
                "dispatch_ms_per_shard": round(dispatch_all, 5),
                "dispatch_ms_per_shard_1k_pending": round(dispatch_1k, 5),
                "commit_write_seconds": round(t_commit, 2),
                "index_write_seconds": round(t_index, 2), "index_bytes": index_bytes,
                "driver_memory_mb": round(driver_mb, 1),
                "reader_open_seconds": round(reader["seconds"], 3),
                "reader_memory_mb": round(reader["mb"], 1)}
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
