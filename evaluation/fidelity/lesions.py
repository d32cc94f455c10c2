"""Measuring lesions on arrays: every figure of the fidelity report that one image and its label
map give, and which tumor record (or size type) a lesion belongs to.

Every lesion is measured the same way, on the arrays it was stored as, whether synthetic or real:

- a lesion is a 26-connected component of label == tumor (``metrics.lesions``);
- radius: equivalent-sphere radius (3 V / 4 pi)^(1/3), V with the physical voxel volume (mm);
- contrast: mean HU of the lesion minus mean HU of a ring of liver around it (voxels within
  ``RING_VOXELS`` voxels of the lesion, labelled liver, so neither tumor nor background);
- HU drop (synthetic only): mean over the lesion of tumor-free HU minus synthetic HU; the
  tumor-free HU comes from the same scan re-prepared from its manifest (datasets) or from the
  synthesize run's base volume;
- depth: distance (mm, Euclidean distance transform in physical spacing) from the lesion's center
  to the nearest voxel outside the organ (liver or tumor). Dataset crops use the whole prepared
  scan's liver and the tumor record's center (a crop holds only part of the liver); whole scans
  use the lesion voxel nearest the component's centroid. The reference is the median depth of all
  liver voxels of the same scan (where a uniformly random liver voxel lies): ``depth_ratio`` is
  depth over it;
- texture: sd of HU inside the lesion (eroded by one voxel where that leaves voxels) over the sd
  of parenchyma (liver without tumor and vessels; the record's ``parenchyma_sd_hu`` for
  synthetic lesions, the prepared scan's liver for real ones);
- grain: the correlation length of HU inside the lesion (eroded likewise) over that of the
  parenchyma's interior in the same image (``generator.grain``, the definition the scan-matched
  texture is shaped with): how coarse the texture is, which its sd does not say (a tumor of
  per-voxel noise in spatially correlated parenchyma has ratio < 1).

Synthetic lesions are grouped by their tumor record's ``kind`` (tiny / small / medium / large /
satellite), except in ``mix`` samples, which form one group ``mix``; real lesions are binned by
radius at the geometric means of the Table 6 radii (:func:`size_bins`). A component in a dataset
crop belongs to the record whose center it holds (the largest if several: ``records`` > 1 says it
merged), else to the nearest record center. A component touching the crop's faces is cut by the
crop: it is kept for every measure except the radius, and counted as ``cut_by_crop``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from tumorforge.generator.api import PAPER_SIZES, grain_mm, interior, organ_depth
from tumorforge.manifests.conventions import ORGAN, TUMOR

from ..metrics import lesions

RING_VOXELS = 3                       # width of the liver ring contrast is measured against

@dataclass
class Lesion:
    """One measured lesion. ``center`` is a voxel of the array it was measured on (for dataset
    crops and prepared scans: the full resampled scan, RAS)."""

    source: str
    origin: str                   # synthetic / real
    group: str                    # size type of the report's row
    scan_id: str
    sample: str                   # dataset sample index or case id or scan id
    center: tuple[int, ...]
    voxels: int
    volume_mm3: float
    radius_mm: float | None
    contrast_hu: float | None
    hu_drop_hu: float | None
    depth_mm: float | None
    reference_depth_mm: float | None
    depth_ratio: float | None
    texture_sd_hu: float | None
    parenchyma_sd_hu: float | None
    texture_ratio: float | None
    cut_by_crop: bool = False
    records: int = 0              # tumor records it holds (0 for real lesions; > 1: merged)
    grain_mm: float | None = None             # correlation length of HU in the lesion
    parenchyma_grain_mm: float | None = None  # the same over the image's parenchyma
    grain_ratio: float | None = None


@dataclass
class TumorRecord:
    """One drawn tumor, as its record (and the drawn shape) tells it."""

    source: str
    group: str
    scan_id: str
    sample: str
    kind: str
    radius_mm: float
    inside_fraction: float | None
    vessel_voxels: int | None
    location_fallback: bool
    location_reason: str
    visible: bool                 # a lesion of the sample holds this record
    shell_r: float | None = None  # satellites: distance to the large lesion's center, in its r




def component_measures(image: np.ndarray, label: np.ndarray, spacing, *, base=None,
                       parenchyma_sd_hu: float | None = None, vessel=None) -> tuple[np.ndarray, list[dict]]:
    """Every lesion of ``label`` (component of label == TUMOR) measured on ``image`` (HU).

    Arrays share one grid; ``spacing`` (mm) is in their axis order. ``base`` is the tumor-free
    image (HU drop), ``parenchyma_sd_hu`` the parenchyma sd the texture is compared with (else
    computed over label == ORGAN without ``vessel``). Returns the component labels and, per
    component: id, voxels, volume_mm3, radius_mm, center (the component voxel nearest its
    centroid), touches_edge, contrast_hu, hu_drop_hu, texture_sd_hu, parenchyma_sd_hu,
    texture_ratio, grain_mm, parenchyma_grain_mm, grain_ratio. Depth is the caller's (it needs the
    whole organ).
    """
    spacing = tuple(float(s) for s in spacing)
    image = np.asarray(image, np.float64)
    labels, found = lesions(label == TUMOR, spacing)
    paren = label == ORGAN
    if vessel is not None:
        paren &= ~np.asarray(vessel, bool)
    if parenchyma_sd_hu is None:
        parenchyma_sd_hu = float(image[paren].std()) if paren.any() else None
    parenchyma_grain = grain_mm(image, interior(paren), spacing) if paren.any() else None
    boxes = ndi.find_objects(labels)
    shape = np.asarray(label.shape)
    out = []
    for les, box in zip(found, boxes):
        start, stop = np.array([b.start for b in box]), np.array([b.stop for b in box])
        touches = bool(np.any(start == 0) or np.any(stop == shape))
        lo = np.maximum(start - RING_VOXELS - 1, 0)
        hi = np.minimum(stop + RING_VOXELS + 1, shape)
        win = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        comp = labels[win] == les["id"]
        img = image[win]
        ring = (ndi.distance_transform_edt(~comp) <= RING_VOXELS) & ~comp & (label[win] == ORGAN)
        mean = float(img[comp].mean())
        inner = interior(comp, 1)
        sd = float(img[inner].std())
        grain = grain_mm(img, inner, spacing)
        idx = np.argwhere(comp)
        near = idx[np.argmin(((idx - idx.mean(0)) ** 2).sum(1))] + np.array([w.start for w in win])
        row = {**les, "center": tuple(int(v) for v in near), "touches_edge": touches,
               "contrast_hu": mean - float(img[ring].mean()) if ring.any() else None,
               "hu_drop_hu": (float((np.asarray(base, np.float64)[win][comp] - img[comp]).mean())
                              if base is not None else None),
               "texture_sd_hu": sd, "parenchyma_sd_hu": parenchyma_sd_hu,
               "texture_ratio": sd / parenchyma_sd_hu if parenchyma_sd_hu else None,
               "grain_mm": grain, "parenchyma_grain_mm": parenchyma_grain,
               "grain_ratio": (grain / parenchyma_grain if grain is not None and parenchyma_grain
                               else None)}
        out.append(row)
    return labels, out


def measure_scan(image: np.ndarray, label: np.ndarray, spacing, *, base=None,
                 parenchyma_sd_hu: float | None = None, vessel=None, depth=None) -> list[dict]:
    """Every lesion of a whole scan (``component_measures``) with its depth: ``depth_mm`` at the
    lesion voxel nearest its centroid and ``reference_depth_mm``, the median depth of all organ
    voxels. ``depth`` is the organ depth map (mm) if the caller has one (else computed from
    label >= ORGAN, the organ: liver or tumor)."""
    organ = label >= ORGAN
    depth = organ_depth(organ, spacing) if depth is None else depth
    reference = float(np.median(depth[organ])) if organ.any() else None
    _, comps = component_measures(image, label, spacing, base=base,
                                  parenchyma_sd_hu=parenchyma_sd_hu, vessel=vessel)
    for comp in comps:
        comp["depth_mm"] = float(depth[comp["center"]])
        comp["reference_depth_mm"] = reference
    return comps


def size_bins(sizes=None) -> list[tuple[str, float, float]]:
    """(size type, lo, hi) radius bins (mm) for real lesions: cut at the geometric means of
    consecutive Table 6 radii (tiny 4, small 8, medium 16, large 32 mm by default)."""
    presets = sorted((sizes or PAPER_SIZES).items(), key=lambda kv: kv[1].radius_mm)
    radii = [p.radius_mm for _, p in presets]
    cuts = [0.0] + [math.sqrt(a * b) for a, b in zip(radii, radii[1:])] + [math.inf]
    return [(name, cuts[n], cuts[n + 1]) for n, (name, _) in enumerate(presets)]


def real_group(radius_mm: float, bins) -> str:
    """The size type of a real lesion of ``radius_mm`` (mm): its bin of :func:`size_bins`."""
    return next(name for name, lo, hi in bins if lo <= radius_mm < hi)


def lesion_of(source, origin, group, scan_id, sample, comp, *, depth=None, reference=None,
              center=None, cut=False, records=0) -> Lesion:
    """A :class:`Lesion` from a component's measures (:func:`component_measures`); ``cut``: the
    component touches a crop face, so its radius is left out."""
    return Lesion(
        source=source, origin=origin, group=group, scan_id=scan_id, sample=str(sample),
        center=tuple(int(v) for v in (comp["center"] if center is None else center)),
        voxels=comp["voxels"], volume_mm3=comp["volume_mm3"],
        radius_mm=None if cut else comp["radius_mm"], contrast_hu=comp["contrast_hu"],
        hu_drop_hu=comp["hu_drop_hu"], depth_mm=depth, reference_depth_mm=reference,
        depth_ratio=depth / reference if depth is not None and reference else None,
        texture_sd_hu=comp["texture_sd_hu"], parenchyma_sd_hu=comp["parenchyma_sd_hu"],
        texture_ratio=comp["texture_ratio"], cut_by_crop=cut, records=records,
        grain_mm=comp["grain_mm"], parenchyma_grain_mm=comp["parenchyma_grain_mm"],
        grain_ratio=comp["grain_ratio"])


def group_of(sample_kind: str, tumor_kind: str) -> str:
    """The report row of a synthetic tumor: its kind, or ``mix`` for every tumor of a mix sample."""
    return "mix" if sample_kind == "mix" else tumor_kind


def match_records(labels: np.ndarray, n: int, centers: list) -> list[list[int]]:
    """For components 1..n of ``labels``, the indices of the records (centers in the same voxel
    coordinates, possibly outside the array) each holds: those whose center it contains; a
    component holding none gets the nearest center (its tumor's center lies outside the crop)."""
    held: list[list[int]] = [[] for _ in range(n)]
    shape = np.asarray(labels.shape)
    for r, c in enumerate(centers):
        c = np.asarray(c)
        if np.all(c >= 0) and np.all(c < shape) and labels[tuple(c)]:
            held[int(labels[tuple(c)]) - 1].append(r)
    if centers and any(not h for h in held):
        cs = np.asarray(centers, float)
        for i in range(n):
            if not held[i]:
                idx = np.argwhere(labels == i + 1)
                d = [float(np.min(((idx - c) ** 2).sum(1))) for c in cs]
                held[i].append(int(np.argmin(d)))
    return held

