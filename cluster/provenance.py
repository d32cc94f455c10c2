"""The per-sample provenance record: enough to say how a sample was made and to regenerate it.

Stored as canonical JSON (sorted keys, no spaces) in both formats: the zarr ``provenance`` array and
the tar's ``<key>.json``. ``image_sha256`` / ``label_sha256`` hash the canonical bytes of the arrays:
C order, ``(Z, Y, X)``, little-endian int16 HU and uint8 labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

PROVENANCE_VERSION = 1


def canonical_sha256(array: np.ndarray, dtype: str) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()).hexdigest()


def image_sha256(image: np.ndarray) -> str:
    return canonical_sha256(image, "<i2")


def label_sha256(label: np.ndarray) -> str:
    return canonical_sha256(label, "u1")


@dataclass(frozen=True)
class Provenance:
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
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: dict, where: str = "provenance") -> "Provenance":
        if obj.get("provenance_version") != PROVENANCE_VERSION:
            raise ValueError(f"{where}: provenance_version {obj.get('provenance_version')!r} is "
                             f"not supported (expected {PROVENANCE_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(obj) != names:
            raise ValueError(f"{where}: fields {sorted(set(obj) ^ names)} missing or unknown")
        data = dict(obj)
        data["spawn_key"] = tuple(obj["spawn_key"])
        data["shape"] = tuple(obj["shape"])
        return cls(**data)
