"""``tumorforge generate --dry-run``: what a job would make, and roughly what it would cost, with
nothing written and no cluster started.

It reads the manifest, makes the job's plan (so the dataset id is the one the job would write),
counts the samples each scan would get, lists the manifest's scans the job cannot use (with why),
looks at the output (a dataset already there: its id and how many shards are committed), and
calibrates on a few real samples of the first shard here: scan preparation, synthesis and encoding
time per sample, and bytes per sample in each format. Estimates scale those figures to the job.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from tumorforge.manifests.dataset.formats import FORMATS
from tumorforge.manifests.dataset.names import COMMITS, PLAN
from tumorforge.manifests.dataset.store import Objects
from tumorforge.manifests.records import RecordError, loads

from .plan import Plan, make_plan
from .spec import JobSpec


@dataclass
class DryRun:
    """A job's plan summary and its calibrated estimates."""

    dataset_id: str
    samples: int
    shards: int
    samples_per_shard: int
    formats: tuple[str, ...]
    backend: str
    actors: int
    samples_per_scan: dict[str, int]                 # every scan the plan uses
    unused: list[tuple[str, str]]                    # (scan id, why the job cannot use it)
    output: str                                      # what is at the output now
    committed: int                                   # shards already committed there
    calibration: dict = field(default_factory=dict)  # per-sample seconds and bytes, measured
    estimate: dict = field(default_factory=dict)     # bytes and seconds for the whole job

    def lines(self) -> list[str]:
        """The summary as a person reads it."""
        c, e = self.calibration, self.estimate
        counts = sorted(self.samples_per_scan.values())
        out = [f"dry run: dataset {self.dataset_id} (nothing written)",
               f"  samples {self.samples} in {self.shards} shard(s) of {self.samples_per_shard}; "
               f"formats {'+'.join(self.formats)}; backend {self.backend}; {self.actors} actor(s)",
               f"  scans used: {len(counts)}, samples per scan {counts[0]}-{counts[-1]} "
               f"(median {counts[len(counts) // 2]})",
               f"  output {self.output}"]
        if self.committed:
            out.append(f"  {self.committed} of {self.shards} shard(s) already committed there: a "
                       f"run would write the other {self.shards - self.committed}")
        for sid, why in self.unused:
            out.append(f"  not used: scan {sid}: {why}")
        if c:
            out.append(f"  calibration on {c['samples']} sample(s) of shard 0 here: prepare "
                       f"{c['prepare_s_per_scan']:.2f} s per scan, synthesize "
                       f"{1000 * c['synthesize_s_per_sample']:.1f} ms and encode "
                       f"{1000 * c['encode_s_per_sample']:.1f} ms per sample, "
                       + ", ".join(f"{fmt} {b / 1e6:.2f} MB" for fmt, b in
                                   c["bytes_per_sample"].items()) + " per sample")
            out.append(f"  estimate: {e['bytes'] / 1e9:.2f} GB written, about "
                       f"{_duration(e['seconds'])} with {self.actors} actor(s) like this machine's "
                       f"cores (scan preparation {_duration(e['prepare_seconds'])} of it)")
        return out

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["unused"] = [{"scan_id": s, "reason": r} for s, r in self.unused]
        return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def samples_per_scan(plan: Plan) -> dict[str, int]:
    """How many samples each scan of ``plan`` gets (exact; arithmetic per shard unless the shard
    routes samples by their draw, as the real profile with healthy scans does)."""
    counts: Counter = Counter()
    for shard in plan.shards:
        if shard.tumor_scans:
            counts.update(plan.scan_of(shard, i) for i in range(shard.start,
                                                                shard.start + shard.count))
            continue
        n = len(shard.scans)
        for j, sid in enumerate(shard.scans):
            counts[sid] += shard.count // n + (j < shard.count % n)
    return {sid: counts.get(sid, 0) for sid in sorted(plan.scans)}


def _output_state(spec: JobSpec, plan: Plan) -> tuple[str, int]:
    """(what the output holds, shards committed there for this plan)."""
    out = Objects(spec.output)
    if not out.exists(PLAN):
        return "is empty or new: a run starts the dataset", 0
    try:
        found = loads(out.get(PLAN), out.url(PLAN)).get("dataset_id")
    except (RecordError, AttributeError):
        found = None
    if found != plan.dataset_id:
        return (f"holds another dataset ({found or 'unreadable plan.json'}): a run would refuse "
                f"it", 0)
    committed = len([k for k in out.list(COMMITS) if k.endswith(".json")])
    return "holds this dataset: a run resumes it", committed


def dry_run(spec: JobSpec, entries: list, calibrate: int = 4) -> DryRun:
    """The dry run of ``spec`` over the manifest ``entries``; ``calibrate`` samples of shard 0 are
    made here (0: no calibration, no estimate). ``spec.backend`` ``auto`` is taken as NumPy, what
    this process can run (a GPU cluster resolves it to CuPy when the job runs)."""
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.scans import load_prepared
    from .worker import make_samples, shard_objects
    if spec.backend == "auto":
        spec = dataclasses.replace(spec, backend="numpy")
    plan = make_plan(spec, entries)
    profile = spec.generator.profile
    unused = [(e.scan_id, f"role {e.role!r}: profile {profile} uses "
                          f"{'tumor (and healthy)' if profile == 'real' else 'healthy'} scans")
              for e in entries if e.scan_id not in plan.scans]
    output, committed = _output_state(spec, plan)
    result = DryRun(plan.dataset_id, spec.samples, len(plan.shards), spec.samples_per_shard,
                    tuple(spec.formats), spec.backend, spec.resources.actors,
                    samples_per_scan(plan), unused, output, committed)
    if calibrate <= 0:
        return result
    shard = plan.shards[0]
    indices = range(shard.start, shard.start + min(calibrate, shard.count))
    needed = sorted({plan.scan_of(shard, i) for i in indices})
    t0 = time.perf_counter()
    scans = {sid: load_prepared(plan.scans[sid], spec.generator) for sid in needed}
    t_prepare = (time.perf_counter() - t0) / len(needed)
    t0 = time.perf_counter()
    made = make_samples(plan, scans, indices, get_backend(spec.backend))
    t_synth = (time.perf_counter() - t0) / len(indices)
    t0 = time.perf_counter()
    objects = shard_objects(plan, 0, made)
    t_encode = (time.perf_counter() - t0) / len(indices)
    per_format = {fmt: sum(len(v) for k, v in objects.items() if FORMATS[fmt].owns(k))
                  / len(indices) for fmt in spec.formats}
    result.calibration = {"samples": len(indices), "prepare_s_per_scan": t_prepare,
                          "synthesize_s_per_sample": t_synth, "encode_s_per_sample": t_encode,
                          "bytes_per_sample": per_format}
    # Each actor prepares the scans of the shards it writes (at most all of them).
    actors = max(1, min(spec.resources.actors, len(plan.shards)))
    todo = len(plan.shards) - committed
    scans_per_actor = min(len(plan.scans),
                          math.ceil(todo / actors) * len(plan.shards[0].scans))
    prepare = scans_per_actor * t_prepare if todo else 0.0
    work = spec.samples * todo / len(plan.shards) * (t_synth + t_encode) / actors
    result.estimate = {"bytes": sum(per_format.values()) * spec.samples,
                       "seconds": prepare + work, "prepare_seconds": prepare}
    return result
