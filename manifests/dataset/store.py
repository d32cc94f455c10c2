"""Whole-object writes and reads under a dataset's root URL (local folder, ``file://``, ``s3://``).

Every object is written in one go (:func:`manifests.storage.write_atomic`): a reader never sees
half an object, and a writer that dies mid-write leaves at most a temporary name, which
:meth:`Objects.remove_stale_temporaries` clears on the next run.
"""

from __future__ import annotations

import glob
import hashlib
import os

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

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

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
