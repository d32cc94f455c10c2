"""Loading manifest scans for synthesis: read, verify against the manifest, prepare."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid

import numpy as np

from . import GENERATOR_VERSION
from .config import GeneratorConfig
from .prepare import PrepareError, PreparedScan, prepare_scan
from tumorforge.manifests.build import check_pair
from tumorforge.manifests.readers import ScanError, Volume, read_volume
from tumorforge.manifests.schema import ScanEntry


def read_scan(entry: ScanEntry) -> tuple[Volume, Volume]:
    """A scan's image and label volumes, checked against the manifest's sha256 and for content
    (``manifests.build.check_pair``: finite, non-constant image; label on the image's grid).

    Raises :class:`ScanError` naming the file when it is unreadable or differs from the manifest.
    """
    image = read_volume(entry.image)
    if image.sha256 != entry.sha256["image"]:
        raise ScanError(entry.image, f"sha256 {image.sha256[:12]}... differs from the manifest's "
                                     f"{entry.sha256['image'][:12]}... (file changed since build)")
    label = read_volume(entry.label, like=image)
    if label.sha256 != entry.sha256["label"]:
        raise ScanError(entry.label, f"sha256 {label.sha256[:12]}... differs from the manifest's "
                                     f"{entry.sha256['label'][:12]}... (file changed since build)")
    check_pair(entry.image, entry.label, image, label)   # a hand-made manifest skipped build
    return image, label


def organ_mismatch(entry: ScanEntry, organ: str) -> str | None:
    """Why ``entry`` cannot take tumors of ``organ`` (its manifest names another organ), or None.
    A kidney scan prepared under a liver configuration would take the liver's sizes, priors and
    class names without a word."""
    if entry.organ == organ:
        return None
    return (f"scan {entry.scan_id} is a {entry.organ} scan, but the generator is configured for "
            f"{organ} tumors (generator organ {organ!r}); use a {organ} manifest or set the "
            f"generator's organ to {entry.organ}")


def prepare_volumes(entry: ScanEntry, image: Volume, label: Volume,
                    config: GeneratorConfig) -> PreparedScan:
    """``prepare_scan`` of volumes read with :func:`read_scan`, with the entry's label map; a
    scan of another organ than the configuration's is a :class:`PrepareError`."""
    wrong = organ_mismatch(entry, config.organ)
    if wrong:
        raise PrepareError(wrong)
    return prepare_scan(entry.scan_id, image.data, label.data, image.info.affine,
                        organ_values=entry.label_map.organ_values(),
                        vessel_values=entry.label_map.vessel, tumor_values=entry.label_map.tumor,
                        config=config)


def load_prepared(entry: ScanEntry, config: GeneratorConfig) -> PreparedScan:
    """Read a scan (:func:`read_scan`) and prepare it."""
    return prepare_volumes(entry, *read_scan(entry), config)


def load_prepared_shared(entry: ScanEntry, config: GeneratorConfig, cache_dir: str | None,
                         wait: bool = True) -> tuple[PreparedScan | None, bool]:
    """:func:`load_prepared`, shared between processes; returns (scan, whether it was prepared
    here). With ``cache_dir``, processes share preparations: the first to want a scan prepares it
    (holding an ``flock`` on ``<key>.npz.lock``) and saves it as ``<key>.npz``; the others wait
    for that file (up to ``CACHE_WAIT_S``, then prepare it themselves) and load it. The kernel
    releases the flock when its holder dies, so a worker killed while preparing leaves no lock
    behind: the next one to want the scan prepares it at once (a lock *file* removed only in a
    ``finally`` made the others wait ``CACHE_WAIT_S``). The key hashes the scan's files (sha256),
    its label map, the generator configuration and version, so a cached scan is only ever the one
    this job would prepare."""
    if cache_dir is None:
        return load_prepared(entry, config), True
    key = hashlib.sha256(json.dumps(
        {"scan": entry.sha256, "label_map": str(entry.label_map), "config": config.to_json(),
         "version": GENERATOR_VERSION}, sort_keys=True).encode()).hexdigest()[:32]
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    path = os.path.join(cache_dir, f"{key}.npz")
    deadline = time.monotonic() + CACHE_WAIT_S
    # The lock file stays (the folder goes with the job): removing it would let a waiter that
    # opened it lock a name nobody else sees. Closing it (or dying) releases the flock.
    fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            if os.path.exists(path):
                return _load_cached(path, entry.scan_id), False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:      # a live process is preparing it
                if not wait:
                    return None, False
                if time.monotonic() > deadline:
                    return prepare_volumes(entry, *read_scan(entry), config), True
                time.sleep(0.1)
                continue
            if os.path.exists(path):     # saved while we took the lock
                return _load_cached(path, entry.scan_id), False
            scan = prepare_volumes(entry, *read_scan(entry), config)
            _save_cached(path, scan)
            return scan, True
    finally:
        os.close(fd)


CACHE_WAIT_S = 600.0
_ARRAYS = ("image", "organ", "vessel", "tumor", "affine", "organ_voxels", "organ_depth_mm")
_SCALARS = ("spacing_mm", "origin_vox", "organ_mean_hu", "vessel_threshold_hu", "sigma_a_mm",
            "parenchyma_mean_hu", "parenchyma_sd_hu")


def _save_cached(path: str, scan: PreparedScan) -> None:
    """A prepared scan as an uncompressed .npz (no pickled objects), written atomically."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}.npz"
    scalars = {k: getattr(scan, k) for k in _SCALARS}
    np.savez(tmp, **{k: getattr(scan, k) for k in _ARRAYS},
             scalars=np.frombuffer(json.dumps(scalars).encode(), np.uint8))
    os.replace(tmp, path)


def _load_cached(path: str, scan_id: str) -> PreparedScan:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in _ARRAYS}
        scalars = json.loads(z["scalars"].tobytes().decode())
    scalars["spacing_mm"] = tuple(scalars["spacing_mm"])
    scalars["origin_vox"] = tuple(scalars["origin_vox"])
    return PreparedScan(scan_id=scan_id, **arrays, **scalars)
