"""Whole-object writes and reads under a dataset's output URL (local folder, ``file://``, ``s3://``).

Every object is written in one go: on local disk to a temporary name in the same folder and then
renamed over the final name (atomic on POSIX), on S3 as one upload (a single PUT, or a multipart
upload that S3 makes visible only when complete). A reader never sees half an object.
"""

from __future__ import annotations

import hashlib
import os
import uuid

from manifests import storage

TMP_MARK = ".tmp-"


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

    def put(self, key: str, data: bytes) -> dict:
        """Write ``data`` at ``key`` atomically; returns its size and sha256."""
        if self.remote:
            self.fs.pipe_file(self.path(key), data)
        else:
            final = self.path(key)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

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
        stale = [k for k in self.list("") if TMP_MARK in k.rsplit("/", 1)[-1]]
        for key in stale:
            os.remove(self.path(key))
        return len(stale)
