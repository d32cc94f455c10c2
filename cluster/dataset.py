"""Reading a generated dataset: the small API trainers, audit and verify use.

``Dataset(url)`` opens ``index.json`` (refusing a format it does not know) and reads samples from
the Zarr store or the WebDataset tars. Only shards listed in the index are read, never inferred from
what exists in the store. Nothing read here is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property

import numpy as np

from . import formats
from .formats import INDEX, INDEX_FORMAT
from .objects import Objects
from .provenance import Provenance



class DatasetError(ValueError):
    pass


class Dataset:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.objects = Objects(self.url)
        try:
            raw = self.objects.get(INDEX)
        except FileNotFoundError as exc:
            raise DatasetError(f"{self.url}: no index.json (not a tumorforge dataset, or its job "
                               "has not finished: rerun `tumorforge generate` to complete it)") from exc
        try:
            self.index = json.loads(raw)
        except ValueError as exc:
            raise DatasetError(f"{self.url}/index.json is not valid JSON: {exc}") from exc
        if self.index.get("format") != INDEX_FORMAT:
            raise DatasetError(f"{self.url}/index.json: format {self.index.get('format')!r} is not "
                               f"supported (expected {INDEX_FORMAT})")
        self.dataset_id: str = self.index["dataset_id"]
        self.samples_per_shard: int = self.index["samples_per_shard"]
        self.shards: list[dict] = self.index["shards"]

    def __len__(self) -> int:
        return int(self.index["samples"])

    @property
    def formats(self) -> list[str]:
        return list(self.index["formats"])

    @cached_property
    def keys(self) -> list[str]:
        return [s["key"] for shard in self.shards for s in shard["samples"]]

    def index_of(self, key: str) -> int:
        try:
            return self.keys.index(key)
        except ValueError:
            raise DatasetError(f"{self.url}: no sample with key {key!r}") from None

    @cached_property
    def _zarr(self):
        import zarr
        from manifests import storage
        if "zarr" not in self.formats:
            raise DatasetError(f"{self.url}: this dataset has no zarr store")
        url = f"{self.url}/{formats.ZARR_ROOT}"
        if storage.is_remote(url):
            from zarr.storage import FsspecStore
            store = FsspecStore.from_url(url, storage_options=storage.storage_options(url),
                                         read_only=True)
        else:
            store = url.removeprefix("file://")
        return zarr.open_group(store, mode="r")

    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self):
            raise DatasetError(f"{self.url}: sample index {i} out of range 0..{len(self) - 1}")

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, Provenance]:
        """Sample ``i`` as (image (Z, Y, X) int16 HU, label uint8, provenance)."""
        self._check_index(i)
        if "zarr" in self.formats:
            g = self._zarr
            prov = json.loads(str(g["provenance"][i:i + 1][0]))
            return g["image"][i], g["label"][i], Provenance.from_json(prov, f"{self.url} sample {i}")
        shard = i // self.samples_per_shard
        key, image, label, prov = self.read_tar(shard)[i - shard * self.samples_per_shard]
        return image, label, Provenance.from_json(prov, f"{self.url} sample {i}")

    def read_tar(self, shard: int) -> list:
        return formats.read_tar(self.objects.get(formats.tar_name(shard)))

    def file_sha256(self, key: str) -> tuple[int, str]:
        data = self.objects.get(key)
        return len(data), hashlib.sha256(data).hexdigest()
