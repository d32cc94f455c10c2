"""Whole-object writes and reads under a dataset's root URL (local folder, ``file://``, ``s3://``).

Every object is written in one go (:func:`manifests.storage.write_atomic`): a reader never sees
half an object, and a writer that dies mid-write leaves at most a temporary name, which
:meth:`Objects.remove_stale_temporaries` clears on the next run.

Reads are bounded: on local disk an object must be a regular file (a symlink is followed to what
it names; a named pipe would block the reader forever and ``/dev/zero`` never ends), checked
before it is opened and again on the open descriptor, and a read never takes more than the size
the caller expects (what the index or a shard's record says, or a cap).
"""

from __future__ import annotations

import glob
import json
import os
import socket
import stat
import threading
import time
import uuid

from .. import storage
from .records import FileRecord
from ..errors import UserError


class Objects:
    """Named objects (relative '/'-separated keys) below a root URL."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.remote = storage.is_remote(root)
        self.fs, self.base = storage.filesystem(self.root)
        if not self.remote:
            self.base = os.path.abspath(self.base)

    def path(self, key: str) -> str:
        return f"{self.base}/{key}"

    def url(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data, check: str = "sha256") -> FileRecord:
        """Write ``data`` (bytes, or the list of pieces that make the object) at ``key``
        atomically; returns its size and checksum by ``check`` (sha256 or crc32c). On local disk
        the temporaries an earlier writer of ``key`` left (a killed actor whose shard is retried)
        are removed first: one writer owns a shard, so no live writer holds them."""
        if not self.remote:
            for stale in glob.glob(glob.escape(self.path(key)) + storage.TMP_MARK + "*"):
                os.remove(stale)
        storage.write_atomic(self.url(key) if self.remote else self.path(key), data)
        return FileRecord.of(data, check)

    def create(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` only if nothing is there; FileExistsError otherwise. Local
        disk: a hard link from a complete temporary (atomic, never half-written); S3: a PUT with
        If-None-Match: *."""
        if self.remote:
            try:
                self.fs.pipe_file(self.path(key), data, mode="create")
            except FileExistsError:
                raise
            except OSError as exc:          # s3fs reports 412 Precondition Failed as OSError
                if "Precondition" in str(exc) or "412" in str(exc):
                    raise FileExistsError(self.url(key)) from None
                raise
            return
        final = self.path(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}{storage.TMP_MARK}{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)
        finally:
            os.remove(tmp)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm(self.path(key))
        except FileNotFoundError:
            pass

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The object's bytes; :class:`ObjectTooLarge` when it holds more than ``limit`` bytes
        (nothing beyond ``limit`` + 1 is read: one ranged GET on S3), and on local disk
        :class:`~tumorforge.manifests.storage.NotRegularFileError` for anything but a regular
        file."""
        if self.remote:
            data = self.fs.cat_file(self.path(key)) if limit is None else \
                self.fs.cat_file(self.path(key), end=limit + 1)
        else:
            with self._open_local(key) as f:
                size = os.fstat(f.fileno()).st_size
                if limit is not None and size > limit:
                    raise self._too_large(key, size, limit)
                # One byte more than fstat says: a file that grew since is seen.
                data = f.read() if limit is None else f.read(size + 1)
        if limit is not None and len(data) > limit:
            raise self._too_large(key, None, limit)
        return data

    def _too_large(self, key: str, size: int | None, limit: int) -> "ObjectTooLarge":
        found = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return ObjectTooLarge(f"{self.url(key)}: {found}, expected at most {limit}")

    def open(self, key: str, limit: int | None = None):
        """A binary file object reading the object as a stream (buffered ranged reads on S3; a
        regular file on local disk); :class:`ObjectTooLarge` when it holds more than ``limit``
        bytes."""
        f = self.fs.open(self.path(key), "rb") if self.remote else self._open_local(key)
        size = f.size if self.remote else os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            f.close()
            raise self._too_large(key, size, limit)
        return f

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start..end-1`` of an object: one ranged GET on S3, a seek on local disk."""
        if self.remote:
            return self.fs.cat_file(self.path(key), start=start, end=end)
        with self._open_local(key) as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def _open_local(self, key: str):
        """The local object opened for reading, refused unless it is a regular file: checked
        before opening (opening a FIFO blocks until a writer comes) and on the descriptor (it may
        have been swapped in between). FileNotFoundError if it is missing."""
        path = self.path(key)
        _refuse_unless_regular(self.url(key), os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            _refuse_unless_regular(self.url(key), os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def list(self, prefix: str) -> list[str]:
        """Keys below ``prefix`` (recursive), relative to the root, sorted."""
        base = self.path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return []
        start = len(self.base.rstrip("/")) + 1
        return sorted(p[start:] for p in self.fs.find(base))

    def remove_stale_temporaries(self) -> int:
        """Delete temporaries left by a writer that died mid-write (local disk only)."""
        if self.remote:
            return 0
        stale = [k for k in self.list("") if storage.TMP_MARK in k.rsplit("/", 1)[-1]]
        for key in stale:
            os.remove(self.path(key))
        return len(stale)


class ObjectTooLarge(UserError, ValueError):
    """An object larger than its reader expects (the size an index or a record gives, or a
    cap): refused before it is read into memory."""


def _refuse_unless_regular(url: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    what = ("a directory" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise storage.NotRegularFileError(f"{url} is {what}; expected a regular file")


class LockHeld(UserError, RuntimeError):
    """Another live run holds the output's lock."""


def _boot_and_pid_namespace() -> str:
    """What makes a pid mean one process: this kernel's boot (``boot_id``) and the pid namespace
    (two containers on one host share a boot but not their pids). Empty where /proc is absent."""
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)


def _proc_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from ``/proc/<pid>/stat`` (Linux: immune to
    clock changes, unlike a wall-clock start time), or None without /proc or such a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()     # after the command name, which may hold ')'
    return fields[0].decode(), int(fields[19])


def process_record(pid: int | None = None) -> dict:
    """Who a process is, for a lock or a folder it owns: host, boot and pid namespace, pid, and
    its start (``started``: psutil's create_time; ``start_ticks``: the kernel's, on Linux)."""
    import psutil
    pid = os.getpid() if pid is None else pid
    rec = {"host": socket.gethostname(), "machine": _boot_and_pid_namespace(), "pid": pid,
           "started": psutil.Process(pid).create_time()}
    proc = _proc_start(pid)
    if proc is not None:
        rec["start_ticks"] = proc[1]
    return rec


def owner_is_dead(rec: dict) -> bool | None:
    """True when ``rec`` (:func:`process_record`, or an older lock's ``owner: "host:pid"``) names
    a process of this host and pid namespace that is gone: no such pid, a zombie, or a pid now used
    by a process with another start time. False when it is alive; None when it cannot be told
    (another host or namespace: judge by heartbeat)."""
    import psutil
    host, pid = rec.get("host"), rec.get("pid")
    if host is None and isinstance(rec.get("owner"), str):       # locks written before 0.6
        host, _, digits = rec["owner"].rpartition(":")
        pid = int(digits) if digits.isdigit() else None
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) \
            or pid <= 0:
        return None
    if "machine" in rec and rec["machine"] != _boot_and_pid_namespace():
        return None
    proc = _proc_start(pid)
    if proc is not None:
        state, ticks = proc
        if state == "Z":
            return True
        if isinstance(rec.get("start_ticks"), int):
            return rec["start_ticks"] != ticks
    else:                            # no /proc entry we can read: does the pid exist at all?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:      # another user's live process (/proc hidden from us)
            return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return True
        started = p.create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False
    if isinstance(rec.get("started"), (int, float)):
        return abs(started - rec["started"]) > 1.0
    return False                     # an older lock: the pid is in use, assume it is its owner


class OutputLock:
    """One writer per output: ``_lock.json`` created exclusively (local disk: a hard link; S3: a
    PUT with ``If-None-Match: *``), holding its owner (:func:`process_record`), a random token and
    a heartbeat the holder rewrites every ``heartbeat_s`` seconds from a background thread.

    A held lock is taken over at once when its owner is on this host (and pid namespace) and dead
    (pid gone, a zombie, or the pid reused by a process with another start time), or, from another
    host, when its heartbeat is older than ``stale_after_s``; a live owner keeps it.

    Taking over is a compare-and-swap on the token that was judged dead, so two runs that judge
    the same dead lock cannot both win. Local disk: under an ``flock`` of the output folder (one
    takeover at a time; the kernel releases it if we die), the lock is read again, moved aside to a
    unique temporary name (atomic rename), checked to be the token judged, removed, and the new
    one created exclusively; a creator that appears meanwhile wins and we refuse. S3: a PUT with
    ``If-Match`` the ETag read before the judged body, so only the first contender's write lands
    (stores that ignore ``If-Match`` lose this guarantee). What no lock of this kind closes: an
    owner judged stale by heartbeat that is in fact alive (a host suspended for longer than
    ``stale_after_s``) may write once more before it notices."""

    def __init__(self, objects: Objects, key: str, stale_after_s: float = 600.0,
                 heartbeat_s: float = 30.0):
        self.objects, self.key = objects, key
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.token = uuid.uuid4().hex
        self.me = process_record()
        self.owner = f"{self.me['host']}:{self.me['pid']}"
        self._etag: str | None = None       # S3: the ETag of our lock as last written
        self.replaced: dict | None = None   # the dead or stale lock this one took over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, **self.me, "token": self.token,
                           "heartbeat": time.time()}).encode()

    def _held(self) -> dict | None:
        return self._read()[0]

    def _read(self) -> tuple[dict | None, str | None]:
        """(the lock's record, or None if there is none; ``{}`` if unreadable, judged by age
        like any other), and on S3 its ETag, read before the body."""
        etag = None
        try:
            if self.objects.remote:
                etag = self._s3("head_object")["ETag"]
            held = json.loads(self.objects.get(self.key))
            return (held if isinstance(held, dict) else {}), etag
        except FileNotFoundError:
            return None, None
        except ValueError:
            return {}, etag

    def _s3(self, call: str, **kw):
        bucket, key, _ = self.objects.fs.split_path(self.objects.path(self.key))
        try:
            return self.objects.fs.call_s3(call, Bucket=bucket, Key=key, **kw)
        finally:
            self.objects.fs.invalidate_cache(self.objects.path(self.key))

    def _put_if(self, etag: str) -> bool:
        """S3: write our lock only if the object is still ``etag``; False if another write
        landed first (412)."""
        try:
            out = self._s3("put_object", Body=self._body(), IfMatch=etag)
        except FileNotFoundError:          # deleted meanwhile
            return False
        except OSError as exc:             # s3fs: 412 PreconditionFailed -> OSError(EINVAL)
            response = getattr(exc.__cause__, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412") or "Precondition" in str(exc):
                return False
            raise
        self._etag = out.get("ETag")
        return True

    def _verdict(self, held: dict) -> str | None:
        """None if the lock may be taken over, else why it may not (for LockHeld)."""
        beat = held.get("heartbeat")
        age = time.time() - beat if isinstance(beat, (int, float)) else float("inf")
        dead = owner_is_dead(held)
        if dead or (dead is None and age >= self.stale_after_s):
            return None
        who = held.get("owner", "unknown")
        if dead is False:
            return (f"another run ({who}, alive on this host) is writing this output "
                    f"(heartbeat {age:.0f} s ago); wait for it to finish")
        return (f"another run ({who}) is writing this output (heartbeat {age:.0f} s ago); wait "
                f"for it to finish, or if that run is dead delete that file (it counts as dead "
                f"{self.stale_after_s:.0f} s after its last heartbeat)")

    def acquire(self) -> "OutputLock":
        for _ in range(4):
            if self._create():
                if self.objects.remote:
                    self._etag = self._read()[1]
                break
            held, etag = self._read()
            if held is None:
                continue                   # released in between: try again
            why = self._verdict(held)
            if why is not None:
                raise LockHeld(f"{self.objects.url(self.key)}: {why}") from None
            if self._take_over(held, etag):
                self.replaced = held
                break
        else:
            raise LockHeld(f"{self.objects.url(self.key)}: another run took the lock first")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        """Create our lock if there is none; False if one is there. (A temporary of ours removed
        by the holder's start-up cleanup counts as losing.)"""
        try:
            self.objects.create(self.key, self._body())
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            if self.objects.remote:
                raise
            return False

    def _take_over(self, judged: dict, etag: str | None) -> bool:
        """Replace the lock ``judged`` dead by ours, only if it is still that lock."""
        if self.objects.remote:
            return etag is not None and self._put_if(etag)
        import fcntl
        path = self.objects.path(self.key)
        folder = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)
            except OSError:                # a file system without flock: the rename CAS alone
                pass
            if self._held() != judged:
                return False               # changed since we judged it: judge again
            aside = f"{path}{storage.TMP_MARK}taken-{uuid.uuid4().hex}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return False
            try:
                with open(aside, "rb") as f:
                    moved = json.loads(f.read())
            except (OSError, ValueError):
                moved = {}
            if moved != judged:            # not the lock we judged: put it back
                try:
                    os.link(aside, path)
                except (FileExistsError, FileNotFoundError):
                    pass
            try:
                os.remove(aside)
            except FileNotFoundError:
                pass
            return moved == judged and self._create()
        finally:
            os.close(folder)               # releases the flock

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self.objects.remote and self._etag:
                    if not self._put_if(self._etag):
                        return             # taken over: stop writing it
                    continue
                held = self._held()
                if held and held.get("token") == self.token:
                    # not Objects.put: that clears the key's temporaries, a contender's too
                    storage.write_atomic(self.objects.path(self.key), self._body())
            except OSError:                # a network or disk hiccup: beat again next time
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._held()
        if held and held.get("token") == self.token:
            self.objects.delete(self.key)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
