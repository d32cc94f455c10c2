"""The shard writer: one call writes one whole shard in every storage format its job names (each
encoded by its entry of the format table), then its commit.

``ShardWorker`` is plain Python (tests drive it directly); ``cluster.job`` runs it as a Ray actor.
An actor keeps prepared scans in an LRU cache bounded by memory, so consecutive shards that share
scans load each scan once. A call either commits the whole shard or leaves no commit record:
readers trust only shards with a commit (``_commits/``) that ``index.json`` lists.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from tumorforge.generator import GENERATOR_VERSION
from tumorforge.generator.backend import get_backend
from tumorforge.generator.prepare import PrepareError, PreparedScan
from tumorforge.generator.preview import crop_affine
from tumorforge.generator.params import SampleParams
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.generator.batch import pack
from tumorforge.generator.synthesize import Crop, start_batch
from tumorforge.manifests.dataset import codecs, names
from tumorforge.manifests.dataset.formats import FORMATS
from tumorforge.manifests.dataset.records import (FORMAT_CHECKS, PROVENANCE_OF_FORMAT,
                                                  Provenance, SampleHashes, ShardCommit,
                                                  ShardEntry)
from tumorforge.manifests.dataset.storage_format import ShardSamples
from tumorforge.manifests.dataset.store import Objects
from tumorforge.manifests.nifti import ScanError
from tumorforge.manifests.records import pretty_json

from .plan import Plan, ShardPlan
from .tally import reporter
from tumorforge.generator.scans import load_prepared_shared

FAULT_ENV = "TUMORFORGE_FAULT"   # tests only: "die_before_commit:<shard>:<marker file>"


class ScanLoadFailed(RuntimeError):
    """A scan could not be loaded after its retries; the shards that need it cannot be made."""

    def __init__(self, scan_id: str, uri: str, reason: str, attempts: int):
        super().__init__(f"scan {scan_id} ({uri}) failed to load {attempts} time(s): {reason}")
        self.scan_id, self.uri, self.reason, self.attempts = scan_id, uri, reason, attempts

    def __reduce__(self):   # Ray ships the exception back to the driver
        return (ScanLoadFailed, (self.scan_id, self.uri, self.reason, self.attempts))


def _scan_bytes(scan: PreparedScan) -> int:
    """Memory the scan's arrays hold (its volumes, masks and voxel lists)."""
    return sum(a.nbytes for a in vars(scan).values() if isinstance(a, np.ndarray))


class ScanCache:
    """Prepared scans, least recently used evicted first once over ``budget_bytes``."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.items: OrderedDict[str, PreparedScan] = OrderedDict()
        self.loads = 0

    def get(self, scan_id: str, load) -> PreparedScan:
        if scan_id in self.items:
            self.items.move_to_end(scan_id)
            return self.items[scan_id]
        scan = load()
        self.loads += 1
        self.items[scan_id] = scan
        while len(self.items) > 1 and sum(map(_scan_bytes, self.items.values())) > self.budget:
            self.items.popitem(last=False)
        return scan


class CpuClock:
    """CPU seconds per named stage, of the thread that runs it (``time.thread_time``: what other
    threads and processes run is not counted, though it may slow this one down)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.seconds[stage] += time.thread_time() - t0

    def add(self, seconds: dict[str, float]) -> None:
        for stage, s in seconds.items():
            self.seconds[stage] += s


@dataclass
class Samples:
    """Samples of one shard, made and hashed, ready to encode."""

    keys: list
    provenance: list          # JSON text per sample
    hashes: list              # SampleHashes per sample (the plan's dataset format's digest)
    indices: range
    images: list              # (Z, Y, X) arrays; empty when ``frames`` hold them compressed
    labels: list
    frames: list              # (image, label) codecs.Frame per sample, when compressed
    cpu_s: dict               # CPU seconds per host stage (hash, provenance, compress)


# Threads that digest, describe and compress each finished crop while the next is synthesized
# (BLAKE3, sha256 and Blosc release the interpreter lock): about 3 CPU ms per 96^3 crop in
# format 3 (4 in format 2), so 2 keep up with synthesis down to about 1.5 ms per crop.
FINISH_THREADS = 2


# Crops per synthesis call: a packed batch (``synthesize_batch``), the unit a GPU backend works on.
SYNTHESIS_BATCH = 8
# On a GPU (the fused kernels), 32: the host plan costs 0.11 ms per crop at 32 against 0.20 at 8.
SYNTHESIS_BATCH_GPU = 32


def synthesized(plan: Plan, scans: dict[str, PreparedScan], indices: range, backend,
                shard: ShardPlan | None = None
                ) -> Iterator[tuple[int, PreparedScan, SampleParams, Crop]]:
    """(index, scan, params, crop) of the samples ``indices`` in order: parameters drawn from each
    sample's seed, then synthesis on ``backend``, ``SYNTHESIS_BATCH`` crops per call
    (``SYNTHESIS_BATCH_GPU`` on CuPy; the bytes do not depend on it) over packed
    records. The writer's only call into the generator."""
    spec, config = plan.spec, plan.spec.generator
    order = list(indices)
    size = SYNTHESIS_BATCH_GPU if backend.name == "cupy" else SYNTHESIS_BATCH
    in_flight = None              # one batch on the GPU while the next one's parameters are drawn
    for first in range(0, len(order), size):
        drawn = []
        for i in order[first:first + size]:
            where = shard if shard is not None else plan.shards[i // spec.samples_per_shard]
            scan = scans[plan.scan_of(where, i)]
            drawn.append((i, scan, sample_params(
                np.random.default_rng(sample_seed(spec.root_seed, i)), scan, config)))
        batch_scans = {scan.scan_id: scan for _, scan, _ in drawn}
        pending = start_batch(list(batch_scans.values()),
                              pack([p for _, _, p in drawn], list(batch_scans)), backend)
        if in_flight is not None:
            yield from _collected(*in_flight)
        in_flight = (drawn, pending)
    if in_flight is not None:
        yield from _collected(*in_flight)


def _collected(drawn, pending):
    made = pending.result()
    for n, (i, scan, params) in enumerate(drawn):
        yield i, scan, params, Crop(made.images[n], made.labels[n])


def make_samples(plan: Plan, scans: dict[str, PreparedScan], indices: range, backend,
                 shard: ShardPlan | None = None, entries: dict | None = None,
                 compress: bool = False, on_sample=None) -> Samples:
    """Synthesize the samples ``indices`` of ``plan`` from their prepared ``scans`` (by scan id)
    (:func:`synthesized`); each crop's hashes, provenance and, with ``compress``, its compressed
    arrays (then the arrays themselves are not kept) are made on a thread pool while the next
    crop is synthesized. ``shard`` and ``entries`` (the shard's manifest entries by scan id):
    given when ``plan`` is a skeleton without shards and scans, as an actor holds it.
    ``on_sample(n)``: called with the number of crops synthesized so far, after each one."""
    spec, config = plan.spec, plan.spec.generator
    entries = plan.scans if entries is None else entries
    versions, config_json = backend.versions(), config.to_json()
    digest = FORMAT_CHECKS[spec.dataset_format][1]

    def finish(i: int, scan: PreparedScan, params: SampleParams, crop: Crop):
        clock = CpuClock()
        key = plan.key(i)
        with clock("hash"):
            hashes = SampleHashes.of(key, crop.image, crop.label, digest)
        with clock("provenance"):
            text = Provenance(
                key=key, index=i, shard=i // spec.samples_per_shard, dataset_id=plan.dataset_id,
                root_seed=spec.root_seed, spawn_key=(i,), scan_id=scan.scan_id,
                scan_sha256=dict(entries[scan.scan_id].sha256),
                generator_version=GENERATOR_VERSION, profile=config.profile,
                backend=backend.name, versions=versions, generator_config=config_json,
                params=params.to_json(), image_digest=hashes.image, label_digest=hashes.label,
                shape=tuple(crop.image.shape),
                crop_affine=tuple(map(tuple, crop_affine(scan, params).tolist())),
                sample_digest=digest,
                provenance_version=PROVENANCE_OF_FORMAT[spec.dataset_format]).to_json_text()
        frames = None
        if compress:
            with clock("compress"):
                frames = codecs.compress_sample(crop.image, crop.label, spec.compression)
        return key, hashes, text, frames, None if compress else crop, clock.seconds

    out = Samples([], [], [], indices, [], [], [], {})
    clock = CpuClock()
    with ThreadPoolExecutor(FINISH_THREADS) as pool:
        done = []
        for made in synthesized(plan, scans, indices, backend, shard):
            done.append(pool.submit(finish, *made))
            if on_sample is not None:
                on_sample(len(done))
        for future in done:
            key, hashes, text, frames, crop, seconds = future.result()
            out.keys.append(key)
            out.hashes.append(hashes)
            out.provenance.append(text)
            if frames is not None:
                out.frames.append(frames)
            else:
                out.images.append(crop.image)
                out.labels.append(crop.label)
            clock.add(seconds)
    out.cpu_s = dict(clock.seconds)
    return out


def shard_objects(plan: Plan, k: int, made: Samples, clock: CpuClock | None = None
                  ) -> dict[str, bytes]:
    """The encoded objects of shard ``k`` (:func:`shard_parts`, each object's pieces joined)."""
    return {key: b"".join(parts) for key, parts in shard_parts(plan, k, made, clock).items()}


def shard_parts(plan: Plan, k: int, made: Samples, clock: CpuClock | None = None
                ) -> dict[str, list[bytes]]:
    """The encoded objects of shard ``k`` in every storage format of the plan, from its samples,
    each as the pieces that make it (the writer writes them without joining them first), whose
    arrays are compressed once for every format (here, unless :func:`make_samples` did)."""
    spec = plan.spec
    clock = clock or CpuClock()
    frames = made.frames
    if not frames:
        with clock("compress"):
            frames = [codecs.compress_sample(image, label, spec.compression)
                      for image, label in zip(made.images, made.labels)]
    samples = ShardSamples(k, made.keys, made.indices, frames, made.provenance,
                           spec.samples_per_shard)
    objects: dict[str, list[bytes]] = {}
    for name in spec.formats:
        fmt = FORMATS[name]
        with clock(fmt.stage):
            objects.update(fmt.encode(samples))
    return objects


class ShardWorker:
    """Writes shards of one plan. The job gives an actor the plan's skeleton (its id and spec,
    :meth:`Plan.skeleton`) and, with each shard, the shard's layout and its scans' manifest
    entries, so no actor holds the whole plan; with a full plan, ``write_shard(k)`` looks both up
    (tests drive it that way)."""

    def __init__(self, plan: Plan, prepared_dir: str | None = None):
        self.plan = plan
        self.entries = dict(plan.scans)       # manifest entries of the scans seen so far
        self.prepared_dir = prepared_dir      # shared preparations (load_prepared_shared)
        self.prepared = 0                     # scans this actor prepared itself
        self.spec = plan.spec
        self.backend = get_backend(self.spec.backend)
        res = self.spec.resources
        self.backend.bound_memory(res.gpus_per_actor, res.gpu_memory_mb)
        self.out = Objects(self.spec.output)
        self.cache = ScanCache(self.spec.resources.scan_cache_mb << 20)

    def pid(self) -> int:
        return os.getpid()

    def _scans(self, ids) -> dict[str, PreparedScan]:
        """The prepared scans of a shard. First the ones this actor holds, can load or can
        prepare now; then those another actor is preparing (waited for), so two actors starting on
        the same scans prepare different ones instead of one waiting for the other."""
        for sid in ids:
            if sid in self.cache.items or self.prepared_dir is None:
                continue
            try:
                scan, here = load_prepared_shared(self.entries[sid], self.spec.generator,
                                                  self.prepared_dir, wait=False)
            except (ScanError, PrepareError, OSError):
                continue                  # the second pass retries it and names the failure
            if scan is not None:
                self.prepared += here
                self.cache.get(sid, lambda scan=scan: scan)
        return {sid: self.cache.get(sid, lambda sid=sid: self._load(sid)) for sid in ids}

    def _load(self, scan_id: str) -> PreparedScan:
        entry = self.entries[scan_id]
        retries = self.spec.resources.scan_retries
        reason = ""
        for attempt in range(1, retries + 2):
            try:
                scan, here = load_prepared_shared(entry, self.spec.generator,
                                                  self.prepared_dir)
                self.prepared += here
                return scan
            except (ScanError, PrepareError, OSError) as exc:
                reason = str(exc)
                if attempt <= retries:
                    time.sleep(min(2.0, 0.2 * attempt))
        raise ScanLoadFailed(scan_id, entry.image, reason, retries + 1)

    def write_shard(self, task: int | ShardPlan, entries: dict | None = None,
                    tally=None) -> ShardCommit:
        """Synthesize a shard (``task``: its layout, with ``entries`` its scans' manifest entries;
        or its number in a full plan), write its objects, then its commit record; return it.
        ``tally``: a :class:`~.tally.SampleTally` (or a Ray handle of one) told how many of the
        shard's samples are synthesized (:func:`~.tally.reporter`)."""
        t0 = time.perf_counter()
        shard = self.plan.shards[task] if isinstance(task, int) else task
        k = shard.index
        self.entries.update(entries or {})
        scans = self._scans(shard.scans)
        t_load = time.perf_counter() - t0
        made = make_samples(self.plan, scans, range(shard.start, shard.start + shard.count),
                            self.backend, shard, self.entries, compress=True,
                            on_sample=reporter(tally, k, shard.count))
        t_synth = time.perf_counter() - t0 - t_load
        clock = CpuClock()
        clock.add(made.cpu_s)
        objects = shard_parts(self.plan, k, made, clock)
        fmt = self.spec.dataset_format
        with clock("write"):          # each object's checksum (crc32c in format 3), write, fsync
            files = {key: self.out.put(key, data, FORMAT_CHECKS[fmt][0])
                     for key, data in sorted(objects.items())}
        # The shard's record (what readers check it against), then the commit that lists it.
        with clock("record"):
            entry = ShardEntry.build(fmt, dataset_id=self.plan.dataset_id, shard=k,
                                     start=shard.start, count=shard.count,
                                     scans=tuple(shard.scans), files=dict(files),
                                     samples=tuple(made.hashes))
            files[names.record_key(k)] = self.out.put(names.record_key(k), entry.record_bytes())
        self._maybe_fault(k)
        record = ShardCommit(
            dataset_id=self.plan.dataset_id, shard=k, start=shard.start, count=shard.count,
            scans=tuple(shard.scans), files=files,
            seconds={"load": round(t_load, 3), "synthesize": round(t_synth, 3),
                     "encode_write": round(time.perf_counter() - t0 - t_load - t_synth, 3)},
            worker={"pid": os.getpid(), "backend": self.backend.name,
                    "scan_loads": self.cache.loads, "scans_prepared": self.prepared,
                    **({"gpu_memory": self.backend.memory()} if self.backend.name == "cupy"
                       else {})},
            host_cpu_s={stage: round(s, 6) for stage, s in clock.seconds.items()})
        self.out.put(names.commit_key(k), pretty_json(record.to_json()))
        return record

    @staticmethod
    def _maybe_fault(k: int) -> None:
        """Test hook: die (like a killed process) after the data objects, before the commit."""
        spec = os.environ.get(FAULT_ENV, "")
        if not spec.startswith("die_before_commit:"):
            return
        _, shard, marker = spec.split(":", 2)
        if int(shard) == k and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(17)
