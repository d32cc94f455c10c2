"""WebDataset tars (``wds/shard-NNNNNN.tar``) as a storage format: one tar per shard, read whole
(checked against the shard's record) or streamed one member at a time. No random access: a
sample is read with its shard. The encoding itself is :mod:`codecs`'.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import codecs
from .errors import DatasetError
from .names import WDS_DIR, tar_name
from .storage_format import FormatReader, ShardSamples, StorageFormat, Stored


class WdsFormat(StorageFormat):
    name = "wds"
    root = WDS_DIR
    stage = "tar"

    def objects(self, shard: int) -> tuple[str, ...]:
        return (tar_name(shard),)

    def encode(self, samples: ShardSamples) -> dict[str, list[bytes]]:
        return {tar_name(samples.shard): codecs.tar_parts(samples.keys, samples.frames,
                                                          samples.provenance)}

    def provenance_object(self, shard: int) -> str:
        return tar_name(shard)

    def decode_provenance(self, data: bytes, per_shard: int, count: int, where: str
                          ) -> list[dict]:
        return [p for _, p in codecs.tar_provenance(data)]

    def open(self, ds) -> "WdsReader":
        return WdsReader(self, ds)


class WdsReader(FormatReader):
    """The WebDataset tars of an opened dataset."""

    def read(self, shard) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
        """Every sample of ``shard``'s tar as (key, image, label, provenance dict), the tar read
        whole (bounded by, and checked against, its record)."""
        return codecs.read_tar(self.ds.object(shard, tar_name(shard.shard)), self.ds.crop_shape)

    def samples(self, shard) -> list[Stored]:
        return [(key, image, label) for key, image, label, _ in self.read(shard)]

    def stream(self, shard) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict]]:
        """The samples of ``shard``'s tar, streamed: one member in memory at a time, never the
        whole tar."""
        ds, name = self.ds, tar_name(shard.shard)
        record = ds.listed(shard, name)
        found = 0
        with ds.guarded(name, lambda: ds.objects.open(name, record.bytes)) as f:
            for sample in codecs.iter_tar(f, record.bytes, ds.crop_shape):
                found += 1
                yield sample
        if found != shard.count:
            raise DatasetError(f"{ds.url}/{name}: {found} samples, its shard's record lists "
                               f"{shard.count}")
