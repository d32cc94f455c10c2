"""How grainy a region of CT is, and the texture grid that paints that grain.

Section 3.1 of the paper wants the tumor's texture "graininess" close to the parenchyma's. Its sd
alone does not say that: per-voxel noise and spatially correlated noise can share one sd. Grain is
measured here as a correlation length, one definition for the generator (which shapes the texture
to each scan) and the fidelity report (which checks it):

- along axis a, rho_a is the correlation of neighbouring voxels that are both in the mask, each
  taken about the mean of its block (the mask cut into cubes of ``BLOCK_MM``; a lesion small
  enough to fit one block is taken about its own mean), over the pooled variance about those
  means. Taking values about local means keeps the organ's slow shading (a liver brighter at one
  end, a beam-hardening gradient) out of the grain, as it is out of a lesion's;
- a parenchyma is measured on its :func:`interior` (two voxel layers off the organ's and the
  vessels' edges, where partial volume mixes in fat and contrast and reads as coarse grain:
  white noise in a toy liver measured 0.69 mm in-plane with its edge, 0.26-0.30 without);
- the length of a Gaussian autocorrelation that has rho_a at one voxel of s_a mm is
  L_a = s_a / sqrt(-2 ln rho_a); 0 for uncorrelated noise (rho_a <= 0); None for an axis with
  fewer than ``GRAIN_MIN_PAIRS`` pairs.

Resampled CT is anisotropic (a 5 mm slice resampled to 1 mm is smooth along S), so lengths are kept
per axis. The ``gaussian-grid`` texture (``texture.paper_texture``) is a linear, separable map of
white noise, so its correlation along an axis is exact arithmetic on that axis's operator
(:func:`texture_correlation`); :func:`grid_for_grain` inverts it to the noise-grid spacing (eta, mm)
whose texture has a given correlation length along that axis.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

GRAIN_MIN_PAIRS = 64        # neighbour pairs a correlation length needs
BLOCK_MM = 20.0             # local-mean blocks (about the size of a small-to-medium lesion)
EDGE_VOXELS = 2             # layers of a parenchyma mask left out (:func:`interior`)


def _about_block_means(image, mask, spacing):
    """(``image`` about the mean of each voxel's block inside ``mask``, zero elsewhere, float64;
    the pooled variance about those means), or None for fewer than 2 voxels."""
    idx = np.nonzero(mask)
    if idx[0].size < 2:
        return None
    vals = image[idx].astype(np.float64)
    sizes = [max(1, int(round(BLOCK_MM / s))) for s in spacing]
    blocks = [i // n for i, n in zip(idx, sizes)]
    dims = [int(b.max()) + 1 for b in blocks]
    block = np.ravel_multi_index(blocks, dims)
    counts = np.bincount(block)
    means = np.bincount(block, weights=vals) / np.maximum(counts, 1)
    centred = np.zeros(image.shape, np.float64)
    centred[idx] = vals - means[block]
    return centred, float((centred[idx] ** 2).mean())


def local_sd_hu(image, mask, spacing) -> float | None:
    """The sd of ``image`` inside ``mask`` about its 20 mm block means: the fine-scale spread a
    texture is seen against (the organ's slow shading left out); None for fewer than 2 voxels."""
    got = _about_block_means(np.asarray(image), np.asarray(mask, bool),
                             tuple(float(s) for s in spacing))
    return None if got is None else math.sqrt(got[1])


def axis_grain_mm(image, mask, spacing) -> tuple[float | None, ...]:
    """Correlation length (mm) of ``image`` inside ``mask`` along each axis (see the module
    docstring); None for an axis without enough pairs, all None for a flat or empty mask."""
    image = np.asarray(image)
    mask = np.asarray(mask, bool)
    spacing = tuple(float(s) for s in spacing)
    none = (None,) * image.ndim
    got = _about_block_means(image, mask, spacing)
    if got is None or got[1] <= 0:
        return none
    centred, var = got
    out = []
    for axis, s in enumerate(spacing):
        n = image.shape[axis]
        a = [slice(None)] * image.ndim
        b = [slice(None)] * image.ndim
        a[axis], b[axis] = slice(0, n - 1), slice(1, n)
        both = mask[tuple(a)] & mask[tuple(b)]
        pairs = int(both.sum())
        if pairs < GRAIN_MIN_PAIRS:
            out.append(None)
            continue
        rho = float((centred[tuple(a)][both] * centred[tuple(b)][both]).mean() / var)
        out.append(length_of(rho, s))
    return tuple(out)


def interior(mask, voxels: int = EDGE_VOXELS):
    """``mask`` without its outer ``voxels`` layers, or ``mask`` itself if nothing would be left.
    An organ's edge voxels mix its HU with the fat around it (partial volume, label and image
    resampled differently) and would read as grain; so would a vessel's."""
    import scipy.ndimage as ndi
    mask = np.asarray(mask, bool)
    inner = ndi.binary_erosion(mask, iterations=int(voxels)) if voxels else mask
    return inner if inner.any() else mask


def grain_mm(image, mask, spacing) -> float | None:
    """The mean of :func:`axis_grain_mm` over the axes that have one; None if none has."""
    found = [v for v in axis_grain_mm(image, mask, spacing) if v is not None]
    return float(np.mean(found)) if found else None


def length_of(rho: float, spacing_mm: float) -> float:
    """Correlation length (mm) of a Gaussian autocorrelation with ``rho`` at one voxel."""
    if rho <= 0:
        return 0.0
    return float(spacing_mm) / math.sqrt(-2.0 * math.log(min(rho, 0.999999)))


def rho_of(length_mm: float, spacing_mm: float) -> float:
    """The neighbour correlation a Gaussian autocorrelation of ``length_mm`` has at one voxel."""
    if length_mm <= 0:
        return 0.0
    return math.exp(-float(spacing_mm) ** 2 / (2.0 * float(length_mm) ** 2))


STEPS = np.geomspace(1.0, 24.0, 61)   # noise-grid spacings (voxels) the inverse is tabulated at
_NOISE_POINTS = 40                    # noise points of the reference axis


@lru_cache(maxsize=64)
def _correlation_table(sigma_vox: float) -> np.ndarray:
    return np.array([texture_correlation(g, sigma_vox) for g in STEPS])


def texture_correlation(step_vox: float, sigma_vox: float) -> float:
    """Neighbour correlation of the ``gaussian-grid`` texture along one axis whose noise points lie
    ``step_vox`` voxels apart, blurred with ``sigma_vox`` voxels: the mean over the axis's inner
    rows (those the boundary does not reach) of the product of neighbouring rows of its
    unit-norm operator (``texture.axis_operator``), which is their correlation over noise draws."""
    from .texture import build_operator
    c = _NOISE_POINTS
    n = int(round((c - 1) * float(step_vox))) + 1
    op = build_operator(n, c, float(sigma_vox))
    edge = int(math.ceil(3 * step_vox + 4 * sigma_vox)) + 2
    rows = slice(edge, n - 1 - edge)
    return float(np.mean(np.sum(op[:-1][rows] * op[1:][rows], axis=1)))


def grid_for_grain(length_mm: float, spacing_mm: float, sigma_b_mm: float) -> float:
    """The noise-grid spacing eta (mm, 4 decimals) whose ``gaussian-grid`` texture, blurred with
    ``sigma_b_mm``, has correlation length ``length_mm`` along an axis of ``spacing_mm`` voxels.
    Clamped to the range the texture can make: no finer than one voxel (the grain of the blur
    alone) and no coarser than ``STEPS[-1]`` voxels."""
    s = float(spacing_mm)
    table = _correlation_table(round(float(sigma_b_mm) / s, 9))
    target = rho_of(length_mm, s)
    step = float(np.interp(target, table, STEPS)) if target > table[0] else 1.0
    return round(step * s, 4)


def grid_for_scan(lengths_mm, factor: float, spacing_mm: float, sigma_b_mm: float,
                  fallback_mm: float) -> tuple[float, float, float]:
    """Per-axis eta (mm) for a texture ``factor`` times as coarse as a scan whose parenchyma has
    correlation lengths ``lengths_mm`` along i, j, k (``PreparedScan.parenchyma_grain_mm``). An
    axis without a length takes the mean of the others; a scan with none takes ``fallback_mm``
    on every axis (the profile's fixed grid)."""
    known = [float(v) for v in lengths_mm if v is not None]
    if not known:
        return (round(float(fallback_mm), 4),) * 3
    mean = sum(known) / len(known)
    return tuple(grid_for_grain(float(factor) * (mean if v is None else float(v)), spacing_mm,
                                sigma_b_mm) for v in lengths_mm)
