"""The generation job driver: plan, check the output, dispatch shards to Ray actors, commit, index.

Order of writes in the output: ``plan.json`` (identity; refuses a different dataset), zarr metadata,
then per shard its data objects and ``_commits/shard-NNNNNN.json``, and ``index.json`` last, only when
every shard is committed. A rerun skips committed shards (resume); a different spec or manifest gives
a different ``dataset_id`` and is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from tumorforge.generator import __version__ as GENERATOR_VERSION
from tumorforge.manifests.schema import ManifestError, default_roots, read_manifest

from tumorforge.manifests.dataset import codecs
from tumorforge.manifests.dataset.names import (COMMITS, INDEX, LOCK, PLAN, REPORT, ZARR_ROOT,
                                                commit_key, record_key, sample_index, tar_name)
from tumorforge.manifests.dataset.records import (INDEX_FORMAT, DatasetIndex, FileRecord,
                                                  ShardCommit, ShardEntry, ShardTable)
from tumorforge.manifests.dataset.store import LockHeld, Objects, OutputLock
from tumorforge.manifests.records import RecordError, loads, pretty_json

from .plan import Plan, make_plan
from .scheduler import Scheduler
from .spec import JobSpec
from .worker import ScanLoadFailed, ShardWorker

ACTOR_START_TIMEOUT_S = 300
RESUME_CHECK_THREADS = 8      # objects hashed at once when a rerun checks committed shards
AUTH_MODE, AUTH_TOKEN = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"   # Ray's token authentication


class JobError(RuntimeError):
    pass


class OperatorError(JobError):
    """Something outside the job is not there: the cluster, the bucket. Commands print it in one
    line and exit 2."""


RAY_PORT_TIMEOUT_S = 5.0


def check_reachable(address: str, timeout_s: float = RAY_PORT_TIMEOUT_S) -> None:
    """A TCP connection to ``address`` (``host:port``, ``ray://host:port`` or ``http(s)://host:port``)
    within ``timeout_s``, or :class:`OperatorError` naming it: Ray itself waits a minute or more
    before failing on an address nobody listens on."""
    import socket
    from urllib.parse import urlsplit
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    default = 443 if parts.scheme == "https" else 8265 if parts.scheme == "http" else 6379
    host, port = parts.hostname, parts.port or default
    if not host:
        raise OperatorError(f"cluster address {address!r}: expected host:port, ray://host:port "
                            "or http://host:port")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise OperatorError(f"cannot reach the Ray cluster at {address} ({host}:{port}: "
                            f"{exc.strerror or type(exc).__name__}); is it running, and is the "
                            f"address right?") from None


def check_output_reachable(url: str) -> None:
    """An ``s3://`` output's bucket must exist and be listable with the credentials at hand."""
    from tumorforge.manifests import storage
    if not storage.is_remote(url):
        return
    fs, path = storage.filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        ok = fs.exists(bucket)
    except Exception as exc:        # s3fs raises several kinds for auth and network problems
        raise OperatorError(f"output {url}: cannot list bucket {bucket!r} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                            ) from None
    if not ok:
        raise OperatorError(f"output {url}: bucket {bucket!r} does not exist (or these "
                            "credentials cannot see it); create it or fix the output")


@dataclass
class JobResult:
    dataset_id: str
    output: str
    shards: int
    committed_before: int
    written: int
    failed: dict = field(default_factory=dict)     # shard -> reason
    samples: int = 0
    bytes: int = 0
    seconds: float = 0.0
    actor_restarts: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def _versions() -> dict:
    import numcodecs
    import numpy
    import ray
    import scipy
    import zarr
    return {"tumorforge": GENERATOR_VERSION, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "zarr": zarr.__version__, "numcodecs": numcodecs.__version__, "ray": ray.__version__}


def _init_ray(address: str | None):
    import ray
    if ray.is_initialized():
        return ray
    if address:
        check_reachable(address)
        failure, said = _quietly(lambda: ray.init(address=address, log_to_driver=False))
        if failure is not None:       # no cluster, refused token, version mismatch: one line
            text = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
            hint = (" (--address auto joins a cluster already running on this machine; none is)"
                    if address == "auto" else "")
            if any(w in f"{text} {said}" for w in ("InvalidAuthToken", "Unauthenticated")):
                hint = (" (the cluster requires token authentication and refused this process: "
                        "set RAY_AUTH_MODE=token and the cluster's RAY_AUTH_TOKEN)")
            raise OperatorError(f"cannot join the Ray cluster at {address}: "
                                f"{type(failure).__name__}: {text}{hint}")
        sys.stderr.write(said)
    else:
        start_embedded(ray)
    return ray


def _quietly(call) -> tuple[BaseException | None, str]:
    """Run ``call`` with file descriptor 2 captured (Ray's core logs retries straight to it):
    (the exception it raised or None, what it wrote there)."""
    import tempfile
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        failure = None
        try:
            call()
        except Exception as exc:
            failure = exc
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return failure, captured.read().decode("utf-8", errors="replace")


def start_embedded(ray) -> None:
    """Start the embedded single-machine cluster with Ray's token authentication on, with the
    token in ``RAY_AUTH_TOKEN`` or else a fresh random one made for this process (never written
    to disk or logged).

    Ray 2.60's gRPC servers listen on every interface of the host whatever address is asked for
    (measured with ``ss -ltnp``), so the token is what keeps other users and hosts out: a process
    without it cannot connect (tested). The token lives in this process's environment, which Ray's
    processes inherit, for as long as the process runs.
    """
    os.environ[AUTH_MODE] = "token"
    if not os.environ.get(AUTH_TOKEN):
        os.environ[AUTH_TOKEN] = secrets.token_hex(32)
    refresh_ray_config()
    ray.init(include_dashboard=False, log_to_driver=False)


def refresh_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE once per process; re-read it, as Ray's own token setup does."""
    from ray._raylet import Config
    Config.initialize("")


def resolve_backend(spec: JobSpec, ray) -> JobSpec:
    """Turn ``auto`` into numpy or cupy from what the cluster has; fail fast on missing GPUs."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    backend = spec.backend
    if backend == "auto":
        backend = "cupy" if gpus > 0 else "numpy"
    resources = spec.resources
    if backend == "cupy" and resources.gpus_per_actor == 0:
        resources = replace(resources, gpus_per_actor=1.0)
    if resources.gpus_per_actor > 0 and gpus < resources.gpus_per_actor:
        raise JobError(f"the job asks for {resources.gpus_per_actor} GPU(s) per actor (backend "
                       f"{backend}) but the Ray cluster has {gpus:g} GPU(s); use --backend numpy "
                       "or connect to a cluster with GPU nodes (--address)")
    return replace(spec, backend=backend, resources=resources)


def read_entries(spec: JobSpec) -> list:
    try:
        return read_manifest(spec.manifest, default_roots(spec.manifest, spec.allow_roots))
    except (ManifestError, OSError) as exc:
        raise JobError(f"manifest: {exc}") from exc


def prepare_output(plan: Plan, out: Objects) -> set[int]:
    """Check the output belongs to this dataset, write plan and metadata, return committed shards."""
    if out.exists(PLAN):
        try:
            old = loads(out.get(PLAN), out.url(PLAN))
            found, had = old.get("dataset_id"), old.get("samples")
        except (RecordError, AttributeError):
            found, had = "(unreadable plan.json)", None
        if found != plan.dataset_id:
            raise JobError(f"{out.url(PLAN)} holds dataset {found}, but this job plans "
                           f"{plan.dataset_id} (different spec, manifest scans or generator "
                           "version); write to a new output or remove the old dataset first")
        if isinstance(had, int) and had > plan.spec.samples:
            raise JobError(f"{out.url(PLAN)} holds {had} samples of dataset {found}; this job "
                           f"asks for {plan.spec.samples}: a job grows a dataset, never shrinks "
                           "it (read fewer samples instead, or write to a new output)")
    stale = out.remove_stale_temporaries()
    if stale:
        print(f"removed {stale} temporary file(s) left by an interrupted writer")
    out.put(PLAN, pretty_json(plan.to_json()))
    for key, data in _metadata_objects(plan).items():
        out.put(key, data)                # rewritten every run: a damaged one is repaired
    with ThreadPoolExecutor(max_workers=RESUME_CHECK_THREADS) as pool:
        records = [r for r in pool.map(lambda key: _read_commit(out, key), out.list(COMMITS))
                   if r is not None]
    with ThreadPoolExecutor(max_workers=RESUME_CHECK_THREADS) as pool:
        zarr_only = "wds" not in plan.spec.formats and bool(records)
        provenance = codecs.open_zarr(out.url(ZARR_ROOT))["provenance"] if zarr_only else None
        intact = list(pool.map(lambda r: _commit_holds(plan, out, r, provenance), records))
    return {r.shard for r, ok in zip(records, intact) if ok}


def _commit_holds(plan: Plan, out: Objects, record: ShardCommit, provenance=None) -> bool:
    """A commit counts only if it is this plan's shard, every object it lists is there with its
    recorded size and sha256 (a flipped bit or a truncated object makes the shard be redone), its
    shard record is the one those objects and the plan give, and the record's sample hashes are
    those the stored provenance recorded (the tar's JSON members, or ``provenance``, the zarr
    provenance array, for zarr-only datasets)."""
    if record.dataset_id != plan.dataset_id or not 0 <= record.shard < len(plan.shards):
        return False
    want = plan.shards[record.shard]
    if (record.start, record.count, tuple(record.scans)) != (want.start, want.count, want.scans):
        return False
    stored = {}
    for key, f in record.files.items():
        try:
            data = out.get(key)
        except FileNotFoundError:
            return False
        if len(data) != f.bytes or hashlib.sha256(data).hexdigest() != f.sha256:
            return False
        if key in (tar_name(record.shard), record_key(record.shard)):
            stored[key] = data
    # The record's sample hashes (what readers check samples against) are checked against the
    # stored provenance, and its objects against the commit: an edited one is redone, not trusted.
    try:
        entry = ShardEntry.from_json(loads(stored[record_key(record.shard)], "record"), "record")
        if tar_name(record.shard) in stored:
            found = codecs.tar_provenance(stored[tar_name(record.shard)])
        else:
            found = [(p["key"], p) for p in (json.loads(str(t)) for t in
                                             provenance[record.start:record.start + record.count])]
    except Exception:                 # no record, unreadable record or provenance: redo the shard
        return False
    data_files = {k: f for k, f in record.files.items() if k != record_key(record.shard)}
    if (entry.dataset_id, entry.shard, entry.start, entry.count, entry.scans, entry.files) != \
            (record.dataset_id, record.shard, record.start, record.count, record.scans,
             data_files):
        return False
    return [(s.key, s.image_sha256, s.label_sha256) for s in entry.samples] == \
        [(k, p.get("image_sha256"), p.get("label_sha256")) for k, p in found]


def _metadata_objects(plan: Plan) -> dict[str, bytes]:
    """The dataset's objects outside its shards (the zarr.json files), a function of the plan."""
    if "zarr" not in plan.spec.formats:
        return {}
    attrs = {"dataset_id": plan.dataset_id, "root_seed": plan.spec.root_seed,
             "samples_per_shard": plan.spec.samples_per_shard, "index": INDEX}
    return codecs.zarr_metadata(plan.spec.samples, plan.spec.samples_per_shard,
                                plan.spec.generator.crop_size, attrs, plan.spec.compression,
                                plan.spec.generator.target_spacing_mm)


def _read_commit(out: Objects, key: str) -> ShardCommit | None:
    """A commit record, or None if it is unreadable (its shard is then redone)."""
    try:
        return ShardCommit.from_json(loads(out.get(key), out.url(key)), out.url(key))
    except (RecordError, FileNotFoundError):
        return None


def _write_index(plan: Plan, out: Objects, versions: dict) -> DatasetIndex:
    """index.json (format 2) from the commits: each shard's record (size, sha256) and scans.

    Only what the index needs is taken from each commit (its shard record's size and sha256, for
    this dataset and shard); the commits were checked in full when the run resumed or wrote
    them. On S3 the commits are read on a thread pool (each a round trip); on local disk one by
    one, which is faster than threads contending for the interpreter (10 million samples:
    156,250 commits)."""
    def listed(k: int) -> FileRecord | None:
        try:
            obj = json.loads(out.get(commit_key(k)))
            if obj.get("dataset_id") != plan.dataset_id or obj.get("shard") != k:
                return None
            return FileRecord.from_json(obj["files"][record_key(k)], commit_key(k))
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError, RecordError):
            return None
    shards = [s.index for s in plan.shards]
    if out.remote:
        with ThreadPoolExecutor(max_workers=RESUME_CHECK_THREADS) as pool:
            files = list(pool.map(listed, shards))
    else:
        files = [listed(k) for k in shards]
    for k, record in zip(shards, files):
        if record is None:
            raise JobError(f"{out.url(commit_key(k))}: commit record missing or unreadable; "
                           "rerun the job to redo that shard")
    # Where it was written and how it ran are not part of the dataset (it may be copied or moved).
    spec = {k: v for k, v in plan.spec.to_json().items() if k not in ("output", "resources")}
    index = DatasetIndex(format=INDEX_FORMAT, dataset_id=plan.dataset_id, spec=spec,
                         samples=plan.spec.samples, samples_per_shard=plan.spec.samples_per_shard,
                         formats=tuple(plan.spec.formats), versions=versions, plan=PLAN,
                         shards=(), table=ShardTable.build(files, [s.scans for s in plan.shards]),
                         metadata={k: FileRecord(len(v), hashlib.sha256(v).hexdigest())
                                   for k, v in _metadata_objects(plan).items()})
    out.put(INDEX, index.to_bytes())
    return index


def shards_to_repair(spec: JobSpec) -> tuple[list[int], list[tuple[str, str]]]:
    """What ``verify`` finds wrong in the dataset at ``spec.output``: (the shards to rewrite, the
    problems that are not a shard's: the plan, the index, extra objects). Those are rewritten by
    any run (plan.json, metadata, index.json) or only reported (extra objects)."""
    import re
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    from .audit import verify
    try:
        ds = Dataset(spec.output)
    except DatasetError as exc:
        raise JobError(f"nothing to repair: {exc}; run the job to finish it") from None
    owner = {}
    for k in range(ds.index.shard_count):
        owner.update({commit_key(k): k, record_key(k): k})
        try:
            owner.update({name: k for name in ds.shard(k).files})
        except DatasetError:          # a bad record: verify names it, and it maps to k above
            pass
    bad, other = set(), []
    for where, what in verify(ds):
        name = where.split(" (")[0]
        m = re.fullmatch(r"shard (\d+)", name)
        i = sample_index(ds.dataset_id, name)
        if m:
            bad.add(int(m.group(1)))
        elif name in owner:
            bad.add(owner[name])
        elif i is not None and 0 <= i < len(ds):
            bad.add(i // ds.samples_per_shard)
        else:
            other.append((where, what))
    return sorted(bad), other


def run_job(spec: JobSpec, address: str | None = None, progress: bool = True,
            log=print, actor_env: dict | None = None, redo: frozenset = frozenset()
            ) -> JobResult:
    """Run (or resume) a generation job. Returns a result; ``result.failed`` names failed shards.

    ``actor_env`` adds environment variables to the writer actors (Ray runtime_env). ``redo``:
    shards to rewrite even if their commit holds (``--repair``: what verify found bad).
    """
    t0 = time.perf_counter()
    entries = read_entries(spec)             # a bad manifest fails before any cluster starts
    check_output_reachable(spec.output)
    ray = _init_ray(address)
    spec = resolve_backend(spec, ray)
    plan = make_plan(spec, entries)
    out = Objects(spec.output)
    try:
        lock = OutputLock(out, LOCK).acquire()    # one run per output, local disk or S3
    except LockHeld as exc:
        raise JobError(str(exc)) from None
    # Prepared scans are shared by the job's actors on a node through this folder (one
    # preparation per scan per node, not per actor); removed with the job.
    prepared_dir = tempfile.mkdtemp(prefix="tumorforge-prepared-")
    try:
        return _run_locked(spec, plan, out, ray, progress, log, actor_env, t0, redo,
                           prepared_dir)
    finally:
        lock.release()
        shutil.rmtree(prepared_dir, ignore_errors=True)


def _run_locked(spec: JobSpec, plan: Plan, out: Objects, ray, progress: bool, log, actor_env,
                t0: float, redo: frozenset = frozenset(), prepared_dir: str | None = None
                ) -> JobResult:
    """The job once it holds the output's lock."""
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
    committed = prepare_output(plan, out) - set(redo)
    pending = [s.index for s in plan.shards if s.index not in committed]
    result = JobResult(plan.dataset_id, spec.output, len(plan.shards), len(committed), 0)
    log(f"dataset {plan.dataset_id}: {spec.samples} samples in {len(plan.shards)} shard(s) of "
        f"{spec.samples_per_shard}; {len(committed)} already committed, {len(pending)} to write; "
        f"backend {spec.backend}, {spec.resources.actors} actor(s), formats {list(spec.formats)}")

    res = spec.resources
    options = dict(num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor, max_restarts=0)
    if actor_env:
        options["runtime_env"] = {"env_vars": dict(actor_env)}
    actor_cls = ray.remote(ShardWorker).options(**options)
    sched = Scheduler({s.index: s.scans for s in plan.shards}, list(pending),
                      shard_retries=res.shard_retries,
                      actor_start_budget=res.shard_retries * max(1, len(plan.shards)))
    handles: dict[int, object] = {}       # actor id -> handle
    starting: dict = {}                   # readiness ref -> actor id
    running: dict = {}                    # shard task ref -> actor id
    counter = iter(range(1 << 30))

    def start_actor():
        actor_id = next(counter)
        handles[actor_id] = actor_cls.remote(plan.skeleton(), prepared_dir)
        starting[handles[actor_id].pid.remote()] = actor_id

    def feed_idle():
        for actor_id, shard in sched.assignments():
            running[handles[actor_id].write_shard.remote(*plan.task(shard))] = actor_id

    for _ in range(min(res.actors, max(1, len(pending)))):
        start_actor()
    bar = _progress(sum(plan.shards[k].count for k in pending), progress)
    run_log = []
    while running or (sched.pending_count and (sched.live or starting)):
        # With nothing running, wait for an actor to start, but not forever (no capacity left).
        timeout = None if running else ACTOR_START_TIMEOUT_S
        done, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=timeout)
        if not done:
            sched.give_up(f"no writer actor could start within {ACTOR_START_TIMEOUT_S} s "
                          f"(cluster lacks {res.cpus_per_actor} CPU / {res.gpus_per_actor} GPU free)")
            break
        ref = done[0]
        if ref in starting:
            actor_id = starting.pop(ref)
            try:
                ray.get(ref)
                sched.actor_started(actor_id)
            except (RayActorError, WorkerCrashedError) as exc:
                log(f"a writer actor failed to start: {str(exc).splitlines()[0][:200]}")
                handles.pop(actor_id)
                result.actor_restarts += 1
                if sched.actor_start_failed():
                    start_actor()
            feed_idle()
            continue
        actor_id = running.pop(ref)
        try:
            record = ray.get(ref)
        except (RayActorError, WorkerCrashedError) as exc:
            result.actor_restarts += 1
            reason = str(exc).splitlines()[0][:200]
            shard, retry = sched.actor_died(actor_id, reason)
            log(f"shard {shard}: actor died ({reason}); "
                f"{'retrying on another actor' if retry else 'giving up'}")
            ray.kill(handles.pop(actor_id), no_restart=True)
            start_actor()
            feed_idle()
            continue
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            shard = sched.busy[actor_id]
            # A scan that cannot be loaded fails every pending shard that needs it: no retries.
            sched.shard_failed(actor_id, str(cause),
                               cause.scan_id if isinstance(cause, ScanLoadFailed) else None)
            log(f"shard {shard} failed: {cause}")
            feed_idle()
            continue
        shard = sched.shard_written(actor_id)
        result.written += 1
        result.samples += record.count
        result.bytes += sum(f.bytes for f in record.files.values())
        run_log.append({"shard": shard, "seconds": record.seconds, "worker": record.worker})
        bar.update(record.count)
        feed_idle()
    result.failed.update(sched.failed)
    bar.close()
    for handle in handles.values():
        ray.kill(handle, no_restart=True)
    out.remove_stale_temporaries()        # of actors killed mid-write whose shard went elsewhere
    result.seconds = time.perf_counter() - t0
    versions = _versions()
    if result.ok:
        _write_index(plan, out, versions)
    report = {"dataset_id": plan.dataset_id, "output": spec.output, "ok": result.ok,
              "shards": len(plan.shards), "committed_before": len(committed),
              "written": result.written, "samples_written": result.samples,
              "bytes_written": result.bytes, "seconds": round(result.seconds, 3),
              "samples_per_second": round(result.samples / max(result.seconds, 1e-9), 3),
              "actor_restarts": result.actor_restarts,
              "failed": {str(k): v for k, v in sorted(result.failed.items())},
              "versions": versions, "backend": spec.backend,
              "resources": dataclasses.asdict(spec.resources), "shard_log": run_log,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.put(REPORT, json.dumps(report, indent=1).encode())
    return result


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="sample", disable=not enabled or total == 0, file=sys.stderr,
                smoothing=0.1, dynamic_ncols=True)
