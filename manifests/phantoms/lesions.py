"""Lesion ("real tumor") model for the LiTS/MSD-style phantoms.

Deliberately unlike the project's tumor generator (elastically deformed
ellipsoids filled with upscaled Gaussian noise): lesions here are lobulated
star-shaped solids whose radius varies with direction through a few rotated
zonal spherical harmonics, their inside is built from radial profiles
(necrotic core, enhancing rim, hypodense halo) and their texture from a few
3D sinusoids.  Training on the generator and testing on these phantoms then
does not reward a model for recognising the generator's own recipe.

All coordinates are world RAS+ millimetres; intensities are HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

MIN_RADIUS_MM = 3.0
MAX_RADIUS_MM = 40.0
MAX_LESIONS = 6
# A lesion boundary is not a true distance field; this factor keeps the
# approximate distance from overshooting where the surface is lobulated.
_LIPSCHITZ = 0.8


@dataclass(frozen=True)
class Lesion:
    """Ground truth for one phantom lesion, measured on the rasterized label.

    center_mm: drawn center, world RAS+ mm.
    radius_mm: equivalent-sphere radius (3V/4pi)^(1/3) of the lesion's labelled voxels, mm.
    contrast_hu: mean noise-free lesion HU over those voxels minus the parenchyma HU.
    """

    center_mm: tuple[float, float, float]
    radius_mm: float
    contrast_hu: float


@dataclass(frozen=True)
class LesionSpec:
    """Drawn parameters of one lesion; rasterizing it is a pure function of this record.

    center_mm: world RAS+ mm.  radius_mm: nominal radius R of the star shape, mm.
    lobes: (vx, vy, vz, degree, amplitude) rotated zonal harmonics; r(u) = R (1 + sum a P_l(u.v)).
    contrast_hu: base lesion HU minus parenchyma HU.
    core: (radius fraction, HU added) of a necrotic core, or None.
    rim: (radius fraction of the ring centre, HU added) of an enhancing rim, or None.
    halo: (thickness as fraction of R, HU added to parenchyma) of a hypodense halo, or None.
    texture: (kx, ky, kz, phase, amplitude) sinusoids, k in rad/mm, amplitude in HU.
    """

    center_mm: tuple[float, float, float]
    radius_mm: float
    lobes: tuple[tuple[float, float, float, int, float], ...]
    contrast_hu: float
    core: tuple[float, float] | None
    rim: tuple[float, float] | None
    halo: tuple[float, float] | None
    texture: tuple[tuple[float, float, float, float, float], ...]


def _legendre(degree: int, t: np.ndarray) -> np.ndarray:
    if degree == 2:
        return 1.5 * t * t - 0.5
    if degree == 3:
        return (2.5 * t * t - 1.5) * t
    t2 = t * t
    return (4.375 * t2 - 3.75) * t2 + 0.375


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def draw_lobes(rng: np.random.Generator, total: tuple[float, float]):
    """2-4 rotated zonal harmonics (``LesionSpec.lobes``) whose |amplitudes| sum to U(total)."""
    n_lobes = int(rng.integers(2, 5))
    amplitude = rng.uniform(*total)
    weights = rng.dirichlet(np.ones(n_lobes)) * amplitude
    return tuple((*map(float, _unit(rng)), int(rng.integers(2, 5)),
                  float(w * rng.choice([-1.0, 1.0]))) for w in weights)


def draw_texture(rng: np.random.Generator, amplitude_hu: tuple[float, float],
                 wavelength_mm: tuple[float, float]):
    """3-5 weak sinusoids (``LesionSpec.texture``) in random directions: they interfere into
    blotches instead of stripes."""
    return tuple((*map(float, _unit(rng) * (2.0 * np.pi / rng.uniform(*wavelength_mm))),
                  float(rng.uniform(0.0, 2.0 * np.pi)), float(rng.uniform(*amplitude_hu)))
                 for _ in range(int(rng.integers(3, 6))))


def sample_lesions(
    rng: np.random.Generator,
    liver_sdf: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    liver_lo: np.ndarray,
    liver_hi: np.ndarray,
) -> list[LesionSpec]:
    """Draw 1-6 lesions with centers inside the liver.

    liver_sdf: approximate signed distance to the liver surface (mm, negative
    inside) for world points given as three equally shaped arrays.
    liver_lo, liver_hi: world bounding box of the liver, mm.
    Radii are log-uniform over [3, 40] mm; contrast is hypodense U(-75, -20) HU
    or, with probability 0.15, hyperdense U(15, 40) HU.
    """
    count = min(int(rng.geometric(0.45)), MAX_LESIONS)
    lo = np.asarray(liver_lo, np.float64)
    hi = np.asarray(liver_hi, np.float64)
    specs = []
    for _ in range(count):
        radius = float(np.exp(rng.uniform(np.log(MIN_RADIUS_MM), np.log(MAX_RADIUS_MM))))
        candidates = lo + rng.random((512, 3)) * (hi - lo)
        depth = -liver_sdf(*(candidates[:, a].astype(np.float32) for a in range(3)))
        # Large lesions may bulge the capsule, small ones should sit fully inside.
        wanted = min(0.6 * radius + 2.0, 25.0)
        ok = np.flatnonzero(depth >= wanted)
        center = candidates[ok[0]] if ok.size else candidates[int(np.argmax(depth))]

        lobes = draw_lobes(rng, (0.05, 0.25))
        hyper = rng.random() < 0.15
        contrast = rng.uniform(15.0, 40.0) if hyper else rng.uniform(-75.0, -20.0)
        core = None
        if not hyper and radius > 15.0 and rng.random() < 0.6:
            core = (float(rng.uniform(0.3, 0.6)), float(rng.uniform(-35.0, -12.0)))
        rim = None
        if not hyper and rng.random() < 0.4:
            rim = (float(rng.uniform(0.8, 0.92)), float(rng.uniform(25.0, 60.0)))
        halo = None
        if rng.random() < 0.3:
            halo = (float(rng.uniform(0.15, 0.35)), float(rng.uniform(-14.0, -5.0)))
        texture = draw_texture(rng, (1.5, 4.5), (5.0, 15.0))
        specs.append(
            LesionSpec(
                center_mm=tuple(float(c) for c in center),
                radius_mm=radius,
                lobes=lobes,
                contrast_hu=float(contrast),
                core=core,
                rim=rim,
                halo=halo,
                texture=texture,
            )
        )
    return specs


class StarLesion:
    """Implicit star-shaped lesion: sdf in world mm (negative inside), value in HU."""

    def __init__(self, spec: LesionSpec, parenchyma_hu: float):
        self.spec = spec
        self.parenchyma_hu = float(parenchyma_hu)
        reach = spec.radius_mm * (1.0 + sum(abs(lobe[4]) for lobe in spec.lobes))
        c = np.asarray(spec.center_mm, np.float64)
        self.lo = c - reach
        self.hi = c + reach

    def _polar(self, x, y, z):
        cx, cy, cz = self.spec.center_mm
        dx, dy, dz = x - np.float32(cx), y - np.float32(cy), z - np.float32(cz)
        rho = np.sqrt(dx * dx + dy * dy + dz * dz)
        inv = 1.0 / np.maximum(rho, np.float32(1e-3))
        gain = np.float32(1.0)
        for vx, vy, vz, degree, amp in self.spec.lobes:
            cos = (dx * np.float32(vx) + dy * np.float32(vy) + dz * np.float32(vz)) * inv
            gain = gain + np.float32(amp) * _legendre(degree, cos)
        return rho, np.float32(self.spec.radius_mm) * gain

    def sdf(self, x, y, z):
        rho, surface = self._polar(x, y, z)
        return (rho - surface) * np.float32(_LIPSCHITZ)

    def value(self, x, y, z):
        spec = self.spec
        rho, surface = self._polar(x, y, z)
        t = rho / surface
        hu = np.float32(self.parenchyma_hu + spec.contrast_hu)
        if spec.core is not None:
            edge, delta = spec.core
            hu = hu + np.float32(delta) * np.clip((edge + 0.08 - t) / 0.16, 0.0, 1.0)
        if spec.rim is not None:
            ring, delta = spec.rim
            hu = hu + np.float32(delta) * np.exp(-(((t - ring) / 0.09) ** 2))
        for kx, ky, kz, phase, amp in spec.texture:
            hu = hu + np.float32(amp) * np.sin(
                x * np.float32(kx) + y * np.float32(ky) + z * np.float32(kz) + np.float32(phase)
            )
        return hu


class LesionHalo:
    """The faint hypodense rim of parenchyma around a lesion: the lesion's shape grown by
    spec.halo[0] * R mm; value_hu = parenchyma HU + spec.halo[1]."""

    def __init__(self, lesion: StarLesion):
        thickness, delta = lesion.spec.halo
        self.lesion = lesion
        self.grow = np.float32(thickness * lesion.spec.radius_mm)
        self.value_hu = lesion.parenchyma_hu + delta
        self.lo, self.hi = lesion.lo - float(self.grow), lesion.hi + float(self.grow)

    def sdf(self, x, y, z):
        return self.lesion.sdf(x, y, z) - self.grow * np.float32(_LIPSCHITZ)


def equivalent_radius_mm(n_voxels: int, voxel_mm3: float) -> float:
    """Radius (mm) of the sphere with the volume of n_voxels voxels of voxel_mm3 each."""
    return float((3.0 * n_voxels * voxel_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0))
