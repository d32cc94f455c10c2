"""The on-disk dataset contract: object names, typed records, the storage formats (a table of
them, each over its codecs: the Zarr store, WebDataset tars), the atomic object store and the
reader. The generation service writes through it; the trainer, audit, verify and evaluation read
through it; nothing else knows the layout."""

from .names import COMMITS, INDEX, PLAN, REPORT, WDS_DIR, ZARR_ROOT, commit_key, sample_key, tar_name
from .formats import FORMATS
from .reader import Dataset, DatasetError
from .records import (INDEX_FORMAT, DatasetIndex, FileRecord, Provenance, SampleHashes,
                      ShardCommit, ShardEntry, image_digest, label_digest)
from .storage_format import DatasetLayout, FormatReader, ShardSamples, StorageFormat
from .store import Objects

__all__ = ["COMMITS", "INDEX", "PLAN", "REPORT", "WDS_DIR", "ZARR_ROOT", "commit_key",
           "sample_key", "tar_name", "FORMATS", "Dataset", "DatasetError",
           "INDEX_FORMAT", "DatasetIndex", "FileRecord", "Provenance", "SampleHashes",
           "ShardCommit", "ShardEntry", "image_digest", "label_digest", "DatasetLayout",
           "FormatReader", "ShardSamples", "StorageFormat", "Objects"]
