"""The typed records of a generated dataset: the index, shard commits, per-sample digests and the
per-sample provenance. Each has one definition here and a strict ``from_json`` that names the
object and the field it refuses; writers build these records and readers only see them.

Sample digests are of the canonical bytes of a sample's arrays: C order, ``(Z, Y, X)``,
little-endian int16 HU and uint8 labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

import blake3
import google_crc32c
import numpy as np

from ..organs import DEFAULT_ORGAN
from ..records import RecordError, canonical_json, check_fields, pretty_json
from .formats import FORMATS

# index.json's "format", by number. Format 3 (the default): each shard's record checks its data
# objects by crc32c and its samples by BLAKE3 digests, and names both; index.json and the shard
# records keep sha256, so the chain index -> record -> objects and samples stays whole. It costs a
# writer about 0.75 instead of 2.65 CPU ms per 96^3 crop. Format 2: index.json lists shards only,
# as columns (each shard's record: size and sha256; its scans); each shard's record
# (``shards/shard-NNNNNN.json``) lists its objects and its samples' digests, sha256 throughout.
# Format 1: index.json lists every shard's objects and samples. (Versions: CHANGELOG.md.)
# All three are read; 3 and 2 are written (a dataset keeps the format it was started in).
FORMAT_NAMES = {1: "tumorforge.dataset/1", 2: "tumorforge.dataset/2", 3: "tumorforge.dataset/3"}
WRITTEN_FORMAT = 3                  # what a new output gets (the job spec's dataset_format)
WRITABLE_FORMATS = (2, 3)
INDEX_FORMAT = FORMAT_NAMES[WRITTEN_FORMAT]
INDEX_FORMAT_V1 = FORMAT_NAMES[1]
READABLE_FORMATS = tuple(FORMAT_NAMES[n] for n in sorted(FORMAT_NAMES, reverse=True))
# (object check, sample digest) a format's shard records use.
FORMAT_CHECKS = {1: ("sha256", "sha256"), 2: ("sha256", "sha256"), 3: ("crc32c", "blake3")}
# Provenance 3 names its sample digest (image_blake3, ...); 2 adds crop_affine; 1 is still read.
PROVENANCE_VERSION = 3
PROVENANCE_OF_FORMAT = {2: 2, 3: 3}
READABLE_PROVENANCE = (1, 2, 3)

# Hex digests by name, and their lengths. Samples: sha256 (formats 1-2) or BLAKE3 (format 3; 0.64
# against 1.58 ms for a 96^3 crop's 2.65 MB on one core). Objects: sha256, or crc32c in format
# 3's shard records (0.10 ms for the same bytes; each sample's digest already pins its arrays).
SAMPLE_DIGESTS = {"sha256": 64, "blake3": 64}
OBJECT_CHECKS = {"sha256": 64, "crc32c": 8}


def hex_digest(data, algorithm: str) -> str:
    """``data`` (bytes, a contiguous buffer, or a list of them: the pieces of one object) digested
    by ``algorithm`` (a name of :data:`SAMPLE_DIGESTS` or :data:`OBJECT_CHECKS`), as hex."""
    parts = data if isinstance(data, list) else [data]
    if algorithm == "crc32c":
        crc = 0
        for part in parts:            # the C extension takes bytes only, not memoryviews
            crc = google_crc32c.extend(crc, part if isinstance(part, bytes) else bytes(part))
        return f"{crc:08x}"
    if algorithm not in ("sha256", "blake3"):
        raise ValueError(f"unknown digest {algorithm!r}")
    h = hashlib.sha256() if algorithm == "sha256" else blake3.blake3()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def canonical_digest(array: np.ndarray, dtype: str, algorithm: str) -> str:
    # Digested in place (no copy) when the array already has the canonical layout, as crops do.
    canonical = np.ascontiguousarray(array, dtype=np.dtype(dtype))
    return hex_digest(memoryview(canonical).cast("B"), algorithm)


def image_digest(image: np.ndarray, algorithm: str) -> str:
    """Digest of an image crop's canonical bytes: (Z, Y, X) little-endian int16 HU."""
    return canonical_digest(image, "<i2", algorithm)


def label_digest(label: np.ndarray, algorithm: str) -> str:
    """Digest of a label crop's canonical bytes: (Z, Y, X) uint8."""
    return canonical_digest(label, "u1", algorithm)


def _known(name, known: dict, where: str, what: str) -> str:
    """``name`` if it is one of ``known``; a one-line RecordError naming it otherwise."""
    if not isinstance(name, str) or name not in known:
        raise RecordError(f"{where}: {what} {name!r} is not one this tumorforge knows "
                          f"({', '.join(sorted(known))})")
    return name


def _need(cond: bool, where: str, what: str, found) -> None:
    if not cond:
        raise RecordError(f"{where}: expected {what}, found {found!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class FileRecord:
    """An object of the dataset as written: its size and its checksum by ``check`` (a name of
    :data:`OBJECT_CHECKS`: sha256, or crc32c for the data objects of a format 3 shard). Stored as
    ``{"bytes": n, "<check>": "<hex>"}``."""

    bytes: int
    digest: str
    check: str = "sha256"

    @classmethod
    def of(cls, data, check: str = "sha256") -> "FileRecord":
        """Of ``data``: bytes, or the list of pieces that make the object."""
        size = sum(map(len, data)) if isinstance(data, list) else len(data)
        return cls(size, hex_digest(data, check), check)

    @property
    def sha256(self) -> str:
        """The sha256 of an object the index pins (shard records, zarr.json)."""
        if self.check != "sha256":
            raise ValueError(f"object checked by {self.check}, not sha256")
        return self.digest

    def problem(self, data: bytes) -> str | None:
        """None when ``data`` has this size and checksum, else what differs (one line)."""
        if len(data) != self.bytes:
            return f"{len(data)} bytes, expected {self.bytes}"
        found = hex_digest(data, self.check)
        if found != self.digest:
            return f"{self.check} {found[:12]}, expected {self.digest[:12]}"
        return None

    def to_json(self) -> dict:
        return {"bytes": self.bytes, self.check: self.digest}

    @classmethod
    def from_json(cls, obj, where: str, checks=tuple(OBJECT_CHECKS)) -> "FileRecord":
        """``checks``: the checksums this record may use (a format's)."""
        # Read once per object of every commit (156,250 commits at 10 million samples): the
        # valid case is tested in one go, the reason found only for a record that fails it.
        if isinstance(obj, dict) and len(obj) == 2 and "bytes" in obj:
            check = next(k for k in obj if k != "bytes")
            size, digest = obj["bytes"], obj[check]
            if check in checks and check in OBJECT_CHECKS and type(size) is int and size >= 0 \
                    and _is_hex(digest, OBJECT_CHECKS[check]):
                return cls(size, digest, check)
        cls._refuse(obj, where, checks)

    @staticmethod
    def _refuse(obj, where: str, checks) -> None:
        """Raise the RecordError that names what is wrong with ``obj`` as a FileRecord."""
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        names = sorted(set(obj) - {"bytes"})
        _need("bytes" in obj and len(names) == 1, where,
              f"fields bytes and one checksum of {sorted(checks)}", sorted(obj))
        check = _known(names[0], {c: OBJECT_CHECKS[c] for c in checks if c in OBJECT_CHECKS},
                       where, "checksum")
        _need(_is_int(obj["bytes"]) and obj["bytes"] >= 0, where, "bytes >= 0", obj["bytes"])
        _need(False, where, f"a {check} hex digest", obj[check])


_HEX = re.compile(r"[0-9a-f]*")


def _is_hex(v, length: int) -> bool:
    return isinstance(v, str) and len(v) == length and _HEX.fullmatch(v) is not None


@dataclass(frozen=True)
class SampleHashes:
    """What a sample must digest to: checked by every reader before a sample is used. Stored as
    ``{"key", "image_<digest>", "label_<digest>"}``, the digest's name in the field names
    (``digest``: a name of :data:`SAMPLE_DIGESTS`)."""

    key: str
    image: str
    label: str
    digest: str = "sha256"

    def to_json(self) -> dict:
        return {"key": self.key, f"image_{self.digest}": self.image,
                f"label_{self.digest}": self.label}

    @classmethod
    def of(cls, key: str, image: np.ndarray, label: np.ndarray, digest: str) -> "SampleHashes":
        return cls(key, image_digest(image, digest), label_digest(label, digest), digest)

    def matches(self, image: np.ndarray, label: np.ndarray) -> bool:
        return image_digest(image, self.digest) == self.image \
            and label_digest(label, self.digest) == self.label

    @classmethod
    def from_json(cls, obj, where: str, digest: str = "sha256") -> "SampleHashes":
        fields = ["key", f"image_{digest}", f"label_{digest}"]
        _need(isinstance(obj, dict) and sorted(obj) == sorted(fields), where,
              f"fields {fields}", sorted(obj) if isinstance(obj, dict) else obj)
        for k in fields:
            _need(isinstance(obj[k], str) and obj[k], where, f"{k} as a non-empty string", obj[k])
        return cls(obj["key"], obj[fields[1]], obj[fields[2]], digest)


@dataclass(frozen=True)
class ShardEntry:
    """A shard as written: its layout, its data objects and its samples' digests. Formats 2-3
    store it as the shard's record (``shards/shard-NNNNNN.json``, canonical JSON, a function of
    the plan alone); format 1 listed it in index.json. A format 3 record names how it checks its
    objects (``object_check``) and samples (``sample_digest``); formats 1-2 name neither (sha256
    for both)."""

    dataset_id: str
    shard: int
    start: int                      # first sample index
    count: int                      # samples in the shard
    scans: tuple[str, ...]          # scan_ids the shard's samples cycle through
    files: dict                     # object name -> FileRecord
    samples: tuple[SampleHashes, ...]
    object_check: str = ""          # format 3: a name of OBJECT_CHECKS ("" in formats 1-2)
    sample_digest: str = ""         # format 3: a name of SAMPLE_DIGESTS ("" in formats 1-2)

    @classmethod
    def build(cls, fmt: int, **fields) -> "ShardEntry":
        """The record a format ``fmt`` writer makes (format 3 names its checks)."""
        checks = FORMAT_CHECKS[fmt] if fmt >= 3 else ("", "")
        return cls(**fields, object_check=checks[0], sample_digest=checks[1])

    @property
    def checks(self) -> tuple[str, str]:
        """(object check, sample digest) of this record."""
        return self.object_check or "sha256", self.sample_digest or "sha256"

    def to_json(self) -> dict:
        named = {"object_check": self.object_check, "sample_digest": self.sample_digest} \
            if self.object_check else {}
        return {"dataset_id": self.dataset_id, "shard": self.shard, "start": self.start,
                "count": self.count, "scans": list(self.scans),
                "files": {k: v.to_json() for k, v in self.files.items()},
                "samples": [s.to_json() for s in self.samples], **named}

    @classmethod
    def from_json(cls, obj, where: str, fmt: int = 2) -> "ShardEntry":
        """The record of a format ``fmt`` dataset: format 3 names its checks (one this
        tumorforge knows), formats 1-2 do not."""
        data = check_fields(cls, obj, where)
        named = [k for k in ("object_check", "sample_digest") if k in data]
        if fmt >= 3:
            _need(len(named) == 2, where, "object_check and sample_digest (format 3)",
                  f"fields {sorted(data)}")
            _known(data["object_check"], OBJECT_CHECKS, where, "object_check")
            _known(data["sample_digest"], SAMPLE_DIGESTS, where, "sample_digest")
        else:
            _need(not named, where, f"no {named} (format {fmt} records use sha256)",
                  sorted(data))
        for k in ("shard", "start", "count"):
            _need(_is_int(data[k]) and data[k] >= 0, where, f"{k} as an integer >= 0", data[k])
        _need(isinstance(data["scans"], list) and all(isinstance(s, str) for s in data["scans"]),
              where, "scans as a list of scan ids", data["scans"])
        _need(isinstance(data["files"], dict), where, "files as an object", data["files"])
        _need(isinstance(data["samples"], list) and len(data["samples"]) == data["count"], where,
              f"samples as a list of {data['count']} records", f"{len(data['samples'])} records"
              if isinstance(data["samples"], list) else data["samples"])
        check = data.get("object_check") or "sha256"
        digest = data.get("sample_digest") or "sha256"
        data["scans"] = tuple(data["scans"])
        data["files"] = {k: FileRecord.from_json(v, f"{where} file {k}", (check,))
                         for k, v in data["files"].items()}
        data["samples"] = tuple(SampleHashes.from_json(s, f"{where} sample {n}", digest)
                                for n, s in enumerate(data["samples"]))
        return cls(**data)

    def record_bytes(self) -> bytes:
        """The shard's record as stored (formats 2-3): canonical JSON, the same for the same
        plan."""
        return canonical_json(self.to_json()).encode()


@dataclass(frozen=True)
class ShardCommit:
    """``_commits/shard-NNNNNN.json``: written after a shard's data objects and its record; with
    it, the shard counts as written. Lists every object of the shard (the record included) with
    its size and sha256, and how the shard was made (not part of the dataset's bytes)."""

    dataset_id: str
    shard: int
    start: int
    count: int
    scans: tuple[str, ...]
    files: dict                                               # object name -> FileRecord
    seconds: dict = dataclasses.field(default_factory=dict)   # load, synthesize, encode_write
    worker: dict = dataclasses.field(default_factory=dict)    # pid, backend, scan loads
    # CPU seconds (every thread) of the host stages besides synthesis, by stage: hash,
    # provenance, compress, zarr, tar, write, record. Absent from commits written before it.
    host_cpu_s: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"dataset_id": self.dataset_id, "shard": self.shard, "start": self.start,
                "count": self.count, "scans": list(self.scans),
                "files": {k: v.to_json() for k, v in self.files.items()},
                "seconds": dict(self.seconds), "worker": dict(self.worker),
                "host_cpu_s": dict(self.host_cpu_s)}

    @classmethod
    def from_json(cls, obj, where: str) -> "ShardCommit":
        data = check_fields(cls, obj, where)
        for k in ("shard", "start", "count"):
            _need(_is_int(data[k]) and data[k] >= 0, where, f"{k} as an integer >= 0", data[k])
        _need(isinstance(data["scans"], list) and all(isinstance(s, str) for s in data["scans"]),
              where, "scans as a list of scan ids", data["scans"])
        _need(isinstance(data["files"], dict), where, "files as an object", data["files"])
        cpu = data.get("host_cpu_s", {})
        _need(isinstance(cpu, dict) and all(isinstance(v, (int, float)) and not isinstance(
            v, bool) and v >= 0 for v in cpu.values()), where,
              "host_cpu_s as an object of CPU seconds >= 0", cpu)
        data["scans"] = tuple(data["scans"])
        data["files"] = {k: FileRecord.from_json(v, f"{where} file {k}")
                         for k, v in data["files"].items()}
        return cls(**data)


@dataclass(frozen=True, eq=False)
class ShardTable:
    """Formats 2-3's list of shards in index.json, as columns: shard k's record
    (``record_bytes[k]``, ``record_sha256[k]``) and its scans (``scan_names[i]`` for i in
    ``scan_ids[scan_offsets[k]:scan_offsets[k + 1]]``). Sample counts and keys follow from the
    layout and the dataset id. Held as arrays: 10 million samples (156,250 shards of 64) take a
    few MB."""

    scan_names: tuple[str, ...]
    record_bytes: np.ndarray          # int64, one per shard
    record_sha256: bytes              # 32 raw bytes per shard
    scan_offsets: np.ndarray          # int64, shards + 1
    scan_ids: np.ndarray              # int32

    def __len__(self) -> int:
        return len(self.record_bytes)

    def record(self, k: int) -> FileRecord:
        return FileRecord(int(self.record_bytes[k]), self.record_sha256[32 * k:32 * k + 32].hex())

    def scans(self, k: int) -> tuple[str, ...]:
        ids = self.scan_ids[self.scan_offsets[k]:self.scan_offsets[k + 1]]
        return tuple(self.scan_names[i] for i in ids)

    @classmethod
    def build(cls, records: list[FileRecord], scans: list[tuple[str, ...]]) -> "ShardTable":
        names = sorted({s for row in scans for s in row})
        number = {s: i for i, s in enumerate(names)}
        offsets = np.zeros(len(scans) + 1, np.int64)
        offsets[1:] = np.cumsum([len(row) for row in scans])
        return cls(tuple(names), np.array([r.bytes for r in records], np.int64),
                   b"".join(bytes.fromhex(r.sha256) for r in records), offsets,
                   np.array([number[s] for row in scans for s in row], np.int32))

    def to_json(self) -> dict:
        return {"scan_names": list(self.scan_names),
                "record_bytes": self.record_bytes.tolist(),
                "record_sha256": self.record_sha256.hex(),
                "scan_offsets": self.scan_offsets.tolist(), "scan_ids": self.scan_ids.tolist()}

    @classmethod
    def from_json(cls, obj, where: str, shards: int) -> "ShardTable":
        data = check_fields(cls, obj, where)
        names, sizes, digests = data["scan_names"], data["record_bytes"], data["record_sha256"]
        offsets, ids = data["scan_offsets"], data["scan_ids"]
        _need(isinstance(names, list) and all(isinstance(s, str) and s for s in names), where,
              "scan_names as a list of scan ids", type(names).__name__)
        for key, value, n in (("record_bytes", sizes, shards), ("scan_offsets", offsets,
                                                                shards + 1),
                              ("scan_ids", ids, None)):
            _need(isinstance(value, list) and (n is None or len(value) == n), where,
                  f"{key} as a list of {n if n is not None else 'some'} integers",
                  f"{len(value)} items" if isinstance(value, list) else value)
        try:
            sizes, offsets = np.array(sizes, np.int64), np.array(offsets, np.int64)
            ids = np.array(ids, np.int64)
        except (TypeError, ValueError, OverflowError):
            raise RecordError(f"{where}: record_bytes, scan_offsets and scan_ids must hold "
                              "integers") from None
        _need(isinstance(digests, str) and len(digests) == 64 * shards, where,
              f"record_sha256 as {shards} sha256 hex digests ({64 * shards} characters)",
              f"{len(digests)} characters" if isinstance(digests, str) else digests)
        try:
            raw = bytes.fromhex(digests)
        except ValueError:
            raise RecordError(f"{where}: record_sha256 is not hexadecimal") from None
        _need(sizes.size == 0 or sizes.min() >= 0, where, "record_bytes >= 0",
              int(sizes.min()) if sizes.size else None)
        _need(offsets[0] == 0 and offsets[-1] == len(ids) and (np.diff(offsets) >= 0).all(),
              where, f"scan_offsets rising from 0 to {len(ids)}", offsets[[0, -1]].tolist())
        _need(ids.size == 0 or (ids.min() >= 0 and ids.max() < len(names)), where,
              f"scan_ids in 0..{len(names) - 1}",
              [int(ids.min()), int(ids.max())] if ids.size else [])
        return cls(tuple(names), sizes, raw, offsets, ids.astype(np.int32))


@dataclass(frozen=True)
class DatasetIndex:
    """``index.json``: what the dataset holds. Written last, only when every shard is committed.

    ``spec`` is the job spec that made the dataset (without where it was written and how it ran);
    the accessors below are the only places its keys are read. Formats 2-3 list their shards in
    ``table`` (``shards`` is empty); format 1 in ``shards`` (``table`` is None).
    """

    format: str
    dataset_id: str
    spec: dict
    samples: int
    samples_per_shard: int
    formats: tuple[str, ...]
    versions: dict
    plan: str
    shards: tuple[ShardEntry, ...]
    # Objects outside the shards that readers trust (the zarr.json files), with size and sha256.
    # Absent from indexes written before it existed.
    metadata: dict = dataclasses.field(default_factory=dict)
    table: ShardTable | None = None

    @property
    def number(self) -> int:
        """The format as a number (1, 2 or 3)."""
        return next(n for n, name in FORMAT_NAMES.items() if name == self.format)

    @property
    def shard_count(self) -> int:
        return len(self.table) if self.table is not None else len(self.shards)

    def layout(self, k: int) -> tuple[int, int]:
        """(first sample, sample count) of shard ``k``: shard k holds [k S, min((k + 1) S, N))."""
        start = k * self.samples_per_shard
        return start, min(self.samples_per_shard, self.samples - start)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """Crop side lengths along (R, A, S) voxel axes, as the generator config gives them."""
        return tuple(int(n) for n in self.spec["generator"]["crop_size"])

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Shape of every stored sample array, ``(Z, Y, X)``."""
        return self.crop_size[::-1]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.spec["generator"]["target_spacing_mm"])

    @property
    def organ(self) -> str:
        """The organ its tumors were painted into (absent from liver specs: the liver)."""
        return str(self.spec["generator"].get("organ", DEFAULT_ORGAN))

    @property
    def manifest(self) -> str:
        return self.spec["manifest"]

    @property
    def allow_roots(self) -> tuple[str, ...]:
        return tuple(self.spec.get("allow_roots", ()))

    def to_json(self) -> dict:
        shards = self.table.to_json() if self.table is not None else \
            [s.to_json() for s in self.shards]
        return {"format": self.format, "dataset_id": self.dataset_id, "spec": self.spec,
                "samples": self.samples, "samples_per_shard": self.samples_per_shard,
                "formats": list(self.formats), "versions": self.versions, "plan": self.plan,
                "shards": shards,
                "metadata": {k: v.to_json() for k, v in sorted(self.metadata.items())}}

    def to_bytes(self) -> bytes:
        """index.json as written: indented for people, the shard columns on single lines (an
        indented list of 156,250 sizes is megabytes of spaces and the slow JSON encoder)."""
        data = self.to_json()
        columns = data.pop("shards")
        head = pretty_json({**data, "shards": None})
        marker = b'"shards": null'
        assert head.count(marker) == 1
        return head.replace(marker, b'"shards": ' + canonical_json(columns).encode())

    @classmethod
    def from_json(cls, obj, where: str) -> "DatasetIndex":
        if isinstance(obj, dict) and obj.get("format") not in READABLE_FORMATS:
            raise RecordError(f"{where}: format {obj.get('format')!r} is not supported "
                              f"(this tumorforge reads {', '.join(READABLE_FORMATS)}; a newer "
                              f"format needs a newer tumorforge)")
        data = check_fields(cls, obj, where, optional=("table",))
        if "table" in data:
            raise RecordError(f"{where}: unknown field(s) ['table']")
        _need(isinstance(data["dataset_id"], str) and data["dataset_id"], where,
              "dataset_id as a string", data["dataset_id"])
        for k in ("samples", "samples_per_shard"):
            _need(_is_int(data[k]) and data[k] >= 1, where, f"{k} as an integer >= 1", data[k])
        _need(isinstance(data["spec"], dict) and isinstance(data["spec"].get("generator"), dict),
              where, "spec as the job spec object", type(data["spec"]).__name__)
        _need(isinstance(data["formats"], list) and data["formats"]
              and set(data["formats"]) <= set(FORMATS), where, f"formats among {list(FORMATS)}",
              data["formats"])
        _need(isinstance(data.get("metadata", {}), dict), where, "metadata as an object",
              data.get("metadata"))
        data["metadata"] = {k: FileRecord.from_json(v, f"{where} metadata {k}")
                            for k, v in data.get("metadata", {}).items()}
        data["formats"] = tuple(data["formats"])
        _check_spec(data, where)
        n_shards = -(-data["samples"] // data["samples_per_shard"])
        if data["format"] != INDEX_FORMAT_V1:
            data["table"] = ShardTable.from_json(data["shards"], f"{where} shards", n_shards)
            data["shards"] = ()
            return cls(**data)
        _need(isinstance(data["shards"], list), where, "shards as a list", data["shards"])
        data["shards"] = tuple(ShardEntry.from_json(s, f"{where} shard {n}", 1)
                               for n, s in enumerate(data["shards"]))
        _check_layout(data, where)
        return cls(**data)


MAX_CROP_SIDE = 1024        # voxels; a reader allocates samples of crop_size before checking them


def _check_spec(data: dict, where: str) -> None:
    """The index agrees with its spec: sample counts, the crop size. A reader then never reads
    more samples or larger ones than the job made."""
    spec = data["spec"]
    for k in ("samples", "samples_per_shard"):
        _need(spec.get(k) == data[k], where, f"{k} equal to the spec's ({spec.get(k)!r})", data[k])
    crop = spec["generator"].get("crop_size")
    _need(isinstance(crop, list) and len(crop) == 3
          and all(_is_int(c) and 1 <= c <= MAX_CROP_SIDE for c in crop), where,
          f"spec.generator.crop_size as three integers 1..{MAX_CROP_SIDE}", crop)


def _check_layout(data: dict, where: str) -> None:
    """A format 1 index agrees with itself: the shard layout (shard k holds samples [k S,
    (k + 1) S)) and each shard's dataset id."""
    n, size = data["samples"], data["samples_per_shard"]
    shards = data["shards"]
    _need(len(shards) == -(-n // size), where, f"{-(-n // size)} shards for {n} samples of {size}",
          len(shards))
    for k, shard in enumerate(shards):
        start = k * size
        expected = (data["dataset_id"], k, start, min(size, n - start))
        found = (shard.dataset_id, shard.shard, shard.start, shard.count)
        _need(found == expected, f"{where} shard {k}", f"(dataset_id, shard, start, count) = "
                                                        f"{expected}", found)


@dataclass(frozen=True)
class Provenance:
    """One JSON record per sample: enough to say how the sample was made and to regenerate it.

    Stored as canonical JSON (sorted keys, no spaces) in both formats: the zarr ``provenance``
    array and the tar's ``<key>.json``. The digests of the sample's canonical arrays are stored
    under their digest's name: ``image_blake3`` / ``label_blake3`` with ``"sample_digest":
    "blake3"`` (version 3, format 3 datasets), ``image_sha256`` / ``label_sha256`` (versions 1-2,
    which name no digest).
    """

    key: str
    index: int
    shard: int
    dataset_id: str
    root_seed: int
    spawn_key: tuple[int, ...]        # SeedSequence(root_seed, spawn_key=spawn_key)
    scan_id: str
    scan_sha256: dict                  # {"image": ..., "label": ...} of the scan's files
    generator_version: str
    profile: str
    backend: str
    versions: dict                     # numpy, scipy, cupy, CUDA, GPU when used
    generator_config: dict             # GeneratorConfig.to_json()
    params: dict                       # SampleParams.to_json(): every drawn parameter
    image_digest: str                  # hex, by sample_digest
    label_digest: str
    shape: tuple[int, int, int]        # (Z, Y, X)
    # Voxel (i, j, k) of the crop along R, A, S (the stored (Z, Y, X) array transposed) -> RAS+
    # world mm of the scan, 4x4 row-major; empty in version 1 records (before it was recorded).
    crop_affine: tuple = ()
    sample_digest: str = "blake3"      # a name of SAMPLE_DIGESTS (sha256 in versions 1-2)
    provenance_version: int = PROVENANCE_VERSION

    def to_json_text(self) -> str:
        # A shallow dict (the JSON encoder walks the nested records): dataclasses.asdict's deep
        # copy cost 0.23 of this call's 0.27 ms per sample.
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["spawn_key"] = list(self.spawn_key)
        data["shape"] = list(self.shape)
        data["crop_affine"] = [list(row) for row in self.crop_affine]
        digest = data.pop("sample_digest")
        data[f"image_{digest}"] = data.pop("image_digest")
        data[f"label_{digest}"] = data.pop("label_digest")
        if self.provenance_version >= 3:
            data["sample_digest"] = digest
        return canonical_json(data)

    @staticmethod
    def digests(obj: dict, where: str = "provenance") -> tuple[str, str, str]:
        """(digest name, image digest, label digest) of a provenance record read as JSON."""
        version = obj.get("provenance_version") if isinstance(obj, dict) else None
        if version not in READABLE_PROVENANCE:
            raise RecordError(f"{where}: provenance_version {version!r} is not supported "
                              f"(expected one of {list(READABLE_PROVENANCE)})")
        digest = _known(obj.get("sample_digest"), SAMPLE_DIGESTS, where, "sample_digest") \
            if version >= 3 else "sha256"
        found = [obj.get(f"{k}_{digest}") for k in ("image", "label")]
        _need(all(isinstance(v, str) and v for v in found), where,
              f"image_{digest} and label_{digest} as strings", found)
        return digest, found[0], found[1]

    @classmethod
    def from_json(cls, obj: dict, where: str = "provenance") -> "Provenance":
        digest, image, label = cls.digests(obj, where)
        version = obj["provenance_version"]
        named = (f"image_{digest}", f"label_{digest}", *(("sample_digest",) if version >= 3
                                                          else ()))
        data = {k: v for k, v in obj.items() if k not in named}
        data = check_fields(cls, {**data, "image_digest": image, "label_digest": label}, where,
                            optional=())
        wanted = {f.name for f in dataclasses.fields(cls)} - {"sample_digest"} \
            - ({"crop_affine"} if version == 1 else set())
        if set(data) != wanted:
            raise RecordError(f"{where}: missing field(s) {sorted(wanted - set(data))}")
        data["sample_digest"] = digest
        data["spawn_key"] = tuple(obj["spawn_key"])
        data["shape"] = tuple(obj["shape"])
        affine = obj.get("crop_affine", [])
        _need(affine == [] or (isinstance(affine, list) and len(affine) == 4 and all(
            isinstance(r, list) and len(r) == 4 and all(isinstance(v, (int, float)) for v in r)
            for r in affine)), where, "crop_affine as a 4x4 list of numbers", affine)
        data["crop_affine"] = tuple(tuple(float(v) for v in r) for r in affine)
        return cls(**data)
