"""The tumor's texture (Hu et al., CVPR 2023, Section 3.1, "Texture generation").

A texture is computed on a box of the prepared scan (array axes ``(i, j, k)`` = (R, A, S), voxels
of edge ``s`` mm); its Philox noise grid is anchored at the box corner, so the same record gives the
same texture on every run, and the same integer noise on every backend.

- ``paper``: Gaussian noise on a grid ``eta`` mm apart (per axis for the scan-matched texture,
  whose spacings ``grain.grid_for_grain`` picks from the scan's parenchyma), upscaled by cubic interpolation and blurred
  with sigma_b, on the tumor box (``shape.tumor_halves``). Upscaling and blur remove most of the
  noise's variance (left alone, the texture's sd is 0.36-0.49 of sigma_p), while Section 3.1 wants
  the parenchyma's sd sigma_p and graininess close to it; so each voxel is scaled to unit variance
  (analytically: the map is linear and separable, one matrix per axis) and the field becomes mean
  mu_t and sd sigma_p (HU) in expectation. Up to 0.4 it was standardized by its realized mean and
  sd over the mask's support, a box found on the data. Eq. 4 blends it in.
- ``released``: the authors' salt noise, one field per sample (the crop and its blur margin): a
  density drawn from blurred uniform noise and rescaled over the field into ``texture_prob``,
  Bernoulli-sampled, blurred with ``texture_blur``, scaled to mean ``texture_mean`` over its
  voxels above 0.12 (the authors' rule; the whole field up to 0.5.0) and clipped to [0, 1].
  Unitless: it scales the delta-HU darkening.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import scipy.ndimage as ndi

from . import noise
from .backend import Backend


def axis_operator(n: int, c: int, sigma_vox: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The texture's linear map along one axis, ``(n, c)`` float64 (host), with each row's first
    and last + 1 non-zero column: ``c`` noise points
    upscaled to ``n`` voxels by cubic B-spline interpolation corner to corner (output voxel o samples
    input coordinate o (c - 1) / (n - 1); mirror boundary: ``ndimage.zoom(order=3, mode="mirror",
    grid_mode=False)``), then blurred with a Gaussian of ``sigma_vox`` voxels (``nearest``
    boundary, truncated at 4 sd: ``ndimage.gaussian_filter1d``), each row scaled to unit length so
    that every voxel of the texture has unit variance. Built from the 1-D SciPy filters applied to
    the identity, so it is exactly the operator those filters apply; kept per (n, c, sigma)."""
    key = (int(n), int(c), round(float(sigma_vox), 12))
    got = _OPERATORS.get(key)
    if got is not None:
        _OPERATORS.move_to_end(key)
        return got
    op = build_operator(n, c, sigma_vox)
    nz = op != 0
    first = np.argmax(nz, axis=1)
    last = c - np.argmax(nz[:, ::-1], axis=1)
    op.flags.writeable = False
    got = (op, first, last)
    _OPERATORS[key] = got
    while len(_OPERATORS) > OPERATOR_CACHE:
        _OPERATORS.popitem(last=False)
    return got


def build_operator(n: int, c: int, sigma_vox: float) -> np.ndarray:
    """:func:`axis_operator`'s matrix, built afresh (not kept)."""
    coeff = ndi.spline_filter1d(np.eye(c), order=3, axis=0, mode="mirror")      # (c, c)
    x = np.arange(n, dtype=np.float64) * ((c - 1) / (n - 1) if n > 1 else 0.0)
    base = np.floor(x)
    t = x - base
    taps = ((1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6,
            (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6, t ** 3 / 6)
    period = max(2 * (c - 1), 1)
    up = np.zeros((n, c))
    for k, w in enumerate(taps):
        i = np.abs(base.astype(np.int64) + (k - 1)) % period            # mirror about the ends
        i = np.where(i > c - 1, period - i, i)
        up += w[:, None] * coeff[i]
    op = ndi.gaussian_filter1d(up, sigma_vox, axis=0, mode="nearest", truncate=4.0)
    # The spline's prefilter spreads every row over all noise points with weights falling by
    # 0.27 per point; weights under BAND x the row's largest are set to 0, so a row reads a band
    # of ~2 x 17 noise points and a part of the box needs only the noise under its rows.
    op[np.abs(op) < BAND * np.abs(op).max(axis=1, keepdims=True)] = 0.0
    op /= np.maximum(np.sqrt((op ** 2).sum(axis=1, keepdims=True)), 1e-12)
    return op


BAND = 1e-9
OPERATOR_CACHE = 2048      # the default draws use ~750 (odd box sizes x grid sizes)
_OPERATORS: OrderedDict = OrderedDict()


def paper_texture(backend: Backend, t, box_shape, s: float, lo=None, hi=None):
    """Gaussian texture of tumor row ``t`` on its box of ``box_shape`` voxels, or on the part
    ``[lo, hi)`` of it (float32 HU): noise on a grid ``eta`` mm apart (one spacing, or one per
    axis: the scan-matched texture's) anchored at the box corner,
    cubic interpolation and blur sigma_b (one :func:`axis_operator` per axis, the part's rows of
    it, applied as three matrix products in float64), then ``mu_t + sigma_p x`` that unit-variance
    field. The standardization is analytic (every voxel has variance sigma_p^2 over noise draws),
    so it needs no statistics of the data and the box's shape alone fixes the work."""
    xp = backend.xp
    eta = np.broadcast_to(np.asarray(t.eta, np.float64), (3,))
    steps = [max(float(e) / s, 1.0) for e in eta]    # noise grid spacing in voxels, per axis
    box = tuple(int(n) for n in box_shape)
    lo = (0, 0, 0) if lo is None else tuple(int(v) for v in lo)
    hi = box if hi is None else tuple(int(v) for v in hi)
    coarse = tuple(max(2, int(math.ceil(n / step))) for n, step in zip(box, steps))
    sigma = float(t.sigma_b_mm) / s
    ops, z_lo, z_hi = [], [], []
    for n, c, a, b in zip(box, coarse, lo, hi):
        op, first, last = axis_operator(n, c, sigma)
        w0, w1 = int(first[a:b].min()), int(last[a:b].max())        # the noise the rows read
        ops.append(xp.asarray(op[a:b, w0:w1]))
        z_lo.append(w0)
        z_hi.append(w1)
    ax, ay, az = ops
    z = noise.normal(xp, coarse, t.texture_seed, lo=z_lo, hi=z_hi).astype(xp.float64)
    m0, m1, m2 = (b - a for a, b in zip(lo, hi))
    c0, c1, c2 = z.shape
    # Three 2-D matrix products (BLAS on both backends), contracting x, then z, then y.
    field = (ax @ z.reshape(c0, c1 * c2)).reshape(m0 * c1, c2)
    field = (field @ az.T).reshape(m0, c1, m2)
    field = xp.ascontiguousarray(field.transpose(0, 2, 1)).reshape(m0 * m2, c1) @ ay.T
    field = field.reshape(m0, m2, m1).transpose(0, 2, 1)
    return (field * float(t.sigma_p) + float(t.mu_t)).astype(xp.float32)


def released_texture(backend: Backend, r, field_shape, s: float):
    """The authors' salt-noise texture over one sample's field (float32 in [0, 1])."""
    xp, ndi = backend.xp, backend.ndi
    density = ndi.gaussian_filter(noise.uniform(xp, field_shape, r.texture_seed, stream=0),
                                  float(r.texture_sigma_mm) / s, mode="mirror")
    lo, hi = density.min(), density.max()
    p_lo, p_hi = (float(v) for v in r.texture_prob)    # Python floats keep float32 arithmetic
    density = p_lo + (density - lo) / xp.maximum(hi - lo, xp.float32(1e-6)) * (p_hi - p_lo)
    salt = (noise.uniform(xp, field_shape, r.texture_seed, stream=1) < density).astype(xp.float32)
    tex = ndi.gaussian_filter(salt, float(r.texture_blur_mm) / s, mode="mirror")
    return xp.clip(scale_to_mean(xp, tex, float(r.texture_mean)), 0.0, 1.0)


def scale_to_mean(xp, tex, target: float):
    """``tex`` scaled so that its voxels above ``TEXTURE_FLOOR`` (before scaling; not the whole
    field) have mean ``target``, as the authors' code does (0.6.0; the whole field's mean up to
    0.5.0); the whole field's mean where no voxel is above it."""
    above = tex > xp.float32(TEXTURE_FLOOR)
    count = above.sum()
    mean = xp.where(count > 0, (tex * above).sum() / xp.maximum(count, 1).astype(xp.float32),
                    tex.mean())
    return tex * (xp.float32(target) / xp.maximum(mean, xp.float32(1e-6)))


TEXTURE_FLOOR = 0.12
