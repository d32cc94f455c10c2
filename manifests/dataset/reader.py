"""Reading a generated dataset: the one API the trainer, audit, verify and evaluation use.

``Dataset(url)`` opens ``index.json`` (refusing a format it does not know) and reads samples from
the Zarr store or the WebDataset tars. Only shards listed in the index are read, never inferred from
what exists in the store. Nothing read here is ever unpickled.

Formats 2-3: opening reads index.json only (shard records' sizes and sha256, scans); a shard's
record (its objects, its samples' digests) is fetched when the shard is first used, checked
against the index, and kept in a bounded cache. Keys are derived from the dataset id and the
sample number. Format 1 indexes (every shard's record inline) are read as before.

Every read is bounded: index.json by :data:`INDEX_MAX_BYTES`, a shard record by the size the index
gives, an object by the size its record gives; on local disk only regular files are read (a named
pipe or ``/dev/zero`` in place of an object is refused in one line). Zarr samples are read
straight from the shard objects, without zarr-python, whose reads have no bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from ..records import RecordError, loads
from ..storage import NotRegularFileError
from . import codecs, names
from .records import DatasetIndex, FileRecord, Provenance, SampleHashes, ShardEntry
from .store import Objects, ObjectTooLarge
from ..errors import UserError

# index.json: bench scale's index of 10 million samples in shards of 64 weighs 12.9 MB (83 bytes
# per shard); this cap allows 10 million samples in shards of 13 or more. Parsing costs a few
# times the size, so a reader never holds more than a few hundred MB for it.
INDEX_MAX_BYTES = 64 << 20
# plan.json lists every shard (about 110 bytes each): 17 MB for 156,250 shards.
PLAN_MAX_BYTES = INDEX_MAX_BYTES
# A commit record lists a shard's few objects and how it was made: a few kB.
COMMIT_MAX_BYTES = 1 << 20
# A zarr.json an index from before the metadata was listed does not pin (a few kB each).
METADATA_MAX_BYTES = 1 << 20


class DatasetError(UserError, ValueError):
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

    RECORD_CACHE = 1024         # shard records kept (formats 2-3; ~20 kB each for 64 samples)

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.objects = Objects(self.url)
        try:
            raw = self.read(names.INDEX, INDEX_MAX_BYTES)
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
        """Every shard's record in order (formats 2-3: each fetched when first used)."""
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
        raw = self.checked(key, self.index.table.record(k), "index.json")
        try:
            record = ShardEntry.from_json(loads(raw, where), where, self.index.number)
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
        """Every sample's key in order (formats 2-3: derived from the dataset id, never stored)."""
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
            self.checked(key, want, "index.json")
        if not self.index.metadata:      # an index from before it listed them: bounded, regular
            for key in (f"{names.ZARR_ROOT}/zarr.json",
                        *(f"{names.ZARR_ROOT}/{a}/zarr.json" for a in codecs.ZARR_ARRAYS)):
                try:
                    self.read(key, METADATA_MAX_BYTES)
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
        sample's number); callers check the arrays against the index's digests."""
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
                self._get(key, lambda: self.objects.get_range(key, offset, offset + length)),
                dtype, self.crop_shape, where))
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
            record = self._listed(shard, key)
            n = codecs.shard_index_bytes(self.samples_per_shard)
            table = codecs.read_shard_index(
                self._get(key, lambda: self.objects.get_range(key, record.bytes - n,
                                                              record.bytes)),
                f"{self.url}/{key}", record.bytes)
            cache[key] = table
            while len(cache) > 2 * self.INDEX_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return table

    def _listed(self, shard: ShardEntry, key: str) -> FileRecord:
        record = shard.files.get(key)
        if record is None:
            raise DatasetError(f"{self.url}: shard {shard.shard} lists no {key}")
        return record

    def _zarr_shard(self, shard: ShardEntry) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(key as stored, image, label) of every sample of ``shard`` from the zarr store: each
        object read whole (bounded by, and checked against, its record), then decoded chunk by
        chunk with each chunk's crc32c and declared size checked."""
        self.check_zarr_metadata()
        where = f"{self.url} shard {shard.shard}"
        arrays = []
        for name in ("image", "label"):
            key = codecs.volume_object(name, shard.shard)
            if key not in shard.files:            # every chunk all fill values: not stored
                arrays.append([np.zeros(self.crop_shape, codecs.ZARR_ARRAYS[name])] * shard.count)
                continue
            arrays.append(codecs.volume_chunks(
                self.object(shard, key), codecs.ZARR_ARRAYS[name], self.crop_shape,
                self.samples_per_shard, shard.count, f"{self.url}/{key}"))
        keys = self._side(shard, "key")
        return list(zip(keys, *arrays))

    def _side(self, shard: ShardEntry, name: str) -> list[str]:
        """The values of side array ``name`` (``key`` or ``provenance``) for ``shard``'s samples."""
        key = codecs.side_object(name, shard.shard)
        values = codecs.decode_side_chunk(self.object(shard, key), self.samples_per_shard,
                                          f"{self.url}/{key}")
        return values[:shard.count]

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, Provenance]:
        """Sample ``i`` as (image (Z, Y, X) int16 HU, label uint8, provenance)."""
        self._check_index(i)
        where = f"{self.url} sample {i}"
        try:
            shard = self.shard_of(i)
            if "zarr" in self.formats:
                self.check_zarr_metadata()
                _, image, label = self.zarr_sample(i)
                prov = loads(self._side(shard, "provenance")[i - shard.start], where)
                return image, label, Provenance.from_json(prov, where)
            _, image, label, prov = self.read_tar(shard.shard)[i - shard.start]
            return image, label, Provenance.from_json(prov, where)
        except (RecordError, DatasetError) as exc:
            raise DatasetError(str(exc)) from None
        except Exception as exc:      # a corrupt chunk or tar: name the sample, no traceback
            raise DatasetError(f"{where}: unreadable ({_brief(exc)})") from None

    def shard_provenance(self, shard: ShardEntry) -> list[dict]:
        """The provenance records (dicts) of every sample of ``shard``, without its arrays: one
        read of the zarr provenance chunk, or the tar's JSON members."""
        where = f"{self.url} shard {shard.shard}"
        try:
            if "zarr" in self.formats:
                return [loads(t, where) for t in self._side(shard, "provenance")]
            return [p for _, p in codecs.tar_provenance(self.object(
                shard, names.tar_name(shard.shard)))]
        except (RecordError, DatasetError) as exc:
            raise DatasetError(str(exc)) from None
        except Exception as exc:
            raise DatasetError(f"{where}: provenance unreadable ({_brief(exc)})") from None

    def copies(self, i: int) -> dict[str, str]:
        """How sample ``i`` as stored in each format compares with the index's digests: ``ok``,
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
        """Every sample of shard ``shard``'s tar as (key, image, label, provenance dict), the tar
        read whole (bounded by, and checked against, its record)."""
        entry = self.shard(shard)
        return codecs.read_tar(self.object(entry, names.tar_name(shard)), self.crop_shape)

    def stream_tar(self, shard: ShardEntry):
        """The samples of ``shard``'s tar as (key, image, label, provenance), streamed: one
        member in memory at a time, never the whole tar."""
        name = names.tar_name(shard.shard)
        record = self._listed(shard, name)
        found = 0
        with self._get(name, lambda: self.objects.open(name, record.bytes)) as f:
            for sample in codecs.iter_tar(f, record.bytes, self.crop_shape):
                found += 1
                yield sample
        if found != shard.count:
            raise DatasetError(f"{self.url}/{name}: {found} samples, its shard's record lists "
                               f"{shard.count}")

    def shard_samples(self, shard: ShardEntry, fmt: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(key, image, label) of every sample of ``shard`` as stored in format ``fmt``."""
        if fmt == "wds":
            return [(key, image, label) for key, image, label, _ in self.read_tar(shard.shard)]
        return self._zarr_shard(shard)

    def shard_files(self, shard: ShardEntry, fmt: str) -> list[str]:
        """Object names of ``shard`` that hold format ``fmt``."""
        if fmt == "wds":
            return [k for k in shard.files if k == names.tar_name(shard.shard)]
        return [k for k in shard.files if k.startswith(names.ZARR_ROOT + "/")]

    # -- objects ------------------------------------------------------------------------------
    def _get(self, key: str, read):
        """``read()``, with a refused object (not a regular file, larger than expected) as a
        one-line DatasetError; FileNotFoundError passes."""
        try:
            return read()
        except (NotRegularFileError, ObjectTooLarge) as exc:
            raise DatasetError(str(exc)) from None

    def read(self, key: str, limit: int) -> bytes:
        """Object ``key``, at most ``limit`` bytes (DatasetError if larger or not a regular
        file; FileNotFoundError if missing)."""
        return self._get(key, lambda: self.objects.get(key, limit))

    def checked(self, key: str, want: FileRecord, lister: str) -> bytes:
        """Object ``key``, which ``lister`` (index.json, the shard's record) says is ``want``
        (size and checksum): DatasetError when missing or different, read no further than
        ``want.bytes`` + 1."""
        where = f"{self.url}/{key}"
        try:
            data = self.read(key, want.bytes)
        except FileNotFoundError:
            raise DatasetError(f"{where}: missing ({lister} lists it)") from None
        except DatasetError as exc:
            raise DatasetError(f"{exc} ({lister} says {want.bytes} bytes)") from None
        problem = want.problem(data)
        if problem:
            raise DatasetError(f"{where}: {problem}, as {lister} says")
        return data

    def object(self, shard: ShardEntry, key: str) -> bytes:
        """Data object ``key`` of ``shard``, checked against the shard's record."""
        return self.checked(key, self._listed(shard, key), f"shard {shard.shard}'s record")

    def object_problem(self, key: str, want: FileRecord) -> str | None:
        """None when object ``key`` has ``want``'s size and checksum; else ``missing`` or what
        differs (verify's wording)."""
        try:
            data = self.read(key, want.bytes)
        except FileNotFoundError:
            return "missing"
        except DatasetError as exc:
            return f"unreadable: {exc}"
        problem = want.problem(data)
        return f"corrupt: {problem}" if problem else None

    def list_objects(self) -> list[str]:
        return self.objects.list("")
