"""Abdominal CT phantom: body and organ model rasterized to a voxel grid.

Every structure is an implicit function: an approximate signed distance in
millimetres (negative inside) of a world point.  Ellipsoids use the
k0 (k0 - 1) / k1 approximation, vessels are (tapered) capsules, lobes are
joined with polynomial smooth unions.  A layer's distance is evaluated only
inside its bounding box, turned into partial-volume occupancy with a ramp one
in-plane voxel wide, and composited in painting order: later layers override
earlier ones, in HU and in the organ label.

Frame: world coordinates are NIfTI RAS+ mm (+x patient Right, +y Anterior,
+z Superior).  The anatomy is written in a "canonical" patient (body centre
at the origin, right hemidiaphragm dome at z = 0) and mapped to each case's
world frame by one axis-aligned scaling and shift, so body size and
cranio-caudal extent vary between cases without rewriting the organ layout.
Arrays of a Phantom are in RAS voxel order (i -> +x, j -> +y, k -> +z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from .lesions import Lesion, LesionHalo, StarLesion, equivalent_radius_mm, sample_lesions

ORGAN_CODES = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "ivc": 9,
    "portal_splenic_vein": 10,
    "pancreas": 11,
    "right_adrenal": 12,
    "left_adrenal": 13,
}
LIVER = ORGAN_CODES["liver"]
AIR_HU = -1000.0
HU_RANGE = (-1024, 3071)
LIVER_VOLUME_L = (1.2, 2.0)

_FAR = np.float32(1.0e4)
_INF = 1.0e5
_F32 = np.float32


# --------------------------------------------------------------------------- #
# Implicit shapes.  sdf(x, y, z) takes broadcastable float32 arrays (points,
# or a rectilinear grid given as (n,1,1), (1,m,1), (1,1,k) axes) and returns
# float32 distances in mm.  lo/hi bound the inside of the shape.
# --------------------------------------------------------------------------- #


class Shape:
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


_PAD_MM = 6.0


# --------------------------------------------------------------------------- #
# Layers and rasterization
# --------------------------------------------------------------------------- #


@dataclass
class Layer:
    """One painted structure.

    value: HU, or a function of world (x, y, z) arrays returning HU.
    code: organ label written where occupancy >= 0.5; None leaves labels alone.
    clip: an earlier layer whose occupancy caps this one's (vessels inside the liver).
    tumor: voxels with occupancy >= 0.5 are lesion voxels.
    ramp_mm: partial-volume ramp width; None means one in-plane voxel.
    """

    shape: Shape
    value: float | Callable
    code: int | None = 0
    clip: "Layer | None" = None
    tumor: bool = False
    ramp_mm: float | None = None


@dataclass(frozen=True)
class Grid:
    """Voxel grid in RAS order: voxel (i, j, k) centre = origin + (i, j, k) * spacing, mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = self.origin
        return a

    def axis(self, a: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.shape[a] if stop is None else stop
        return (self.origin[a] + self.spacing[a] * np.arange(start, stop)).astype(np.float32)

    def index_range(self, a: int, lo: float, hi: float) -> tuple[int, int]:
        i0 = int(np.ceil((lo - self.origin[a]) / self.spacing[a]))
        i1 = int(np.floor((hi - self.origin[a]) / self.spacing[a])) + 1
        return max(i0, 0), min(i1, self.shape[a])


def rasterize(layers: list[Layer], grid: Grid, chunk_voxels: int = 1 << 22):
    """Composite layers on the grid.

    Returns (image float32 HU, organs uint8 codes, tumor bool), RAS voxel order.
    Works through slabs of slices so temporaries stay small at full resolution.
    """
    nx, ny, nz = grid.shape
    image = np.full(grid.shape, AIR_HU, np.float32)
    organs = np.zeros(grid.shape, np.uint8)
    tumor = np.zeros(grid.shape, bool)
    ramp = max(grid.spacing[0], grid.spacing[1])
    clip_targets = {id(layer.clip) for layer in layers if layer.clip is not None}
    slab = max(1, chunk_voxels // (nx * ny))
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        cache: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
        for layer in layers:
            w = layer.ramp_mm or ramp
            pad = 0.5 * w + 1.0
            lo, hi = layer.shape.lo - pad, layer.shape.hi + pad
            ranges = [grid.index_range(a, lo[a], hi[a]) for a in range(3)]
            ranges[2] = (max(ranges[2][0], k0), min(ranges[2][1], k1))
            if layer.clip is not None:
                if id(layer.clip) not in cache:
                    continue
                csl = cache[id(layer.clip)][0]
                ranges = [(max(r[0], s.start), min(r[1], s.stop)) for r, s in zip(ranges, csl)]
            if any(r[0] >= r[1] for r in ranges):
                continue
            sl = tuple(slice(*r) for r in ranges)
            x = grid.axis(0, *ranges[0])[:, None, None]
            y = grid.axis(1, *ranges[1])[None, :, None]
            z = grid.axis(2, *ranges[2])[None, None, :]
            occ = np.clip(0.5 - layer.shape.sdf(x, y, z) * _F32(1.0 / w), 0.0, 1.0)
            occ = np.broadcast_to(occ, tuple(r[1] - r[0] for r in ranges))
            if layer.clip is not None:
                csl, cocc = cache[id(layer.clip)]
                occ = np.minimum(occ, cocc[tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(sl, csl))])
            if id(layer) in clip_targets:
                cache[id(layer)] = (sl, occ)
            value = layer.value(x, y, z) if callable(layer.value) else _F32(layer.value)
            sub = image[sl]
            sub += occ * (value - sub)
            if layer.code is not None:
                hit = occ >= 0.5
                organs[sl][hit] = layer.code
                tumor[sl][hit] = layer.tumor
    return image, organs, tumor


# --------------------------------------------------------------------------- #
# The canonical patient.  Millimetres, RAS+; body centre at x = y = 0, the
# right hemidiaphragm dome at z = 0, vertebral bodies centred at y = -40.
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Tissues:
    """Per-case HU of every tissue class (portal-venous phase)."""

    fat_sub: float
    fat_visc: float
    muscle: float
    lung: float
    heart: float
    cortical: float
    cancellous: float
    disc: float
    csf: float
    rib: float
    aorta: float
    ivc: float
    kidney_cortex: float
    kidney_medulla: float
    sinus_fat: float
    adrenal: float
    spleen: float
    pancreas: float
    gut_wall: float
    gut_fluid: float
    bile: float
    liver: float
    portal: float
    hepatic: float

    @staticmethod
    def draw(rng: np.random.Generator) -> "Tissues":
        liver = rng.uniform(90.0, 125.0)
        cortex = rng.uniform(160.0, 200.0)
        return Tissues(
            fat_sub=rng.uniform(-115.0, -90.0),
            fat_visc=rng.uniform(-100.0, -80.0),
            muscle=rng.uniform(40.0, 60.0),
            lung=rng.uniform(-880.0, -820.0),
            heart=rng.uniform(100.0, 140.0),
            cortical=rng.uniform(600.0, 800.0),
            cancellous=rng.uniform(180.0, 300.0),
            disc=rng.uniform(70.0, 100.0),
            csf=rng.uniform(10.0, 30.0),
            rib=rng.uniform(450.0, 650.0),
            aorta=rng.uniform(150.0, 180.0),
            ivc=rng.uniform(120.0, 140.0),
            kidney_cortex=cortex,
            kidney_medulla=cortex - rng.uniform(30.0, 60.0),
            sinus_fat=rng.uniform(-90.0, -60.0),
            adrenal=rng.uniform(30.0, 50.0),
            spleen=rng.uniform(110.0, 130.0),
            pancreas=rng.uniform(90.0, 120.0),
            gut_wall=rng.uniform(50.0, 80.0),
            gut_fluid=rng.uniform(5.0, 25.0),
            bile=rng.uniform(0.0, 20.0),
            liver=liver,
            portal=liver + rng.uniform(40.0, 70.0),
            hepatic=liver + rng.uniform(40.0, 70.0),
        )


def _jitter(rng, point, mm):
    return tuple(float(v) for v in np.asarray(point, np.float64) + rng.uniform(-mm, mm, 3))


def _hollow(shape: Shape, wall_mm: float, t: Tissues, content_hu: float, gas_depth_mm: float, code: int):
    """Wall, content and a gas pocket against the anterior side (the patient lies supine,
    so the air-fluid level is a coronal plane y = const)."""
    inner = Offset(shape, -wall_mm)
    layers = [Layer(shape, t.gut_wall, code), Layer(inner, content_hu, code)]
    if gas_depth_mm > 0.0:
        level = inner.hi[1] - wall_mm - gas_depth_mm
        layers.append(Layer(Intersect([inner, HalfSpace(1, level, 1.0)]), AIR_HU, code))
    return layers


@dataclass
class _Scene:
    """Canonical layers plus the handles make_phantom needs to finish the case."""

    before_liver: list[Layer]
    liver_cuts: Shape
    lobes: Shape
    liver_bounds: list[Shape]
    after_liver: list[Layer]
    hilum: tuple[float, float, float]
    confluence: tuple[float, float, float]
    hepatic_roots: list[tuple]
    body_halfwidth: float
    body_halfdepth: tuple[float, float]
    dome_z: float
    kidney_pole_z: float


def _body(rng, t: Tissues, layers: list[Layer]):
    zs = [-450.0, -250.0, -120.0, 0.0, 150.0]
    belly = rng.uniform(0.95, 1.1)
    rx = 160.0 * np.array([0.95, 0.97, 1.0, 1.0, 0.98])
    ry_ant = 110.0 * np.array([1.0 + 0.05 * belly, belly, 1.0, 0.97, 0.95])
    outline = Prism(0.0, 0.0, zs, rx, ry_ant, 140.0)
    # Flat back: the patient lies on the table.
    body = Intersect([outline, HalfSpace(1, -124.0, 1.0)], k=30.0)
    fat = rng.uniform(6.0, 24.0)
    wall = rng.uniform(8.0, 13.0)
    cavity = Offset(body, -(fat + wall))
    layers += [Layer(body, t.fat_sub), Layer(Offset(body, -fat), t.muscle), Layer(cavity, t.fat_visc)]
    return outline, cavity, fat, wall


def _chest(rng, t, layers, cavity):
    dia = Diaphragm(
        [
            (55.0, 5.0, 0.0, 95.0, 95.0, rng.uniform(55.0, 70.0)),
            (-55.0, 10.0, rng.uniform(-18.0, -6.0), 95.0, 95.0, rng.uniform(55.0, 70.0)),
        ]
    )
    above = dia.side(below=False, gap_mm=4.0)
    # The diaphragm is a ~4 mm muscle sheet: paint the whole thorax as muscle, then the lungs above it.
    heart = Ellipsoid(_jitter(rng, (-15.0, 45.0, 50.0), 6.0), (65.0, 50.0, 55.0), rotation(rz_deg=25.0))
    layers += [
        Layer(Intersect([cavity, dia.side(below=False, gap_mm=0.0)]), t.muscle),
        Layer(Intersect([cavity, above]), t.lung),
        Layer(Intersect([heart, above, cavity]), t.heart),
    ]
    return dia


def _spine(rng, t, layers, outline, fat, wall):
    zs = [-450.0, -100.0, 150.0]
    period = rng.uniform(31.0, 36.0)
    phase = rng.uniform(0.0, period)
    rx, ry = np.array([26.0, 23.0, 20.0]), np.array([20.0, 18.0, 16.0])
    for side in (1.0, -1.0):
        layers.append(Layer(Prism(36.0 * side, -84.0, zs, 28.0, 19.0), t.muscle))
        layers.append(Layer(Capsule((30.0 * side, -40.0, -90.0), (52.0 * side, -25.0, -330.0), 4.0, 27.0), t.muscle))
    vertebra = Periodic(Prism(0.0, -40.0, zs, rx, ry), period, period - 8.0, phase)
    arch = Periodic(Prism(0.0, -72.0, zs, 19.0, 15.0), period, period - 12.0, phase)
    centres = phase + 0.5 * period + period * np.arange(np.floor((-450.0 - phase) / period), 6)
    processes = []
    for zc in centres:
        processes.append(Capsule((0.0, -84.0, zc), (0.0, -104.0, zc - 10.0), 5.0, 4.0))
        for side in (1.0, -1.0):
            processes.append(Capsule((14.0 * side, -66.0, zc), (42.0 * side, -62.0, zc + 2.0), 5.0, 3.5))
    layers += [
        # Ligaments and muscle between the laminae, so disc levels show soft tissue around the canal.
        Layer(Prism(0.0, -68.0, zs, 22.0, 26.0), t.muscle),
        Layer(Prism(0.0, -40.0, zs, rx * 0.97, ry * 0.97), t.disc),
        Layer(vertebra, t.cortical),
        Layer(Offset(vertebra, -2.5), t.cancellous),
        Layer(Union([arch] + processes), 0.5 * (t.cortical + t.cancellous)),
        Layer(Prism(0.0, -70.0, zs, 10.0, 8.0), t.csf),
    ]
    pitch = rng.uniform(28.0, 34.0)
    top = rng.uniform(45.0, 60.0)
    n_ribs = 6
    ends = [(0.12 * np.pi, rng.uniform(0.8, 0.9) * np.pi) for _ in range(n_ribs - 2)]
    ends += [(0.12 * np.pi, rng.uniform(0.5, 0.6) * np.pi), (0.12 * np.pi, rng.uniform(0.38, 0.48) * np.pi)]
    ribs = Ribs(outline, fat + 0.5 * wall, top, pitch, rng.uniform(110.0, 150.0), ends)
    layers += [Layer(ribs, t.rib), Layer(Offset(ribs, -1.8), t.cancellous)]
    layers.append(Layer(Capsule((0.0, 95.0, 40.0), (0.0, 92.0, rng.uniform(-40.0, -20.0)), 8.0, 5.0), t.rib))


def _small_bowel(rng, t, layers):
    lo, hi = np.array([-60.0, 10.0, -330.0]), np.array([50.0, 70.0, -190.0])
    for _ in range(int(rng.integers(3, 6))):
        p = lo + rng.random(3) * (hi - lo)
        d = rng.normal(size=3)
        points = [tuple(p)]
        for _ in range(8):
            d = d / np.linalg.norm(d) + 0.9 * rng.normal(size=3)
            d[1] *= 0.5
            p = np.clip(p + 24.0 * d / np.linalg.norm(d), lo - 20.0, hi + 20.0)
            points.append(tuple(p))
        gas = rng.uniform(5.0, 12.0) if rng.random() < 0.35 else 0.0
        layers += _hollow(Union(tube(points, rng.uniform(10.0, 14.0))), 2.5, t, t.gut_fluid, gas, 0)


def _gut(rng, t, layers, cavity, below):
    """Colon, duodenum and stomach; returns their outer shapes (the liver is cut around them)."""
    colon_radius = rng.uniform(18.0, 23.0)
    outer = []
    # Ascending, transverse and descending colon each get their own gas level.
    for path in (
        [(88, 2, -450), (88, 4, -210), (82, 22, -168)],
        [(82, 22, -168), (40, 68, -178), (-20, 72, -172), (-70, 42, -135), (-90, 22, -118)],
        [(-90, 22, -118), (-100, -2, -175), (-98, -8, -450)],
    ):
        segment = Union(tube(path, colon_radius), k=10.0)
        layers += _hollow(segment, 3.0, t, rng.uniform(-150.0, 0.0), rng.uniform(8.0, 25.0), 0)
        outer.append(segment)
    duodenum = Union(
        tube([(30, 38, -108), (46, 30, -112), (52, 14, -126), (52, 10, -160), (30, 15, -176),
              (-5, 16, -178), (-28, 18, -165), (-42, 22, -145)], 9.5),
        k=8.0,
    )
    layers += _hollow(duodenum, 2.5, t, t.gut_fluid, rng.uniform(0.0, 8.0), 0)
    outer.append(duodenum)
    distension = rng.uniform(0.8, 1.05)
    parts = [
        Ellipsoid((-62.0, 5.0, -40.0), np.array([40.0, 38.0, 40.0]) * distension),
        Ellipsoid((-45.0, 38.0, -85.0), np.array([36.0, 28.0, 42.0]) * distension, rotation(rz_deg=-20.0)),
        Capsule((-30.0, 52.0, -108.0), (15.0, 45.0, -112.0), 20.0 * distension, 16.0),
        Capsule((15.0, 45.0, -112.0), (30.0, 38.0, -108.0), 16.0, 10.0),
    ]
    stomach = Intersect([Union(parts, k=20.0), Offset(cavity, -2.0), below], k=4.0)
    layers += _hollow(stomach, 4.0, t, t.gut_fluid, rng.uniform(8.0, 30.0), ORGAN_CODES["stomach"])
    outer.append(stomach)
    return outer


def _spleen(rng, t, layers, cavity, below):
    body = Ellipsoid(_jitter(rng, (-92.0, -28.0, -60.0), 5.0), np.array([29.0, 64.0, 55.0]) * rng.uniform(0.85, 1.15),
                     rotation(rx_deg=-20.0, rz_deg=27.0))
    # Concave visceral surface facing the stomach and the left kidney.
    crescent = Subtract(body, Ellipsoid((-52.0, 5.0, -60.0), (38.0, 45.0, 60.0)), k=12.0)
    layers.append(Layer(Intersect([crescent, Offset(cavity, -1.0), below], k=6.0), t.spleen, ORGAN_CODES["spleen"]))


def _kidneys(rng, t, layers):
    """Kidneys (cortex, medullary pyramids, sinus fat) and adrenals; returns
    {side: (outer shape, hilum point, centre)} and the right adrenal."""
    kidneys = {}
    for name, side, centre in (("right", 1.0, (72.0, -32.0, -140.0)), ("left", -1.0, (-70.0, -32.0, -125.0))):
        code = ORGAN_CODES[f"{name}_kidney"]
        # Upper pole tilted medially and backward, hilum turned anteromedially.
        rot = rotation(rx_deg=12.0, ry_deg=-12.0 * side, rz_deg=-30.0 * side)
        c = np.asarray(_jitter(rng, centre, 5.0))
        medial = -side

        def at(lx, ly, lz, c=c, rot=rot):
            return tuple(c + rot @ np.array([lx, ly, lz]))

        radii = np.array([27.0, 23.0, 55.0]) * rng.uniform(0.9, 1.1)
        outer = Subtract(Ellipsoid(c, radii, rot), Ellipsoid(at(medial * 26.0, 0, 0), (10.0, 11.0, 22.0), rot), k=6.0)
        pyramids = [
            Ellipsoid(at(medial * -6.0, 8.0 * (-1) ** i, lz), (8.0, 7.0, 9.0), rot)
            for i, lz in enumerate((-36.0, -22.0, -8.0, 8.0, 22.0, 36.0))
        ]
        layers += [
            Layer(outer, t.kidney_cortex, code),
            Layer(Union(pyramids), t.kidney_medulla, code),
            Layer(Ellipsoid(at(medial * 9.0, 0, 0), (9.0, 9.0, 28.0), rot), t.sinus_fat, code),
        ]
        kidneys[name] = (outer, at(medial * 27.0, 0, 0), tuple(c))
    adrenals = {}
    for name, centre, rz in (("right_adrenal", (38.0, -20.0, -82.0), -35.0), ("left_adrenal", (-36.0, -18.0, -92.0), 35.0)):
        adrenals[name] = Ellipsoid(_jitter(rng, centre, 3.0), (3.0, 13.0, 17.0), rotation(rz_deg=rz))
        layers.append(Layer(adrenals[name], t.adrenal, ORGAN_CODES[name]))
    return kidneys, adrenals["right_adrenal"]


def _great_vessels(rng, t, layers, kidneys):
    """Aorta with its branches, renal vessels, esophagus; returns (aorta, ivc) shapes (the IVC is painted
    after the liver because it runs through the liver's bare area)."""
    aorta = Union(tube([(-22, -26, 150), (-16, -12, -20), (-14, -6, -80), (-16, -8, -160), (-20, -10, -260),
                        (-22, -12, -450)], [12.0, 11.5, 11.0, 10.5, 9.5, 9.0]))
    ivc = Union(tube([(24, -2, -450), (24, -2, -130), (24, -6, -60), (20, -2, -10), (12, 8, 40)],
                     [11.0, 12.0, 13.0, 13.0, 13.0]))
    r_hilum, l_hilum = kidneys["right"][1], kidneys["left"][1]
    celiac = tube([(-14, -2, -72), (-10, 14, -76)], 4.0)
    hepatic_artery = tube([(-10, 14, -76), (10, 18, -80), (32, 12, -82)], 2.8)
    splenic_artery = tube([(-10, 14, -76), (-35, 5, -72), (-70, -12, -70)], 3.0)
    sma = tube([(-14, -2, -98), (-10, 18, -112), (-8, 30, -160), (-6, 36, -450)], 4.0)
    layers += [
        Layer(Union(tube([r_hilum, (24.0, -4.0, r_hilum[2] + 8.0)], 5.0)), t.ivc),
        # The left renal vein crosses in front of the aorta, under the SMA.
        Layer(Union(tube([l_hilum, (-14.0, 9.0, l_hilum[2] + 6.0), (24.0, -2.0, l_hilum[2] + 8.0)], 5.0)), t.ivc),
        Layer(Union(tube([(-14.0, -8.0, -122.0), (24.0, -17.0, -128.0), r_hilum], 3.0)
                    + tube([(-14.0, -8.0, -122.0), l_hilum], 3.0)), t.aorta),
        Layer(aorta, t.aorta, ORGAN_CODES["aorta"]),
        Layer(Union(celiac + hepatic_artery + splenic_artery + sma), t.aorta),
        Layer(Union(tube([(-8, -15, 150), (-14, 5, 0), (-35, 20, -30), (-50, 20, -42)], 8.0)),
              rng.uniform(35.0, 55.0), ORGAN_CODES["esophagus"]),
    ]
    return aorta, ivc


def _pancreas(rng, t, layers, confluence):
    radii = np.array([17.0, 12.0, 11.0, 9.0]) * rng.uniform(0.85, 1.15)
    lobulation = [(*(rng.normal(size=3) * 2 * np.pi / 25.0), rng.uniform(0, 2 * np.pi), 2.0) for _ in range(3)]
    pancreas = Wavy(Union(tube([(24, 24, -122), (6, 32, -106), (-26, 24, -96), (-68, 0, -82)], radii), k=10.0),
                    lobulation)
    layers.append(Layer(pancreas, t.pancreas, ORGAN_CODES["pancreas"]))
    splenic_vein = tube([confluence, (-28, 8, -97), (-55, -5, -85), (-72, -15, -75)], [5.5, 5.0, 4.5, 4.0])
    smv = tube([confluence, (10, 32, -160), (12, 40, -450)], 6.0)
    layers.append(Layer(Union(splenic_vein + smv), t.portal, ORGAN_CODES["portal_splenic_vein"]))
    return pancreas


def _liver_lobes(rng) -> Shape:
    """Right lobe (tilted so its inferior tip, segment 6, points down and laterally), its inferior
    extension, the medial segment, the left lateral lobe and the caudate lobe."""
    parts = [
        Ellipsoid(_jitter(rng, (66.0, 0.0, -72.0), 5.0), np.array([64.0, 86.0, 80.0]) * rng.uniform(0.92, 1.08, 3),
                  rotation(ry_deg=rng.uniform(-20.0, -5.0))),
        Ellipsoid(_jitter(rng, (88.0, -10.0, -125.0), 8.0), np.array([40.0, 54.0, 38.0]) * rng.uniform(0.85, 1.15, 3)),
        Ellipsoid(_jitter(rng, (25.0, 40.0, -72.0), 5.0), np.array([42.0, 36.0, 42.0]) * rng.uniform(0.9, 1.1, 3)),
        Ellipsoid(_jitter(rng, (-25.0, 45.0, -48.0), 8.0), np.array([68.0, 32.0, 32.0]) * rng.uniform(0.85, 1.15, 3),
                  rotation(ry_deg=rng.uniform(-10.0, 10.0), rz_deg=-20.0)),
        Ellipsoid(_jitter(rng, (8.0, 8.0, -60.0), 4.0), (18.0, 16.0, 30.0)),
    ]
    return Union(parts, k=20.0)


def _make_scene(rng: np.random.Generator, t: Tissues) -> _Scene:
    """Build the canonical patient: every layer except the liver, its vessel tree and lesions,
    whose size and shape make_phantom settles."""
    layers: list[Layer] = []
    outline, cavity, fat, wall = _body(rng, t, layers)
    dia = _chest(rng, t, layers, cavity)
    below = dia.side(below=True, gap_mm=0.5)
    _spine(rng, t, layers, outline, fat, wall)
    _small_bowel(rng, t, layers)
    gut = _gut(rng, t, layers, cavity, below)
    _spleen(rng, t, layers, cavity, below)
    kidneys, right_adrenal = _kidneys(rng, t, layers)
    aorta, ivc = _great_vessels(rng, t, layers, kidneys)
    confluence = (8.0, 18.0, -108.0)
    pancreas = _pancreas(rng, t, layers, confluence)

    gallbladder = Capsule(_jitter(rng, (35.0, 22.0, -92.0), 4.0), _jitter(rng, (46.0, 58.0, -135.0), 8.0), 8.0,
                          rng.uniform(12.0, 18.0))
    after = _hollow(gallbladder, 2.0, t, t.bile, 0.0, ORGAN_CODES["gallbladder"])
    after.append(Layer(ivc, t.ivc, ORGAN_CODES["ivc"]))

    # The liver is carved around its neighbours instead of being painted over
    # them, so its label volume is exactly the fitted volume.
    right_kidney, _, right_kidney_centre = kidneys["right"]
    cuts = Union(
        [
            Offset(gallbladder, 1.0),
            Offset(ivc, 1.5),
            Offset(right_kidney, 3.0),
            # The right kidney lies against the posterior wall: no liver behind it.
            Capsule(right_kidney_centre, np.add(right_kidney_centre, (5.0, -70.0, 10.0)), 26.0),
            Offset(right_adrenal, 3.0),
            Offset(aorta, 3.0),
            Prism(0.0, -40.0, [-450.0, 150.0], 32.0, 28.0),
            Offset(pancreas, 3.0),
            *(Offset(shape, 3.0) for shape in gut),
        ]
    )
    return _Scene(
        before_liver=layers,
        liver_cuts=cuts,
        lobes=_liver_lobes(rng),
        # The floor keeps even a large liver above the kidneys' lower poles, inside every scan's coverage.
        liver_bounds=[Offset(cavity, -1.0), below, HalfSpace(2, -198.0, 1.0)],
        after_liver=after,
        hilum=(36.0, 10.0, -82.0),
        confluence=confluence,
        hepatic_roots=[
            ((28.0, -2.0, -16.0), (95.0, 0.0, -70.0), 6.5),
            ((20.0, 8.0, -12.0), (45.0, 55.0, -90.0), 6.0),
            ((12.0, 8.0, -10.0), (-30.0, 45.0, -45.0), 5.5),
        ],
        body_halfwidth=160.0,
        body_halfdepth=(110.0, 124.0),
        dome_z=0.0,
        kidney_pole_z=-195.0,
    )


# --------------------------------------------------------------------------- #
# Liver sizing and vessel trees (canonical frame)
# --------------------------------------------------------------------------- #

# Scaling the lobes about a point just under the right dome keeps the dome
# against the diaphragm while the liver grows down, forward and medially.
# Height grows slower than width (s^0.6): large livers widen more than they lengthen.
_LIVER_ANCHOR = np.array([30.0, 0.0, 5.0])


def _liver_stretch(s: float) -> np.ndarray:
    return np.array([s, s, s**0.6])


def _scaled(point, s: float) -> np.ndarray:
    return _LIVER_ANCHOR + _liver_stretch(s) * (np.asarray(point, np.float64) - _LIVER_ANCHOR)


def _liver_shape(scene: _Scene, s: float, modes: np.ndarray) -> Shape:
    stretch = _liver_stretch(s)
    lobes = Wavy(Warp(scene.lobes, stretch, _LIVER_ANCHOR * (1.0 - stretch)), modes)
    return Subtract(Intersect([lobes, *scene.liver_bounds], k=15.0), scene.liver_cuts, k=4.0)


def _coarse_inside(shape: Shape, step: float = 4.0) -> np.ndarray:
    """Centres (n, 3) of the step-mm cells of shape's box whose centre lies inside the shape."""
    axes = [np.arange(shape.lo[a] + 0.5 * step, shape.hi[a], step, dtype=np.float32) for a in range(3)]
    d = shape.sdf(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    idx = np.nonzero(d < 0.0)
    return np.stack([axes[a][idx[a]] for a in range(3)], axis=1)


def _fit_liver(scene: _Scene, modes: np.ndarray, target_mm3: float, step: float = 4.0):
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


def _grow_tree(rng, liver: Shape, centroid: np.ndarray, roots, r_min: float = 1.5, max_segments: int = 180):
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


# --------------------------------------------------------------------------- #
# Case assembly
# --------------------------------------------------------------------------- #

SLICE_THICKNESS_MM = (1.5, 2.0, 2.5, 3.0, 5.0)
FULL_MATRIX = 512


@dataclass
class Phantom:
    """One rasterized case.

    image: int16 HU, shape (I, J, K) in RAS voxel order (i -> patient Right,
    j -> Anterior, k -> Superior).  organs: uint8 BTCV codes (ORGAN_CODES), 0 =
    background / other tissue.  tumor: bool lesion voxels, always inside the
    liver (organs == 6).  spacing_mm: voxel size (i, j, k).  affine: 4x4
    voxel -> world RAS+ mm with a positive diagonal.  lesions: ground truth.
    liver_volume_ml: volume of organs == 6 (lesions included), ml.
    """

    image: np.ndarray
    organs: np.ndarray
    tumor: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    lesions: list[Lesion]
    liver_volume_ml: float


def _frame(rng, scale: float, scene: _Scene, liver_l: float):
    """Grid and the canonical -> world mapping (world = stretch * canonical + shift).

    Larger livers come with somewhat larger bodies (as far as the field of
    view allows), so the liver fits its cavity without crushing its neighbours.
    """
    full_spacing = rng.uniform(0.6, 0.95)
    thickness = float(rng.choice(SLICE_THICKNESS_MM))
    coverage = rng.uniform(200.0, 300.0)
    n = max(16, int(round(FULL_MATRIX * scale)))
    sp = full_spacing / scale
    dz = max(thickness, 1.3 * sp)
    half_fov = 0.5 * FULL_MATRIX * full_spacing

    half_width = rng.uniform(0.66, 0.9) * half_fov + 40.0 * (liver_l - 1.6)
    half_width = min(float(np.clip(half_width, 150.0, 180.0)), 0.98 * half_fov)
    fx = half_width / scene.body_halfwidth
    depth = max(scene.body_halfdepth) * 1.12
    fy = min(fx * rng.uniform(0.97, 1.08), 0.97 * half_fov / depth)
    # The cranio-caudal extent must fit dome-to-lower-pole inside the coverage.
    span = scene.dome_z - scene.kidney_pole_z
    fz = min(rng.uniform(0.95, 1.05), (coverage - 18.0) / span)
    top_margin = rng.uniform(8.0, float(np.clip(coverage - span * fz - 10.0, 8.0, 40.0)))
    shift = np.array(
        [
            rng.uniform(-1.0, 1.0) * 0.5 * max(0.0, 0.98 * half_fov - half_width),
            rng.uniform(-1.0, 1.0) * 0.5 * max(0.0, 0.97 * half_fov - depth * fy),
            rng.uniform(-200.0, 100.0),
        ]
    )
    nz = max(4, int(round(coverage / dz)))
    z_top = shift[2] + fz * scene.dome_z + top_margin
    origin = (-0.5 * (n - 1) * sp, -0.5 * (n - 1) * sp, float(z_top - (nz - 1) * dz))
    grid = Grid(shape=(n, n, nz), spacing=(sp, sp, dz), origin=origin)
    return grid, np.array([fx, fy, fz]), shift


def _scanner(rng, image: np.ndarray, grid: Grid) -> np.ndarray:
    """Scanner PSF, then correlated noise (white noise low-passed in-plane), to int16 HU."""
    psf = [0.6 / grid.spacing[0], 0.6 / grid.spacing[1], 0.3]
    image = ndimage.gaussian_filter(image, [s if s >= 0.2 else 0.0 for s in psf], truncate=3.0)
    sd = rng.uniform(8.0, 20.0)
    corr = rng.uniform(0.7, 1.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), (corr, corr, 0.0), truncate=3.0)
    impulse = np.zeros(33)
    impulse[16] = 1.0
    gain = float((ndimage.gaussian_filter1d(impulse, corr, truncate=3.0) ** 2).sum())
    image += noise * _F32(sd / gain)
    np.rint(image, out=image)
    return np.clip(image, *HU_RANGE).astype(np.int16)


def make_phantom(rng: np.random.Generator, scale: float = 1.0, tumors: bool = False) -> Phantom:
    """Draw and rasterize one abdominal CT case.

    rng: the only source of randomness (same state -> identical phantom).
    scale: in-plane matrix round(512 * scale) with spacing full / scale mm;
    slice spacing max(thickness, 1.3 * in-plane) mm; z coverage (mm) is unchanged.
    tumors: add 1-6 liver lesions.
    """
    t = Tissues.draw(rng)
    scene = _make_scene(rng, t)
    target_l = rng.uniform(*LIVER_VOLUME_L)
    grid, stretch, shift = _frame(rng, scale, scene, target_l)
    modes = np.array(
        [(*(rng.normal(size=3) / np.sqrt(3.0) * 2.0 * np.pi / rng.uniform(60.0, 160.0)),
          rng.uniform(0.0, 2.0 * np.pi), rng.uniform(2.0, 5.0)) for _ in range(6)]
    )
    s, liver_c, inside = _fit_liver(scene, modes, target_l * 1.0e6 / float(np.prod(stretch)))
    centroid = inside.mean(axis=0) if inside.size else _LIVER_ANCHOR
    hilum = _scaled(scene.hilum, s)
    portal_roots = [
        (hilum, _scaled((80.0, 0.0, -88.0), s), 6.5),
        (hilum, _scaled((0.0, 38.0, -62.0), s), 5.5),
    ]
    hepatic_roots = [(p, _scaled(q, s), r) for p, q, r in scene.hepatic_roots]
    portal_tree = _grow_tree(rng, liver_c, centroid, portal_roots)
    hepatic_tree = _grow_tree(rng, liver_c, centroid, hepatic_roots)

    def world(shape: Shape) -> Shape:
        return Warp(shape, stretch, shift)

    layers = [Layer(world(l.shape), l.value, l.code) for l in scene.before_liver]
    midway = 0.5 * (np.asarray(scene.confluence) + hilum) + np.array([0.0, 3.0, 0.0])
    layers.append(Layer(world(Union(tube([scene.confluence, midway, hilum], [7.5, 7.0, 6.5]))), t.portal,
                        ORGAN_CODES["portal_splenic_vein"]))
    liver = Layer(world(liver_c), t.liver, LIVER)
    layers += [
        liver,
        Layer(world(Union(portal_tree)), t.portal, LIVER, clip=liver),
        Layer(world(Union(hepatic_tree)), t.hepatic, LIVER, clip=liver),
    ]
    lesion_shapes = []
    if tumors:
        for spec in sample_lesions(rng, liver.shape.sdf, liver.shape.lo, liver.shape.hi):
            shape = StarLesion(spec, t.liver)
            if spec.halo is not None:
                # A soft ramp makes the halo fade into the parenchyma; it is not labelled.
                halo = LesionHalo(shape)
                layers.append(Layer(halo, halo.value_hu, None, clip=liver, ramp_mm=0.3 * spec.radius_mm))
            layers.append(Layer(shape, shape.value, LIVER, clip=liver, tumor=True))
            lesion_shapes.append(shape)
    layers += [Layer(world(l.shape), l.value, l.code) for l in scene.after_liver]

    clean, organs, tumor = rasterize(layers, grid)
    voxel_mm3 = float(np.prod(grid.spacing))
    lesions = [lesion for shape in lesion_shapes if (lesion := _measure(shape, grid, clean, tumor, voxel_mm3, t.liver))]
    image = _scanner(rng, clean, grid)
    return Phantom(
        image=image,
        organs=organs,
        tumor=tumor,
        spacing_mm=tuple(float(v) for v in grid.spacing),
        affine=grid.affine,
        lesions=lesions,
        liver_volume_ml=float(np.count_nonzero(organs == LIVER)) * voxel_mm3 / 1000.0,
    )


def _measure(shape: StarLesion, grid: Grid, clean: np.ndarray, tumor: np.ndarray, voxel_mm3: float,
             parenchyma_hu: float) -> Lesion | None:
    """Truth of one lesion from its labelled voxels; None when it rasterized to nothing."""
    ranges = [grid.index_range(a, shape.lo[a], shape.hi[a]) for a in range(3)]
    if any(r[0] >= r[1] for r in ranges):
        return None
    sl = tuple(slice(*r) for r in ranges)
    d = shape.sdf(grid.axis(0, *ranges[0])[:, None, None], grid.axis(1, *ranges[1])[None, :, None],
                  grid.axis(2, *ranges[2])[None, None, :])
    mask = (d <= 0.0) & tumor[sl]
    n = int(np.count_nonzero(mask))
    if n == 0:
        return None
    return Lesion(
        center_mm=shape.spec.center_mm,
        radius_mm=equivalent_radius_mm(n, voxel_mm3),
        contrast_hu=float(clean[sl][mask].mean() - parenchyma_hu),
    )
