"""Where a tumor goes (Hu et al., CVPR 2023, Section 3.1, "Location selection").

All positions are voxel indices ``(i, j, k)`` of the prepared scan's arrays (axes R, A, S on the
isotropic prepared grid), drawn on the host from the sample's NumPy ``rng``.

``paper`` and ``paper-train``: the tumor's own drawn shape (its deformed ellipsoid, before the
mask blur) is tested at each candidate center. Every profile of the paper requires that a share
``inside_share`` (90 %) of the drawn shape lies inside the liver, so tumors are not clipped into
half-moons at the liver's edge; candidates are liver voxels at least ``candidate_depth x r`` deep
(below the liver surface; the deepest voxel if none is that deep), where that rule is likely to
hold. ``paper`` also applies the collision
rule of eq. 1: no vessel voxel (the mask of eqs. 1-2 built by ``prepare``) inside the shape.
Counting in the shape itself, never in a cube, keeps a candidate sticking out of the liver from
winning because it holds fewer vessels. After ``max_location_tries`` candidates the best is used
and the record says why (``location_reason``): ``vessels`` (every candidate that met the volume rule
held a vessel: fewest vessel voxels used) or ``volume`` (none met the volume rule: largest share
used). A satellite's candidates all lie in its shell around the large lesion; one that meets no
volume rule there is dropped (``None``).

``released``: the authors' training recipe: an axial slice at 30-70 % of the liver's height,
eroded in-plane, then a random liver voxel of that slice (no vessel test, no volume test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from .config import GeneratorConfig
from .prepare import PreparedScan


SCREEN_VOXELS = 4096


@dataclass(frozen=True)
class Placement:
    center: np.ndarray           # voxel of the prepared arrays
    tries: int
    fallback: bool
    reason: str                  # "", "vessels" or "volume"
    inside_fraction: float
    vessel_voxels: int


def liver_voxel(rng: np.random.Generator, scan: PreparedScan) -> np.ndarray:
    """A uniformly drawn liver voxel ``(i, j, k)``."""
    flat = scan.liver_voxels[int(rng.integers(len(scan.liver_voxels)))]
    return np.array(np.unravel_index(flat, scan.shape))


def deep_count(scan: PreparedScan, depth_mm: float) -> int:
    """How many liver voxels lie at least ``depth_mm`` below the liver surface (at least 1: the
    deepest voxel stands in when none is that deep)."""
    return max(1, int(np.count_nonzero(scan.liver_depth_mm >= depth_mm)))


def deep_liver_voxel(rng: np.random.Generator, scan: PreparedScan, n: int) -> np.ndarray:
    """A liver voxel drawn uniformly among the ``n`` deepest (``deep_count``)."""
    flat = scan.liver_voxels[int(rng.integers(n))]
    return np.array(np.unravel_index(flat, scan.shape))


def shape_in_scan(scan: PreparedScan, center, offsets: np.ndarray) -> tuple[float, int]:
    """(share of the shape's voxels inside the liver, vessel voxels inside it) for a shape given by
    its voxel ``offsets`` placed at ``center``; voxels outside the prepared arrays count as outside."""
    pos = offsets + np.asarray(center)
    ok = np.all((pos >= 0) & (pos < np.asarray(scan.shape)), axis=1)
    flat = np.ravel_multi_index(tuple(pos[ok].T), scan.shape)
    inside = int(np.count_nonzero(scan.liver.ravel()[flat]))
    vessels = int(np.count_nonzero(scan.vessel.ravel()[flat]))
    return inside / max(1, len(offsets)), vessels


def _shell_spot(rng, scan, config, near, s: float):
    """A point at U(shell) large-lesion radii from the large lesion's center in a random
    direction, or None when it falls outside the liver."""
    center = np.asarray(near.center) - np.asarray(scan.origin_vox)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) or 1.0
    dist = rng.uniform(*config.satellite_shell) * near.radius_mm / s
    c = np.rint(center + direction * dist).astype(int)
    inside = np.all(c >= 0) and np.all(c < scan.shape) and scan.liver[tuple(c)]
    return c if inside else None


def paper_location(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig,
                   radius_mm: float, offsets: np.ndarray, avoid_vessels: bool,
                   near=None) -> Placement | None:
    """Draw a center for a tumor whose drawn shape has voxel ``offsets`` (see the module text).
    ``near`` is the large lesion a satellite is drawn around; None is returned for a satellite
    that cannot be placed."""
    p = config.paper
    s = float(scan.spacing_mm[0])
    # Candidates are screened on an evenly strided subset of the shape's voxels (at most
    # SCREEN_VOXELS); one that passes the screen is counted on every voxel before it is accepted,
    # so an accepted center meets the rules exactly. The fallback ranks candidates by the screen.
    stride = max(1, -(-len(offsets) // SCREEN_VOXELS))
    screen = offsets[::stride]
    deep = deep_count(scan, p.candidate_depth * radius_mm)
    best, best_key = None, None
    for attempt in range(1, p.max_location_tries + 1):
        if near is not None:
            c = _shell_spot(rng, scan, config, near, s)
            if c is None:
                continue
        else:
            c = deep_liver_voxel(rng, scan, deep)
        inside, vessels = shape_in_scan(scan, c, screen)
        if stride > 1 and inside >= p.inside_share and (vessels == 0 or not avoid_vessels):
            inside, vessels = shape_in_scan(scan, c, offsets)
        else:
            vessels *= stride                        # screened count, scaled to the whole shape
        volume_ok = inside >= p.inside_share
        if volume_ok and (vessels == 0 or not avoid_vessels):
            return Placement(c, attempt, False, "", round(inside, 4), vessels)
        key = (volume_ok, -vessels if avoid_vessels else 0, inside)
        if best_key is None or key > best_key:
            best, best_key = (c, inside, vessels), key
    if best is None or (near is not None and not best_key[0]):
        return None                                  # a satellite with no room in its shell
    c = best[0]
    inside, vessels = shape_in_scan(scan, c, offsets)    # the record holds exact counts
    reason = "vessels" if best_key[0] else "volume"
    return Placement(c, p.max_location_tries, True, reason, round(inside, 4), vessels)


def released_location(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig
                      ) -> np.ndarray:
    """An axial slice (k) at 30-70 % of the liver's height, eroded in-plane (``erosion_mm`` square),
    then a random liver voxel of it; a random liver voxel anywhere if the slice holds none."""
    rel = config.released
    s = float(scan.spacing_mm[0])
    ks = np.flatnonzero(scan.liver.any(axis=(0, 1)))
    k = int(ks[0] + int(rng.uniform(*rel.slice_range) * (ks[-1] - ks[0])))
    plane = scan.liver[:, :, k]
    side = max(1, int(round(rel.erosion_mm / s)))
    eroded = ndi.binary_erosion(plane, structure=np.ones((side, side), bool))
    candidates = np.argwhere(eroded if eroded.any() else plane)
    if len(candidates) == 0:
        return liver_voxel(rng, scan)
    i, j = candidates[int(rng.integers(len(candidates)))]
    return np.array([i, j, k])
