"""The on-disk dataset contract: object names, typed records, the storage formats (a table of
them, each over its codecs: the Zarr store, WebDataset tars), the atomic object store and the
reader. The generation service writes through it; the trainer, audit, verify and evaluation read
through it; nothing else knows the layout.

The names below load on first use: importing ``tumorforge.manifests.dataset.names`` (as every
command's parser does) must not import Zarr, WebDataset and their codecs."""

from importlib import import_module

_HOME = {
    "names": ("COMMITS", "INDEX", "PLAN", "REPORT", "WDS_DIR", "ZARR_ROOT", "commit_key",
              "sample_key", "tar_name"),
    "formats": ("FORMATS",),
    "reader": ("Dataset", "DatasetError"),
    "records": ("INDEX_FORMAT", "DatasetIndex", "FileRecord", "Provenance", "SampleHashes",
                "ShardCommit", "ShardEntry", "image_digest", "label_digest"),
    "storage_format": ("DatasetLayout", "FormatReader", "ShardSamples", "StorageFormat"),
    "store": ("Objects",),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value                   # later lookups are plain attribute reads
    return value
