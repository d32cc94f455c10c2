"""Where a tumor goes (Hu et al., CVPR 2023, Section 3.1, "Location selection").

All positions are voxel indices ``(i, j, k)`` of the prepared scan's arrays (axes R, A, S at the
target spacing, 1 mm by default), drawn on the host from the sample's NumPy ``rng``.

- ``paper``: a random liver voxel, redrawn while the cube ``[c - r, c + r]`` holds a vessel voxel
  (the collision rule of eq. 1, with the vessel mask of eqs. 1-2 built by ``prepare``).
- ``released``: the authors' training recipe: an axial slice at 30-70 % of the liver's height,
  eroded in-plane, then a random liver voxel of that slice (no vessel test).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi

from .config import GeneratorConfig
from .prepare import PreparedScan


def liver_voxel(rng: np.random.Generator, scan: PreparedScan) -> np.ndarray:
    """A uniformly drawn liver voxel ``(i, j, k)``."""
    flat = scan.liver_voxels[int(rng.integers(len(scan.liver_voxels)))]
    return np.array(np.unravel_index(flat, scan.shape))


def _cube(c, r):
    """Slices of the cube ``[c - r, c + r]`` (r rounded up, voxels), clipped at index 0."""
    r = int(math.ceil(r))
    lo = np.maximum(c - r, 0)
    hi = c + r + 1
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _satellite_spot(rng, scan, config, near, r):
    """A liver voxel at U(shell) large-lesion radii from the large lesion's center, or None when
    that point falls outside the liver."""
    center = np.asarray(near.center) - np.asarray(scan.origin_vox)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) or 1.0
    c = np.rint(center + direction * rng.uniform(*config.satellite_shell) * near.radius).astype(int)
    inside = np.all(c >= 0) and np.all(c < scan.shape) and scan.liver[tuple(c)]
    return c if inside else None


def paper_location(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig,
                   r: float, near) -> tuple[np.ndarray, int, bool, int]:
    """Eq. 1 collision rule: redraw while any vessel lies in the cube [c - r, c + r] (r in voxels).

    ``near`` is the large lesion a satellite is drawn around (or None). Returns (center voxel,
    draws used, fallback, vessel voxels in the chosen cube). After ``max_location_tries`` the draw
    with the lowest vessel density (vessel voxels per liver voxel in the cube) is used and recorded
    as a fallback. Density rather than count, because the fewest vessels are always found where the
    cube leaves the liver, which would push every large tumor to the liver's edge.
    """
    best = None
    tries = config.paper.max_location_tries
    for attempt in range(1, tries + 1):
        c = _satellite_spot(rng, scan, config, near, r) if near is not None else None
        if c is None:
            c = liver_voxel(rng, scan)
        cube = _cube(c, r)
        n = int(np.count_nonzero(scan.vessel[cube]))
        if n == 0:
            return c, attempt, False, 0
        density = n / max(1, int(np.count_nonzero(scan.liver[cube])))
        if best is None or density < best[2]:
            best = (c, n, density)
    return best[0], tries, True, best[1]


def released_location(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig
                      ) -> np.ndarray:
    """An axial slice (k) at 30-70 % of the liver's height, eroded in-plane, then a random liver
    voxel of it; a random liver voxel anywhere if the slice holds none."""
    rel = config.released
    ks = np.flatnonzero(scan.liver.any(axis=(0, 1)))
    k = int(ks[0] + int(rng.uniform(*rel.slice_range) * (ks[-1] - ks[0])))
    plane = scan.liver[:, :, k]
    eroded = ndi.binary_erosion(plane, structure=np.ones((rel.erosion, rel.erosion), bool))
    candidates = np.argwhere(eroded if eroded.any() else plane)
    if len(candidates) == 0:
        return liver_voxel(rng, scan)
    i, j = candidates[int(rng.integers(len(candidates)))]
    return np.array([i, j, k])
