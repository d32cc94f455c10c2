"""Post-processing measured by paired synthesis: what the ``paper`` profile's mass effect and
capsule do to a tumor, which its stored crop alone cannot tell.

The tumor is rendered alone (a one-tumor sample in a crop holding everything it touches) with the
step on and off, and the two renderings are compared: mass effect as the displacement of the organ
surface (mm), capsule as the HU it adds around the tumor edge (peak and mean over the band, band
width in mm from the radial profile).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from tumorforge.generator.api import synthesize
from tumorforge.manifests.conventions import ORGAN, TUMOR, zyx_to_ras


@dataclass
class PostEffect:
    """Paired-synthesis measurement of one tumor's post-processing."""

    source: str
    group: str
    scan_id: str
    sample: str
    radius_mm: float
    mass_effect: dict | None
    capsule: dict | None


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask)


def mass_effect_shift(with_label: np.ndarray, without_label: np.ndarray, spacing, center,
                      gamma_max_mm: float, intensity: float) -> dict:
    """Displacement (mm) of the organ surface (label >= ORGAN) between two renderings of one
    tumor, over the surface voxels of either within ``gamma_max_mm`` of ``center`` (the only part
    eq. 5 can move)."""
    spacing = tuple(float(s) for s in spacing)
    a, b = _surface(with_label >= ORGAN), _surface(without_label >= ORGAN)
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(a.shape, center, spacing)],
                        indexing="ij", sparse=True)
    sphere = sum(g ** 2 for g in grids) <= gamma_max_mm ** 2
    dists = []
    for one, other in ((a, b), (b, a)):
        if other.any():
            d = ndi.distance_transform_edt(~other, sampling=spacing)
            dists.append(d[one & sphere])
    d = np.concatenate(dists) if dists else np.zeros(0)
    moved = d[d > 0]
    return {"max_mm": float(d.max()) if d.size else 0.0,
            "median_mm": float(np.median(d)) if d.size else None,
            "median_moved_mm": float(np.median(moved)) if moved.size else None,
            "moved_share": float(moved.size / d.size) if d.size else None,
            "surface_voxels": int(d.size),
            "max_theory_mm": 4.0 / 27.0 * gamma_max_mm * intensity / 100.0}


def capsule_rim(with_image: np.ndarray, without_image: np.ndarray, tumor: np.ndarray,
                spacing) -> dict:
    """The HU a capsule adds (``with - without``), profiled by signed distance (mm) to the edge of
    ``tumor`` (negative inside): mean added HU per bin of half a voxel (bins no voxel falls in are
    skipped), its peak, and the full width at half the peak, with linear interpolation between
    bins; see ``output.DEFINITIONS['capsule']``."""
    s = float(min(spacing))
    added = np.asarray(with_image, np.float64) - np.asarray(without_image, np.float64)
    tumor = np.asarray(tumor, bool)
    if not tumor.any() or tumor.all():
        return {"peak_hu": None, "band_mean_hu": None, "width_mm": None, "max_hu": None,
                "offset_mm": None}
    # Voxel-center distances: the edge lies half a voxel beyond the last voxel on either side.
    outside = ndi.distance_transform_edt(~tumor, sampling=spacing)
    inside = ndi.distance_transform_edt(tumor, sampling=spacing)
    signed = np.where(tumor, -(inside - s / 2), outside - s / 2).ravel()
    bins = np.floor(signed / (s / 2)).astype(np.int64)
    bins -= bins.min()
    counts = np.bincount(bins)
    used = np.flatnonzero(counts)
    xs = (np.bincount(bins, signed) / np.maximum(counts, 1))[used]
    ps = (np.bincount(bins, added.ravel()) / np.maximum(counts, 1))[used]
    k = int(np.argmax(ps))
    peak, half = float(ps[k]), float(ps[k]) / 2
    lo = hi = k
    while lo > 0 and ps[lo - 1] >= half:
        lo -= 1
    while hi + 1 < len(ps) and ps[hi + 1] >= half:
        hi += 1

    def crossing(a: int, b: int) -> float:     # where the profile passes half between a and b
        return float(xs[a] + (half - ps[a]) / (ps[b] - ps[a]) * (xs[b] - xs[a]))

    left = crossing(lo - 1, lo) if lo > 0 else float(xs[lo])
    right = crossing(hi + 1, hi) if hi + 1 < len(ps) else float(xs[hi])
    band = np.isin(bins, used[lo:hi + 1])
    return {"peak_hu": peak, "band_mean_hu": float(added.ravel()[band].mean()),
            "width_mm": right - left, "max_hu": float(added.max()), "offset_mm": float(xs[k])}


def post_effects(scan, params, tumor, backend) -> tuple[dict | None, dict | None]:
    """(mass effect, capsule) measurements of one ``paper`` tumor by paired synthesis: the tumor
    alone (one-tumor SampleParams) in a crop holding everything it touches, rendered with the flag
    on and off. None for an effect the tumor does not have."""
    s = float(scan.spacing_mm[0])
    reach = max(tumor.gamma_max_mm, max(tumor.half_axes_mm) + 3 * tumor.sigma_e_mm
                + 3 * tumor.sigma_c_mm) + 3 * tumor.sigma_d_mm + 2 * s
    h = int(math.ceil(reach / s)) + 2
    one = dataclasses.replace(params, tumors=(tumor,), crop_size=(2 * h + 1,) * 3,
                              crop_origin=tuple(int(c) - h for c in tumor.center))

    def render(**flags):
        crop = synthesize(scan, dataclasses.replace(one, tumors=(dataclasses.replace(tumor, **flags),)),
                          backend)
        return zyx_to_ras(crop.image), zyx_to_ras(crop.label)

    spacing = tuple(float(v) for v in scan.spacing_mm)
    plain = render(mass_effect=tumor.mass_effect, capsule=False)    # as recorded, no capsule
    mass = cap = None
    if tumor.mass_effect:
        mass = mass_effect_shift(plain[1], render(mass_effect=False, capsule=False)[1], spacing,
                                 (h, h, h), tumor.gamma_max_mm, tumor.intensity)
    if tumor.capsule:
        cap = capsule_rim(render()[0], plain[0], plain[1] == TUMOR, spacing)
    return mass, cap

