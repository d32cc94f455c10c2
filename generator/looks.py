"""Tumor looks for the ``diverse`` model: appearance drawn from several families at once.

A model trained on one narrow appearance learns that appearance, not "a lesion" (issue 28: the
paper's texture taught its grain). The test set's look is unknown to a user, so the ``diverse``
model trains over a wider range than any one test set is likely to hold (domain randomization).
The families come from how liver lesions look on portal-venous CT, not from the project's phantoms:

- ``homogeneous``: a uniform hypo- to nearly iso-attenuating mass, sharp margin (small HCC,
  adenoma, many small metastases);
- ``heterogeneous``: mottled (sd 0.9-1.4 x the parenchyma's), moderately defined margin
  (larger HCC, some metastases);
- ``necrotic``: a low-attenuation core near fluid (5-25 HU) inside a solid wall (large metastases,
  HCC with necrosis); tumors of radius >= 8 mm;
- ``cystic``: near-water attenuation (0-20 HU), very smooth, sharp margin (cystic metastases,
  mucinous tumors);
- ``rim``: a band at the edge brighter than the lesion (+15 to +50 HU: peripheral enhancement, the
  "target" metastasis) or darker (-10 to -25 HU: a hypodense halo);
- ``mosaic``: 3-6 cells of their own mean HU (sd 8-20 HU) inside one nodule (HCC's
  nodule-in-nodule mosaic); tumors of radius >= 10 mm;
- ``infiltrative``: ill-defined margin (mask blur 1.5-3 mm, deformation 1.5x), moderately
  heterogeneous (cholangiocarcinoma, infiltrative HCC).

``GeneratorConfig.looks`` (``LooksParams``) weighs the families and turns each factor back to the
paper's one at a time for ablations: ``contrast`` (wide or the paper's prior), ``texture_grid``
(the scan's grain or the paper's fixed eta), ``margins`` (each family's or the paper's sigma_c)
and ``lobulated``. By default, across families the tumor's mean is drawn from a wider contrast
range than the paper's (``CONTRAST_BELOW_HU``: from 90 HU below the parenchyma, never under
-10 HU, to 5 HU below it); its texture's sd is the parenchyma's fine-scale sd (about 20 mm block
means: ``PreparedScan.parenchyma_local_sd_hu``, not sigma_p, which holds the organ's slow shading
too) times the family's ``heterogeneity``; its grain is the scan's times ``GRAIN_FACTOR`` (0.8-2:
``grain.grid_for_scan``, never per-voxel noise). A tumor of radius >= ``LOBE_MIN_RADIUS_MM`` is
lobulated with probability ``LOBULATED``: one or two extra lobes (ellipsoids of 0.5-0.8 r, centred
0.6-0.9 r from its center) share its look and texture.

Each draw (``sample.draw_look``) is a :class:`~.params.Look` in the tumor's record, so audit
regenerates it. :func:`looks_texture` paints it: the Gaussian-grid texture, then
the core, rim and cells as functions of the tumor's normalized ellipsoid radius q on its box (the
undeformed ellipsoid: a deformed tumor's rim follows its ellipsoid, not its warped edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import noise
from .texture import paper_texture


@dataclass(frozen=True)
class LookFamily:
    """One family's ranges (each drawn uniformly) and its size limit."""

    heterogeneity: tuple[float, float]       # texture sd over the parenchyma's
    margin_mm: tuple[float, float]           # mask blur sigma_c (margin sharpness)
    min_radius_mm: float = 0.0               # smaller tumors take homogeneous instead
    core_fraction: tuple[float, float] = (0.0, 0.0)
    core_hu: tuple[float, float] = (0.0, 0.0)
    rim_hu: tuple[tuple[float, float], ...] = ()   # one of these ranges, chosen evenly
    rim_width_mm: tuple[float, float] = (0.0, 0.0)
    nodules: tuple[int, int] = (0, 0)
    nodule_hu_sd: tuple[float, float] = (0.0, 0.0)
    mean_hu: tuple[float, float] | None = None     # absolute mean HU (cystic); else contrast
    deform_scale: float = 1.0                # x the size preset's deformation sd


LOOKS: dict[str, LookFamily] = {
    "homogeneous": LookFamily(heterogeneity=(0.3, 0.7), margin_mm=(0.5, 1.0)),
    "heterogeneous": LookFamily(heterogeneity=(0.9, 1.4), margin_mm=(0.6, 1.5)),
    "necrotic": LookFamily(heterogeneity=(0.6, 1.2), margin_mm=(0.6, 1.5), min_radius_mm=8.0,
                           core_fraction=(0.3, 0.7), core_hu=(5.0, 25.0)),
    "cystic": LookFamily(heterogeneity=(0.15, 0.35), margin_mm=(0.4, 0.8), mean_hu=(0.0, 20.0)),
    "rim": LookFamily(heterogeneity=(0.5, 1.0), margin_mm=(0.6, 1.2),
                      rim_hu=((15.0, 50.0), (-25.0, -10.0)), rim_width_mm=(1.5, 4.0)),
    "mosaic": LookFamily(heterogeneity=(0.5, 1.0), margin_mm=(0.6, 1.2), min_radius_mm=10.0,
                         nodules=(3, 6), nodule_hu_sd=(8.0, 20.0)),
    "infiltrative": LookFamily(heterogeneity=(0.8, 1.4), margin_mm=(1.5, 3.0), deform_scale=1.5),
}
LOOK_NAMES = tuple(LOOKS)          # a packed row's ``look`` is 1 + an index here (0: none)
CONTRAST_BELOW_HU = (90.0, 5.0)    # tumor mean from mu_p - 90 to mu_p - 5 HU
CONTRAST_FLOOR_HU = -10.0
GRAIN_FACTOR = (0.8, 2.0)          # texture grain over the parenchyma's
LOBULATED = 0.25
LOBE_MIN_RADIUS_MM = 6.0
RIM_AT = 0.85                      # the rim band's center, in q
CORE_EDGE = 0.08                   # width (in q) of the core's soft edge


def lobes(rng: np.random.Generator, radius_mm: float, share: float = LOBULATED
          ) -> list[tuple[float, np.ndarray]]:
    """Extra lobes of a tumor of ``radius_mm``: (radius mm, offset of its center in mm) each;
    none for tumors under ``LOBE_MIN_RADIUS_MM`` and for most others (``share`` are lobulated)."""
    if radius_mm < LOBE_MIN_RADIUS_MM or rng.random() >= share:
        return []
    out = []
    for _ in range(int(rng.integers(1, 3))):
        direction = rng.normal(size=3)
        direction /= max(float(np.linalg.norm(direction)), 1e-9)
        out.append((round(float(rng.uniform(0.5, 0.8)) * radius_mm, 4),
                    direction * float(rng.uniform(0.6, 0.9)) * radius_mm))
    return out


def looks_texture(backend, t, box_shape, s: float, lo=None, hi=None):
    """The ``diverse`` model's texture step: :func:`~.texture.paper_texture` (mean mu_t, sd
    sigma_p, the record's grid), then the look of row ``t`` (``batch`` columns ``look``,
    ``core_fraction``, ``core_hu``, ``rim_hu``, ``rim_width_mm``, ``nodules``,
    ``nodule_hu_sd``) as functions of the normalized ellipsoid radius q on the tumor box (its
    center is the box's center), on the part ``[lo, hi)`` of the box. Float32 HU."""
    xp = backend.xp
    box = tuple(int(n) for n in box_shape)
    lo = (0, 0, 0) if lo is None else tuple(int(v) for v in lo)
    hi = box if hi is None else tuple(int(v) for v in hi)
    field = paper_texture(backend, t, box, s, lo, hi)
    if int(t.look) == 0:
        return field
    half = [(n - 1) / 2.0 for n in box]
    axes = [float(a) / s for a in np.asarray(t.half_axes_mm, float)]
    d = [xp.arange(a, b, dtype=xp.float32).reshape([-1 if k == ax else 1 for k in range(3)])
         - xp.float32(h) for ax, (a, b, h) in enumerate(zip(lo, hi, half))]
    q = xp.sqrt(sum((d[ax] / xp.float32(axes[ax])) ** 2 for ax in range(3)))
    q = xp.broadcast_to(q, field.shape)
    mu_t = float(t.mu_t)
    if float(t.core_fraction) > 0:
        w = 1.0 / (1.0 + xp.exp((q - xp.float32(t.core_fraction)) / xp.float32(CORE_EDGE)))
        core = xp.float32(t.core_hu) + xp.float32(0.4) * (field - xp.float32(mu_t))
        field = field + w.astype(xp.float32) * (core - field)
    if float(t.rim_hu) != 0:
        width_q = float(t.rim_width_mm) / s / max(sum(axes) / 3.0, 1.0)
        band = xp.exp(-0.5 * ((q - xp.float32(RIM_AT)) / xp.float32(max(width_q, 1e-3))) ** 2)
        field = field + xp.float32(t.rim_hu) * band.astype(xp.float32)
    if int(t.nodules) > 0:
        field = field + _cells(xp, t, d, axes, q)
    return field.astype(xp.float32)


def _cells(xp, t, d, axes, q):
    """Mosaic: ``nodules`` cell centers inside q < 0.7 (Philox from the texture seed, stream 7,
    identical on every backend); each voxel takes its nearest center's offset ~ N(0,
    nodule_hu_sd), with a dark septum (-0.5 sd) where two cells meet."""
    n = int(t.nodules)
    u = noise.uniform(np, (n, 4), int(t.texture_seed), stream=7).astype(np.float64)
    direction = u[:, :3] * 2 - 1
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
    radius = 0.7 * np.cbrt(u[:, 3])
    centers = direction * radius[:, None] * np.asarray(axes)[None, :]
    offsets = noise.normal(np, (n,), int(t.texture_seed), stream=8).astype(np.float64)
    offsets = offsets * float(t.nodule_hu_sd)
    dist = xp.stack([sum((d[ax] - xp.float32(c[ax])) ** 2 for ax in range(3)) for c in centers])
    dist = xp.broadcast_to(dist, (n,) + q.shape)
    out = xp.asarray(offsets.astype(np.float32))[xp.argmin(dist, axis=0)]
    if n > 1:
        first, second = xp.sort(dist, axis=0)[:2]
        gap = xp.sqrt(second) - xp.sqrt(first)            # voxels from the boundary, about
        septum = xp.exp(-0.5 * gap ** 2).astype(xp.float32)
        out = out - xp.float32(0.5 * float(t.nodule_hu_sd)) * septum
    return out.astype(xp.float32)


def lobe_center(center, offset_mm, s: float) -> tuple[int, int, int]:
    """A lobe's center voxel: ``center`` moved by ``offset_mm`` at ``s`` mm per voxel."""
    return tuple(int(c + math.floor(o / s + 0.5)) for c, o in zip(center, offset_mm))
