"""The Zarr v3 store (``dataset.zarr``) as a storage format: the objects a shard writes, its
``zarr.json`` metadata, and a reader with random access (one ranged read per array per sample).

Samples are read straight from the shard objects, without zarr-python, whose reads have no
bound; zarr-python only opens the metadata, which is checked against the index before any chunk
is read. The encoding itself is :mod:`codecs`'.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property

import numpy as np

from ..records import loads
from . import codecs
from .errors import DatasetError
from .names import ZARR_ROOT
from .storage_format import DatasetLayout, FormatReader, ShardSamples, StorageFormat, Stored

# The arrays of the store, in the order a shard lists its objects: the sample volumes (one zarr
# shard object each), then the side arrays with one entry per sample (one chunk object each).
VOLUMES = ("image", "label")
ARRAYS = (*VOLUMES, "key", "sample_index", "provenance")
# A zarr.json an index from before the metadata was listed does not pin (a few kB each).
METADATA_MAX_BYTES = 1 << 20


class ZarrFormat(StorageFormat):
    name = "zarr"
    root = ZARR_ROOT
    stage = "zarr"
    random_access = True
    metadata_keys = (f"{ZARR_ROOT}/zarr.json", *(f"{ZARR_ROOT}/{a}/zarr.json" for a in ARRAYS))

    def objects(self, shard: int) -> tuple[str, ...]:
        return tuple(codecs.volume_object(a, shard) if a in VOLUMES else
                     codecs.side_object(a, shard) for a in ARRAYS)

    def metadata(self, layout: DatasetLayout) -> dict[str, bytes]:
        return codecs.zarr_metadata(layout.samples, layout.per_shard, layout.crop, layout.attrs,
                                    layout.compression, layout.spacing_mm, layout.classes)

    def encode(self, samples: ShardSamples) -> dict[str, list[bytes]]:
        return codecs.zarr_shard_parts(samples.shard, list(samples.frames), samples.keys,
                                       samples.indices, samples.provenance, samples.per_shard)

    def provenance_object(self, shard: int) -> str:
        return codecs.side_object("provenance", shard)

    def decode_provenance(self, data: bytes, per_shard: int, count: int, where: str
                          ) -> list[dict]:
        return [loads(t, where) for t in codecs.decode_side_chunk(data, per_shard, where)[:count]]

    def open(self, ds) -> "ZarrReader":
        return ZarrReader(self, ds)


class ZarrReader(FormatReader):
    """The Zarr store of an opened dataset."""

    INDEX_CACHE = 4096          # shard indexes kept per array (16 bytes per sample each)

    @cached_property
    def _group(self):
        ds = self.ds
        url = f"{ds.url}/{ZARR_ROOT}"
        for key, want in ds.index.metadata.items():     # zarr.json files, as the index lists them
            ds.checked(key, want, "index.json")
        if not ds.index.metadata:      # an index from before it listed them: bounded, regular
            for key in self.format.metadata_keys:
                try:
                    ds.read(key, METADATA_MAX_BYTES)
                except FileNotFoundError:
                    pass                 # zarr names what it misses
        try:
            group = codecs.open_zarr(url)
            arrays = {name: group[name] for name in codecs.ZARR_ARRAYS}
        except Exception as exc:      # zarr raises many kinds for missing or corrupt metadata
            raise DatasetError(f"{url}: zarr metadata missing or unreadable ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        # Checked against the index before any chunk is read: an edited shape would make the
        # reader allocate what it says (400^3 per sample: 1.3 GB).
        n = len(ds)
        for name, dtype in codecs.ZARR_ARRAYS.items():
            shape = (n, *ds.crop_shape) if dtype else (n,)
            a = arrays[name]
            if tuple(a.shape) != shape or (dtype and a.dtype != np.dtype(dtype)):
                raise DatasetError(f"{url}/{name}: its metadata says shape {tuple(a.shape)} "
                                   f"{a.dtype}; index.json says {shape}"
                                   f"{' ' + dtype if dtype else ''}")
        return group

    def check(self) -> None:
        """Open the store's metadata and check its arrays against the index."""
        self._group

    def sample(self, i: int) -> Stored:
        """Sample ``i`` read straight from its shard's objects: each array's shard index (its
        trailing chunk table, whose offset the object's size in the shard's record gives) is
        fetched once per shard and kept (LRU of ``INDEX_CACHE`` shards), then the sample costs
        one ranged GET per array: 2 per sample on S3. The key is the index's (keys derive from
        the dataset id and the sample's number); callers check the arrays against the index's
        digests."""
        ds = self.ds
        ds.check_index(i)
        shard = ds.shard_of(i)
        j = i - shard.start
        out = []
        for name in VOLUMES:
            dtype = codecs.ZARR_ARRAYS[name]
            key = codecs.volume_object(name, shard.shard)
            offset, length = (int(v) for v in self._chunk_table(name, shard)[j])
            if offset == codecs.NO_CHUNK:       # a chunk of fill values is not stored
                out.append(np.zeros(ds.crop_shape, dtype))
                continue
            out.append(codecs.decode_volume_chunk(
                ds.guarded(key, lambda: ds.objects.get_range(key, offset, offset + length)),
                dtype, ds.crop_shape, f"{ds.url}/{key} sample {i}"))
        return ds.keys[i], out[0], out[1]

    @cached_property
    def _tables(self) -> OrderedDict:
        """Shard indexes read so far, by object name (least recently used first)."""
        return OrderedDict()

    def _chunk_table(self, name: str, shard) -> np.ndarray:
        ds, cache = self.ds, self._tables
        key = codecs.volume_object(name, shard.shard)
        table = cache.get(key)
        if table is None:
            record = ds.listed(shard, key)
            n = codecs.shard_index_bytes(ds.samples_per_shard)
            table = codecs.read_shard_index(
                ds.guarded(key, lambda: ds.objects.get_range(key, record.bytes - n, record.bytes)),
                f"{ds.url}/{key}", record.bytes)
            cache[key] = table
            while len(cache) > 2 * self.INDEX_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return table

    def samples(self, shard) -> list[Stored]:
        """(key as stored, image, label) of every sample of ``shard``: each object read whole,
        then decoded chunk by chunk with each chunk's crc32c and declared size checked."""
        self.check()
        ds = self.ds
        arrays = []
        for name in VOLUMES:
            key = codecs.volume_object(name, shard.shard)
            if key not in shard.files:            # every chunk all fill values: not stored
                arrays.append([np.zeros(ds.crop_shape, codecs.ZARR_ARRAYS[name])] * shard.count)
                continue
            arrays.append(codecs.volume_chunks(
                ds.object(shard, key), codecs.ZARR_ARRAYS[name], ds.crop_shape,
                ds.samples_per_shard, shard.count, f"{ds.url}/{key}"))
        key = codecs.side_object("key", shard.shard)
        keys = codecs.decode_side_chunk(ds.object(shard, key), ds.samples_per_shard,
                                        f"{ds.url}/{key}")[:shard.count]
        return list(zip(keys, *arrays))
