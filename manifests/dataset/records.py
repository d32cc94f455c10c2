"""The typed records of a generated dataset: the index, shard commits, per-sample hashes and the
per-sample provenance. Each has one definition here and a strict ``from_json`` that names the
object and the field it refuses; writers build these records and readers only see them.

Hashes: ``image_sha256`` / ``label_sha256`` are of the canonical bytes of a sample's arrays: C order,
``(Z, Y, X)``, little-endian int16 HU and uint8 labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from ..records import RecordError, canonical_json, check_fields

INDEX_FORMAT = "tumorforge.dataset/1"
PROVENANCE_VERSION = 1


def canonical_sha256(array: np.ndarray, dtype: str) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()).hexdigest()


def image_sha256(image: np.ndarray) -> str:
    return canonical_sha256(image, "<i2")


def label_sha256(label: np.ndarray) -> str:
    return canonical_sha256(label, "u1")


def _need(cond: bool, where: str, what: str, found) -> None:
    if not cond:
        raise RecordError(f"{where}: expected {what}, found {found!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class FileRecord:
    """An object of the dataset as written: its size and sha256."""

    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, obj, where: str) -> "FileRecord":
        data = check_fields(cls, obj, where)
        _need(_is_int(data["bytes"]) and data["bytes"] >= 0, where, "bytes >= 0", data["bytes"])
        _need(isinstance(data["sha256"], str) and len(data["sha256"]) == 64, where,
              "a sha256 hex digest", data["sha256"])
        return cls(**data)


@dataclass(frozen=True)
class SampleHashes:
    """What a sample must hash to: checked by every reader before a sample is used."""

    key: str
    image_sha256: str
    label_sha256: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def matches(self, image: np.ndarray, label: np.ndarray) -> bool:
        return image_sha256(image) == self.image_sha256 and label_sha256(label) == self.label_sha256

    @classmethod
    def from_json(cls, obj, where: str) -> "SampleHashes":
        data = check_fields(cls, obj, where)
        for k, v in data.items():
            _need(isinstance(v, str) and v, where, f"{k} as a non-empty string", v)
        return cls(**data)


@dataclass(frozen=True)
class ShardEntry:
    """A committed shard as the index lists it: the deterministic part of its commit record."""

    dataset_id: str
    shard: int
    start: int                      # first sample index
    count: int                      # samples in the shard
    scans: tuple[str, ...]          # scan_ids the shard's samples cycle through
    files: dict                     # object name -> FileRecord
    samples: tuple[SampleHashes, ...]

    def to_json(self) -> dict:
        return {"dataset_id": self.dataset_id, "shard": self.shard, "start": self.start,
                "count": self.count, "scans": list(self.scans),
                "files": {k: v.to_json() for k, v in self.files.items()},
                "samples": [s.to_json() for s in self.samples]}

    @classmethod
    def _parse(cls, data: dict, where: str) -> dict:
        for k in ("shard", "start", "count"):
            _need(_is_int(data[k]) and data[k] >= 0, where, f"{k} as an integer >= 0", data[k])
        _need(isinstance(data["scans"], list) and all(isinstance(s, str) for s in data["scans"]),
              where, "scans as a list of scan ids", data["scans"])
        _need(isinstance(data["files"], dict), where, "files as an object", data["files"])
        _need(isinstance(data["samples"], list) and len(data["samples"]) == data["count"], where,
              f"samples as a list of {data['count']} records", f"{len(data['samples'])} records"
              if isinstance(data["samples"], list) else data["samples"])
        data["scans"] = tuple(data["scans"])
        data["files"] = {k: FileRecord.from_json(v, f"{where} file {k}")
                         for k, v in data["files"].items()}
        data["samples"] = tuple(SampleHashes.from_json(s, f"{where} sample {n}")
                                for n, s in enumerate(data["samples"]))
        return data

    @classmethod
    def from_json(cls, obj, where: str) -> "ShardEntry":
        return cls(**cls._parse(check_fields(cls, obj, where), where))


@dataclass(frozen=True)
class ShardCommit(ShardEntry):
    """``_commits/shard-NNNNNN.json``: written after a shard's data objects; with it, the shard
    counts as written. Besides the index's entry it records how the shard was made."""

    seconds: dict = dataclasses.field(default_factory=dict)   # load, synthesize, encode_write
    worker: dict = dataclasses.field(default_factory=dict)    # pid, backend, scan loads

    def entry(self) -> ShardEntry:
        return ShardEntry(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ShardEntry)})

    def to_json(self) -> dict:
        return {**super().to_json(), "seconds": dict(self.seconds), "worker": dict(self.worker)}

    @classmethod
    def from_json(cls, obj, where: str) -> "ShardCommit":
        return cls(**cls._parse(check_fields(cls, obj, where), where))


@dataclass(frozen=True)
class DatasetIndex:
    """``index.json``: what the dataset holds. Written last, only when every shard is committed.

    ``spec`` is the job spec that made the dataset (without where it was written and how it ran);
    the accessors below are the only places its keys are read.
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
    def manifest(self) -> str:
        return self.spec["manifest"]

    @property
    def allow_roots(self) -> tuple[str, ...]:
        return tuple(self.spec.get("allow_roots", ()))

    def to_json(self) -> dict:
        return {"format": self.format, "dataset_id": self.dataset_id, "spec": self.spec,
                "samples": self.samples, "samples_per_shard": self.samples_per_shard,
                "formats": list(self.formats), "versions": self.versions, "plan": self.plan,
                "shards": [s.to_json() for s in self.shards],
                "metadata": {k: v.to_json() for k, v in sorted(self.metadata.items())}}

    @classmethod
    def from_json(cls, obj, where: str) -> "DatasetIndex":
        if isinstance(obj, dict) and obj.get("format") != INDEX_FORMAT:
            raise RecordError(f"{where}: format {obj.get('format')!r} is not supported "
                              f"(expected {INDEX_FORMAT})")
        data = check_fields(cls, obj, where)
        _need(isinstance(data["dataset_id"], str) and data["dataset_id"], where,
              "dataset_id as a string", data["dataset_id"])
        for k in ("samples", "samples_per_shard"):
            _need(_is_int(data[k]) and data[k] >= 1, where, f"{k} as an integer >= 1", data[k])
        _need(isinstance(data["spec"], dict) and isinstance(data["spec"].get("generator"), dict),
              where, "spec as the job spec object", type(data["spec"]).__name__)
        _need(isinstance(data["formats"], list) and data["formats"]
              and set(data["formats"]) <= {"zarr", "wds"}, where, "formats zarr and/or wds",
              data["formats"])
        _need(isinstance(data["shards"], list), where, "shards as a list", data["shards"])
        _need(isinstance(data.get("metadata", {}), dict), where, "metadata as an object",
              data.get("metadata"))
        data["metadata"] = {k: FileRecord.from_json(v, f"{where} metadata {k}")
                            for k, v in data.get("metadata", {}).items()}
        data["formats"] = tuple(data["formats"])
        data["shards"] = tuple(ShardEntry.from_json(s, f"{where} shard {n}")
                               for n, s in enumerate(data["shards"]))
        _check_layout(data, where)
        return cls(**data)


MAX_CROP_SIDE = 1024        # voxels; a reader allocates samples of crop_size before checking them


def _check_layout(data: dict, where: str) -> None:
    """The index agrees with itself and with its spec: sample counts, the shard layout (shard k
    holds samples [k S, (k + 1) S)), each shard's dataset id, the crop size. A reader then never
    reads more samples or larger ones than the job made."""
    spec, n, size = data["spec"], data["samples"], data["samples_per_shard"]
    for k in ("samples", "samples_per_shard"):
        _need(spec.get(k) == data[k], where, f"{k} equal to the spec's ({spec.get(k)!r})", data[k])
    crop = spec["generator"].get("crop_size")
    _need(isinstance(crop, list) and len(crop) == 3
          and all(_is_int(c) and 1 <= c <= MAX_CROP_SIDE for c in crop), where,
          f"spec.generator.crop_size as three integers 1..{MAX_CROP_SIDE}", crop)
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
    array and the tar's ``<key>.json``.
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
    image_sha256: str
    label_sha256: str
    shape: tuple[int, int, int]        # (Z, Y, X)
    provenance_version: int = PROVENANCE_VERSION

    def to_json_text(self) -> str:
        data = dataclasses.asdict(self)
        data["spawn_key"] = list(self.spawn_key)
        data["shape"] = list(self.shape)
        return canonical_json(data)

    @classmethod
    def from_json(cls, obj: dict, where: str = "provenance") -> "Provenance":
        if isinstance(obj, dict) and obj.get("provenance_version") != PROVENANCE_VERSION:
            raise RecordError(f"{where}: provenance_version {obj.get('provenance_version')!r} is "
                              f"not supported (expected {PROVENANCE_VERSION})")
        data = check_fields(cls, obj, where, optional=())
        if set(data) != {f.name for f in dataclasses.fields(cls)}:
            raise RecordError(f"{where}: missing field(s) "
                              f"{sorted({f.name for f in dataclasses.fields(cls)} - set(data))}")
        data["spawn_key"] = tuple(obj["spawn_key"])
        data["shape"] = tuple(obj["shape"])
        return cls(**data)
