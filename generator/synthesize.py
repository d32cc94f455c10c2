"""Applying a sample's parameters: a pure function of (prepared scan, SampleParams, backend).

Work is crop-local. The canvas is the crop plus the boxes of the tumors that can reach it (a tumor
counts when its box, including its mass-effect sphere, meets the crop); each tumor is computed in its
own box only. Tumors whose boxes miss the crop are part of the record (the paper draws them over the
whole liver) but cannot change the crop, so they are skipped. This definition is what audit
regenerates, so it is exact by construction on one backend.

Output crops are ``(Z, Y, X)`` arrays (Z toward superior, Y anterior, X toward the patient's right):
image int16 HU clipped to [-1024, 3071], label uint8 (0 background, 1 liver, 2 tumor).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from . import noise
from .backend import Backend
from .params import PaperTumor, ReleasedTumor, SampleParams
from .prepare import PAD_HU, PreparedScan

HU_MIN, HU_MAX = -1024, 3071
TUMOR_LABEL, LIVER_LABEL = 2, 1
class StepTimer:
    """Wall time per named step; synchronizes the GPU so a step's time is its own."""

    def __init__(self, backend: Backend | None = None):
        self.backend = backend
        self.seconds: dict[str, float] = defaultdict(float)
        self._t = None

    def start(self):
        self._sync()
        self._t = time.perf_counter()

    def mark(self, step: str):
        if self._t is None:
            return
        self._sync()
        now = time.perf_counter()
        self.seconds[step] += now - self._t
        self._t = now

    def _sync(self):
        if self.backend is not None and self.backend.name == "cupy":
            self.backend.xp.cuda.Device().synchronize()


_NULL = StepTimer()


@dataclass(frozen=True)
class Crop:
    image: np.ndarray   # (Z, Y, X) int16 HU
    label: np.ndarray   # (Z, Y, X) uint8


def _shape_half(t) -> int:
    """Half-width of the box in which a tumor's shape is computed (voxels). The shape depends on
    this box only (its control grid spans it), never on the canvas or on post-processing."""
    blur = t.sigma_c if isinstance(t, PaperTumor) else t.mask_blur
    return int(math.ceil(max(t.half_axes) + 3.0 * t.sigma_e + 3.0 * blur + 2.0))


def _half_size(t) -> int:
    """Half-width of everything a tumor touches: its shape box, and for the paper's
    post-processing the mass-effect sphere and the blurred capsule band."""
    h = _shape_half(t)
    if isinstance(t, PaperTumor) and (t.mass_effect or t.capsule):
        h = max(h, int(math.ceil(t.gamma_max + 2.0 + (3.0 * t.sigma_d + 1.0 if t.capsule else 0))))
    return h


def _box(t, origin) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(t.center) - origin
    h = _half_size(t)
    return c - h, c + h + 1


def _overlaps(lo, hi, lo2, hi2) -> bool:
    return bool(np.all(lo < hi2) and np.all(lo2 < hi))


def _extract(backend: Backend, arr, lo, hi, fill):
    """arr[lo:hi] with out-of-range parts filled (arrays on the backend's device)."""
    xp = backend.xp
    shape = tuple(int(v) for v in hi - lo)
    out = xp.full(shape, fill, dtype=arr.dtype)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, arr.shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
        arr[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
    return out


def _lagrange3(xp, u):
    """Quadratic Lagrange weights for control points at u = -1, 0, 1 (u clipped to [-1, 1])."""
    u = xp.clip(u, -1.0, 1.0)
    return xp.stack([0.5 * u * (u - 1.0), 1.0 - u * u, 0.5 * u * (u + 1.0)], axis=-1)


def _control_points(seed: int, shape, sigma: float) -> np.ndarray:
    """Control-point displacements ~ N(0, sigma) in voxels, drawn on the host with Philox."""
    return noise.normal(np, shape, seed, stream=1).astype(np.float64) * sigma


def _paper_shape(backend, t: PaperTumor, box_shape, center):
    """Ellipsoid with half-axes ``t.half_axes`` deformed by a smooth field interpolated from a
    3x3x3 grid of control displacements over the box (tri-quadratic), as a float32 0/1 mask."""
    xp = backend.xp
    grid = _control_points(t.deform_seed, (3, 3, 3, 3), t.sigma_e)
    weights = [_lagrange3(xp, xp.linspace(-1.0, 1.0, n, dtype=xp.float32)) for n in box_shape]
    g = xp.asarray(grid, dtype=xp.float32)
    q = None
    for a in range(3):
        # d_a(x, y, z) = sum_ijk Wx[x,i] Wy[y,j] Wz[z,k] g[a,i,j,k], contracted axis by axis.
        d = xp.einsum("xi,ijk->xjk", weights[0], g[a])
        d = xp.einsum("yj,xjk->xyk", weights[1], d)
        d = xp.einsum("zk,xyk->xyz", weights[2], d)
        coord = xp.arange(box_shape[a], dtype=xp.float32).reshape([-1 if b == a else 1 for b in range(3)])
        term = ((coord + d - xp.float32(center[a])) / xp.float32(t.half_axes[a])) ** 2
        q = term if q is None else q + term
    return (q <= 1.0).astype(xp.float32)


def _quadratic(u, g0, g1, g2):
    """The quadratic through (-1, g0), (0, g1), (1, g2), evaluated at u (Horner form)."""
    return g1 + u * ((g2 - g0) * 0.5 + u * ((g0 + g2) * 0.5 - g1))


def _released_shape(backend, t: ReleasedTumor, box_shape, center):
    """Ellipsoid deformed by three 2-D passes over axis pairs (0,1), (1,2), (0,2), each with a 3x3
    grid of control displacements spanning the box; composed as backward maps."""
    xp = backend.xp
    pairs = ((0, 1), (1, 2), (0, 2))
    grids = _control_points(t.deform_seed, (3, 2, 3, 3), t.sigma_e)
    half = [max(s - 1, 1) / 2.0 for s in box_shape]
    pos = [xp.broadcast_to(xp.arange(s, dtype=xp.float32).reshape(
        [-1 if b == a else 1 for b in range(3)]), box_shape) for a, s in enumerate(box_shape)]
    for p in reversed(range(3)):
        a, b = pairs[p]
        u = xp.clip(pos[a] / xp.float32(half[a]) - 1.0, -1.0, 1.0)
        v = xp.clip(pos[b] / xp.float32(half[b]) - 1.0, -1.0, 1.0)
        moved = []
        for comp in range(2):
            g = grids[p, comp]
            rows = [_quadratic(u, *(xp.float32(x) for x in g[:, j])) for j in range(3)]
            moved.append(_quadratic(v, *rows))
        pos[a], pos[b] = pos[a] + moved[0], pos[b] + moved[1]
    q = sum(((pos[a] - xp.float32(center[a])) / xp.float32(t.half_axes[a])) ** 2 for a in range(3))
    return (q <= 1.0).astype(xp.float32)


def _paper_texture(backend, t: PaperTumor, box_shape):
    """Gaussian noise N(mu_t, sigma_p) on a grid 1/eta as fine, cubic upscaling, blur sigma_b."""
    xp, ndi = backend.xp, backend.ndi
    coarse = tuple(max(2, int(math.ceil(s / t.eta))) for s in box_shape)
    z = noise.normal(xp, coarse, t.texture_seed) * xp.float32(t.sigma_p) + xp.float32(t.mu_t)
    zoom = [s / c for s, c in zip(box_shape, coarse)]
    up = ndi.zoom(z, zoom, order=3, mode="mirror", grid_mode=False)
    up = up[: box_shape[0], : box_shape[1], : box_shape[2]]
    return ndi.gaussian_filter(up, t.sigma_b, mode="nearest")


def _released_texture(backend, t: ReleasedTumor, box_shape):
    """Salt noise with a smoothly varying density, blurred, scaled to mean ``texture_mean``, [0, 1]."""
    xp, ndi = backend.xp, backend.ndi
    density = ndi.gaussian_filter(noise.uniform(xp, box_shape, t.texture_seed, stream=0),
                                  t.texture_sigma, mode="mirror")
    lo, hi = density.min(), density.max()
    p_lo, p_hi = t.texture_prob
    density = p_lo + (density - lo) / xp.maximum(hi - lo, xp.float32(1e-6)) * (p_hi - p_lo)
    salt = (noise.uniform(xp, box_shape, t.texture_seed, stream=1) < density).astype(xp.float32)
    tex = ndi.gaussian_filter(salt, t.texture_blur, mode="mirror")
    tex = tex * (xp.float32(t.texture_mean) / xp.maximum(tex.mean(), xp.float32(1e-6)))
    return xp.clip(tex, 0.0, 1.0)


def _warp_coords(backend, shape, center, gamma_max, intensity):
    """Eq. 5 local scaling warp: output voxel at distance g from the center samples the input at
    g' = (1 - (1 - g / gamma_max)^2 * I / 100) * g, inside the sphere of radius gamma_max."""
    xp = backend.xp
    axes = [xp.arange(s, dtype=xp.float32) - xp.float32(c) for s, c in zip(shape, center)]
    v = xp.meshgrid(*axes, indexing="ij")
    g = xp.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
    scale = xp.where(g < gamma_max,
                     1.0 - (1.0 - g / xp.float32(gamma_max)) ** 2 * xp.float32(intensity / 100.0),
                     xp.float32(1.0))
    return xp.stack([xp.float32(c) + vi * scale for vi, c in zip(v, center)])


def _support(backend, mask):
    """Slices of the smallest box holding every non-zero voxel of ``mask``; None if it is empty.

    Texture is computed on this box only: its noise grid is anchored at the box corner, so the
    box is part of the sample's definition (identical on every run and backend)."""
    xp = backend.xp
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = backend.asnumpy(xp.flatnonzero((mask > 0).any(axis=other)))
        if hit.size == 0:
            return None
        bounds.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(bounds)


def _apply_tumor(backend, t, image, label, timer):
    """Paint one tumor into the canvas (image float32 HU, label uint8) in place, within its box.
    The canvas always contains the whole box (``synthesize`` builds it so)."""
    xp, ndi = backend.xp, backend.ndi
    h, hs = _half_size(t), _shape_half(t)
    c = np.asarray(t.center)
    sl = tuple(slice(int(v - h), int(v + h + 1)) for v in c)
    img, lab = image[sl], label[sl]
    shape_sl = tuple(slice(h - hs, h + hs + 1) for _ in range(3))
    paper = isinstance(t, PaperTumor)
    make_shape, blur, make_texture = ((_paper_shape, t.sigma_c, _paper_texture) if paper else
                                      (_released_shape, t.mask_blur, _released_texture))
    liver = (lab[shape_sl] >= LIVER_LABEL).astype(xp.float32)
    mask = xp.zeros(img.shape, xp.float32)
    mask[shape_sl] = ndi.gaussian_filter(make_shape(backend, t, (2 * hs + 1,) * 3, (hs, hs, hs)),
                                         blur, mode="constant") * liver
    timer.mark("shape")
    sub = _support(backend, mask)
    if sub is not None:
        m = mask[sub]
        texture = make_texture(backend, t, m.shape)
        timer.mark("texture")
        if paper:
            img[sub] = (1.0 - m) * img[sub] + m * texture                    # eq. 4
        else:
            img[sub] -= texture * m * xp.float32(t.delta_hu)                 # darkening by delta
        lab[sub] = xp.where(m >= 0.5, xp.uint8(TUMOR_LABEL), lab[sub])
        timer.mark("place")
    if paper and t.mass_effect:
        # Only the sphere of radius gamma_max moves, and it samples only from inside itself.
        g = int(math.ceil(t.gamma_max))
        w = tuple(slice(h - g, h + g + 1) for _ in range(3))
        coords = _warp_coords(backend, (2 * g + 1,) * 3, (g, g, g), t.gamma_max, t.intensity)
        img[w] = ndi.map_coordinates(img[w], coords, order=1, mode="nearest")
        lab[w] = ndi.map_coordinates(lab[w], coords, order=0, mode="nearest")
        mask[w] = ndi.map_coordinates(mask[w], coords, order=1, mode="nearest")
        timer.mark("mass_effect")
    if paper and t.capsule:
        lb, ub = t.capsule_band
        edge = ((mask >= lb) & (mask <= ub)).astype(xp.float32)              # eq. 6
        img += xp.float32(t.capsule_hu) * ndi.gaussian_filter(edge, t.sigma_d,
                                                             mode="constant")  # eqs. 7-8
        timer.mark("capsule")


def synthesize(scan: PreparedScan, params: SampleParams, backend: Backend,
               timer: StepTimer = _NULL) -> Crop:
    """The crop of ``params`` with its tumors painted in, as host (NumPy) arrays."""
    xp = backend.xp
    if params.scan_id != scan.scan_id:
        raise ValueError(f"params are for scan {params.scan_id}, not {scan.scan_id}")
    timer.start()
    full_origin = np.asarray(scan.origin_vox)
    crop_lo = np.asarray(params.crop_origin) - full_origin
    crop_hi = crop_lo + np.asarray(params.crop_size)
    tumors = [t for t in params.tumors
              if _overlaps(*_box(t, full_origin), crop_lo, crop_hi)]
    lo, hi = crop_lo.copy(), crop_hi.copy()
    for t in tumors:
        blo, bhi = _box(t, full_origin)
        lo, hi = np.minimum(lo, blo), np.maximum(hi, bhi)
    image_dev, label_dev = scan.on(backend)
    image = _extract(backend, image_dev, lo, hi, PAD_HU).astype(xp.float32)
    label = _extract(backend, label_dev, lo, hi, 0)
    timer.mark("canvas")
    for t in tumors:
        shifted = type(t)(**{**t.__dict__, "center": tuple(int(v) for v in
                                                           np.asarray(t.center) - full_origin - lo)})
        _apply_tumor(backend, shifted, image, label, timer)
    a, b = crop_lo - lo, crop_hi - lo
    sl = (slice(a[0], b[0]), slice(a[1], b[1]), slice(a[2], b[2]))
    out_img = xp.clip(xp.rint(image[sl]), HU_MIN, HU_MAX).astype(xp.int16).transpose(2, 1, 0)
    out_lab = label[sl].transpose(2, 1, 0)
    crop = Crop(np.ascontiguousarray(backend.asnumpy(out_img)),
                np.ascontiguousarray(backend.asnumpy(out_lab)))
    timer.mark("output")
    return crop


def synthesize_batch(scan: PreparedScan, params_list, backend: Backend,
                     timer: StepTimer = _NULL) -> tuple[np.ndarray, np.ndarray]:
    """Many crops of one scan: ``(N, Z, Y, X)`` int16 images and uint8 labels."""
    crops = [synthesize(scan, p, backend, timer) for p in params_list]
    return (np.stack([c.image for c in crops]), np.stack([c.label for c in crops]))
