"""Painting shapes onto a voxel grid: HU, organ labels and lesion voxels.

A layer's distance is evaluated only inside its bounding box, turned into partial-volume occupancy
with a ramp one in-plane voxel wide, and composited in painting order: later layers override
earlier ones, in HU and in the organ label. Kept apart from the shapes (geometry in mm) and the
anatomy (which layers, in which order), as the one place where millimetres become voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .shapes import Shape

AIR_HU = -1000.0   # HU of every voxel no layer covers


@dataclass
class Layer:
    """One painted structure.

    value: HU, or a function of world (x, y, z) arrays returning HU.
    code: organ label written where occupancy >= 0.5; None leaves labels alone.
    clip: an earlier layer whose occupancy caps this one's (vessels inside the liver).
    tumor: voxels with occupancy >= 0.5 are lesion voxels.
    ramp_mm: partial-volume ramp width; None means one in-plane voxel.
    """

    shape: Shape
    value: float | Callable
    code: int | None = 0
    clip: "Layer | None" = None
    tumor: bool = False
    ramp_mm: float | None = None


@dataclass(frozen=True)
class Grid:
    """Voxel grid in RAS order: voxel (i, j, k) centre = origin + (i, j, k) * spacing, mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = self.origin
        return a

    def axis(self, a: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.shape[a] if stop is None else stop
        return (self.origin[a] + self.spacing[a] * np.arange(start, stop)).astype(np.float32)

    def index_range(self, a: int, lo: float, hi: float) -> tuple[int, int]:
        i0 = int(np.ceil((lo - self.origin[a]) / self.spacing[a]))
        i1 = int(np.floor((hi - self.origin[a]) / self.spacing[a])) + 1
        return max(i0, 0), min(i1, self.shape[a])


def rasterize(layers: list[Layer], grid: Grid, chunk_voxels: int = 1 << 22):
    """Composite layers on the grid.

    Returns (image float32 HU, organs uint8 codes, tumor bool), RAS voxel order.
    Works through slabs of slices so temporaries stay small at full resolution.
    """
    nx, ny, nz = grid.shape
    image = np.full(grid.shape, AIR_HU, np.float32)
    organs = np.zeros(grid.shape, np.uint8)
    tumor = np.zeros(grid.shape, bool)
    ramp = max(grid.spacing[0], grid.spacing[1])
    clip_targets = {id(layer.clip) for layer in layers if layer.clip is not None}
    slab = max(1, chunk_voxels // (nx * ny))
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        cache: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
        for layer in layers:
            w = layer.ramp_mm or ramp
            pad = 0.5 * w + 1.0
            lo, hi = layer.shape.lo - pad, layer.shape.hi + pad
            ranges = [grid.index_range(a, lo[a], hi[a]) for a in range(3)]
            ranges[2] = (max(ranges[2][0], k0), min(ranges[2][1], k1))
            if layer.clip is not None:
                if id(layer.clip) not in cache:
                    continue
                csl = cache[id(layer.clip)][0]
                ranges = [(max(r[0], s.start), min(r[1], s.stop)) for r, s in zip(ranges, csl)]
            if any(r[0] >= r[1] for r in ranges):
                continue
            sl = tuple(slice(*r) for r in ranges)
            x = grid.axis(0, *ranges[0])[:, None, None]
            y = grid.axis(1, *ranges[1])[None, :, None]
            z = grid.axis(2, *ranges[2])[None, None, :]
            occ = np.clip(0.5 - layer.shape.sdf(x, y, z) * np.float32(1.0 / w), 0.0, 1.0)
            occ = np.broadcast_to(occ, tuple(r[1] - r[0] for r in ranges))
            if layer.clip is not None:
                csl, cocc = cache[id(layer.clip)]
                occ = np.minimum(occ, cocc[tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(sl, csl))])
            if id(layer) in clip_targets:
                cache[id(layer)] = (sl, occ)
            value = layer.value(x, y, z) if callable(layer.value) else np.float32(layer.value)
            sub = image[sl]
            sub += occ * (value - sub)
            if layer.code is not None:
                hit = occ >= 0.5
                organs[sl][hit] = layer.code
                tumor[sl][hit] = layer.tumor
    return image, organs, tumor
