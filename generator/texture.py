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
- ``released``: the authors' salt noise. As their code does, textures come from a bank of ten
  volumes, one per (``texture_sigma``, ``texture_blur``) pair of the recipe: a density drawn from
  blurred uniform noise and rescaled over the volume into ``texture_prob``, Bernoulli-sampled and
  blurred with ``texture_blur`` (``bank_volume``; built once per process, backend, spacing and bank
  edge, then kept). A sample's field (the crop and its blur margin) is a window of its volume at an
  offset drawn from its ``texture_seed``, read through the volume's mirror extension (the filters'
  own boundary rule, so the extension is seamless), scaled to mean ``texture_mean`` over its voxels
  above 0.12 and clipped to [0, 1]. Unitless: it scales the delta-HU darkening. Up to 0.6.0 every
  sample drew and blurred a fresh field of its own: the same distribution, 70 % of the profile's
  CPU time.
"""

from __future__ import annotations

import hashlib
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
    """The authors' salt-noise texture over one sample's field (float32 in [0, 1]): the window of
    its bank volume at the sample's offset, scaled to its drawn mean."""
    xp = backend.xp
    shape = tuple(int(n) for n in field_shape)
    edge = bank_edge(shape)
    volume = bank_volume(backend, edge, s, float(r.texture_sigma_mm), float(r.texture_blur_mm),
                         tuple(float(v) for v in r.texture_prob))
    rows = [xp.asarray(i) for i in mirror_rows(edge, shape, bank_offsets(r.texture_seed, edge))]
    tex = volume.take(rows[0], axis=0).take(rows[1], axis=1).take(rows[2], axis=2)
    return xp.clip(scale_to_mean(xp, tex, float(r.texture_mean)), 0.0, 1.0)


# Bank volumes are cubes of BANK_EDGE_MIN..BANK_EDGE_MAX voxels: the field's largest side rounded
# up to BANK_STEP (a 96^3 crop's field, 102-110 voxels, reads a 128^3 volume, 8.4 MB; larger
# fields, such as a whole scan's, read the mirror extension of a 128^3 one).
BANK_EDGE_MIN, BANK_EDGE_MAX, BANK_STEP = 64, 128, 32
BANK_CACHE = 12                    # volumes kept per process: the recipe's ten, and two spare
_BANK: OrderedDict = OrderedDict()


def bank_edge(field_shape) -> int:
    """The edge of the bank volume a field of ``field_shape`` voxels reads."""
    need = -(-max(int(n) for n in field_shape) // BANK_STEP) * BANK_STEP
    return int(min(BANK_EDGE_MAX, max(BANK_EDGE_MIN, need)))


def bank_seed(sigma_mm: float, blur_mm: float, prob) -> int:
    """The Philox key of the bank volume of one (noise blur, salt blur, probability range)."""
    text = f"released-texture-bank:{sigma_mm!r}:{blur_mm!r}:{[float(p) for p in prob]!r}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def bank_volume(backend: Backend, edge: int, s: float, sigma_mm: float, blur_mm: float, prob):
    """The bank volume (``(edge,) * 3`` float32 on the backend's device, read-only by convention)
    of the recipe's pair (``sigma_mm``, ``blur_mm``) at spacing ``s``; kept per process."""
    key = (backend.name, int(edge), float(s), float(sigma_mm), float(blur_mm),
           tuple(float(p) for p in prob))
    got = _BANK.get(key)
    if got is not None:
        _BANK.move_to_end(key)
        return got
    xp, ndi = backend.xp, backend.ndi
    shape, seed = (int(edge),) * 3, bank_seed(sigma_mm, blur_mm, prob)
    density = ndi.gaussian_filter(noise.uniform(xp, shape, seed, stream=0), sigma_mm / s,
                                  mode="mirror")
    lo, hi = density.min(), density.max()
    p_lo, p_hi = (float(v) for v in prob)    # Python floats keep float32 arithmetic
    density = p_lo + (density - lo) / xp.maximum(hi - lo, xp.float32(1e-6)) * (p_hi - p_lo)
    salt = (noise.uniform(xp, shape, seed, stream=1) < density).astype(xp.float32)
    volume = ndi.gaussian_filter(salt, blur_mm / s, mode="mirror")
    _BANK[key] = volume
    while len(_BANK) > BANK_CACHE:
        _BANK.popitem(last=False)
    return volume


def bank_offsets(texture_seed: int, edge: int) -> tuple[int, int, int]:
    """A sample's window offset per axis in the bank volume's mirror period ``2 (edge - 1)``."""
    words = noise.philox4x32(np, 1, int(texture_seed), stream=2)
    period = 2 * (int(edge) - 1)
    return tuple(int(w[0]) % period for w in words[:3])


def mirror_rows(edge: int, field_shape, offsets) -> list[np.ndarray]:
    """Per axis, the volume rows a field's voxels read: ``offset + i`` folded into ``[0, edge)``
    by the mirror extension ``d c b | a b c d | c b a`` (period ``2 (edge - 1)``), the rule the
    volume's filters used at its faces."""
    period = 2 * (int(edge) - 1)
    out = []
    for n, o in zip(field_shape, offsets):
        m = (int(o) + np.arange(int(n), dtype=np.int64)) % period
        out.append(np.where(m < edge, m, period - m))
    return out


def scale_to_mean(xp, tex, target: float):
    """``tex`` scaled so that its voxels above ``TEXTURE_FLOOR`` (before scaling; not the whole
    field) have mean ``target``, as the authors' code does (0.6.0; the whole field's mean up to
    0.5.0); the whole field's mean where no voxel is above it."""
    above = tex > xp.float32(TEXTURE_FLOOR)
    count = above.sum()
    # float64 sums: every value above the floor is a multiple of 2^-27 below 1, so their sum is
    # exact in any order (the kernels add them atomically and get the same mean)
    mean = xp.where(count > 0, (tex * above).sum(dtype=xp.float64) / xp.maximum(count, 1),
                    tex.sum(dtype=xp.float64) / tex.size).astype(xp.float32)
    return tex * (xp.float32(target) / xp.maximum(mean, xp.float32(1e-6)))


TEXTURE_FLOOR = 0.12
