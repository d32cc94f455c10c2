"""Implicit shapes the phantoms are built from: signed distances in millimetres.

Every structure of a phantom is an implicit function: an approximate signed distance in mm
(negative inside) of a world point. Ellipsoids use the k0 (k0 - 1) / k1 approximation, vessels are
(tapered) capsules, lobes are joined with polynomial smooth unions. ``sdf(x, y, z)`` takes
broadcastable float32 arrays (points, or a rectilinear grid given as (n,1,1), (1,m,1), (1,1,k)
axes) and returns float32 distances in mm; ``lo`` / ``hi`` bound the inside of the shape, so a
caller evaluates a shape only inside its box. Geometry only: no HU, labels or voxels (those are
:mod:`raster`'s), so the anatomy reads as a list of shapes.
"""

from __future__ import annotations

import numpy as np

_FAR = np.float32(1.0e4)
_INF = 1.0e5
_F32 = np.float32
_PAD_MM = 6.0   # margin (mm) around each part of a Union evaluated on a grid, beyond its blend width


class Shape:
    """A solid: ``sdf`` its signed distance (mm, negative inside), ``lo`` / ``hi`` (mm) its box."""

    lo: np.ndarray
    hi: np.ndarray

    def sdf(self, x, y, z) -> np.ndarray:
        raise NotImplementedError


def _box(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(lo, np.float64), np.asarray(hi, np.float64)


def _grid_axes(x, y, z):
    """The 1D axes if (x, y, z) describe a rectilinear grid, else None."""
    if x.ndim == 3 and x.shape[1:] == (1, 1) and y.shape[0::2] == (1, 1) and z.shape[:2] == (1, 1):
        return x[:, 0, 0], y[0, :, 0], z[0, 0, :]
    return None


def _axis_slice(axis: np.ndarray, lo: float, hi: float) -> slice:
    return slice(int(np.searchsorted(axis, lo, "left")), int(np.searchsorted(axis, hi, "right")))


def smin(a, b, k: float):
    """Polynomial smooth minimum (union); k is the blend width in mm."""
    if k <= 0.0:
        return np.minimum(a, b)
    h = np.clip(0.5 + (0.5 / k) * (b - a), 0.0, 1.0)
    return b + (a - b) * h - _F32(k) * h * (1.0 - h)


def smax(a, b, k: float):
    """Polynomial smooth maximum (intersection)."""
    return -smin(-a, -b, k)


def rotation(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """Rz @ Ry @ Rx; its columns are the local axes expressed in the parent frame."""
    ax, ay, az = np.radians([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class Ellipsoid(Shape):
    def __init__(self, center, radii, rot: np.ndarray | None = None):
        self.c = [_F32(v) for v in center]
        self.r = [_F32(v) for v in radii]
        self.rot = None if rot is None else np.asarray(rot, np.float32)
        r = np.asarray(radii, np.float64)
        half = r if rot is None else np.sqrt((np.asarray(rot, np.float64) ** 2) @ (r**2))
        self.lo, self.hi = _box(np.asarray(center) - half, np.asarray(center) + half)

    def sdf(self, x, y, z):
        p = (x - self.c[0], y - self.c[1], z - self.c[2])
        if self.rot is not None:
            m = self.rot
            p = tuple(p[0] * m[0, i] + p[1] * m[1, i] + p[2] * m[2, i] for i in range(3))
        q0 = [p[i] / self.r[i] for i in range(3)]
        q1 = [q0[i] / self.r[i] for i in range(3)]
        k0 = np.sqrt(q0[0] * q0[0] + q0[1] * q0[1] + q0[2] * q0[2])
        k1 = np.sqrt(q1[0] * q1[0] + q1[1] * q1[1] + q1[2] * q1[2])
        return k0 * (k0 - 1.0) / np.maximum(k1, _F32(1e-6))


class Capsule(Shape):
    """Segment a->b swept by a radius varying linearly from ra to rb (mm)."""

    def __init__(self, a, b, ra: float, rb: float | None = None):
        rb = ra if rb is None else rb
        self.a = [_F32(v) for v in a]
        self.ba = [_F32(bv - av) for av, bv in zip(a, b)]
        self.inv_len2 = _F32(1.0 / max(sum(float(v) ** 2 for v in self.ba), 1e-9))
        self.ra, self.dr = _F32(ra), _F32(rb - ra)
        a_, b_ = np.asarray(a, np.float64), np.asarray(b, np.float64)
        self.lo, self.hi = _box(np.minimum(a_ - ra, b_ - rb), np.maximum(a_ + ra, b_ + rb))

    def sdf(self, x, y, z):
        pa = (x - self.a[0], y - self.a[1], z - self.a[2])
        ba = self.ba
        h = np.clip((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) * self.inv_len2, 0.0, 1.0)
        dx, dy, dz = pa[0] - ba[0] * h, pa[1] - ba[1] * h, pa[2] - ba[2] * h
        return np.sqrt(dx * dx + dy * dy + dz * dz) - (self.ra + self.dr * h)


def tube(points, radii) -> list[Capsule]:
    """Capsules along a polyline; radii per point (mm)."""
    radii = np.broadcast_to(np.asarray(radii, np.float64), (len(points),))
    return [Capsule(points[i], points[i + 1], radii[i], radii[i + 1]) for i in range(len(points) - 1)]


def _ellipse2d(dx, dy, rx, ry):
    qx, qy = dx / rx, dy / ry
    k0 = np.sqrt(qx * qx + qy * qy)
    k1 = np.sqrt((qx / rx) ** 2 + (qy / ry) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, _F32(1e-6))


class Prism(Shape):
    """Elliptic cylinder along z whose semi-axes follow control points in z.

    ry_ant applies anterior of the centre (y >= cy), ry_post posterior of it.
    """

    def __init__(self, cx, cy, zs, rx, ry_ant, ry_post=None, z_lo=-_INF, z_hi=_INF):
        self.cx, self.cy = _F32(cx), _F32(cy)
        self.zs = np.asarray(zs, np.float64)
        self.rx = np.broadcast_to(np.asarray(rx, np.float64), self.zs.shape)
        self.ra = np.broadcast_to(np.asarray(ry_ant, np.float64), self.zs.shape)
        self.rp = self.ra if ry_post is None else np.broadcast_to(np.asarray(ry_post, np.float64), self.zs.shape)
        self.z_lo, self.z_hi = _F32(z_lo), _F32(z_hi)
        self.lo, self.hi = _box(
            [cx - self.rx.max(), cy - self.rp.max(), z_lo], [cx + self.rx.max(), cy + self.ra.max(), z_hi]
        )

    def radii(self, z):
        return tuple(np.interp(z, self.zs, r).astype(np.float32) for r in (self.rx, self.ra, self.rp))

    def sdf(self, x, y, z):
        rx, ra, rp = self.radii(z)
        dy = y - self.cy
        d = _ellipse2d(x - self.cx, dy, rx, np.where(dy >= 0, ra, rp))
        if self.z_lo > -_INF or self.z_hi < _INF:
            d = np.maximum(d, np.maximum(self.z_lo - z, z - self.z_hi))
        return d


class Periodic(Shape):
    """A prism cut into blocks of height `height` repeating every `period` mm in z (vertebrae)."""

    def __init__(self, prism: Prism, period: float, height: float, phase: float):
        self.prism, self.period, self.height, self.phase = prism, _F32(period), _F32(height), _F32(phase)
        self.lo, self.hi = prism.lo, prism.hi

    def sdf(self, x, y, z):
        u = np.mod(z - self.phase, self.period) - 0.5 * self.period
        return np.maximum(self.prism.sdf(x, y, z), np.abs(u) - 0.5 * self.height)


class HalfSpace(Shape):
    """{p : sign * (p[axis] - level) > 0}."""

    def __init__(self, axis: int, level: float, sign: float = 1.0):
        self.axis, self.level, self.sign = axis, _F32(level), _F32(sign)
        lo, hi = np.full(3, -_INF), np.full(3, _INF)
        (lo if sign > 0 else hi)[axis] = level
        self.lo, self.hi = lo, hi

    def sdf(self, x, y, z):
        return self.sign * (self.level - (x, y, z)[self.axis])


class Union(Shape):
    """Smooth union; on grids each part is evaluated only inside its own box."""

    def __init__(self, parts, k: float = 0.0):
        self.parts, self.k = list(parts), float(k)
        self.lo, self.hi = _box(
            np.min([p.lo for p in self.parts], axis=0) - 0.25 * k,
            np.max([p.hi for p in self.parts], axis=0) + 0.25 * k,
        )

    def sdf(self, x, y, z):
        axes = _grid_axes(x, y, z)
        if axes is None or len(self.parts) < 3:
            out = self.parts[0].sdf(x, y, z)
            for p in self.parts[1:]:
                out = smin(out, p.sdf(x, y, z), self.k)
            return out
        shape = (axes[0].size, axes[1].size, axes[2].size)
        out = np.full(shape, _FAR, np.float32)
        pad = self.k + _PAD_MM
        for p in self.parts:
            sl = tuple(_axis_slice(axes[a], p.lo[a] - pad, p.hi[a] + pad) for a in range(3))
            if any(s.start >= s.stop for s in sl):
                continue
            d = p.sdf(x[sl[0]], y[:, sl[1]], z[:, :, sl[2]])
            out[sl] = smin(out[sl], d, self.k)
        return out


class Intersect(Shape):
    def __init__(self, parts, k: float = 0.0):
        self.parts, self.k = list(parts), float(k)
        self.lo = np.max([p.lo for p in self.parts], axis=0)
        self.hi = np.min([p.hi for p in self.parts], axis=0)

    def sdf(self, x, y, z):
        out = self.parts[0].sdf(x, y, z)
        for p in self.parts[1:]:
            out = smax(out, p.sdf(x, y, z), self.k)
        return out


class Subtract(Shape):
    def __init__(self, base: Shape, cut: Shape, k: float = 0.0):
        self.base, self.cut, self.k = base, cut, float(k)
        self.lo, self.hi = base.lo, base.hi

    def sdf(self, x, y, z):
        return smax(self.base.sdf(x, y, z), -self.cut.sdf(x, y, z), self.k)


class Offset(Shape):
    """Grow (mm > 0) or shrink (mm < 0) a shape."""

    def __init__(self, shape: Shape, mm: float):
        self.shape, self.mm = shape, _F32(mm)
        self.lo, self.hi = shape.lo - max(mm, 0.0), shape.hi + max(mm, 0.0)

    def sdf(self, x, y, z):
        return self.shape.sdf(x, y, z) - self.mm


class Wavy(Shape):
    """Surface displaced by a sum of 3D sinusoids; modes rows are (kx, ky, kz, phase, amp_mm)."""

    def __init__(self, shape: Shape, modes: np.ndarray):
        self.shape, self.modes = shape, np.asarray(modes, np.float32)
        reach = float(np.abs(self.modes[:, 4]).sum())
        self.lo, self.hi = shape.lo - reach, shape.hi + reach

    def sdf(self, x, y, z):
        d = self.shape.sdf(x, y, z)
        for kx, ky, kz, phase, amp in self.modes:
            d = d + amp * np.sin(x * kx + y * ky + z * kz + phase)
        return d


class Warp(Shape):
    """Maps a shape from canonical to world mm: world = scale * canonical + shift."""

    def __init__(self, shape: Shape, scale, shift):
        self.shape = shape
        self.scale = np.asarray(scale, np.float64)
        self.shift = np.asarray(shift, np.float64)
        self.gain = _F32(self.scale.min())
        self.lo, self.hi = _box(shape.lo * self.scale + self.shift, shape.hi * self.scale + self.shift)

    def sdf(self, x, y, z):
        s, t = self.scale, self.shift
        return self.shape.sdf(
            (x - _F32(t[0])) * _F32(1.0 / s[0]),
            (y - _F32(t[1])) * _F32(1.0 / s[1]),
            (z - _F32(t[2])) * _F32(1.0 / s[2]),
        ) * self.gain


class Diaphragm:
    """Two domes z = h - depth * (0.3 q + 0.7 q^2), q = (x-cx)^2/sx^2 + (y-cy)^2/sy^2; the surface is
    their max.  The quartic term keeps the apex broad (the liver dome) and the edges steep (the
    costophrenic recesses, deepest posteriorly)."""

    def __init__(self, domes):
        self.domes = [tuple(_F32(v) for v in d) for d in domes]  # (cx, cy, h, sx, sy, depth)
        self.top = float(max(d[2] for d in domes))

    def height(self, x, y):
        best = slope2 = None
        for cx, cy, h, sx, sy, depth in self.domes:
            u, v = (x - cx) / sx, (y - cy) / sy
            q = u * u + v * v
            zd = h - depth * (0.3 * q + 0.7 * q * q)
            dq = depth * (0.6 + 2.8 * q)
            g2 = (dq * u / sx) ** 2 + (dq * v / sy) ** 2
            if best is None:
                best, slope2 = zd, g2
            else:
                pick = zd > best
                best, slope2 = np.where(pick, zd, best), np.where(pick, g2, slope2)
        return best, slope2

    def side(self, below: bool, gap_mm: float) -> Shape:
        return _DiaphragmSide(self, below, gap_mm)


class _DiaphragmSide(Shape):
    def __init__(self, dia: Diaphragm, below: bool, gap: float):
        self.dia, self.below, self.gap = dia, below, _F32(gap)
        self.lo = np.array([-_INF, -_INF, -_INF if below else -400.0])
        self.hi = np.array([_INF, _INF, dia.top if below else _INF])

    def sdf(self, x, y, z):
        zd, g2 = self.dia.height(x, y)
        rel = (z - zd + self.gap) if self.below else (zd + self.gap - z)
        return rel / np.sqrt(1.0 + g2)


class Ribs(Shape):
    """Oblique ribs embedded in the body wall.

    Rib n's centre line sits `inset` mm inside the body outline at height
    z = top - n * pitch - drop * phi / pi, phi being the angle from the
    posterior midline (0) to the anterior midline (pi): ribs descend from the
    spine toward the front, so an axial slice cuts them as short oblique bands.
    """

    def __init__(self, body: Prism, inset: float, top: float, pitch: float, drop: float, ends):
        self.body, self.inset = body, _F32(inset)
        self.top, self.pitch, self.drop = _F32(top), _F32(pitch), _F32(drop)
        self.ends = np.asarray(ends, np.float32)  # (n_ribs, 2): start, end angle (rad)
        n = len(self.ends)
        self.lo = np.array([body.lo[0], body.lo[1], top - (n - 1) * pitch - drop - 10.0])
        self.hi = np.array([body.hi[0], body.hi[1], top + 10.0])

    def sdf(self, x, y, z):
        phi = np.arctan2(np.abs(x - self.body.cx), -(y - self.body.cy))
        centre = self.top - self.drop * phi * _F32(1.0 / np.pi)
        n = np.clip(np.rint((centre - z) / self.pitch), 0, len(self.ends) - 1).astype(np.intp)
        dz = z - (centre - n.astype(np.float32) * self.pitch)
        dr = self.body.sdf(x, y, z) + self.inset
        cross = _ellipse2d(dr, dz, _F32(3.2), _F32(5.5))
        ends = self.ends[n]
        beyond = np.maximum(ends[..., 0] - phi, phi - ends[..., 1]) * _F32(110.0)
        return np.maximum(cross, beyond)
