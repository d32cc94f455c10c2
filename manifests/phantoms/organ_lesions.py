"""Lesions of the pancreas and the kidneys for the MSD-Pancreas and KiTS phantoms.

Like :mod:`lesions` for the liver, these are drawn from the radiology of the lesions, not from
the project's tumor generator, so that a model trained on generated tumors is tested on lesions
whose look it was never shown:

- **pancreatic adenocarcinoma**: an ill-defined hypoattenuating mass in the gland (-15 to -55 HU
  against the parenchyma in a portal venous phase), its margin a wide partial-volume ramp (0.25-0.45
  of its radius) instead of an edge; in two of three cases the main duct upstream (toward the tail)
  is dilated, a 1.5-3 mm fluid tube through the gland that is not labelled tumor. 1-2 masses of
  radius 5-25 mm (log-uniform).
- **renal cell carcinoma**: a round-to-lobulated solid mass of radius 6-35 mm centred near the
  cortex surface (its center 0.4 R inside to 0.5 R outside the kidney), so that most grow
  exophytic: the part outside the kidney is still tumor. Heterogeneous enhancement (-35 to +25 HU
  against the cortex), a necrotic core in larger masses, a sharp margin. 1-2 masses.
- **simple renal cysts**: 0-2 per kidney, round, water density (0-15 HU), sharp, radius 4-15 mm.
  Not tumors: KiTS23 labels them 3 (cyst) and KiTS19 kidney.

All coordinates are world RAS+ mm; HU as in the scene's tissues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lesions import Lesion, LesionSpec, StarLesion, draw_lobes, draw_texture
from .raster import Layer
from .shapes import Union, tube

# Phantom-only organ code of a renal cyst in Phantom.organs (BTCV codes stop at 13).
CYST_CODE = 40


@dataclass(frozen=True)
class OrganLesion(Lesion):
    """Ground truth of one pancreatic or renal lesion: the liver lesion's fields plus the organ,
    ``kind`` (``tumor`` or ``cyst``; cysts are not tumors) and, for renal masses, the share of the
    lesion's voxels outside the kidney (``exophytic_share``)."""

    organ: str = "pancreas"
    kind: str = "tumor"
    exophytic_share: float = 0.0


@dataclass
class Drawn:
    """A lesion shape with what its truth record needs."""

    shape: StarLesion
    organ: str
    kind: str
    side: str | None = None


def _inside_points(rng, organ_layer: Layer, n: int = 2048) -> np.ndarray:
    """World points inside an organ layer's shape, by rejection in its bounding box."""
    lo, hi = np.asarray(organ_layer.shape.lo, float), np.asarray(organ_layer.shape.hi, float)
    pts = lo + rng.random((n, 3)) * (hi - lo)
    d = organ_layer.shape.sdf(*(pts[:, a].astype(np.float32) for a in range(3)))
    return pts[np.asarray(d) < 0]


def pancreas_lesions(rng, pancreas: Layer, parenchyma_hu: float, fluid_hu: float):
    """(layers to paint after the scene, drawn lesions) of 1-2 pancreatic masses and, in two of
    three cases, a dilated duct from the first mass toward the tail (the patient's left, -x)."""
    inside = _inside_points(rng, pancreas)
    if len(inside) == 0:
        return [], []
    layers, drawn = [], []
    for n in range(int(rng.integers(1, 3))):
        radius = float(np.exp(rng.uniform(np.log(5.0), np.log(25.0))))
        center = inside[int(rng.integers(len(inside)))]
        spec = LesionSpec(center_mm=tuple(float(c) for c in center), radius_mm=radius,
                          lobes=draw_lobes(rng, (0.1, 0.3)), contrast_hu=float(rng.uniform(-55.0, -15.0)),
                          core=None, rim=None, halo=None, texture=draw_texture(rng, (2.0, 6.0), (6.0, 14.0)))
        shape = StarLesion(spec, parenchyma_hu)
        if n == 0 and rng.random() < 2.0 / 3.0:
            tail = inside[int(np.argmin(inside[:, 0]))]
            mid = 0.5 * (center + tail) + rng.normal(0.0, 3.0, 3)
            duct = Union(tube([tuple(center), tuple(mid), tuple(tail)], float(rng.uniform(1.5, 3.0))))
            layers.append(Layer(duct, fluid_hu, None, clip=pancreas))
        layers.append(Layer(shape, shape.value, pancreas.code, clip=pancreas, tumor=True,
                            ramp_mm=float(rng.uniform(0.25, 0.45)) * radius))
        drawn.append(Drawn(shape, "pancreas", "tumor"))
    return layers, drawn


def kidney_lesions(rng, kidneys: dict, cortex_hu: float, water_hu: float):
    """(layers, drawn lesions) of 1-2 renal masses (exophytic as they fall) on either kidney and
    0-2 simple cysts per kidney. ``kidneys``: side -> the kidney's outer layer."""
    layers, drawn = [], []
    sides = sorted(kidneys)
    for _ in range(int(rng.integers(1, 3))):
        side = sides[int(rng.integers(len(sides)))]
        kidney = kidneys[side]
        radius = float(np.exp(rng.uniform(np.log(6.0), np.log(35.0))))
        lo, hi = np.asarray(kidney.shape.lo, float), np.asarray(kidney.shape.hi, float)
        pts = lo + rng.random((2048, 3)) * (hi - lo)
        depth = -np.asarray(kidney.shape.sdf(*(pts[:, a].astype(np.float32) for a in range(3))))
        want = rng.uniform(-0.5, 0.4) * radius        # negative: the center outside the kidney
        center = pts[int(np.argmin(np.abs(depth - want)))]
        core = (float(rng.uniform(0.3, 0.55)), float(rng.uniform(-45.0, -20.0))) if radius > 15 else None
        spec = LesionSpec(center_mm=tuple(float(c) for c in center), radius_mm=radius,
                          lobes=draw_lobes(rng, (0.03, 0.15)), contrast_hu=float(rng.uniform(-35.0, 25.0)),
                          core=core, rim=None, halo=None, texture=draw_texture(rng, (4.0, 10.0), (5.0, 12.0)))
        shape = StarLesion(spec, cortex_hu)
        layers.append(Layer(shape, shape.value, kidney.code, tumor=True, ramp_mm=None))
        drawn.append(Drawn(shape, "kidney", "tumor", side))
    for side in sides:
        inside = _inside_points(rng, kidneys[side])
        for _ in range(int(rng.integers(0, 3))):
            if len(inside) == 0:
                break
            radius = float(rng.uniform(4.0, 15.0))
            center = inside[int(rng.integers(len(inside)))]
            spec = LesionSpec(center_mm=tuple(float(c) for c in center), radius_mm=radius, lobes=(),
                              contrast_hu=float(water_hu + rng.uniform(0.0, 15.0) - cortex_hu),
                              core=None, rim=None, halo=None, texture=())
            shape = StarLesion(spec, cortex_hu)
            layers.append(Layer(shape, shape.value, CYST_CODE))
            drawn.append(Drawn(shape, "kidney", "cyst", side))
    return layers, drawn
