"""Reading a generated dataset: the one API the trainer, audit, verify and evaluation use.

``Dataset(url)`` opens ``index.json`` (refusing a format it does not know) and reads samples in
any storage format the index lists, through that format's reader from the format table
(:mod:`formats`): ``reader(fmt)``. Only shards listed in the index are read, never inferred from
what exists in the store. Nothing read here is ever unpickled.

Formats 2-3: opening reads index.json only (shard records' sizes and sha256, scans); a shard's
record (its objects, its samples' digests) is fetched when the shard is first used, checked
against the index, and kept in a bounded cache. Keys are derived from the dataset id and the
sample number. Format 1 indexes (every shard's record inline) are read as before.

Every read is bounded: index.json by :data:`INDEX_MAX_BYTES`, a shard record by the size the index
gives, an object by the size its record gives; on local disk only regular files are read (a named
pipe or ``/dev/zero`` in place of an object is refused in one line). The formats' readers read
through the same bounded, checked reads (:meth:`Dataset.object`, :meth:`Dataset.guarded`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from ..records import RecordError, loads
from ..storage import NotRegularFileError
from . import names
from .errors import DatasetError
from .formats import FORMATS
from .records import DatasetIndex, FileRecord, Provenance, SampleHashes, ShardEntry
from .storage_format import FormatReader, Stored
from .store import Objects, ObjectTooLarge

# index.json: bench scale's index of 10 million samples in shards of 64 weighs 12.9 MB (83 bytes
# per shard); this cap allows 10 million samples in shards of 13 or more. Parsing costs a few
# times the size, so a reader never holds more than a few hundred MB for it.
INDEX_MAX_BYTES = 64 << 20
# plan.json lists every shard (about 110 bytes each): 17 MB for 156,250 shards.
PLAN_MAX_BYTES = INDEX_MAX_BYTES
# A commit record lists a shard's few objects and how it was made: a few kB.
COMMIT_MAX_BYTES = 1 << 20


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
    def reader(self, fmt: str) -> FormatReader:
        """The reader of storage format ``fmt`` of this dataset (DatasetError when the dataset was
        written without it)."""
        found = self._readers.get(fmt)
        if found is None:
            if fmt not in self.formats:
                raise DatasetError(f"{self.url} was written without {fmt} (it has "
                                   f"{self.formats})")
            found = self._readers[fmt] = FORMATS[fmt].open(self)
        return found

    @cached_property
    def _readers(self) -> dict[str, FormatReader]:
        return {}

    @property
    def preferred(self) -> str:
        """The format a single sample and a shard's provenance are read from: the dataset's
        first in the format table's order."""
        return next(f for f in FORMATS if f in self.formats)

    def check_index(self, i: int) -> None:
        if not 0 <= i < len(self):
            raise DatasetError(f"{self.url}: sample index {i} out of range 0..{len(self) - 1}")

    def zarr_sample(self, i: int) -> Stored:
        """(key, image (Z, Y, X) int16 HU, label uint8) of sample ``i`` from the zarr store, two
        ranged reads (``reader("zarr").sample(i)``)."""
        return self.reader("zarr").sample(i)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, Provenance]:
        """Sample ``i`` as (image (Z, Y, X) int16 HU, label uint8, provenance), from the
        :attr:`preferred` format."""
        self.check_index(i)
        where = f"{self.url} sample {i}"
        try:
            shard = self.shard_of(i)
            reader = self.reader(self.preferred)
            reader.check()
            _, image, label = reader.sample(i)
            prov = reader.provenance(shard)[i - shard.start]
            return image, label, Provenance.from_json(prov, where)
        except (RecordError, DatasetError) as exc:
            raise DatasetError(str(exc)) from None
        except Exception as exc:      # a corrupt chunk or tar: name the sample, no traceback
            raise DatasetError(f"{where}: unreadable ({_brief(exc)})") from None

    def shard_provenance(self, shard: ShardEntry) -> list[dict]:
        """The provenance records (dicts) of every sample of ``shard``, without its arrays, from
        the :attr:`preferred` format."""
        where = f"{self.url} shard {shard.shard}"
        try:
            return self.reader(self.preferred).provenance(shard)
        except (RecordError, DatasetError) as exc:
            raise DatasetError(str(exc)) from None
        except Exception as exc:
            raise DatasetError(f"{where}: provenance unreadable ({_brief(exc)})") from None

    def copies(self, i: int) -> dict[str, str]:
        """How sample ``i`` as stored in each format compares with the index's digests: ``ok``,
        ``differs`` or ``unreadable (...)``, by format."""
        self.check_index(i)
        shard = self.shard_of(i)
        want = shard.samples[i - shard.start]
        out = {}
        for fmt in self.formats:
            try:
                key, image, label = self.reader(fmt).sample(i)
                out[fmt] = "ok" if key == want.key and want.matches(image, label) else "differs"
            except Exception as exc:
                out[fmt] = f"unreadable ({_brief(exc)})"
        return out

    def shard_samples(self, shard: ShardEntry, fmt: str) -> list[Stored]:
        """(key, image, label) of every sample of ``shard`` as stored in format ``fmt``."""
        return self.reader(fmt).samples(shard)

    def shard_files(self, shard: ShardEntry, fmt: str) -> list[str]:
        """Object names of ``shard`` that hold format ``fmt``."""
        return [k for k in shard.files if FORMATS[fmt].owns(k)]

    # -- objects ------------------------------------------------------------------------------
    def guarded(self, key: str, read):
        """``read()``, with a refused object (not a regular file, larger than expected) as a
        one-line DatasetError; FileNotFoundError passes."""
        try:
            return read()
        except (NotRegularFileError, ObjectTooLarge) as exc:
            raise DatasetError(str(exc)) from None

    def read(self, key: str, limit: int) -> bytes:
        """Object ``key``, at most ``limit`` bytes (DatasetError if larger or not a regular
        file; FileNotFoundError if missing)."""
        return self.guarded(key, lambda: self.objects.get(key, limit))

    def listed(self, shard: ShardEntry, key: str) -> FileRecord:
        """What ``shard``'s record says of its object ``key`` (DatasetError if it lists none)."""
        record = shard.files.get(key)
        if record is None:
            raise DatasetError(f"{self.url}: shard {shard.shard} lists no {key}")
        return record

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
        return self.checked(key, self.listed(shard, key), f"shard {shard.shard}'s record")

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
