"""The tumor's shape (Hu et al., CVPR 2023, Section 3.1, "Shape generation"): an ellipsoid with
half-axes drawn per tumor, deformed elastically, and blurred into a soft mask.

A shape is computed in its own cubic box of side ``2 * shape_half(t, s) + 1`` voxels centred on the
tumor, with array axes ``(i, j, k)`` = (R, A, S) of the prepared scan; ``s`` is the prepared grid's
voxel edge in mm (1 by default) and converts the record's mm lengths to voxels. The
deformation's control grid spans that box, so the shape depends on the tumor record alone, never on
the crop around it. Control displacements are drawn with Philox (``noise``) on the host, so they are
identical on every backend.

- ``paper``: a 3x3x3 grid of displacements ~ N(0, sigma_e) per axis, interpolated tri-quadratically
  over the box; the binary shape is blurred with sigma_c into the tumor's soft mask.
- ``released``: the authors' three 2-D passes over axis pairs (0,1), (1,2), (0,2), each on a 3x3
  grid; the binary shapes of a sample are united and blurred once (``synthesize``).
"""

from __future__ import annotations

import math

import numpy as np

from . import noise
from .backend import Backend
from .params import PaperTumor, ReleasedTumor


def shape_half(t, s: float) -> int:
    """Half-width (voxels) of the box in which a tumor's shape is computed: its half-axes plus
    three deformation sd (and for ``paper`` three mask-blur sd). The shape depends on this box only
    (its control grid spans it), never on the canvas or on post-processing."""
    reach = max(t.half_axes_mm) + 3.0 * t.sigma_e_mm
    if isinstance(t, PaperTumor):
        reach += 3.0 * t.sigma_c_mm
    return int(math.ceil(reach / s + 2.0))


SHAPE_CACHE = 8          # NumPy shapes kept: location tests draw a shape, synthesis uses it again


def tumor_shape(backend: Backend, t, half: int, s: float):
    """The binary (deformed ellipsoid) shape of ``t``, float32 0/1 on the box of side
    ``2 * half + 1`` voxels centred on the tumor, on the backend's device. On NumPy the last
    ``SHAPE_CACHE`` shapes are kept (read-only): parameter drawing computes a tumor's shape for
    its location test and synthesis needs the same one."""
    make = _paper_shape if isinstance(t, PaperTumor) else _released_shape
    if backend.name != "numpy":
        return make(backend, t, (2 * half + 1,) * 3, (half, half, half), s)
    key = (make.__name__, tuple(t.half_axes_mm), float(t.sigma_e_mm), int(t.deform_seed),
           int(half), float(s))
    shape = _SHAPES.get(key)
    if shape is None:
        shape = make(backend, t, (2 * half + 1,) * 3, (half, half, half), s)
        shape.flags.writeable = False
        _SHAPES[key] = shape
        while len(_SHAPES) > SHAPE_CACHE:
            _SHAPES.pop(next(iter(_SHAPES)))
    return shape


_SHAPES: dict = {}           # insertion-ordered: the oldest goes first


def tumor_mask(backend: Backend, t: PaperTumor, half: int, s: float):
    """The soft mask of a ``paper`` tumor: its shape blurred with sigma_c (float32 in [0, 1])."""
    return backend.ndi.gaussian_filter(tumor_shape(backend, t, half, s), t.sigma_c_mm / s,
                                       mode="constant")


def drawn_offsets(t, s: float) -> np.ndarray:
    """Voxel offsets ``(n, 3)`` from the center of every voxel of the tumor's binary shape (NumPy):
    what location tests against the liver and vessel masks, and what the fidelity report measures."""
    from .backend import get_backend
    half = shape_half(t, s)
    shape = tumor_shape(get_backend("numpy"), t, half, s)
    return (np.argwhere(shape > 0) - half).astype(np.int64)


def _lagrange3(xp, u):
    """Quadratic Lagrange weights for control points at u = -1, 0, 1 (u clipped to [-1, 1])."""
    u = xp.clip(u, -1.0, 1.0)
    return xp.stack([0.5 * u * (u - 1.0), 1.0 - u * u, 0.5 * u * (u + 1.0)], axis=-1)


def _control_points(seed: int, shape, sigma: float) -> np.ndarray:
    """Control-point displacements ~ N(0, sigma) (voxels), drawn on the host with Philox."""
    return noise.normal(np, shape, seed, stream=1).astype(np.float64) * sigma


def _paper_shape(backend, t: PaperTumor, box_shape, center, s: float):
    """Ellipsoid with half-axes ``t.half_axes`` deformed by a smooth field interpolated from a
    3x3x3 grid of control displacements over the box (tri-quadratic), as a float32 0/1 mask."""
    xp = backend.xp
    grid = _control_points(t.deform_seed, (3, 3, 3, 3), t.sigma_e_mm / s)
    weights = [_lagrange3(xp, xp.linspace(-1.0, 1.0, n, dtype=xp.float32)) for n in box_shape]
    g = xp.asarray(grid, dtype=xp.float32)
    q = None
    for a in range(3):
        # d_a(x, y, z) = sum_ijk Wx[x,i] Wy[y,j] Wz[z,k] g[a,i,j,k], contracted axis by axis;
        # the last (box-sized) contraction as three broadcast multiply-adds, which give einsum's
        # float32 values bit for bit at a third less time.
        d = xp.einsum("xi,ijk->xjk", weights[0], g[a])
        d = xp.einsum("yj,xjk->xyk", weights[1], d)
        wz = weights[2]
        d = d[..., 0, None] * wz[:, 0] + d[..., 1, None] * wz[:, 1] + d[..., 2, None] * wz[:, 2]
        coord = xp.arange(box_shape[a], dtype=xp.float32).reshape([-1 if b == a else 1 for b in range(3)])
        # ((coord + d - center) / half-axis)^2, in place on d (the same float32 operations in the
        # same order as the expression, without its box-sized temporaries)
        d += coord
        d -= xp.float32(center[a])
        d /= xp.float32(t.half_axes_mm[a] / s)
        xp.multiply(d, d, out=d)
        if q is None:
            q = d
        else:
            q += d
    return (q <= 1.0).astype(xp.float32)


def _quadratic(u, g0, g1, g2):
    """The quadratic through (-1, g0), (0, g1), (1, g2), evaluated at u (Horner form)."""
    return g1 + u * ((g2 - g0) * 0.5 + u * ((g0 + g2) * 0.5 - g1))


def _released_shape(backend, t: ReleasedTumor, box_shape, center, s: float):
    """Ellipsoid deformed by three 2-D passes over axis pairs (0,1), (1,2), (0,2), each with a 3x3
    grid of control displacements spanning the box; composed as backward maps."""
    xp = backend.xp
    pairs = ((0, 1), (1, 2), (0, 2))
    grids = _control_points(t.deform_seed, (3, 2, 3, 3), t.sigma_e_mm / s)
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
    q = sum(((pos[a] - xp.float32(center[a])) / xp.float32(t.half_axes_mm[a] / s)) ** 2
            for a in range(3))
    return (q <= 1.0).astype(xp.float32)
