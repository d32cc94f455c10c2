"""The liver of a case: the canonical lobes scaled to a drawn volume, and its vessel trees.

The canonical patient (:mod:`anatomy`) gives the liver's lobes, the bounds it must stay inside and
the neighbours it is carved around; here the lobes are scaled about a point under the right dome
until the carved liver has the target volume, and portal and hepatic vessel trees are grown inside
it as random branching capsules. All in the canonical frame (mm, RAS+).
"""

from __future__ import annotations

import numpy as np

from .anatomy import Scene
from .shapes import Capsule, Intersect, Shape, Subtract, Warp, Wavy

# Scaling the lobes about a point just under the right dome keeps the dome
# against the diaphragm while the liver grows down, forward and medially.
# Height grows slower than width (s^0.6): large livers widen more than they lengthen.
LIVER_ANCHOR = np.array([30.0, 0.0, 5.0])


def _liver_stretch(s: float) -> np.ndarray:
    return np.array([s, s, s**0.6])


def scaled_about_anchor(point, s: float) -> np.ndarray:
    """Where a canonical point (mm) of the liver goes when its lobes are scaled by ``s``."""
    return LIVER_ANCHOR + _liver_stretch(s) * (np.asarray(point, np.float64) - LIVER_ANCHOR)


def _liver_shape(scene: Scene, s: float, modes: np.ndarray) -> Shape:
    stretch = _liver_stretch(s)
    lobes = Wavy(Warp(scene.lobes, stretch, LIVER_ANCHOR * (1.0 - stretch)), modes)
    return Subtract(Intersect([lobes, *scene.liver_bounds], k=15.0), scene.liver_cuts, k=4.0)


def _coarse_inside(shape: Shape, step: float = 4.0) -> np.ndarray:
    """Centres (n, 3) of the step-mm cells of shape's box whose centre lies inside the shape."""
    axes = [np.arange(shape.lo[a] + 0.5 * step, shape.hi[a], step, dtype=np.float32) for a in range(3)]
    d = shape.sdf(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    idx = np.nonzero(d < 0.0)
    return np.stack([axes[a][idx[a]] for a in range(3)], axis=1)


def fit_liver(scene: Scene, modes: np.ndarray, target_mm3: float, step: float = 4.0):
    """Lobe scale s whose liver has the target canonical volume; returns (s, shape, inside cell centres)."""
    s, best, last = 1.0, None, None
    for _ in range(10):
        shape = _liver_shape(scene, s, modes)
        inside = _coarse_inside(shape, step)
        volume = inside.shape[0] * step**3
        err = abs(volume / target_mm3 - 1.0)
        if best is None or err < best[0]:
            best = (err, s, shape, inside)
        if err < 0.004 or volume == 0.0:
            break
        # Where the body wall and neighbours confine the liver, volume grows
        # slower than s^3: estimate the local exponent from the last two steps.
        power = 2.6
        if last is not None and last[0] != s and last[1] > 0.0:
            power = float(np.clip(np.log(volume / last[1]) / np.log(s / last[0]), 1.0, 4.0))
        last = (s, volume)
        s = float(np.clip(s * (target_mm3 / volume) ** (1.0 / power), 0.5, 2.2))
    return best[1], best[2], best[3]


def _turn(rng, d: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.cross(d, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    a = np.radians(degrees)
    return d * np.cos(a) + np.cross(axis, d) * np.sin(a)


def grow_tree(rng, liver: Shape, centroid: np.ndarray, roots, r_min: float = 1.5, max_segments: int = 180):
    """Random recursive branching capsules grown breadth-first from roots (start, toward, radius).

    Each segment forks into a thick continuation (small turn) and a thinner
    side branch (large turn); a segment whose end leaves the liver is bent
    toward the liver's centroid once, then dropped.
    """
    frontier = [(np.asarray(p, np.float64), np.asarray(q, np.float64) - np.asarray(p, np.float64), r, True)
                for p, q, r in roots]
    frontier = [(p, d / np.linalg.norm(d), r, root) for p, d, r, root in frontier]
    segments: list[Capsule] = []
    while frontier and len(segments) < max_segments:
        starts = np.array([f[0] for f in frontier])
        dirs = np.array([f[1] for f in frontier])
        radii = np.array([f[2] for f in frontier])
        lengths = np.clip(radii * rng.uniform(4.0, 7.0, len(frontier)), 6.0, 30.0)
        need = 0.5 * radii + 0.5
        ends = starts + dirs * lengths[:, None]
        ok = -liver.sdf(*ends.T.astype(np.float32)) >= need
        bend = centroid - starts
        bend /= np.maximum(np.linalg.norm(bend, axis=1, keepdims=True), 1e-6)
        dirs2 = dirs + bend
        dirs2 /= np.maximum(np.linalg.norm(dirs2, axis=1, keepdims=True), 1e-6)
        ends2 = starts + dirs2 * 0.7 * lengths[:, None]
        ok2 = -liver.sdf(*ends2.T.astype(np.float32)) >= need
        nxt = []
        for i, (start, _, r, root) in enumerate(frontier):
            if ok[i] or root:
                d, end = dirs[i], ends[i]
            elif ok2[i]:
                d, end = dirs2[i], ends2[i]
            else:
                continue
            segments.append(Capsule(start, end, r, 0.92 * r))
            major, minor = r * rng.uniform(0.8, 0.92), r * rng.uniform(0.55, 0.78)
            if major >= r_min:
                nxt.append((end, _turn(rng, d, rng.uniform(5.0, 20.0)), major, False))
            if minor >= r_min:
                nxt.append((end, _turn(rng, d, rng.uniform(35.0, 75.0)), minor, False))
        frontier = nxt
    return segments[:max_segments]
