"""Prepared scans for the fidelity report: each scan prepared once as the generator prepares it,
with the depth map and parenchyma sd the measures read, kept in a small cache.

Dataset samples and synthesize cases are measured against the whole prepared scan they were made
from (a crop holds only part of the liver), and real lesions are measured on scans prepared the
same way, so both sides share one grid and one depth definition.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from tumorforge.generator.api import PreparedScan, load_prepared
from tumorforge.manifests.records import canonical_json

SCAN_CACHE = 8                        # prepared scans kept in memory


@dataclass
class Prepared:
    """A prepared scan with what the report reads from it: the depth of every voxel (mm, arrays
    of the scan), the median liver depth and the parenchyma sd without tumor and vessels."""

    scan: PreparedScan
    depth: np.ndarray
    median_depth_mm: float
    parenchyma_sd_hu: float

    @classmethod
    def of(cls, scan) -> "Prepared":
        depth = np.zeros(scan.shape, np.float32)
        depth.ravel()[scan.organ_voxels] = scan.organ_depth_mm       # prepare's own depth map
        paren = scan.organ & ~scan.tumor & ~scan.vessel
        return cls(scan, depth, float(np.median(scan.organ_depth_mm)),
                   float(scan.image[paren].std()) if paren.any() else float("nan"))

    def depth_at(self, full_vox) -> float | None:
        """Depth (mm) at a voxel of the full resampled scan; None outside the prepared arrays."""
        c = np.asarray(full_vox) - np.asarray(self.scan.origin_vox)
        if np.any(c < 0) or np.any(c >= np.asarray(self.depth.shape)):
            return None
        return float(self.depth[tuple(int(v) for v in c)])


class ScanCache:
    """Prepared scans by (manifest entry, generator configuration), the last ``size`` used."""

    def __init__(self, size: int = SCAN_CACHE):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self.prepared = 0
        self.seconds = 0.0

    def get(self, entry, config) -> Prepared:
        key = (entry.scan_id, entry.sha256["image"], canonical_json(config.to_json()))
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        started = time.perf_counter()
        item = Prepared.of(load_prepared(entry, config))
        self.seconds += time.perf_counter() - started
        self.prepared += 1
        self._items[key] = item
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return item

