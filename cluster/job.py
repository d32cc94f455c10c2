"""The generation job driver: plan, check the output, dispatch shards to Ray actors, commit, index.

Order of writes in the output: ``plan.json`` (identity; refuses a different dataset), the storage
formats' metadata (zarr.json files), then per shard its data objects in every format of the job and
``_commits/shard-NNNNNN.json``, and ``index.json`` last, only when every shard is committed. A
rerun skips committed shards (resume); a different spec or manifest gives a different
``dataset_id`` and is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from tumorforge.generator import GENERATOR_VERSION
from tumorforge.generator.tumor_models import PLUGINS_ENV
from tumorforge.manifests.organs import get_organ
from tumorforge.manifests.schema import ManifestError, default_roots, read_manifest

from tumorforge.manifests.dataset.formats import FORMATS
from tumorforge.manifests.dataset.names import (CARD, COMMITS, INDEX, LOCK, PLAN, REPORT,
                                                commit_key, record_key, sample_index)
from tumorforge.manifests.dataset.reader import COMMIT_MAX_BYTES
from tumorforge.manifests.dataset.records import (FORMAT_CHECKS, FORMAT_NAMES, WRITABLE_FORMATS,
                                                  DatasetIndex, FileRecord, Provenance,
                                                  ShardCommit, ShardEntry, ShardTable)
from tumorforge.manifests.dataset.storage_format import DatasetLayout
from tumorforge.manifests.dataset.store import (LockHeld, Objects, ObjectTooLarge, OutputLock,
                                                owner_is_dead, process_record)
from tumorforge.manifests.errors import UserError
from tumorforge.manifests.records import RecordError, loads, pretty_json

from .plan import Plan, make_plan
from .scheduler import Scheduler
from .spec import JobSpec
from .tally import TALLY_POLL_S, BarCount, SampleTally
from .worker import ScanLoadFailed, ShardWorker

ACTOR_START_TIMEOUT_S = 300
RESUME_CHECK_THREADS = 8      # objects hashed at once when a rerun checks committed shards
AUTH_MODE, AUTH_TOKEN = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"   # Ray's token authentication


class JobError(UserError, RuntimeError):
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


def start_embedded(ray, dashboard: bool = False) -> None:
    """Start the embedded single-machine cluster: every Ray server on the loopback interface,
    Ray's token authentication on (the token in ``RAY_AUTH_TOKEN``, or else a fresh random one made
    for this process, never written to disk or logged), the dashboard off unless ``dashboard``,
    Ray's files in a folder only this user can enter, and no fixed port (two embedded jobs on one
    host run side by side).

    Loopback keeps other hosts out; other users of this host can still reach loopback ports, and
    the token is what refuses them (tested). The token lives in this process's environment, which
    Ray's processes inherit, for as long as the process runs.

    How (Ray 2.60, read from its source): Ray rewrites the node address ``127.0.0.1`` to the host's
    address while ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is true (env
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read once at ``import ray``; ``services.py`` reads it as
    ``ray_constants.ENABLE_RAY_CLUSTER`` at call time, no module copies it). With it false the node
    address stays ``127.0.0.1`` and every server binds loopback (its C++ servers bind loopback
    exactly when the node address is ``"127.0.0.1"``). After ``ray.init`` the addresses Ray reports
    and the listening sockets of the processes it started are checked; anything but loopback
    shuts the cluster down and raises :class:`JobError` (fail closed).
    """
    import ray._private.ray_constants as ray_constants
    os.environ[AUTH_MODE] = "token"
    if not os.environ.get(AUTH_TOKEN):
        os.environ[AUTH_TOKEN] = secrets.token_hex(32)
    refresh_ray_config()
    # Fixed ports Ray does not take from ray.init: the autoscaler's and the dashboard head's
    # Prometheus ports (44217, 44227; read from the environment by those child processes).
    # RAY_ADDRESS would make ray.init join that cluster instead (--address is the way to do that).
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": None,
           "AUTOSCALER_METRIC_PORT": str(_free_loopback_port()),
           "DASHBOARD_METRIC_PORT": str(_free_loopback_port())}
    options = dict(include_dashboard=dashboard, log_to_driver=False,
                   _node_ip_address=LOOPBACK, _temp_dir=private_ray_dir())
    if dashboard:
        options.update(dashboard_host=LOOPBACK, dashboard_port=_free_loopback_port())
    switch = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environ(env), _any_agent_http_port():
            ray.init(**options)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = switch
    try:
        _check_loopback(ray)
    except JobError:
        ray.shutdown()
        raise


LOOPBACK = "127.0.0.1"


def _check_loopback(ray) -> None:
    """Fail closed: the node, GCS and raylet addresses Ray reports are 127.0.0.1, and no process
    Ray started so far (GCS, raylet, monitor, dashboard and their descendants: agents, workers)
    listens on anything but loopback. (This process's own sockets are not looked at: a caller's
    server is not Ray's; the driver's core worker binds the node address checked here.)"""
    node = ray._private.worker._global_node
    gcs_host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    nodes = ray.nodes()
    found = {"node": getattr(node, "node_ip_address", None), "gcs": gcs_host,
             "raylet": nodes[0].get("NodeManagerAddress") if nodes else None}
    wrong = {k: v for k, v in found.items() if v != LOOPBACK}
    started = [info.process.pid for infos in getattr(node, "all_processes", {}).values()
               for info in infos if getattr(info, "process", None) is not None]
    wrong.update({f"pid {pid} ({name})": f"{ip}:{port}"
                  for started_pid in started
                  for pid, name, ip, port in listening_sockets(started_pid)
                  if not is_loopback(ip)})
    if not started:
        wrong["Ray's processes"] = "none found to check"
    if wrong:
        raise JobError("the embedded Ray cluster is not confined to loopback ("
                       + ", ".join(f"{k}: {v}" for k, v in sorted(wrong.items()))
                       + "); refusing to run (this Ray release may bind differently: pin "
                         "ray 2.60 or use --address with a cluster you have secured)")


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or 127.x as an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``: how
    gRPC binds 127.0.0.1 on a dual-stack socket; it accepts IPv4 loopback connections only)."""
    import ipaddress
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def listening_sockets(pid: int) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of process ``pid`` and
    its descendants (psutil; processes that vanish meanwhile are skipped)."""
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, name, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return found


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environ(updates: dict):
    """``os.environ`` with ``updates`` (None: unset) for the block (Ray's child processes inherit
    it), restored after."""
    saved = {k: os.environ.get(k) for k in updates}
    for k, v in updates.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _any_agent_http_port():
    """The dashboard agent's HTTP port is fixed at 52365 by ``RayParams``' default, and ray.init
    has no argument for it (``ray start --dashboard-agent-listen-port`` has). Ray's node takes 0 as
    "any free port" (the agent records the port it bound in the session). ray.init builds its
    ``RayParams`` through the module attribute, so a subclass with that default stands in for the
    call."""
    from ray._private import parameter
    original = parameter.RayParams

    class RayParams(original):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = RayParams
    try:
        yield
    finally:
        parameter.RayParams = original


RAY_DIR_BUDGET = 40   # Ray's longest Unix socket path adds ~67 bytes; AF_UNIX allows 107


def private_ray_dir() -> str:
    """Where the embedded cluster keeps its sessions: ``<tmp>/tumorforge-<uid>/ray``. Ray makes
    every folder it creates 0777 (``try_make_directory_shared``); the parent is this user's, 0700,
    so no other user can enter. A parent owned by someone else, or a symlink, is refused. ``/tmp``
    is used when the temporary folder's path is too long for Ray's socket paths."""
    import stat
    base = tempfile.gettempdir()
    if len(base) + len(f"/tumorforge-{os.getuid()}/ray") > RAY_DIR_BUDGET:
        base = "/tmp"
    parent = os.path.join(base, f"tumorforge-{os.getuid()}")
    try:
        os.mkdir(parent, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise OperatorError(f"{parent} is not a folder of this user (uid {os.getuid()}); "
                            "remove it or set TMPDIR elsewhere")
    if st.st_mode & 0o077:
        os.chmod(parent, 0o700)
    return os.path.join(parent, "ray")


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
        intact = list(pool.map(lambda r: _commit_holds(plan, out, r), records))
    return {r.shard for r, ok in zip(records, intact) if ok}


def keep_output_format(plan: Plan, out: Objects, log=print) -> Plan:
    """``plan`` writing the dataset format its output was started in, so that a dataset is
    resumed and grown in its own format (plan.json names it; one written before format 3 names
    none: format 2); a new output, or another dataset's, gets the spec's."""
    try:
        old = loads(out.get(PLAN), out.url(PLAN))
    except (FileNotFoundError, RecordError):
        return plan                       # nothing there, or prepare_output names the problem
    if not isinstance(old, dict) or old.get("dataset_id") != plan.dataset_id:
        return plan
    fmt = old.get("dataset_format", 2)
    if fmt == plan.spec.dataset_format or fmt not in WRITABLE_FORMATS:
        return plan
    log(f"{out.url(PLAN)}: this dataset was started in format {fmt}; it is written in format "
        f"{fmt}, not {plan.spec.dataset_format}")
    return replace(plan, spec=replace(plan.spec, dataset_format=fmt))


def _commit_holds(plan: Plan, out: Objects, record: ShardCommit) -> bool:
    """A commit counts only if it is this plan's shard, every object it lists is there with its
    recorded size and checksum (sha256, or crc32c for a format 3 shard's data objects: a flipped
    bit or a truncated object makes the shard be redone), its data objects are the plan's storage
    formats' own, its shard record is the one those objects and the plan give, in the plan's
    dataset format, and the record's sample digests are those the provenance each storage format
    stored recorded (the tar's JSON members, the zarr provenance array)."""
    if record.dataset_id != plan.dataset_id or not 0 <= record.shard < len(plan.shards):
        return False
    want = plan.shards[record.shard]
    if (record.start, record.count, tuple(record.scans)) != (want.start, want.count, want.scans):
        return False
    k, fmt = record.shard, plan.spec.dataset_format
    formats = [FORMATS[name] for name in plan.spec.formats]
    kept = {record_key(k), *(storage.provenance_object(k) for storage in formats)}
    stored = {}
    for key, f in record.files.items():
        try:
            data = out.get(key, f.bytes)
        except (OSError, ObjectTooLarge):  # missing, not a regular file, larger than recorded
            return False
        if f.problem(data):
            return False
        if key in kept:
            stored[key] = data
    # The record's sample digests (what readers check samples against) are checked against the
    # stored provenance, and its objects against the commit: an edited one is redone, not trusted.
    try:
        entry = ShardEntry.from_json(loads(stored[record_key(k)], "record"), "record", fmt)
        stored_digests = [[(p["key"], *Provenance.digests(p)) for p in storage.decode_provenance(
            stored[storage.provenance_object(k)], plan.spec.samples_per_shard, record.count,
            out.url(storage.provenance_object(k)))] for storage in formats]
    except Exception:                 # no record, unreadable record or provenance: redo the shard
        return False
    data_files = {key: f for key, f in record.files.items() if key != record_key(k)}
    if (entry.dataset_id, entry.shard, entry.start, entry.count, entry.scans, entry.files,
            entry.checks) != (record.dataset_id, k, record.start, record.count, record.scans,
                              data_files, FORMAT_CHECKS[fmt]):
        return False
    if not set(data_files) <= {key for storage in formats for key in storage.objects(k)}:
        return False
    want = [(s.key, s.digest, s.image, s.label) for s in entry.samples]
    return all(digests == want for digests in stored_digests)


def _metadata_objects(plan: Plan) -> dict[str, bytes]:
    """The dataset's objects outside its shards (the storage formats' own: zarr.json files), a
    function of the plan."""
    spec = plan.spec
    layout = DatasetLayout(
        samples=spec.samples, per_shard=spec.samples_per_shard,
        crop=spec.generator.crop_size, compression=spec.compression,
        spacing_mm=spec.generator.target_spacing_mm,
        classes=get_organ(spec.generator.organ).classes,
        attrs={"dataset_id": plan.dataset_id, "root_seed": spec.root_seed,
               "samples_per_shard": spec.samples_per_shard, "index": INDEX})
    out: dict[str, bytes] = {}
    for name in spec.formats:
        out.update(FORMATS[name].metadata(layout))
    return out


def _read_commit(out: Objects, key: str) -> ShardCommit | None:
    """A commit record, or None if it is unreadable (its shard is then redone)."""
    try:
        return ShardCommit.from_json(loads(out.get(key, COMMIT_MAX_BYTES), out.url(key)),
                                     out.url(key))
    except (RecordError, FileNotFoundError, ObjectTooLarge):
        return None


def _write_index(plan: Plan, out: Objects, versions: dict) -> DatasetIndex:
    """index.json (the plan's dataset format, 2 or 3) from the commits: each shard's record
    (size, sha256) and scans; then the dataset's card (``DATASET.md``) beside it.

    Each commit is read through its typed record and only its shard record's size and sha256 are
    taken, for this dataset and shard; the commits were checked in full when the run resumed or
    wrote them. On S3 the commits are read on a thread pool (each a round trip); on local disk one
    by one, which is faster than threads contending for the interpreter (10 million samples:
    156,250 commits)."""
    def listed(k: int) -> FileRecord | None:
        commit = _read_commit(out, commit_key(k))
        if commit is None or (commit.dataset_id, commit.shard) != (plan.dataset_id, k):
            return None
        record = commit.files.get(record_key(k))
        return record if record is not None and record.check == "sha256" else None
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
    # Where it was written and how it ran are not part of the dataset (it may be copied or moved);
    # its format is the index's own.
    spec = {k: v for k, v in plan.spec.to_json().items()
            if k not in ("output", "resources", "dataset_format")}
    index = DatasetIndex(format=FORMAT_NAMES[plan.spec.dataset_format],
                         dataset_id=plan.dataset_id, spec=spec,
                         samples=plan.spec.samples, samples_per_shard=plan.spec.samples_per_shard,
                         formats=tuple(plan.spec.formats), versions=versions, plan=PLAN,
                         shards=(), table=ShardTable.build(files, [s.scans for s in plan.shards]),
                         metadata={k: FileRecord.of(v) for k, v in _metadata_objects(plan).items()})
    out.put(INDEX, index.to_bytes())
    from .dataset_card import dataset_card
    out.put(CARD, dataset_card(plan, index).encode())     # for people; not part of the dataset
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
    if lock.replaced is not None:
        log(f"took over the output lock of a dead run ({lock.replaced.get('owner', 'unknown')})")
    # Prepared scans are shared by the job's actors on a node through this folder (one
    # preparation per scan per node, not per actor); removed with the job, or by the next run on
    # this host if this process is killed.
    prepared_dir = make_prepared_dir(log)
    try:
        return _run_locked(spec, plan, out, ray, progress, log, actor_env, t0, redo,
                           prepared_dir)
    finally:
        lock.release()
        shutil.rmtree(prepared_dir, ignore_errors=True)


PREPARED_PREFIX = "tumorforge-prepared-"


def _owner_tag() -> str:
    """``<host>-<pid>-<start>`` of this process for a folder's name: the host as 8 hex digits of
    its boot id and pid namespace (a folder made on another node by this job's actors is never
    judged here), the start in kernel clock ticks (or centiseconds of wall time without /proc)."""
    me = process_record()
    host = hashlib.sha256(f"{me['host']}/{me['machine']}".encode()).hexdigest()[:8]
    start = me.get("start_ticks")
    return f"{host}-{me['pid']}-{start if start is not None else 't%d' % (me['started'] * 100)}"


def make_prepared_dir(log=print, base: str | None = None) -> str:
    """A new folder (0700) for this job's prepared scans, named after this process, once the
    folders of dead drivers of this user on this host are removed."""
    removed = remove_dead_prepared_dirs(base)
    if removed:
        log(f"removed {removed} prepared-scan folder(s) left by killed run(s)")
    return tempfile.mkdtemp(prefix=f"{PREPARED_PREFIX}{_owner_tag()}-", dir=base)


def remove_dead_prepared_dirs(base: str | None = None) -> int:
    """Remove this user's ``tumorforge-prepared-<host>-<pid>-<start>-*`` folders of this host whose
    process is dead (gone, or the pid reused by a process with another start). Folders of live
    runs, of other hosts and users, and older unnamed ones are left alone."""
    import re
    base = base or tempfile.gettempdir()
    host = _owner_tag().split("-", 1)[0]
    pattern = re.compile(rf"{re.escape(PREPARED_PREFIX)}([0-9a-f]{{8}})-(\d+)-(t?)(\d+)-.+")
    removed = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        m = pattern.fullmatch(name)
        if not m or m.group(1) != host:
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid():
            continue
        pid, wall, start = int(m.group(2)), m.group(3), int(m.group(4))
        owner = {"host": socket.gethostname(), "pid": pid,
                 **({"started": start / 100} if wall else {"start_ticks": start})}
        if owner_is_dead(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _run_locked(spec: JobSpec, plan: Plan, out: Objects, ray, progress: bool, log, actor_env,
                t0: float, redo: frozenset = frozenset(), prepared_dir: str | None = None
                ) -> JobResult:
    """The job once it holds the output's lock."""
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
    plan = keep_output_format(plan, out, log)
    committed = prepare_output(plan, out) - set(redo)
    pending = [s.index for s in plan.shards if s.index not in committed]
    result = JobResult(plan.dataset_id, spec.output, len(plan.shards), len(committed), 0)
    log(f"dataset {plan.dataset_id}: {spec.samples} samples in {len(plan.shards)} shard(s) of "
        f"{spec.samples_per_shard}; {len(committed)} already committed, {len(pending)} to write; "
        f"backend {spec.backend}, {spec.resources.actors} actor(s), formats {list(spec.formats)}")

    res = spec.resources
    options = dict(num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor, max_restarts=0)
    # Registered tumor models travel to the actors by name: they import the same plugin modules.
    env = {**({PLUGINS_ENV: os.environ[PLUGINS_ENV]} if os.environ.get(PLUGINS_ENV) else {}),
           **(actor_env or {})}
    if env:
        options["runtime_env"] = {"env_vars": env}
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

    bar = _progress(sum(plan.shards[k].count for k in pending), progress)
    # The bar moves per sample: writers tell a tally actor (no CPU) how far their shard is.
    tally = (ray.remote(SampleTally).options(num_cpus=0).remote()
             if not bar.disable else None)
    shown = BarCount(bar)

    def feed_idle():
        for actor_id, shard in sched.assignments():
            running[handles[actor_id].write_shard.remote(*plan.task(shard), tally)] = actor_id

    for _ in range(min(res.actors, max(1, len(pending)))):
        start_actor()
    run_log = []
    next_poll = time.monotonic() + TALLY_POLL_S
    while running or (sched.pending_count and (sched.live or starting)):
        # With nothing running, wait for an actor to start, but not forever (no capacity left).
        timeout = None if running else ACTOR_START_TIMEOUT_S
        if tally is not None and running:             # wake up for the next read of the tally
            timeout = max(0.0, next_poll - time.monotonic())
        done, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=timeout)
        if tally is not None and running and time.monotonic() >= next_poll:
            next_poll = time.monotonic() + TALLY_POLL_S
            try:                          # samples of the shards in flight
                counts = ray.get(tally.snapshot.remote())
            except RayActorError:         # the bar goes back to moving per shard; data is safe
                counts, tally = {}, None
            shown.partial(sum(counts.get(sched.busy[a], 0) for a in running.values()
                              if a in sched.busy))
        if not done and running:
            continue
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
        shown.committed(record.count)
        feed_idle()
    result.failed.update(sched.failed)
    bar.close()
    for handle in [*handles.values(), *([tally] if tally is not None else [])]:
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
