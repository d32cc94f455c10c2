"""The tumor's shape (Hu et al., CVPR 2023, Section 3.1, "Shape generation"): an ellipsoid with
half-axes drawn per tumor, deformed elastically, and blurred into a soft mask.

A shape is computed in its own box of ``2 * shape_halves(row, s) + 1`` voxels per axis centred on
the tumor (``row``: the tumor's packed row, ``batch``), with array axes ``(i, j, k)`` = (R, A, S)
of the prepared scan; ``s`` is the prepared grid's voxel edge in mm (1 by default) and converts the
record's mm lengths to voxels. The
deformation's control grid spans that box, so the shape depends on the tumor record alone, never on
the crop around it. Control displacements are drawn with Philox (``noise``) on the host, so they are
identical on every backend.

- ``paper``: a 3x3x3 grid of displacements ~ N(0, sigma_e) per axis, interpolated tri-quadratically
  over the box; the binary shape is blurred with sigma_c into the tumor's soft mask.
- ``released``: the authors' three 2-D passes over axis pairs (0,1), (1,2), (0,2), each on a 3x3
  grid, read from the ellipsoid as a mask on the integer grid (voxels strictly inside, q < 1) at
  each deformed voxel's nearest grid point (0.6.0; up to 0.5.0 q <= 1 at the deformed position,
  about 1.07x the authors' volume for half-axes 3-5); the binary shapes of a sample are united
  and blurred once (``synthesize``).

The boxes a tumor is painted in are defined here once, from its row alone, for both paths that
paint ``paper`` crops: ``tumor_reach`` (everything a tumor touches) and ``work_boxes`` (which
tumors a crop takes and where each is painted), used by the array code (``synthesize``) and by the
kernels' plan (``kernels.paint``), so the two cannot disagree on a box.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import numpy as np

from . import noise
from .backend import Backend


def shape_halves(rows, s) -> np.ndarray:
    """Half-widths (voxels, per axis) of the box in which each tumor's shape is computed, from its
    row alone: its half-axis plus three deformation sd (and for ``paper`` three mask-blur sd) plus
    two voxels, per axis. ``rows``: tumor rows (``batch``: a table gives ``(n, 3)``, one row
    ``(3,)``); ``s``: voxel edge (mm), scalar or one per row. The shape depends on this box only (its
    control grid spans it), never on the canvas, the data or post-processing, so the box of every
    step of a tumor is known before any array is touched."""
    col = lambda x: np.asarray(x, float)[..., None]
    reach = (np.asarray(rows.half_axes_mm, float) + 3.0 * col(rows.sigma_e_mm)
             + np.where(col(rows.paper), 3.0 * col(rows.sigma_c_mm), 0.0))
    return np.ceil(reach / col(s) + 2.0).astype(np.int64)


def tumor_halves(rows, s) -> np.ndarray:
    """Half-widths (voxels, per axis) of the **tumor box**: where a tumor's binary shape, soft mask
    and texture are computed, from its row alone. ``released``: the shape box. ``paper``: each
    half-axis plus the largest displacement its own control grid makes along that axis
    (:func:`max_displacements`, host-side from the seed) plus the mask blur's reach and a voxel,
    within the shape box: about half the shape box's volume, since three sd is a bound few
    deformations come near. ``rows``: a table (``(n, 3)``, computed in array operations) or one
    row (``(3,)``)."""
    table = np.ndim(rows.sigma_e_mm) > 0
    if not table:
        return tumor_halves(_as_table(rows), s)[0]
    h = shape_halves(rows, s)
    paper = np.asarray(rows.paper, bool)
    if not paper.any():
        return h
    ss = np.broadcast_to(np.asarray(s, float), (len(h),))[paper]
    p = rows[paper]
    reach = (np.asarray(p.half_axes_mm, float) / ss[:, None]
             + max_displacements(p.deform_seed, np.asarray(p.sigma_e_mm, float) / ss)
             + blur_radius(p, ss)[:, None] + 1.0)
    out = h.copy()
    out[paper] = np.minimum(h[paper], np.ceil(reach).astype(np.int64))
    return out


def tumor_reach(rows, s) -> np.ndarray:
    """Half-widths (voxels, per axis) of everything each tumor touches, from its rows alone: its
    tumor box (:func:`tumor_halves`), and for the paper's post-processing the mass-effect sphere
    and the blurred capsule band."""
    h = tumor_halves(rows, s)
    post = np.asarray(rows.paper & (rows.mass_effect | rows.capsule))
    reach = (np.asarray(rows.gamma_max_mm, float) / s + 2.0
             + np.where(np.asarray(rows.capsule), 3.0 * np.asarray(rows.sigma_d_mm) / s + 1.0, 0.0))
    reach = np.ceil(reach).astype(np.int64)
    return np.where(post[..., None], np.maximum(h, reach[..., None]), h)


def work_boxes(rows, s, centers, crop_lo, crop_hi):
    """Which of a crop's tumors are painted and on what box, from their rows alone: returns
    ``(meets, post, work_lo, work_hi)``, one entry per tumor. ``rows``: the tumors' packed rows (a
    table); ``s``: voxel edge (mm), scalar or one per row; ``centers`` ``(n, 3)`` and the crop
    ``[crop_lo, crop_hi)`` in one frame of voxels, whose work boxes come back in it too.

    ``meets``: the tumor's reach (:func:`tumor_reach`) meets the crop; a tumor that misses it
    cannot change the crop, so it is skipped. ``post``: it has the paper's post-processing (mass
    effect or capsule). ``[work_lo, work_hi)``: its work box, the part of its reach inside the crop
    (without post-processing the reach is the tumor box), or with post-processing its whole reach,
    which the canvas around the crop then holds. The array code (``synthesize``) and the kernels'
    plan (``kernels.paint.plan``) both take their boxes from here."""
    centers = np.asarray(centers).reshape(-1, 3)
    if len(centers) == 0:
        empty = np.zeros((0, 3), np.int64)
        return np.zeros(0, bool), np.zeros(0, bool), empty, empty.copy()
    h = tumor_reach(rows, s)
    lo, hi = centers - h, centers + h + 1
    meets = np.all((lo < crop_hi) & (crop_lo < hi), axis=-1)
    post = np.asarray(rows.paper & (rows.mass_effect | rows.capsule), bool).reshape(-1)
    work_lo = np.where(post[:, None], lo, np.maximum(lo, crop_lo))
    work_hi = np.where(post[:, None], hi, np.minimum(hi, crop_hi))
    return meets, post, work_lo, work_hi


def _as_table(row):
    """One packed row as a table of one."""
    return np.rec.array(np.asarray(row).reshape(1))


_LATTICE = 17                 # points per axis where max_displacements evaluates the field
_MAX_DISPLACEMENT: OrderedDict = OrderedDict()
MAX_DISPLACEMENT_CACHE = 8192


def max_displacements(seeds, sigma_vox) -> np.ndarray:
    """The largest |displacement| (voxels) per axis that each ``paper`` tumor's control grid makes
    (``(n, 3)``; seeds and deformation sd in voxels, one per tumor), evaluated on a 17^3 lattice
    spanning its box (host, float64; the field is a smooth quadratic, the lattice step 1/8 of the
    half-box) plus half a voxel. The grids missing from a cache of the last 8,192 are computed
    together: a synthesis asks for a tumor's box several times."""
    keys = [(int(a), float(b)) for a, b in zip(np.asarray(seeds).reshape(-1),
                                               np.asarray(sigma_vox, float).reshape(-1))]
    missing = list(dict.fromkeys(k for k in keys if k not in _MAX_DISPLACEMENT))
    w = _lagrange3(np, np.linspace(-1.0, 1.0, _LATTICE))              # (L, 3)
    for a in range(0, len(missing), 16):          # 16 grids at a time: 1.9 MB of lattice
        part = missing[a:a + 16]
        grids = control_points(np.array([k[0] for k in part], np.uint64),
                               np.array([k[1] for k in part]))               # (m, 3, 3, 3, 3)
        d = np.tensordot(grids, w, axes=([4], [1]))                  # (m, 3, 3, 3, L): k -> z
        d = np.tensordot(d, w, axes=([3], [1]))                      # (m, 3, 3, L, L): j -> y
        d = np.tensordot(d, w, axes=([2], [1]))                      # (m, 3, L, L, L): i -> x
        d = d.reshape(len(part), 3, -1)
        top = np.maximum(d.max(axis=2), -d.min(axis=2)) + 0.5     # max |d| without a temporary
        for k, v in zip(part, top):
            _MAX_DISPLACEMENT[k] = v
    out = np.array([_MAX_DISPLACEMENT[k] for k in keys]).reshape(-1, 3)
    for k in keys:
        _MAX_DISPLACEMENT.move_to_end(k)
    while len(_MAX_DISPLACEMENT) > MAX_DISPLACEMENT_CACHE:
        _MAX_DISPLACEMENT.popitem(last=False)
    return out


def tumor_shape(backend: Backend, row, s: float, lo=None, hi=None):
    """The binary (deformed ellipsoid) shape of tumor ``row`` (a ``batch`` row), float32 0/1 on
    its tumor box (``2 * tumor_halves + 1`` voxels per axis centred on the tumor), or on the part
    ``[lo, hi)`` of it (voxel offsets from the tumor box's corner), on the backend's device. The
    deformation's control grid spans the shape box (``shape_halves``); every voxel is a pointwise
    function of its position there, so a part of the box holds exactly the whole box's values."""
    grid_half = tuple(int(h) for h in shape_halves(row, s))
    if not row.paper:
        return _released_shape(backend, row, tuple(2 * h + 1 for h in grid_half), grid_half, s,
                               lo, hi)
    half = tuple(int(h) for h in tumor_halves(row, s))
    lo = (0, 0, 0) if lo is None else tuple(int(v) for v in lo)
    hi = tuple(2 * h + 1 for h in half) if hi is None else tuple(int(v) for v in hi)
    sub = [slice(g - h + a, g - h + b) for g, h, a, b in zip(grid_half, half, lo, hi)]
    return _paper_shape(backend, row, grid_half, sub, s)


@functools.lru_cache(maxsize=8192)
def gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights (order 0), float64, for ``sigma`` voxels: what the
    kernels' blurs multiply by, in SciPy's order."""
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


def blur_radius(rows, s):
    """Voxels the mask blur reaches (``gaussian_filter``'s radius at truncate 4): an int for one
    row, ``(n,)`` int64 for a table (``s`` scalar or one per row)."""
    r = (4.0 * np.asarray(rows.sigma_c_mm, float) / np.asarray(s, float) + 0.5).astype(np.int64)
    return int(r) if np.ndim(r) == 0 else r


def tumor_mask(backend: Backend, row, s: float, lo=None, hi=None):
    """The soft mask of a ``paper`` tumor on its tumor box, or on the part ``[lo, hi)`` of it: its
    shape blurred with sigma_c (float32 in [0, 1]). On a part, voxels within ``blur_radius`` of a
    side that cuts the box differ from the whole box's (callers keep a margin that wide)."""
    return backend.ndi.gaussian_filter(tumor_shape(backend, row, s, lo, hi),
                                       float(row.sigma_c_mm) / s, mode="constant")


def drawn_offsets(t, s: float) -> np.ndarray:
    """Voxel offsets ``(n, 3)`` from the center of every voxel of the tumor's binary shape (NumPy;
    ``t`` a tumor record): what the fidelity report measures."""
    from .backend import get_backend
    from .batch import tumor_rows
    row = tumor_rows([t])[0]
    shape = tumor_shape(get_backend("numpy"), row, s)
    return (np.argwhere(shape > 0) - tumor_halves(row, s)).astype(np.int64)


def _lagrange3(xp, u):
    """Quadratic Lagrange weights for control points at u = -1, 0, 1 (u clipped to [-1, 1])."""
    u = xp.clip(u, -1.0, 1.0)
    return xp.stack([0.5 * u * (u - 1.0), 1.0 - u * u, 0.5 * u * (u + 1.0)], axis=-1)


def _control_points(seed: int, shape, sigma: float) -> np.ndarray:
    """Control-point displacements ~ N(0, sigma) (voxels), drawn on the host with Philox."""
    return noise.normal(np, shape, seed, stream=1).astype(np.float64) * sigma


def control_points(seeds, sigma_vox) -> np.ndarray:
    """``paper`` control displacements ``(n, 3, 3, 3, 3)`` ~ N(0, sigma) (voxels, float64, host),
    ``g[axis, i, j, k]`` per tumor, drawn with Philox from each deformation seed."""
    grids = noise.normal_many((3, 3, 3, 3), seeds, stream=1).astype(np.float64)
    return grids * np.asarray(sigma_vox, float).reshape(-1, 1, 1, 1, 1)


def control_grid(row, s: float) -> np.ndarray:
    """A ``paper`` tumor's 3x3x3 control displacements ``g[axis, i, j, k]`` (voxels, float32, host)
    from its deformation seed and sd: what ``_paper_shape`` and the GPU kernels interpolate.
    ``row``: one row, or a table (``(n, 3, 3, 3, 3)``)."""
    if np.ndim(row.sigma_e_mm) > 0:
        s = np.broadcast_to(np.asarray(s, float), (len(row),))
        return control_points(row.deform_seed, np.asarray(row.sigma_e_mm, float) / s).astype(np.float32)
    return control_points([int(row.deform_seed)], [float(row.sigma_e_mm) / s])[0].astype(np.float32)


def _paper_shape(backend, t, grid_half, sub, s: float):
    """Ellipsoid with half-axes ``t.half_axes`` deformed by a smooth field interpolated from a
    3x3x3 grid of control displacements over the shape box (``grid_half``, tri-quadratic), as a
    float32 0/1 mask on the part ``sub`` (slices of the shape box)."""
    xp = backend.xp
    weights = [_lagrange3(xp, xp.linspace(-1.0, 1.0, 2 * g + 1, dtype=xp.float32)[sl])
               for g, sl in zip(grid_half, sub)]
    g = xp.asarray(control_grid(t, s))
    wx, wy, wz = weights
    q = None
    for a in range(3):
        # d_a(x, y, z) = sum_ijk Wx[x,i] Wy[y,j] Wz[z,k] g[a,i,j,k], contracted axis by axis as
        # broadcast multiply-adds over the 3 control points (shapes follow from the box alone).
        ga = g[a]
        d = wx[:, 0, None, None] * ga[0] + wx[:, 1, None, None] * ga[1] + wx[:, 2, None, None] * ga[2]
        d = (d[:, None, 0, :] * wy[None, :, 0, None] + d[:, None, 1, :] * wy[None, :, 1, None]
             + d[:, None, 2, :] * wy[None, :, 2, None])
        d = d[..., 0, None] * wz[:, 0] + d[..., 1, None] * wz[:, 1] + d[..., 2, None] * wz[:, 2]
        coord = xp.arange(sub[a].start, sub[a].stop, dtype=xp.float32).reshape(
            [-1 if b == a else 1 for b in range(3)])
        # ((coord + d - center) / half-axis)^2, in place on d (the same float32 operations in the
        # same order as the expression, without its box-sized temporaries)
        d += coord
        d -= xp.float32(grid_half[a])
        d /= xp.float32(float(t.half_axes_mm[a]) / s)
        xp.multiply(d, d, out=d)
        if q is None:
            q = d
        else:
            q += d
    return (q <= 1.0).astype(xp.float32)


def _quadratic(u, g0, g1, g2):
    """The quadratic through (-1, g0), (0, g1), (1, g2), evaluated at u (Horner form)."""
    return g1 + u * ((g2 - g0) * 0.5 + u * ((g0 + g2) * 0.5 - g1))


def released_control_grid(t, s: float) -> np.ndarray:
    """A ``released`` tumor's control displacements (voxels), ``(pass, component, i, j)`` =
    ``(3, 2, 3, 3)`` float64: the three 2-D passes' 3 x 3 grids of two displacement components."""
    return _control_points(int(t.deform_seed), (3, 2, 3, 3), float(t.sigma_e_mm) / s)


def released_margin(mask_blur_mm: float, s: float) -> int:
    """Voxels a ``released`` crop's canvas adds on each side: 3 mask-blur sigmas and one."""
    return int(math.ceil(3.0 * float(mask_blur_mm) / s)) + 1


def released_parts(rows, s: float, origin_vox, canvas_lo, dims):
    """The ``released`` tumors ``rows`` on a canvas (corner ``canvas_lo`` in voxels of the
    prepared scan whose origin is ``origin_vox``, ``dims`` voxels): per tumor that reaches it, its
    index, its shape box's corner on the canvas and the part ``[a, b)`` of the box on the canvas
    (box voxels). What the array path and the kernels' plan both paint."""
    h = shape_halves(rows, s)
    corners = np.asarray(rows.center).reshape(-1, 3) - np.asarray(origin_vox) - h \
        - np.asarray(canvas_lo)
    out = []
    for k, corner in enumerate(corners):
        a = np.maximum(-corner, 0)
        b = np.minimum(np.asarray(dims) - corner, 2 * h[k] + 1)
        if np.all(b > a):
            out.append((k, corner, a, b))
    return out


def _released_shape(backend, t, box_shape, center, s: float, lo=None, hi=None):
    """Ellipsoid deformed by three 2-D passes over axis pairs (0,1), (1,2), (0,2), each with a 3x3
    grid of control displacements spanning the box; composed as backward maps. On the part
    ``[lo, hi)`` of the box if given (every voxel is a pointwise function of its position)."""
    xp = backend.xp
    pairs = ((0, 1), (1, 2), (0, 2))
    grids = released_control_grid(t, s)
    half = [max(s - 1, 1) / 2.0 for s in box_shape]
    lo = (0, 0, 0) if lo is None else tuple(int(v) for v in lo)
    hi = tuple(box_shape) if hi is None else tuple(int(v) for v in hi)
    # Positions stay in their smallest broadcastable shapes: a pass computes its rows on the
    # axes its inputs vary along (the same float32 operations per voxel, far fewer voxels).
    pos = [xp.arange(a, b, dtype=xp.float32).reshape([-1 if k == axis else 1 for k in range(3)])
           for axis, (a, b) in enumerate(zip(lo, hi))]
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
    shape = tuple(b - a for a, b in zip(lo, hi))
    # The authors' ellipsoid is a mask on the integer grid before it is deformed, holding the
    # voxels strictly inside (q < 1); a deformed voxel reads it at its nearest grid point. The test
    # is exact for integer half-axes: sum_a d_a^2 prod_{b != a} h_b^2 < prod_b h_b^2 in float64.
    h2 = [(float(t.half_axes_mm[a]) / s) ** 2 for a in range(3)]
    d2 = [(xp.floor(pos[a] + xp.float32(0.5)).astype(xp.float64) - float(center[a])) ** 2
          for a in range(3)]
    inside = d2[0] * (h2[1] * h2[2]) + d2[1] * (h2[0] * h2[2]) + d2[2] * (h2[0] * h2[1])
    return xp.broadcast_to(inside < h2[0] * h2[1] * h2[2], shape).astype(xp.float32)
