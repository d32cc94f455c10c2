"""Whole-object writes and reads under a dataset's root URL (local folder, ``file://``, ``s3://``).

Every object is written in one go (:func:`manifests.storage.write_atomic`): a reader never sees
half an object, and a writer that dies mid-write leaves at most a temporary name, which
:meth:`Objects.remove_stale_temporaries` clears on the next run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import threading
import time
import uuid

from .. import storage
from .records import FileRecord


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

    def put(self, key: str, data: bytes) -> FileRecord:
        """Write ``data`` at ``key`` atomically; returns its size and sha256. On local disk the
        temporaries an earlier writer of ``key`` left (a killed actor whose shard is retried) are
        removed first: one writer owns a shard, so no live writer holds them."""
        if not self.remote:
            for stale in glob.glob(glob.escape(self.path(key)) + storage.TMP_MARK + "*"):
                os.remove(stale)
        storage.write_atomic(self.url(key) if self.remote else self.path(key), data)
        return FileRecord(len(data), hashlib.sha256(data).hexdigest())

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

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def open(self, key: str):
        """A binary file object reading the object as a stream (buffered ranged reads on S3)."""
        return self.fs.open(self.path(key), "rb")

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start..end-1`` of an object: one ranged GET on S3, a seek on local disk."""
        return self.fs.cat_file(self.path(key), start=start, end=end)

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


class LockHeld(RuntimeError):
    """Another live run holds the output's lock."""


class OutputLock:
    """One writer per output: ``_lock.json`` created exclusively (local disk and S3), with a
    heartbeat the holder rewrites every ``heartbeat_s`` seconds from a background thread. A lock
    whose heartbeat is older than ``stale_after_s`` belongs to a dead run and is taken over."""

    def __init__(self, objects: Objects, key: str, stale_after_s: float = 600.0,
                 heartbeat_s: float = 30.0):
        self.objects, self.key = objects, key
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.token = uuid.uuid4().hex
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "token": self.token,
                           "heartbeat": time.time()}).encode()

    def _held(self) -> dict | None:
        try:
            held = json.loads(self.objects.get(self.key))
            return held if isinstance(held, dict) else {}
        except FileNotFoundError:
            return None
        except ValueError:
            return {}                      # unreadable: judged by age like any other

    def acquire(self) -> "OutputLock":
        for _ in range(2):
            try:
                self.objects.create(self.key, self._body())
                break
            except FileExistsError:
                held = self._held()
                if held is None:
                    continue               # released in between: try again
                beat = held.get("heartbeat")
                age = time.time() - beat if isinstance(beat, (int, float)) else float("inf")
                if age < self.stale_after_s:
                    raise LockHeld(f"{self.objects.url(self.key)}: another run "
                                   f"({held.get('owner', 'unknown')}) is writing this output "
                                   f"(heartbeat {age:.0f} s ago); wait for it to finish, or "
                                   f"delete that file if the run is dead") from None
                self.objects.delete(self.key)   # stale: its run died
        else:
            raise LockHeld(f"{self.objects.url(self.key)}: another run took the lock first")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = self._held()
            if held and held.get("token") == self.token:
                self.objects.put(self.key, self._body())

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
