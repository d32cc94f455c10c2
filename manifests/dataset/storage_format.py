"""What a storage format is: the interface every entry of the format table
(:data:`~tumorforge.manifests.dataset.formats.FORMATS`) implements.

A storage format is one way a dataset keeps its samples: the Zarr store, WebDataset tars. The
writer, the reader, verify, inspect, the dry run and the trainer know formats only through this
interface, so a new format is one class (over its codec module) and one line in the table. A
format says:

- which objects it writes for a shard (:meth:`StorageFormat.objects`), once for the whole dataset
  (:meth:`StorageFormat.metadata`), and whether an object of a dataset is its own
  (:meth:`StorageFormat.owns`);
- how to encode a shard from its samples, compressed once for every format
  (:meth:`StorageFormat.encode`);
- how to read a shard's samples and provenance back (:meth:`StorageFormat.open` binds a
  :class:`FormatReader` to an opened dataset), and whether one sample can be read without the rest
  of its shard (``random_access``: the trainer's exact-epoch order needs it).

A reader reads only through the dataset's bounded, checked object reads and never unpickles.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .codecs import Frame

# (key, image (Z, Y, X) int16 HU, label (Z, Y, X) uint8) of one stored sample.
Stored = tuple[str, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ShardSamples:
    """One shard's samples as every format encodes them."""

    shard: int
    keys: Sequence[str]
    indices: Sequence[int]               # the samples' numbers in the dataset
    frames: Sequence[tuple[Frame, Frame]]  # (image, label) per sample, compressed once
    provenance: Sequence[str]            # each sample's provenance, canonical JSON text
    per_shard: int                       # samples in a full shard (the last may hold fewer)


@dataclass(frozen=True)
class DatasetLayout:
    """What a format's dataset-level objects describe (Zarr's ``zarr.json`` files)."""

    samples: int
    per_shard: int
    crop: tuple[int, int, int]           # (Z, Y, X) voxels of every sample
    compression: str                     # a name of codecs.COMPRESSIONS
    spacing_mm: tuple[float, float, float]   # the crops' spacing along R, A, S
    classes: tuple[str, ...]             # label value c means classes[c] (the organ's record)
    attrs: dict                          # the dataset's own attributes (id, seed, ...)


class StorageFormat:
    """One entry of the format table. ``name`` is how job specs and ``index.json`` name it;
    every object it writes lies under the folder ``root``; ``stage`` names the writer's CPU clock
    for encoding it (the generation benchmark reports it)."""

    name: str = ""
    root: str = ""
    stage: str = ""
    random_access: bool = False
    metadata_keys: tuple[str, ...] = ()     # its dataset-level objects, when it has any

    def objects(self, shard: int) -> tuple[str, ...]:
        """Names (relative to the dataset's root) of the objects it may write for ``shard``."""
        raise NotImplementedError

    def owns(self, key: str) -> bool:
        """Whether object ``key`` of a dataset (relative to its root) is this format's."""
        return key.startswith(self.root + "/")

    def metadata(self, layout: DatasetLayout) -> dict[str, bytes]:
        """Objects written once for the whole dataset, before any shard (none by default)."""
        return {}

    def encode(self, samples: ShardSamples) -> dict[str, list[bytes]]:
        """The shard's objects by name, each as the pieces that make it (written unjoined);
        identical bytes for identical samples."""
        raise NotImplementedError

    def provenance_object(self, shard: int) -> str:
        """The object of ``shard`` that holds its samples' provenance."""
        raise NotImplementedError

    def decode_provenance(self, data: bytes, per_shard: int, count: int, where: str
                          ) -> list[dict]:
        """The provenance records (dicts, in sample order) of a shard's ``count`` samples from
        the bytes of its :meth:`provenance_object` (``where`` names it in errors)."""
        raise NotImplementedError

    def open(self, ds) -> "FormatReader":
        """A reader of this format bound to ``ds``, an opened dataset (``reader.Dataset``)."""
        return FormatReader(self, ds)


class FormatReader:
    """Reads one storage format of an opened dataset ``ds`` (``reader.Dataset``), whose checked
    reads it uses: ``object(shard, key)`` (whole, against the shard's record), ``listed``,
    ``guarded`` and ``objects`` (ranged and streamed reads). Errors name the object or sample.
    A subclass gives :meth:`samples`; one whose format has random access gives :meth:`sample`."""

    def __init__(self, fmt: StorageFormat, ds):
        self.format, self.ds = fmt, ds

    def check(self) -> None:
        """Check the format's dataset-level objects against the index (DatasetError), so that a
        reader refuses bad metadata at once instead of failing every sample. None by default."""

    def samples(self, shard) -> list[Stored]:
        """Every sample of ``shard`` (a ``ShardEntry``), each object read whole, bounded by and
        checked against the shard's record."""
        raise NotImplementedError

    def sample(self, i: int) -> Stored:
        """Sample ``i`` (its whole shard read, unless the format has random access)."""
        self.ds.check_index(i)
        shard = self.ds.shard_of(i)
        return self.samples(shard)[i - shard.start]

    def provenance(self, shard) -> list[dict]:
        """The provenance records of ``shard``'s samples, without their arrays."""
        key = self.format.provenance_object(shard.shard)
        return self.format.decode_provenance(self.ds.object(shard, key), self.ds.samples_per_shard,
                                             shard.count, f"{self.ds.url}/{key}")

    def stream(self, shard) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict]]:
        """``shard``'s samples as (key, image, label, provenance dict), in order."""
        for stored, prov in zip(self.samples(shard), self.provenance(shard)):
            yield (*stored, prov)
