"""The on-disk dataset contract: object names, typed records, the Zarr and WebDataset codecs, the
atomic object store and the reader. The generation service writes through it; the trainer, audit,
verify and evaluation read through it; nothing else knows the layout."""

from .names import COMMITS, INDEX, PLAN, REPORT, WDS_DIR, ZARR_ROOT, commit_key, sample_key, tar_name
from .reader import Dataset, DatasetError
from .records import (INDEX_FORMAT, DatasetIndex, FileRecord, Provenance, SampleHashes,
                      ShardCommit, ShardEntry, image_digest, label_digest)
from .store import Objects

__all__ = ["COMMITS", "INDEX", "PLAN", "REPORT", "WDS_DIR", "ZARR_ROOT", "commit_key",
           "sample_key", "tar_name", "Dataset", "DatasetError", "INDEX_FORMAT", "DatasetIndex",
           "FileRecord", "Provenance", "SampleHashes", "ShardCommit", "ShardEntry",
           "image_digest", "label_digest", "Objects"]
