"""One phantom case: the canonical patient sized, placed on a scanner grid, rasterized and noised.

A case draws its tissues and anatomy (:mod:`anatomy`), a liver volume it fits the liver to
(:mod:`liver`), optional lesions (:mod:`lesions`) and a scanner: matrix, spacing, slice thickness,
coverage. World coordinates are NIfTI RAS+ mm (+x patient Right, +y Anterior, +z Superior). The
anatomy is written in a "canonical" patient (body centre at the origin, right hemidiaphragm dome
at z = 0) and mapped to each case's world frame by one axis-aligned scaling and shift, so body
size and cranio-caudal extent vary between cases without rewriting the organ layout. Arrays of a
:class:`Phantom` are in RAS voxel order (i -> +x, j -> +y, k -> +z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import LIVER_CODE, ORGAN_CODES, Scene, Tissues, make_scene
from .lesions import Lesion, LesionHalo, StarLesion, equivalent_radius_mm, sample_lesions
from .organ_lesions import CYST_CODE, Drawn, OrganLesion, kidney_lesions, pancreas_lesions
from .liver import LIVER_ANCHOR, fit_liver, grow_tree, scaled_about_anchor
from .raster import Grid, Layer, rasterize
from .shapes import Shape, Union, Warp, tube

HU_RANGE = (-1024, 3071)
LIVER_VOLUME_L = (1.2, 2.0)

SLICE_THICKNESS_MM = (1.5, 2.0, 2.5, 3.0, 5.0)
FULL_MATRIX = 512


@dataclass
class Phantom:
    """One rasterized case.

    image: int16 HU, shape (I, J, K) in RAS voxel order (i -> patient Right,
    j -> Anterior, k -> Superior).  organs: uint8 BTCV codes (ORGAN_CODES), 0 =
    background / other tissue.  tumor: bool lesion voxels, always inside the
    liver (organs == LIVER_CODE).  spacing_mm: voxel size (i, j, k).  affine: 4x4
    voxel -> world RAS+ mm with a positive diagonal.  lesions: ground truth.
    liver_volume_ml: volume of organs == LIVER_CODE (lesions included), ml.
    """

    image: np.ndarray
    organs: np.ndarray
    tumor: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    lesions: list[Lesion]
    liver_volume_ml: float


def _frame(rng, scale: float, scene: Scene, liver_l: float):
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
    image += noise * np.float32(sd / gain)
    np.rint(image, out=image)
    return np.clip(image, *HU_RANGE).astype(np.int16)


def make_phantom(rng: np.random.Generator, scale: float = 1.0, tumors: bool = False,
                 lesion_organ: str = "liver") -> Phantom:
    """Draw and rasterize one abdominal CT case.

    rng: the only source of randomness (same state -> identical phantom).
    scale: in-plane matrix round(512 * scale) with spacing full / scale mm;
    slice spacing max(thickness, 1.3 * in-plane) mm; z coverage (mm) is unchanged.
    tumors: add lesions to ``lesion_organ``: 1-6 liver lesions (:mod:`lesions`), or pancreatic
    masses, or renal masses with simple cysts (:mod:`organ_lesions`; cysts come with kidney
    lesions also when ``tumors`` is false, as in healthy kidneys).
    """
    t = Tissues.draw(rng)
    scene = make_scene(rng, t)
    target_l = rng.uniform(*LIVER_VOLUME_L)
    grid, stretch, shift = _frame(rng, scale, scene, target_l)
    modes = np.array(
        [(*(rng.normal(size=3) / np.sqrt(3.0) * 2.0 * np.pi / rng.uniform(60.0, 160.0)),
          rng.uniform(0.0, 2.0 * np.pi), rng.uniform(2.0, 5.0)) for _ in range(6)]
    )
    s, liver_c, inside = fit_liver(scene, modes, target_l * 1.0e6 / float(np.prod(stretch)))
    centroid = inside.mean(axis=0) if inside.size else LIVER_ANCHOR
    hilum = scaled_about_anchor(scene.hilum, s)
    portal_roots = [
        (hilum, scaled_about_anchor((80.0, 0.0, -88.0), s), 6.5),
        (hilum, scaled_about_anchor((0.0, 38.0, -62.0), s), 5.5),
    ]
    hepatic_roots = [(p, scaled_about_anchor(q, s), r) for p, q, r in scene.hepatic_roots]
    portal_tree = grow_tree(rng, liver_c, centroid, portal_roots)
    hepatic_tree = grow_tree(rng, liver_c, centroid, hepatic_roots)

    def world(shape: Shape) -> Shape:
        return Warp(shape, stretch, shift)

    layers = [Layer(world(l.shape), l.value, l.code) for l in scene.before_liver]
    midway = 0.5 * (np.asarray(scene.confluence) + hilum) + np.array([0.0, 3.0, 0.0])
    layers.append(Layer(world(Union(tube([scene.confluence, midway, hilum], [7.5, 7.0, 6.5]))), t.portal,
                        ORGAN_CODES["portal_splenic_vein"]))
    liver = Layer(world(liver_c), t.liver, LIVER_CODE)
    layers += [
        liver,
        Layer(world(Union(portal_tree)), t.portal, LIVER_CODE, clip=liver),
        Layer(world(Union(hepatic_tree)), t.hepatic, LIVER_CODE, clip=liver),
    ]
    lesion_shapes = []
    if tumors and lesion_organ == "liver":
        for spec in sample_lesions(rng, liver.shape.sdf, liver.shape.lo, liver.shape.hi):
            shape = StarLesion(spec, t.liver)
            if spec.halo is not None:
                # A soft ramp makes the halo fade into the parenchyma; it is not labelled.
                halo = LesionHalo(shape)
                layers.append(Layer(halo, halo.value_hu, None, clip=liver, ramp_mm=0.3 * spec.radius_mm))
            layers.append(Layer(shape, shape.value, LIVER_CODE, clip=liver, tumor=True))
            lesion_shapes.append(shape)
    layers += [Layer(world(l.shape), l.value, l.code) for l in scene.after_liver]
    drawn, kidneys = [], {}
    if lesion_organ not in ("liver", "pancreas", "kidney"):
        raise ValueError(f"lesion_organ {lesion_organ!r}: expected liver, pancreas or kidney")
    if lesion_organ == "pancreas" and tumors:
        pancreas = next(l for l in layers if l.code == ORGAN_CODES["pancreas"])
        extra, drawn = pancreas_lesions(rng, pancreas, t.pancreas, t.bile)
        layers += extra
    elif lesion_organ == "kidney":
        kidneys = {side: next(l for l in layers if l.code == ORGAN_CODES[f"{side}_kidney"])
                   for side in ("left", "right")}
        extra, drawn = kidney_lesions(rng, kidneys, t.kidney_cortex, t.bile)
        if not tumors:                     # healthy kidneys keep their cysts, not masses
            keep = [d.kind == "cyst" for d in drawn]
            extra = [layer for layer, k in zip(extra, keep) if k]
            drawn = [d for d, k in zip(drawn, keep) if k]
        layers += extra

    clean, organs, tumor = rasterize(layers, grid)
    voxel_mm3 = float(np.prod(grid.spacing))
    lesions = [lesion for shape in lesion_shapes if (lesion := _measure(shape, grid, clean, tumor, voxel_mm3, t.liver))]
    lesions += [lesion for d in drawn
                if (lesion := _measure_organ(d, grid, clean, organs, tumor, voxel_mm3, kidneys))]
    image = _scanner(rng, clean, grid)
    return Phantom(
        image=image,
        organs=organs,
        tumor=tumor,
        spacing_mm=tuple(float(v) for v in grid.spacing),
        affine=grid.affine,
        lesions=lesions,
        liver_volume_ml=float(np.count_nonzero(organs == LIVER_CODE)) * voxel_mm3 / 1000.0,
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


def _measure_organ(d: Drawn, grid: Grid, clean: np.ndarray, organs: np.ndarray, tumor: np.ndarray,
                   voxel_mm3: float, kidneys: dict) -> OrganLesion | None:
    """Truth of one pancreatic or renal lesion (tumor voxels, or the cyst's voxels), with the
    share of a renal lesion's voxels outside its kidney's outer shape."""
    shape = d.shape
    ranges = [grid.index_range(a, shape.lo[a], shape.hi[a]) for a in range(3)]
    if any(r[0] >= r[1] for r in ranges):
        return None
    sl = tuple(slice(*r) for r in ranges)
    x, y, z = (grid.axis(0, *ranges[0])[:, None, None], grid.axis(1, *ranges[1])[None, :, None],
               grid.axis(2, *ranges[2])[None, None, :])
    inside = shape.sdf(x, y, z) <= 0.0
    mask = inside & (tumor[sl] if d.kind == "tumor" else organs[sl] == CYST_CODE)
    n = int(np.count_nonzero(mask))
    if n == 0:
        return None
    outside = 0.0
    if d.side is not None:
        kidney = np.broadcast_to(kidneys[d.side].shape.sdf(x, y, z) > 0.0, mask.shape)
        outside = float(np.count_nonzero(mask & kidney)) / n
    return OrganLesion(center_mm=shape.spec.center_mm, radius_mm=equivalent_radius_mm(n, voxel_mm3),
                       contrast_hu=float(clean[sl][mask].mean() - shape.parenchyma_hu),
                       organ=d.organ, kind=d.kind, exophytic_share=round(outside, 4))
