"""Where a tumor goes (Hu et al., CVPR 2023, Section 3.1, "Location selection").

All positions are voxel indices ``(i, j, k)`` of the prepared scan's arrays (axes R, A, S on the
isotropic prepared grid), drawn on the host from the sample's NumPy ``rng``.

``paper`` and ``paper-train``: every profile of the paper requires that a share ``inside_share``
(90 %) of the tumor lies inside the liver, so tumors are not clipped into half-moons at the liver's
edge; ``paper`` also applies the collision rule of eq. 1: no vessel voxel (the mask of eqs. 1-2
built by ``prepare``) inside the tumor. The rules are tested on the tumor's **location region**:
``REGION_BOXES`` disjoint axis-aligned boxes that together cover its ellipsoid (the record's
half-axes, before deformation and blur: slabs along k, strips along j, each as wide as the
ellipsoid's widest point in it; :func:`region_boxes`), about 1.5 times its volume; the vessel rule
on the region of the ellipsoid grown by ``vessel_margin_sd`` deformation sd per half-axis. Each box
is counted in O(1) from per-scan summed-area tables of the liver and vessel masks
(:class:`LocationTables`), so a location test costs 8 lookups per box whatever the tumor's size,
and every candidate of every tumor of a sample is tested in a few array operations. (Up to 0.4 the
drawn, deformed shape itself was tested voxel by voxel: 13-40 ms per crop, most of the parameter
drawing.) Covering boxes rather than boxes holding the ellipsoid's volume: with the latter, the
vessel fallback (fewest vessels wins) favoured candidates at the liver's edge whose deformed shape
then kept less than 90 % inside (measured: 84 % of `paper` tumors kept 90 %, against 95 % now).
The region is counted in itself, never in a bounding cube much larger than the tumor.

Candidates are liver voxels at least ``candidate_depth x r`` deep (below the liver surface; the
deepest voxel if none is that deep), where the volume rule is likely to hold; a tumor's first
``FIRST_BLOCK`` candidates are tested together and, if none passes, the rest of its
``max_location_tries``. The first candidate in draw order that meets every rule is used; if none
does, the best (volume rule met, then fewest vessel voxels, then largest share inside) and the record
says why (``location_reason``): ``vessels`` (every candidate that met the volume rule held a
vessel) or ``volume`` (none met the volume rule). A satellite's candidates all lie in its shell
around the large lesion; one that meets no volume rule there is dropped.

``released``: the authors' training recipe: an axial slice at 30-70 % of the liver's height,
eroded in-plane, then a random liver voxel of that slice (no vessel test, no volume test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from .config import GeneratorConfig
from .prepare import PreparedScan

REGION_SPLITS = 2                      # boxes per half-axis, along k (slabs) and j (strips)
REGION_BOXES = (2 * REGION_SPLITS) ** 2
FIRST_BLOCK = 4                        # candidates tested at once before the rest are drawn


@dataclass(frozen=True)
class Placement:
    center: np.ndarray           # (n, 3) voxels of the prepared arrays, one row per tumor
    tries: np.ndarray            # (n,) candidates drawn until the one used
    fallback: np.ndarray         # (n,) bool: no candidate met every rule
    reason: list                 # (n,) "", "vessels" or "volume"
    inside_fraction: np.ndarray  # (n,) share of the location region inside the liver
    vessel_voxels: np.ndarray    # (n,) vessel voxels inside the location region
    placed: np.ndarray           # (n,) bool: False for a satellite with no room in its shell


def _unit_boxes() -> tuple[np.ndarray, np.ndarray]:
    """The unit ball's covering boxes (lo, hi), each (REGION_BOXES, 3), in units of the
    half-axes: slabs of equal height along k, cut into strips of equal width along j, each as wide
    as the ball's widest point in it (along j for the slab, along i for the strip)."""
    edges = np.linspace(-1.0, 1.0, 2 * REGION_SPLITS + 1)

    def widest(t0, t1):
        t = 0.0 if t0 < 0 < t1 else min(abs(t0), abs(t1))
        return math.sqrt(max(0.0, 1 - t * t))

    lo, hi = [], []
    for k0, k1 in zip(edges[:-1], edges[1:]):
        f = widest(k0, k1)
        for j0, j1 in zip(edges[:-1], edges[1:]):
            w = f * widest(j0, j1)
            lo.append((-w, f * j0, k0))
            hi.append((w, f * j1, k1))
    return np.array(lo), np.array(hi)


_UNIT_LO, _UNIT_HI = _unit_boxes()
# Which sides of a box are the region's outer sides (closed: a voxel on them is in).
_OUTER_HI = np.array([[True, j == 2 * REGION_SPLITS - 1, k == 2 * REGION_SPLITS - 1]
                      for k in range(2 * REGION_SPLITS) for j in range(2 * REGION_SPLITS)])


def region_boxes(half_axes_vox) -> tuple[np.ndarray, np.ndarray]:
    """Integer voxel offsets ``lo, hi`` (``(..., REGION_BOXES, 3)``, half-open, from the center)
    of the location region of ellipsoids with half-axes ``half_axes_vox`` (``(..., 3)`` voxels):
    16 disjoint boxes that together hold every voxel of the ellipsoid (neighbours share a
    real-valued edge, which ceil keeps in order; the region's outer sides are closed)."""
    a = np.asarray(half_axes_vox, float)[..., None, :]
    hi = _UNIT_HI * a
    hi = np.where(_OUTER_HI, np.floor(hi) + 1, np.ceil(hi))
    return np.ceil(_UNIT_LO * a).astype(np.int64), hi.astype(np.int64)


# Inclusion-exclusion over a box's corners: + where an odd number of coordinates is the far side.
_CORNER_SIGNS = np.array([[[1 if (ci + cj + ck) % 2 else -1 for ck in (0, 1)] for cj in (0, 1)]
                          for ci in (0, 1)], dtype=np.int64)


class LocationTables:
    """Summed-area tables of one prepared scan's liver and vessel masks over the liver's bounding
    box (every vessel voxel lies in the liver), and what candidate drawing needs: each depth's
    count of deeper voxels, the liver's axial range and each axial slice's eroded candidates."""

    def __init__(self, scan: PreparedScan):
        idx = np.flatnonzero(scan.organ.any(axis=(1, 2)))
        jdx = np.flatnonzero(scan.organ.any(axis=(0, 2)))
        kdx = np.flatnonzero(scan.organ.any(axis=(0, 1)))
        self.lo = np.array([idx[0], jdx[0], kdx[0]])
        self.hi = np.array([idx[-1], jdx[-1], kdx[-1]]) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi))
        counts = np.zeros(tuple(self.hi - self.lo + 1) + (2,), np.int32)
        counts[1:, 1:, 1:, 0] = scan.organ[box]
        counts[1:, 1:, 1:, 1] = scan.vessel[box]
        for axis in range(3):
            np.cumsum(counts, axis=axis, out=counts)
        self.sums = counts.reshape(-1, 2)
        self.dims = np.array(counts.shape[:3])
        self.strides = np.array([self.dims[1] * self.dims[2], self.dims[2], 1])
        self.neg_depth = -scan.organ_depth_mm             # ascending: deep_count by bisection
        self.k_range = (int(kdx[0]), int(kdx[-1]))
        self._slices: dict = {}

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + self.neg_depth.nbytes

    def counts(self, centers, lo, hi) -> np.ndarray:
        """(liver voxels, vessel voxels) in each of the boxes ``lo, hi`` (``(..., B, 3)`` offsets)
        placed at ``centers`` (``(..., 3)``): ``(..., B, 2)``, 8 table lookups per box."""
        at = np.asarray(centers)[..., None, :] - self.lo
        a = np.clip(at + lo, 0, self.dims - 1) * self.strides
        b = np.clip(at + hi, 0, self.dims - 1) * self.strides
        # The 8 corners' flat indices at once: (2, 2, 2, ...) over (i, j, k) from a or b.
        i = np.stack([a[..., 0], b[..., 0]])[:, None, None]
        j = np.stack([a[..., 1], b[..., 1]])[None, :, None]
        k = np.stack([a[..., 2], b[..., 2]])[None, None, :]
        values = self.sums[i + j + k]                      # (2, 2, 2, ..., 2)
        return np.tensordot(_CORNER_SIGNS, values, axes=3)

    def deep_count(self, depth_mm) -> np.ndarray:
        """How many liver voxels lie at least ``depth_mm`` below the surface (at least 1)."""
        query = -np.asarray(depth_mm, dtype=self.neg_depth.dtype)   # same dtype: no array copy
        return np.maximum(1, np.searchsorted(self.neg_depth, query, side="right"))

    def slice_candidates(self, scan: PreparedScan, k: int, side: int) -> np.ndarray:
        """Liver voxels (i, j) of axial slice k after an in-plane ``side`` x ``side`` erosion (the
        slice's liver if the erosion empties it); computed once per slice."""
        got = self._slices.get((k, side))
        if got is None:
            plane = scan.organ[:, :, k]
            eroded = ndi.binary_erosion(plane, structure=np.ones((side, side), bool))
            got = np.argwhere(eroded if eroded.any() else plane)
            self._slices[(k, side)] = got
        return got


def tables(scan: PreparedScan) -> LocationTables:
    """The scan's :class:`LocationTables`, built on first use and kept with the scan."""
    got = scan._cache.get("location")
    if got is None:
        got = scan._cache["location"] = LocationTables(scan)
    return got


def region_counts(scan: PreparedScan, centers, half_axes_vox, vessel_margin_vox=0.0,
                  vessels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(share of the location region inside the liver, vessel voxels in the vessel region) for
    ellipsoids with ``half_axes_vox`` at ``centers`` (voxels of the prepared arrays): the region
    of the ellipsoid for the share, of the ellipsoid grown by ``vessel_margin_vox`` per half-axis
    for the vessels. What the location rules test, and what the robustness benchmark records when
    it moves a tumor. ``vessels=False``: the share only (half the table lookups)."""
    half = np.asarray(half_axes_vox, float)
    lo, hi = region_boxes(half)
    volume = np.prod(hi - lo, axis=-1).sum(axis=-1)
    if not vessels:
        return tables(scan).counts(centers, lo, hi)[..., 0].sum(axis=-1) / np.maximum(volume, 1), None
    margin = np.asarray(vessel_margin_vox, float)
    vlo, vhi = region_boxes(half + (margin[..., None] if margin.ndim else margin))
    shape = np.broadcast_shapes(lo.shape, vlo.shape)
    both = tables(scan).counts(centers, np.concatenate([np.broadcast_to(lo, shape),
                                                        np.broadcast_to(vlo, shape)], axis=-2),
                               np.concatenate([np.broadcast_to(hi, shape),
                                               np.broadcast_to(vhi, shape)], axis=-2))
    liver = both[..., :REGION_BOXES, 0].sum(axis=-1)
    return liver / np.maximum(volume, 1), both[..., REGION_BOXES:, 1].sum(axis=-1)


def region_counts_brute_force(scan: PreparedScan, center, half_axes_vox, vessel_margin_vox=0.0
                              ) -> tuple[float, int]:
    """:func:`region_counts` for one tumor by counting the masks' voxels box by box (the test's
    reference)."""
    def boxes(half):
        lo, hi = region_boxes(half)
        for a, b in zip(lo + np.asarray(center), hi + np.asarray(center)):
            yield int(np.prod(np.maximum(b - a, 0))), tuple(
                slice(int(x), int(y)) for x, y in zip(np.clip(a, 0, scan.shape),
                                                      np.clip(b, 0, scan.shape)))
    half = np.asarray(half_axes_vox, float)
    volume = liver = vessels = 0
    for n, sl in boxes(half):
        volume += n
        liver += int(np.count_nonzero(scan.organ[sl]))
    for _, sl in boxes(half + vessel_margin_vox):
        vessels += int(np.count_nonzero(scan.vessel[sl]))
    return liver / max(volume, 1), vessels


def drawn_shape_counts(scan: PreparedScan, tumor) -> tuple[float, int]:
    """(share of the tumor's drawn shape, its deformed ellipsoid before the mask blur, inside the
    liver; vessel voxels inside it), counted voxel by voxel: what the fidelity report measures
    against the location region's counts. Voxels outside the prepared arrays count as outside."""
    from .shape import drawn_offsets
    pos = drawn_offsets(tumor, float(scan.spacing_mm[0])) + (np.asarray(tumor.center)
                                                               - np.asarray(scan.origin_vox))
    ok = np.all((pos >= 0) & (pos < np.asarray(scan.shape)), axis=1)
    at = tuple(pos[ok].T)
    return (int(np.count_nonzero(scan.organ[at])) / max(1, len(pos)),
            int(np.count_nonzero(scan.vessel[at])))


def organ_voxel(rng: np.random.Generator, scan: PreparedScan) -> np.ndarray:
    """A uniformly drawn liver voxel ``(i, j, k)``."""
    flat = scan.organ_voxels[int(rng.integers(len(scan.organ_voxels)))]
    return np.array(np.unravel_index(flat, scan.shape))


def _shell_spots(rng, scan: PreparedScan, config: GeneratorConfig, near, s: float, shape):
    """Candidate centers (``shape + (3,)``) at U(shell) large-lesion radii from the large lesion's
    center in random directions, and whether each lies in the liver."""
    center = np.asarray(near.center) - np.asarray(scan.origin_vox)
    direction = rng.normal(size=shape + (3,))
    norm = np.linalg.norm(direction, axis=-1, keepdims=True)
    direction /= np.where(norm > 0, norm, 1.0)
    dist = rng.uniform(*config.satellite_shell, size=shape + (1,)) * near.radius_mm / s
    c = np.rint(center + direction * dist).astype(np.int64)
    ok = np.all((c >= 0) & (c < np.asarray(scan.shape)), axis=-1)
    clipped = np.clip(c, 0, np.asarray(scan.shape) - 1)
    flat = np.ravel_multi_index((clipped[..., 0], clipped[..., 1], clipped[..., 2]), scan.shape)
    return c, ok & scan.organ.ravel()[flat]


def _candidates(rng, scan, config, radius_mm, near, s, shape):
    """Candidate centers (``shape + (3,)``) for tumors of nominal radius ``radius_mm`` (one per
    row) and whether each is usable."""
    if near is not None:
        return _shell_spots(rng, scan, config, near, s, shape)
    deep = tables(scan).deep_count(config.paper.candidate_depth * np.asarray(radius_mm))
    pick = rng.integers(0, np.broadcast_to(np.asarray(deep)[:, None], shape))
    flat = scan.organ_voxels[pick]
    return np.stack(np.unravel_index(flat, scan.shape), axis=-1), np.ones(shape, bool)


def paper_locations(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig,
                    radius_mm, half_axes_mm: np.ndarray, avoid_vessels: bool, near=None,
                    sigma_e_mm=0.0) -> Placement:
    """Centers for ``n`` tumors at once (``half_axes_mm``: ``(n, 3)``; ``radius_mm``: their
    nominal radius, scalar or ``(n,)``; ``sigma_e_mm``: their deformation sd, which grows the
    vessel region); see the module text. ``near`` is the large lesion satellites are drawn
    around."""
    p = config.paper
    s = float(scan.spacing_mm[0])
    n = len(half_axes_mm)
    radius = np.broadcast_to(np.asarray(radius_mm, float), (n,))
    half_vox = np.asarray(half_axes_mm, float) / s
    margin = (np.broadcast_to(np.asarray(sigma_e_mm, float), (n,)) * p.vessel_margin_sd / s)[:, None]
    tries = p.max_location_tries
    first = min(FIRST_BLOCK, tries)
    c, usable = _candidates(rng, scan, config, radius, near, s, (n, first))
    # Without the vessel rule only the share decides; the vessels are counted at the chosen
    # center alone, for the record.
    inside, vessels = region_counts(scan, c, half_vox[:, None, :], margin, avoid_vessels)
    if vessels is None:
        vessels = np.zeros(inside.shape, np.int64)
    rest = np.flatnonzero(~_passes(inside, vessels, usable, p.inside_share, avoid_vessels).any(1))
    if len(rest) and tries > first:
        c2, usable2 = _candidates(rng, scan, config, radius[rest], near, s, (len(rest), tries - first))
        inside2, vessels2 = region_counts(scan, c2, half_vox[rest][:, None, :], margin[rest],
                                          avoid_vessels)
        if vessels2 is None:
            vessels2 = np.zeros(inside2.shape, np.int64)
        pad = lambda x, fill: np.concatenate([x, np.full((n, tries - first) + x.shape[2:], fill,
                                                         x.dtype)], axis=1)
        c, usable, inside, vessels = pad(c, 0), pad(usable, False), pad(inside, 0.0), pad(vessels, 0)
        c[rest, first:], usable[rest, first:] = c2, usable2
        inside[rest, first:], vessels[rest, first:] = inside2, vessels2
    ok = _passes(inside, vessels, usable, p.inside_share, avoid_vessels)
    volume_ok = usable & (inside >= p.inside_share)
    rows = np.arange(n)
    hit = ok.any(1)
    first_ok = np.argmax(ok, axis=1)
    # The fallback: volume rule met first, then fewest vessels (when they count), then the largest
    # share inside; ties go to the earliest candidate. Unusable candidates (a satellite's spot
    # outside the liver) rank last.
    key_vessels = -vessels if avoid_vessels else np.zeros_like(vessels)
    order = np.lexsort((-np.arange(c.shape[1])[None, :].repeat(n, 0), inside, key_vessels,
                        volume_ok, usable), axis=1)
    best = order[:, -1]
    pick = np.where(hit, first_ok, best)
    placed = hit | (usable[rows, best] & (near is None or volume_ok[rows, best]))
    reason = ["" if h else ("vessels" if v else "volume")
              for h, v in zip(hit.tolist(), volume_ok[rows, best].tolist())]
    center = c[rows, pick]
    if avoid_vessels:
        chosen_vessels = vessels[rows, pick]
    else:
        chosen_vessels = region_counts(scan, center, half_vox, margin[:, 0])[1]
    return Placement(center=center, tries=np.where(hit, first_ok + 1, c.shape[1]),
                     fallback=~hit, reason=reason, inside_fraction=inside[rows, pick],
                     vessel_voxels=chosen_vessels, placed=placed)


def _passes(inside, vessels, usable, share, avoid_vessels):
    ok = usable & (inside >= share)
    return ok & (vessels == 0) if avoid_vessels else ok


def released_location(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig
                      ) -> np.ndarray:
    """An axial slice (k) at 30-70 % of the liver's height, eroded in-plane (``erosion_mm`` square),
    then a random liver voxel of it; a random liver voxel anywhere if the slice holds none."""
    rel = config.released
    s = float(scan.spacing_mm[0])
    t = tables(scan)
    k0, k1 = t.k_range
    k = int(k0 + int(rng.uniform(*rel.slice_range) * (k1 - k0)))
    side = max(1, int(round(rel.erosion_mm / s)))
    candidates = t.slice_candidates(scan, k, side)
    if len(candidates) == 0:
        return organ_voxel(rng, scan)
    i, j = candidates[int(rng.integers(len(candidates)))]
    return np.array([i, j, k])
