"""Reading a generated dataset: the one API the trainer, audit, verify and evaluation use.

``Dataset(url)`` opens ``index.json`` (refusing a format it does not know) and reads samples from
the Zarr store or the WebDataset tars. Only shards listed in the index are read, never inferred from
what exists in the store. Nothing read here is ever unpickled.

Format 2: opening reads index.json only (shard records' sizes and sha256, scans); a shard's record
(its objects, its samples' hashes) is fetched when the shard is first used, checked against the
index, and kept in a bounded cache. Keys are derived from the dataset id and the sample number.
Format 1 indexes (every shard's record inline) are read as before.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from ..records import RecordError, loads
from . import codecs, names
from .records import DatasetIndex, Provenance, SampleHashes, ShardEntry
from .store import Objects


class DatasetError(ValueError):
    pass


def _brief(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__



class _Lazy(Sequence):
    """A read-only sequence whose items come from ``get(i)`` (shard records, derived keys)."""

    def __init__(self, n: int, get):
        self._n, self._get = n, get

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._get(i)


class Dataset:
    """A finished dataset at ``url`` (local folder, ``file://`` or ``s3://``)."""

    RECORD_CACHE = 1024         # shard records kept (format 2; ~20 kB each for 64 samples)

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.objects = Objects(self.url)
        try:
            raw = self.objects.get(names.INDEX)
        except FileNotFoundError:
            raise DatasetError(f"{self.url}: no index.json (not a tumorforge dataset, or its job "
                               "has not finished: rerun `tumorforge generate` to complete it)") from None
        try:
            self.index = DatasetIndex.from_json(loads(raw, f"{self.url}/{names.INDEX}"),
                                                f"{self.url}/{names.INDEX}")
        except RecordError as exc:
            raise DatasetError(str(exc)) from None

    # -- what the dataset is ------------------------------------------------------------------
    @property
    def dataset_id(self) -> str:
        return self.index.dataset_id

    @property
    def samples_per_shard(self) -> int:
        return self.index.samples_per_shard

    @property
    def shards(self) -> Sequence[ShardEntry]:
        """Every shard's record in order (format 2: each fetched when first used)."""
        if self.index.table is None:
            return self.index.shards
        return _Lazy(self.index.shard_count, self.shard)

    def shard(self, k: int) -> ShardEntry:
        """Shard ``k``'s record: its layout, objects and samples' hashes (DatasetError if it is
        missing, differs from what index.json says of it, or does not parse)."""
        if self.index.table is None:
            return self.index.shards[k]
        cache = self._records
        record = cache.get(k)
        if record is None:
            record = cache[k] = self._load_record(k)
            while len(cache) > self.RECORD_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(k)
        return record

    @cached_property
    def _records(self) -> OrderedDict:
        return OrderedDict()

    def _load_record(self, k: int) -> ShardEntry:
        key = names.record_key(k)
        where = f"{self.url}/{key}"
        want = self.index.table.record(k)
        try:
            raw = self.objects.get(key)
        except FileNotFoundError:
            raise DatasetError(f"{where}: missing (index.json lists it)") from None
        if len(raw) != want.bytes or hashlib.sha256(raw).hexdigest() != want.sha256:
            raise DatasetError(f"{where}: {len(raw)} bytes sha256 "
                               f"{hashlib.sha256(raw).hexdigest()[:12]}..., index.json says "
                               f"{want.bytes} bytes {want.sha256[:12]}...")
        try:
            record = ShardEntry.from_json(loads(raw, where), where)
        except RecordError as exc:
            raise DatasetError(str(exc)) from None
        start, count = self.index.layout(k)
        expected = (self.dataset_id, k, start, count, self.index.table.scans(k))
        found = (record.dataset_id, record.shard, record.start, record.count, record.scans)
        if found != expected:
            raise DatasetError(f"{where}: (dataset_id, shard, start, count, scans) = {found}, "
                               f"index.json says {expected}")
        if any(h.key != names.sample_key(self.dataset_id, start + j)
               for j, h in enumerate(record.samples)):
            raise DatasetError(f"{where}: sample keys are not the dataset's")
        return record

    @property
    def formats(self) -> list[str]:
        return list(self.index.formats)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` shape of every sample."""
        return self.index.crop_shape

    def __len__(self) -> int:
        return self.index.samples

    @cached_property
    def keys(self) -> Sequence[str]:
        """Every sample's key in order (format 2: derived from the dataset id, never stored)."""
        if self.index.table is None:
            return [s.key for shard in self.shards for s in shard.samples]
        return _Lazy(len(self), lambda i: names.sample_key(self.dataset_id, i))

    def index_of(self, key: str) -> int:
        i = names.sample_index(self.dataset_id, key)
        if i is None or not 0 <= i < len(self) or self.keys[i] != key:
            raise DatasetError(f"{self.url}: no sample with key {key!r}")
        return i

    def hashes(self, key: str) -> SampleHashes | None:
        """What sample ``key`` must hash to (from its shard's record), or None if the dataset has
        no such sample."""
        i = names.sample_index(self.dataset_id, key)
        if i is None or not 0 <= i < len(self):
            return None
        shard = self.shard_of(i)
        want = shard.samples[i - shard.start]
        return want if want.key == key else None

    def shard_of(self, i: int) -> ShardEntry:
        return self.shard(i // self.samples_per_shard)

    # -- reading samples ----------------------------------------------------------------------
    @cached_property
    def _zarr(self):
        if "zarr" not in self.formats:
            raise DatasetError(f"{self.url}: this dataset has no zarr store")
        url = f"{self.url}/{names.ZARR_ROOT}"
        for key, want in self.index.metadata.items():     # zarr.json files, as the index lists them
            try:
                size, digest = self.file_sha256(key)
            except FileNotFoundError:
                raise DatasetError(f"{self.url}/{key}: missing (index.json lists it)") from None
            if (size, digest) != (want.bytes, want.sha256):
                raise DatasetError(f"{self.url}/{key}: {size} bytes sha256 {digest[:12]}..., "
                                   f"index.json says {want.bytes} bytes {want.sha256[:12]}...")
        try:
            group = codecs.open_zarr(url)
            arrays = {name: group[name] for name in codecs.ZARR_ARRAYS}
        except Exception as exc:      # zarr raises many kinds for missing or corrupt metadata
            raise DatasetError(f"{url}: zarr metadata missing or unreadable ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        # Checked against the index before any chunk is read: an edited shape would make the
        # reader allocate what it says (400^3 per sample: 1.3 GB).
        n = len(self)
        for name, dtype in codecs.ZARR_ARRAYS.items():
            shape = (n, *self.crop_shape) if dtype else (n,)
            a = arrays[name]
            if tuple(a.shape) != shape or (dtype and a.dtype != np.dtype(dtype)):
                raise DatasetError(f"{url}/{name}: its metadata says shape {tuple(a.shape)} "
                                   f"{a.dtype}; index.json says {shape}"
                                   f"{' ' + dtype if dtype else ''}")
        return group

    def check_zarr_metadata(self) -> None:
        """Open the zarr store and check its arrays against the index (raises DatasetError), so a
        reader refuses a dataset with bad metadata at once instead of failing every sample."""
        self._zarr

    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self):
            raise DatasetError(f"{self.url}: sample index {i} out of range 0..{len(self) - 1}")

    def zarr_sample(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(key, image (Z, Y, X) int16 HU, label uint8) of sample ``i`` from the zarr store.

        Read straight from the shard objects, not through zarr-python: each array's shard index
        (its trailing chunk table, whose offset the index's object size gives) is fetched once per
        shard and kept (LRU of ``INDEX_CACHE`` shards), then the sample costs one ranged GET per
        array: 2 per sample on S3. The key is the index's (keys derive from the dataset id and the
        sample's number); callers check the arrays against the index's hashes."""
        self._check_index(i)
        shard = self.shard_of(i)
        j = i - shard.start
        out = []
        for name in ("image", "label"):
            dtype = codecs.ZARR_ARRAYS[name]
            key = codecs.volume_object(name, shard.shard)
            where = f"{self.url}/{key} sample {i}"
            offset, length = (int(v) for v in self._chunk_table(name, shard)[j])
            if offset == codecs.NO_CHUNK:       # a chunk of fill values is not stored
                out.append(np.zeros(self.crop_shape, dtype))
                continue
            out.append(codecs.decode_volume_chunk(
                self.objects.get_range(key, offset, offset + length), dtype, self.crop_shape,
                where))
        return self.keys[i], out[0], out[1]

    INDEX_CACHE = 4096          # shard indexes kept per array (16 bytes per sample each)

    @cached_property
    def _tables(self) -> OrderedDict:
        """Shard indexes read so far, by object name (least recently used first)."""
        return OrderedDict()

    def _chunk_table(self, name: str, shard: ShardEntry) -> np.ndarray:
        cache = self._tables
        key = codecs.volume_object(name, shard.shard)
        table = cache.get(key)
        if table is None:
            record = shard.files.get(key)
            if record is None:
                raise DatasetError(f"{self.url}: shard {shard.shard} lists no {key}")
            n = codecs.shard_index_bytes(self.samples_per_shard)
            table = codecs.read_shard_index(
                self.objects.get_range(key, record.bytes - n, record.bytes), f"{self.url}/{key}")
            cache[key] = table
            while len(cache) > 2 * self.INDEX_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return table

    def zarr_range(self, start: int, stop: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Samples ``start..stop-1`` from the zarr store, read in one request per array."""
        g = self._zarr
        return list(zip((str(k) for k in g["key"][start:stop]), g["image"][start:stop],
                        g["label"][start:stop]))

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, Provenance]:
        """Sample ``i`` as (image (Z, Y, X) int16 HU, label uint8, provenance)."""
        self._check_index(i)
        where = f"{self.url} sample {i}"
        try:
            if "zarr" in self.formats:
                g = self._zarr
                prov = loads(str(g["provenance"][i:i + 1][0]), where)
                return g["image"][i], g["label"][i], Provenance.from_json(prov, where)
            shard = self.shard_of(i)
            _, image, label, prov = self.read_tar(shard.shard)[i - shard.start]
            return image, label, Provenance.from_json(prov, where)
        except (RecordError, DatasetError) as exc:
            raise DatasetError(str(exc)) from None
        except Exception as exc:      # a corrupt chunk or tar: name the sample, no traceback
            raise DatasetError(f"{where}: unreadable ({_brief(exc)})") from None

    def shard_provenance(self, shard: ShardEntry) -> list[dict]:
        """The provenance records (dicts) of every sample of ``shard``, without its arrays: one
        read of the zarr provenance range, or the tar's JSON members."""
        where = f"{self.url} shard {shard.shard}"
        try:
            if "zarr" in self.formats:
                texts = self._zarr["provenance"][shard.start:shard.start + shard.count]
                return [loads(str(t), where) for t in texts]
            return [p for _, p in codecs.tar_provenance(self.objects.get(
                names.tar_name(shard.shard)))]
        except (RecordError, DatasetError) as exc:
            raise DatasetError(str(exc)) from None
        except Exception as exc:
            raise DatasetError(f"{where}: provenance unreadable ({_brief(exc)})") from None

    def copies(self, i: int) -> dict[str, str]:
        """How sample ``i`` as stored in each format compares with the index's hashes: ``ok``,
        ``differs`` or ``unreadable (...)``, by format."""
        self._check_index(i)
        shard = self.shard_of(i)
        want = shard.samples[i - shard.start]
        out = {}
        for fmt in self.formats:
            try:
                if fmt == "zarr":
                    key, image, label = self.zarr_sample(i)
                else:
                    key, image, label, _ = self.read_tar(shard.shard)[i - shard.start]
                out[fmt] = "ok" if key == want.key and want.matches(image, label) else "differs"
            except Exception as exc:
                out[fmt] = f"unreadable ({_brief(exc)})"
        return out

    def read_tar(self, shard: int) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
        """Every sample of shard ``shard``'s tar as (key, image, label, provenance dict)."""
        return self.read_tar_object(names.tar_name(shard))

    def read_tar_object(self, name: str) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
        return codecs.read_tar(self.objects.get(name))

    def stream_tar(self, shard: ShardEntry):
        """The samples of ``shard``'s tar as (key, image, label, provenance), streamed: one
        member in memory at a time, never the whole tar."""
        name = names.tar_name(shard.shard)
        record = shard.files.get(name)
        if record is None:
            raise DatasetError(f"{self.url}: shard {shard.shard} lists no {name}")
        with self.objects.open(name) as f:
            yield from codecs.iter_tar(f, record.bytes)

    def shard_samples(self, shard: ShardEntry, fmt: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(key, image, label) of every sample of ``shard`` as stored in format ``fmt``."""
        if fmt == "wds":
            return [(key, image, label) for key, image, label, _ in self.read_tar(shard.shard)]
        return self.zarr_range(shard.start, shard.start + shard.count)

    def shard_files(self, shard: ShardEntry, fmt: str) -> list[str]:
        """Object names of ``shard`` that hold format ``fmt``."""
        if fmt == "wds":
            return [k for k in shard.files if k == names.tar_name(shard.shard)]
        return [k for k in shard.files if k.startswith(names.ZARR_ROOT + "/")]

    # -- objects ------------------------------------------------------------------------------
    def file_sha256(self, key: str) -> tuple[int, str]:
        data = self.objects.get(key)
        return len(data), hashlib.sha256(data).hexdigest()

    def list_objects(self) -> list[str]:
        return self.objects.list("")

    def has_object(self, key: str) -> bool:
        return self.objects.exists(key)
