"""The generator fidelity report (``tumorforge stats``): how synthetic tumors differ from real ones.

Inputs, any of them side by side: generated datasets (crops with provenance), ``tumorforge
synthesize`` output folders (whole scans as NIfTI), and manifests of annotated scans (real lesions).
Every lesion is measured the same way, on the arrays it was stored as:

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
  synthetic lesions, the prepared scan's liver for real ones).

From the tumor records (all tumors of the samples read, also those outside the crop: they describe
the generator's draws): the share of the drawn shape inside the liver and the vessel voxels inside
it (``inside_fraction``, ``vessel_voxels``: always measured on the drawn shape placed on the
prepared scan; a ``paper`` record's own values count the location region its rules tested),
location fallbacks by reason, and satellites dropped (``SampleParams.notes``).

Post-processing (``paper`` profile, tumors with ``mass_effect`` or ``capsule``) is measured by
paired synthesis of the tumor alone, with the flag on and off: mass effect as the displacement of
the organ surface (mm), capsule as the HU it adds around the tumor edge (peak and mean over the
band, band width in mm from the radial profile).

Choices: synthetic lesions are grouped by their tumor record's ``kind`` (tiny / small / medium /
large / satellite), except in ``mix`` samples, which form one group ``mix``; real lesions are
binned by radius at the geometric means of the Table 6 radii (:func:`size_bins`). A component in a
dataset crop belongs to the record whose center it holds (the largest if several: ``records`` > 1
says it merged), else to the nearest record center. A component touching the crop's faces is cut
by the crop: it is kept for every measure except the radius, and counted as ``cut_by_crop``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi

from tumorforge.manifests.conventions import LIVER, TUMOR, zyx_to_ras

from .metrics import lesions
from tumorforge.manifests.errors import UserError

RING_VOXELS = 3                       # width of the liver ring contrast is measured against
INSIDE_TARGET = 0.9                   # a tumor "keeps its volume" with this share inside the liver
SCAN_CACHE = 8                        # prepared scans kept in memory
DEFAULT_POST_EFFECTS = 8              # tumors measured by paired synthesis, per input
SIZE_ORDER = ("tiny", "small", "medium", "large", "mix", "satellite")
HISTOGRAMS = (("radius_mm", "equivalent radius (mm)"), ("contrast_hu", "contrast vs liver ring (HU)"),
              ("hu_drop_hu", "HU drop (tumor-free - synthetic, HU)"),
              ("depth_mm", "depth of the center below the liver surface (mm)"))
LESION_MEASURES = ("radius_mm", "contrast_hu", "hu_drop_hu", "depth_mm", "reference_depth_mm",
                   "depth_ratio", "texture_sd_hu", "parenchyma_sd_hu", "texture_ratio")
TUMOR_MEASURES = ("inside_fraction", "vessel_voxels", "shell_r")
DEFINITIONS = {
    "lesion": "26-connected component of label == tumor",
    "radius_mm": "equivalent-sphere radius (3V/4pi)^(1/3), V in mm^3 from the physical voxel "
                 "volume; components cut by a crop face are left out",
    "contrast_hu": f"mean HU of the lesion minus mean HU of the liver voxels within {RING_VOXELS} "
                   "voxels of it (not tumor)",
    "hu_drop_hu": "mean over the lesion of tumor-free HU minus synthetic HU (synthetic only)",
    "depth_mm": "distance of the lesion's center to the nearest voxel outside the organ (liver or "
                "tumor), Euclidean distance transform in mm; dataset crops: the tumor record's "
                "center in the whole prepared scan; whole scans: the lesion voxel nearest the "
                "component's centroid",
    "reference_depth_mm": "median depth of all liver voxels of the lesion's scan",
    "depth_ratio": "depth_mm / reference_depth_mm",
    "texture_sd_hu": "sd of HU in the lesion eroded by one voxel (the whole lesion when erosion "
                     "leaves nothing)",
    "parenchyma_sd_hu": "sd of parenchyma HU (liver without tumor and vessels): the record's "
                        "parenchyma_sd_hu for synthetic lesions",
    "texture_ratio": "texture_sd_hu / parenchyma_sd_hu",
    "inside_fraction": "share of the tumor's drawn shape inside the liver at its center (tumor "
                       "records; from the drawn shape on the prepared scan where a record lacks it)",
    "vessel_voxels": "vessel voxels inside the drawn shape (tumor records, idem)",
    "inside_90_share": "share of tumor records with inside_fraction >= 0.9 (the location rule's "
                       "default target)",
    "shell_r": "satellites: distance of the satellite's center to the large lesion's center, in "
               "units of the large lesion's nominal r; in_shell_share: the share within the "
               "input's satellite_shell (1.2-2.5 r by default)",
    "fallback": "share of tumor records with location_fallback, in total and by location_reason",
    "satellites": "satellites placed and dropped (SampleParams notes 'satellite dropped')",
    "mass_effect": "paired synthesis of the tumor alone with mass_effect on and off (capsule off): "
                   "distance (mm) from each organ-surface voxel of one to the organ surface of the "
                   "other, over surface voxels within gamma_max of the center; max_theory_mm = "
                   "4/27 gamma_max I/100, the largest radial shift eq. 5 can cause; max_mm, median_mm (all "
                   "those voxels), median_moved_mm (those that moved), moved_share. Labels are "
                   "warped nearest-neighbour, so shifts come in whole voxels",
    "capsule": "paired synthesis with capsule on and off (mass effect as recorded): HU added, "
               "profiled by signed distance to the tumor label's edge (mean per bin of half a "
               "voxel, negative inside); peak_hu = the profile's peak; width_mm = its full width "
               "at half the peak (linear interpolation between bins); band_mean_hu = mean added "
               "HU over the voxels of that band; max_hu = the largest added HU of any voxel; "
               "offset_mm = the peak's distance from the edge",
    "real_size_bins_mm": "real lesions are typed by radius, cut at the geometric means of the "
                         "Table 6 radii",
    "versus_real": "two-sample Kolmogorov-Smirnov test (scipy ks_2samp, two-sided) of each "
                   "synthetic size type against the real lesions of the same type, every --real "
                   "input pooled (mix and satellite against all real lesions): n, n_real, D, p; "
                   "measures radius_mm, contrast_hu, depth_ratio, texture_ratio",
}


class FidelityError(UserError, ValueError):
    """Bad input to the fidelity report; the message names the input."""


# ---------------------------------------------------------------------------------------------
# Measuring lesions on arrays


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


@dataclass
class PostEffect:
    """Paired-synthesis measurement of one tumor's post-processing."""

    source: str
    group: str
    scan_id: str
    sample: str
    radius_mm: float
    mass_effect: dict | None
    capsule: dict | None


def component_measures(image: np.ndarray, label: np.ndarray, spacing, *, base=None,
                       parenchyma_sd_hu: float | None = None, vessel=None) -> tuple[np.ndarray, list[dict]]:
    """Every lesion of ``label`` (component of label == TUMOR) measured on ``image`` (HU).

    Arrays share one grid; ``spacing`` (mm) is in their axis order. ``base`` is the tumor-free
    image (HU drop), ``parenchyma_sd_hu`` the parenchyma sd the texture is compared with (else
    computed over label == LIVER without ``vessel``). Returns the component labels and, per
    component: id, voxels, volume_mm3, radius_mm, center (the component voxel nearest its
    centroid), touches_edge, contrast_hu, hu_drop_hu, texture_sd_hu, parenchyma_sd_hu,
    texture_ratio. Depth is the caller's (it needs the whole organ).
    """
    spacing = tuple(float(s) for s in spacing)
    image = np.asarray(image, np.float64)
    labels, found = lesions(label == TUMOR, spacing)
    if parenchyma_sd_hu is None:
        paren = label == LIVER
        if vessel is not None:
            paren &= ~np.asarray(vessel, bool)
        parenchyma_sd_hu = float(image[paren].std()) if paren.any() else None
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
        ring = (ndi.distance_transform_edt(~comp) <= RING_VOXELS) & ~comp & (label[win] == LIVER)
        mean = float(img[comp].mean())
        interior = ndi.binary_erosion(comp)
        sd = float(img[interior if interior.any() else comp].std())
        idx = np.argwhere(comp)
        near = idx[np.argmin(((idx - idx.mean(0)) ** 2).sum(1))] + np.array([w.start for w in win])
        row = {**les, "center": tuple(int(v) for v in near), "touches_edge": touches,
               "contrast_hu": mean - float(img[ring].mean()) if ring.any() else None,
               "hu_drop_hu": (float((np.asarray(base, np.float64)[win][comp] - img[comp]).mean())
                              if base is not None else None),
               "texture_sd_hu": sd, "parenchyma_sd_hu": parenchyma_sd_hu,
               "texture_ratio": sd / parenchyma_sd_hu if parenchyma_sd_hu else None}
        out.append(row)
    return labels, out


def organ_depth(organ: np.ndarray, spacing) -> np.ndarray:
    """Depth (mm) of every organ voxel: Euclidean distance to the nearest voxel outside the organ
    (the array's outside counts as outside), float32, 0 outside. Computed in the organ's box."""
    organ = np.asarray(organ, bool)
    out = np.zeros(organ.shape, np.float32)
    if not organ.any():
        return out
    idx = np.argwhere(organ)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))
    d = ndi.distance_transform_edt(np.pad(organ[box], 1), sampling=tuple(float(s) for s in spacing))
    out[box] = d[1:-1, 1:-1, 1:-1]
    return out


def measure_scan(image: np.ndarray, label: np.ndarray, spacing, *, base=None,
                 parenchyma_sd_hu: float | None = None, vessel=None, depth=None) -> list[dict]:
    """Every lesion of a whole scan (``component_measures``) with its depth: ``depth_mm`` at the
    lesion voxel nearest its centroid and ``reference_depth_mm``, the median depth of all organ
    voxels. ``depth`` is the organ depth map (mm) if the caller has one (else computed from
    label >= LIVER, the organ: liver or tumor)."""
    organ = label >= LIVER
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
    from tumorforge.generator.config import PAPER_SIZES
    presets = sorted((sizes or PAPER_SIZES).items(), key=lambda kv: kv[1].radius_mm)
    radii = [p.radius_mm for _, p in presets]
    cuts = [0.0] + [math.sqrt(a * b) for a, b in zip(radii, radii[1:])] + [math.inf]
    return [(name, cuts[n], cuts[n + 1]) for n, (name, _) in enumerate(presets)]


def real_group(radius_mm: float, bins) -> str:
    return next(name for name, lo, hi in bins if lo <= radius_mm < hi)


def _lesion(source, origin, group, scan_id, sample, comp, *, depth=None, reference=None,
            center=None, cut=False, records=0) -> Lesion:
    return Lesion(
        source=source, origin=origin, group=group, scan_id=scan_id, sample=str(sample),
        center=tuple(int(v) for v in (comp["center"] if center is None else center)),
        voxels=comp["voxels"], volume_mm3=comp["volume_mm3"],
        radius_mm=None if cut else comp["radius_mm"], contrast_hu=comp["contrast_hu"],
        hu_drop_hu=comp["hu_drop_hu"], depth_mm=depth, reference_depth_mm=reference,
        depth_ratio=depth / reference if depth is not None and reference else None,
        texture_sd_hu=comp["texture_sd_hu"], parenchyma_sd_hu=comp["parenchyma_sd_hu"],
        texture_ratio=comp["texture_ratio"], cut_by_crop=cut, records=records)


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


# ---------------------------------------------------------------------------------------------
# Post-processing by paired synthesis


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask)


def mass_effect_shift(with_label: np.ndarray, without_label: np.ndarray, spacing, center,
                      gamma_max_mm: float, intensity: float) -> dict:
    """Displacement (mm) of the organ surface (label >= LIVER) between two renderings of one
    tumor, over the surface voxels of either within ``gamma_max_mm`` of ``center`` (the only part
    eq. 5 can move)."""
    spacing = tuple(float(s) for s in spacing)
    a, b = _surface(with_label >= LIVER), _surface(without_label >= LIVER)
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(a.shape, center, spacing)],
                        indexing="ij", sparse=True)
    sphere = sum(g ** 2 for g in grids) <= gamma_max_mm ** 2
    dists = []
    for one, other in ((a, b), (b, a)):
        if other.any():
            d = ndi.distance_transform_edt(~other, sampling=spacing)
            dists.append(d[one & sphere])
    d = np.concatenate(dists) if dists else np.zeros(0)
    moved = d[d > 0]
    return {"max_mm": float(d.max()) if d.size else 0.0,
            "median_mm": float(np.median(d)) if d.size else None,
            "median_moved_mm": float(np.median(moved)) if moved.size else None,
            "moved_share": float(moved.size / d.size) if d.size else None,
            "surface_voxels": int(d.size),
            "max_theory_mm": 4.0 / 27.0 * gamma_max_mm * intensity / 100.0}


def capsule_rim(with_image: np.ndarray, without_image: np.ndarray, tumor: np.ndarray,
                spacing) -> dict:
    """The HU a capsule adds (``with - without``), profiled by signed distance (mm) to the edge of
    ``tumor`` (negative inside): mean added HU per bin of half a voxel (bins no voxel falls in are
    skipped), its peak, and the full width at half the peak, with linear interpolation between
    bins; see ``DEFINITIONS['capsule']``."""
    s = float(min(spacing))
    added = np.asarray(with_image, np.float64) - np.asarray(without_image, np.float64)
    tumor = np.asarray(tumor, bool)
    if not tumor.any() or tumor.all():
        return {"peak_hu": None, "band_mean_hu": None, "width_mm": None, "max_hu": None,
                "offset_mm": None}
    # Voxel-center distances: the edge lies half a voxel beyond the last voxel on either side.
    outside = ndi.distance_transform_edt(~tumor, sampling=spacing)
    inside = ndi.distance_transform_edt(tumor, sampling=spacing)
    signed = np.where(tumor, -(inside - s / 2), outside - s / 2).ravel()
    bins = np.floor(signed / (s / 2)).astype(np.int64)
    bins -= bins.min()
    counts = np.bincount(bins)
    used = np.flatnonzero(counts)
    xs = (np.bincount(bins, signed) / np.maximum(counts, 1))[used]
    ps = (np.bincount(bins, added.ravel()) / np.maximum(counts, 1))[used]
    k = int(np.argmax(ps))
    peak, half = float(ps[k]), float(ps[k]) / 2
    lo = hi = k
    while lo > 0 and ps[lo - 1] >= half:
        lo -= 1
    while hi + 1 < len(ps) and ps[hi + 1] >= half:
        hi += 1

    def crossing(a: int, b: int) -> float:     # where the profile passes half between a and b
        return float(xs[a] + (half - ps[a]) / (ps[b] - ps[a]) * (xs[b] - xs[a]))

    left = crossing(lo - 1, lo) if lo > 0 else float(xs[lo])
    right = crossing(hi + 1, hi) if hi + 1 < len(ps) else float(xs[hi])
    band = np.isin(bins, used[lo:hi + 1])
    return {"peak_hu": peak, "band_mean_hu": float(added.ravel()[band].mean()),
            "width_mm": right - left, "max_hu": float(added.max()), "offset_mm": float(xs[k])}


def post_effects(scan, params, tumor, backend) -> tuple[dict | None, dict | None]:
    """(mass effect, capsule) measurements of one ``paper`` tumor by paired synthesis: the tumor
    alone (one-tumor SampleParams) in a crop holding everything it touches, rendered with the flag
    on and off. None for an effect the tumor does not have."""
    from tumorforge.generator.synthesize import synthesize
    s = float(scan.spacing_mm[0])
    reach = max(tumor.gamma_max_mm, max(tumor.half_axes_mm) + 3 * tumor.sigma_e_mm
                + 3 * tumor.sigma_c_mm) + 3 * tumor.sigma_d_mm + 2 * s
    h = int(math.ceil(reach / s)) + 2
    one = dataclasses.replace(params, tumors=(tumor,), crop_size=(2 * h + 1,) * 3,
                              crop_origin=tuple(int(c) - h for c in tumor.center))

    def render(**flags):
        crop = synthesize(scan, dataclasses.replace(one, tumors=(dataclasses.replace(tumor, **flags),)),
                          backend)
        return zyx_to_ras(crop.image), zyx_to_ras(crop.label)

    spacing = tuple(float(v) for v in scan.spacing_mm)
    plain = render(mass_effect=tumor.mass_effect, capsule=False)    # as recorded, no capsule
    mass = cap = None
    if tumor.mass_effect:
        mass = mass_effect_shift(plain[1], render(mass_effect=False, capsule=False)[1], spacing,
                                 (h, h, h), tumor.gamma_max_mm, tumor.intensity)
    if tumor.capsule:
        cap = capsule_rim(render()[0], plain[0], plain[1] == TUMOR, spacing)
    return mass, cap


# ---------------------------------------------------------------------------------------------
# Prepared scans


@dataclass
class Prepared:
    """A prepared scan with what the report reads from it: the depth of every voxel (mm, arrays
    of the scan), the median liver depth and the parenchyma sd without tumor and vessels."""

    scan: object
    depth: np.ndarray
    median_depth_mm: float
    parenchyma_sd_hu: float

    @classmethod
    def of(cls, scan) -> "Prepared":
        depth = np.zeros(scan.shape, np.float32)
        depth.ravel()[scan.liver_voxels] = scan.liver_depth_mm       # prepare's own depth map
        paren = scan.liver & ~scan.tumor & ~scan.vessel
        return cls(scan, depth, float(np.median(scan.liver_depth_mm)),
                   float(scan.image[paren].std()) if paren.any() else float("nan"))

    def depth_at(self, full_vox) -> float | None:
        """Depth (mm) at a voxel of the full resampled scan; None outside the prepared arrays."""
        c = np.asarray(full_vox) - np.asarray(self.scan.origin_vox)
        if np.any(c < 0) or np.any(c >= np.asarray(self.depth.shape)):
            return None
        return float(self.depth[tuple(int(v) for v in c)])


class ScanCache:
    """Prepared scans by (manifest entry, generator configuration), the last ``size`` used."""

    def __init__(self, size: int = SCAN_CACHE):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self.prepared = 0
        self.seconds = 0.0

    def get(self, entry, config) -> Prepared:
        from tumorforge.generator.scans import load_prepared
        from tumorforge.manifests.records import canonical_json
        key = (entry.scan_id, entry.sha256["image"], canonical_json(config.to_json()))
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        started = time.perf_counter()
        item = Prepared.of(load_prepared(entry, config))
        self.seconds += time.perf_counter() - started
        self.prepared += 1
        self._items[key] = item
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return item


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Measured:
    """What one input contributed."""

    name: str
    kind: str                     # dataset / synthesize / real
    path: str
    info: dict = field(default_factory=dict)
    lesions: list = field(default_factory=list)
    tumors: list = field(default_factory=list)
    post: list = field(default_factory=list)
    satellites_dropped: int = 0
    satellites_placed: int = 0


def chosen(total: int, n: int | None) -> list[int]:
    """Which of ``total`` items to read when at most ``n`` are asked for: evenly spaced, always
    the same (all of them when ``n`` is None or not smaller than ``total``)."""
    if n is None or n >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, n)})


def _entries(manifest: str, allow_roots) -> dict:
    from tumorforge.manifests.schema import default_roots, read_manifest
    return {e.scan_id: e for e in read_manifest(manifest, default_roots(manifest, allow_roots))}


def drawn_inside(prepared: Prepared, tumor) -> tuple[float, int]:
    """(share of the tumor's drawn shape inside the liver, vessel voxels inside it): the drawn
    shape (deformed ellipsoid before the mask blur) placed on the prepared scan. Measured, not read
    from the record: a ``paper`` record's ``inside_fraction`` and ``vessel_voxels`` count the
    location region its rules tested (the undeformed ellipsoid in 16 boxes), and the report shows
    what the rules achieved on the tumor itself."""
    from tumorforge.generator.location import drawn_shape_counts
    return drawn_shape_counts(prepared.scan, tumor)


def record_tumors(measured: Measured, prepared: Prepared, params, sample: str, visible: set) -> None:
    """Tumor records of one sample (or case), and its satellite notes, into ``measured``."""
    spacing = np.asarray(prepared.scan.spacing_mm, float)
    large = params.tumors[0] if params.kind == "satellite" and params.tumors else None
    for n, t in enumerate(params.tumors):
        inside, vessels = drawn_inside(prepared, t)
        shell = None
        if t.kind == "satellite" and large is not None:
            offset = (np.asarray(t.center) - np.asarray(large.center)) * spacing
            shell = float(np.linalg.norm(offset) / large.radius_mm)
        measured.tumors.append(TumorRecord(
            source=measured.name, group=group_of(params.kind, t.kind), scan_id=params.scan_id,
            sample=sample, kind=t.kind, radius_mm=float(t.radius_mm), inside_fraction=inside,
            vessel_voxels=vessels,
            location_fallback=bool(getattr(t, "location_fallback", False)),
            location_reason=str(getattr(t, "location_reason", "") or ""), visible=n in visible,
            shell_r=shell))
        measured.satellites_placed += t.kind == "satellite"
    measured.satellites_dropped += sum(1 for note in getattr(params, "notes", ())
                                       if note.startswith("satellite dropped"))


def _post(measured: Measured, prepared: Prepared, params, sample: str, backend, budget: int) -> None:
    from tumorforge.generator.config import PAPER_PROFILES
    if params.profile not in PAPER_PROFILES:
        return
    for t in params.tumors:
        if len(measured.post) >= budget:
            return
        if getattr(t, "mass_effect", False) or getattr(t, "capsule", False):
            mass, cap = post_effects(prepared.scan, params, t, backend)
            measured.post.append(PostEffect(measured.name, group_of(params.kind, t.kind),
                                            params.scan_id, sample, float(t.radius_mm), mass, cap))


def measure_crop(measured: Measured, prepared: Prepared, params, image_zyx, label_zyx, sample: str,
                 backend, bins) -> None:
    """One dataset sample: its lesions on the stored crop, its tumor records."""
    from tumorforge.generator.synthesize import synthesize
    real = params.profile == "real"
    image, label = zyx_to_ras(image_zyx), zyx_to_ras(label_zyx)
    base = None
    if not real:
        base = zyx_to_ras(synthesize(prepared.scan, dataclasses.replace(params, tumors=()),
                                     backend).image)
    spacing = prepared.scan.spacing_mm
    sd = prepared.parenchyma_sd_hu if real else float(params.parenchyma_sd_hu)
    labels, comps = component_measures(image, label, spacing, base=base, parenchyma_sd_hu=sd)
    origin = np.asarray(params.crop_origin)
    centers = [np.asarray(t.center) - origin for t in params.tumors]
    held = match_records(labels, len(comps), centers) if not real else [[] for _ in comps]
    visible = set()
    for comp, recs in zip(comps, held):
        if real:
            full = np.asarray(comp["center"]) + origin
            group, depth_center = real_group(comp["radius_mm"], bins), full
        else:
            visible.update(recs)
            main = max(recs, key=lambda r: params.tumors[r].radius_mm)
            t = params.tumors[main]
            group, depth_center, full = group_of(params.kind, t.kind), t.center, t.center
        measured.lesions.append(_lesion(
            measured.name, "real" if real else "synthetic", group, params.scan_id, sample, comp,
            depth=prepared.depth_at(depth_center), reference=prepared.median_depth_mm, center=full,
            cut=comp["touches_edge"], records=len(recs)))
    record_tumors(measured, prepared, params, sample, visible)


def measure_dataset(url: str, name: str, samples: int | None, manifest: str | None, allow_roots,
                    backend, cache: ScanCache, post_budget: int, bins, log=print) -> Measured:
    """Lesions, tumor records and post-processing of (up to ``samples``) samples of a dataset."""
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.params import SampleParams
    from tumorforge.manifests.dataset.reader import Dataset
    ds = Dataset(url)
    picks = chosen(len(ds), samples)
    manifest = manifest or ds.index.manifest
    measured = Measured(name, "dataset", url, {
        "dataset_id": ds.dataset_id, "samples": len(ds), "samples_read": len(picks),
        "manifest": manifest, "profile": ds.index.spec["generator"].get("profile"),
        "generator_config": ds.index.spec["generator"], "corrupt_samples": []})
    # Provenance first, then the samples scan by scan, so each scan is prepared once.
    order = sorted(picks, key=lambda i: (ds.sample(i)[2].scan_id, i))
    entries = None
    for i in order:
        image, label, prov = ds.sample(i)
        want = ds.hashes(prov.key)
        if want is None or not want.matches(image, label):
            measured.info["corrupt_samples"].append(prov.key)
            continue
        if entries is None:
            entries = _entries(manifest, [*ds.index.allow_roots, *allow_roots])
        entry = entries.get(prov.scan_id)
        if entry is None:
            raise FidelityError(f"scan {prov.scan_id} of sample {i} is not in {manifest} (pass the "
                                f"manifest the dataset was made from with --manifest)")
        if entry.sha256 != prov.scan_sha256:
            raise FidelityError(f"scan {prov.scan_id} in {manifest} has other sha256 than the one "
                                f"sample {i} was made from (the scan changed since)")
        prepared = cache.get(entry, GeneratorConfig.from_json(prov.generator_config))
        params = SampleParams.from_json(prov.params)
        measure_crop(measured, prepared, params, image, label, str(i), backend, bins)
        _post(measured, prepared, params, str(i), backend, post_budget)
    return measured


def measure_real(manifest: str, name: str, samples: int | None, allow_roots, config,
                 cache: ScanCache, bins) -> Measured:
    """Real lesions of the ``tumor`` scans of a manifest, prepared as the generator prepares
    scans (RAS, ``config``'s spacing), measured as synthetic lesions are (no HU drop)."""
    entries = sorted((e for e in _entries(manifest, allow_roots).values() if e.role == "tumor"),
                     key=lambda e: e.scan_id)
    if not entries:
        raise FidelityError(f"{manifest} holds no scan with role 'tumor' (real lesions)")
    picks = chosen(len(entries), samples)
    measured = Measured(name, "real", manifest, {"scans": len(entries), "scans_read": len(picks),
                                                 "spacing_mm": list(config.target_spacing_mm)})
    for i in picks:
        e = entries[i]
        prepared = cache.get(e, config)
        scan = prepared.scan
        for comp in measure_scan(scan.image, scan.label(), scan.spacing_mm, depth=prepared.depth,
                                 parenchyma_sd_hu=prepared.parenchyma_sd_hu):
            measured.lesions.append(_lesion(
                name, "real", real_group(comp["radius_mm"], bins), e.scan_id, e.scan_id, comp,
                depth=comp["depth_mm"], reference=prepared.median_depth_mm,
                center=np.asarray(comp["center"]) + np.asarray(scan.origin_vox)))
    return measured


# ---------------------------------------------------------------------------------------------
# Aggregation


def distribution(values) -> dict:
    """n, median, quartiles and IQR of the values that are not None."""
    v = np.asarray([x for x in values if x is not None], float)
    if v.size == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None, "iqr": None}
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(v.size), "median": float(med), "q1": float(q1), "q3": float(q3),
            "iqr": float(q3 - q1)}


def _group_order(name: str):
    return (SIZE_ORDER.index(name) if name in SIZE_ORDER else len(SIZE_ORDER), name == "all", name)


def summarize(inputs: list[Measured]) -> list[dict]:
    """One row per (input, lesion origin, size type), plus ``all`` per input and origin."""
    from tumorforge.generator.config import GeneratorConfig
    rows = []
    for m in inputs:
        origins = sorted({les.origin for les in m.lesions} | ({"synthetic"} if m.tumors else set()))
        for origin in origins:
            lesions_ = [les for les in m.lesions if les.origin == origin]
            tumors = m.tumors if origin == "synthetic" else []
            groups = sorted({les.group for les in lesions_} | {t.group for t in tumors},
                            key=_group_order)
            for group in groups + ["all"]:
                ls = [les for les in lesions_ if group in ("all", les.group)]
                ts = [t for t in tumors if group in ("all", t.group)]
                row = {"source": m.name, "input": m.kind, "origin": origin, "type": group,
                       "lesions": len(ls), "tumors": len(ts),
                       "cut_by_crop": sum(les.cut_by_crop for les in ls),
                       "merged": sum(les.records > 1 for les in ls),
                       "measures": {k: distribution(getattr(les, k) for les in ls)
                                    for k in LESION_MEASURES}}
                row["measures"].update({k: distribution(getattr(t, k) for t in ts)
                                        for k in TUMOR_MEASURES})
                if ts:
                    reasons = sorted({t.location_reason for t in ts if t.location_fallback})
                    row["vessel_hit_share"] = sum((t.vessel_voxels or 0) > 0 for t in ts) / len(ts)
                    row["inside_90_share"] = sum((t.inside_fraction or 0) >= INSIDE_TARGET
                                                 for t in ts) / len(ts)
                    shells = [t.shell_r for t in ts if t.shell_r is not None]
                    lo, hi = (m.info.get("generator_config") or {}).get(
                        "satellite_shell", GeneratorConfig().satellite_shell)
                    row["in_shell_share"] = (sum(lo <= v <= hi for v in shells) / len(shells)
                                             if shells else None)
                    row["fallback"] = {
                        "share": sum(t.location_fallback for t in ts) / len(ts),
                        "by_reason": {r or "unspecified": sum(t.location_fallback and
                                                              t.location_reason == r for t in ts)
                                      / len(ts) for r in reasons}}
                else:
                    row["vessel_hit_share"] = None
                    row["inside_90_share"] = None
                    row["in_shell_share"] = None
                    row["fallback"] = None
                rows.append(row)
    return rows


KS_MEASURES = ("radius_mm", "contrast_hu", "depth_ratio", "texture_ratio")


def compare_to_real(inputs: list[Measured], bins) -> list[dict]:
    """Two-sample Kolmogorov-Smirnov tests of each synthetic size type against the real lesions of
    the same type (every real input pooled; ``mix`` and ``satellite`` against all real lesions),
    per measure of ``KS_MEASURES``: n on each side, the statistic D and its p-value."""
    from scipy.stats import ks_2samp
    real = [les for m in inputs for les in m.lesions if les.origin == "real"]
    if not real:
        return []
    rows = []
    for m in inputs:
        synthetic = [les for les in m.lesions if les.origin == "synthetic"]
        for group in sorted({les.group for les in synthetic}, key=_group_order):
            versus = "all" if group not in {name for name, _, _ in bins} else group
            ref = [les for les in real if versus == "all" or les.group == versus]
            row = {"source": m.name, "type": group, "real_type": versus, "tests": {}}
            for k in KS_MEASURES:
                a = [getattr(les, k) for les in synthetic if les.group == group]
                b = [getattr(les, k) for les in ref]
                a, b = [x for x in a if x is not None], [x for x in b if x is not None]
                if len(a) >= 2 and len(b) >= 2:
                    test = ks_2samp(a, b)
                    row["tests"][k] = {"n": len(a), "n_real": len(b),
                                       "d": float(test.statistic), "p": float(test.pvalue)}
                else:
                    row["tests"][k] = {"n": len(a), "n_real": len(b), "d": None, "p": None}
            rows.append(row)
    return rows


def summarize_post(inputs: list[Measured]) -> list[dict]:
    """Post-processing figures per (input, size type): distributions over the tumors measured."""
    rows = []
    for m in inputs:
        for group in sorted({p.group for p in m.post}, key=_group_order):
            ps = [p for p in m.post if p.group == group]
            mass = [p.mass_effect for p in ps if p.mass_effect]
            cap = [p.capsule for p in ps if p.capsule]
            rows.append({"source": m.name, "type": group, "tumors": len(ps),
                         "mass_effect": {k: distribution(x[k] for x in mass)
                                         for k in ("max_mm", "median_mm", "median_moved_mm",
                                                   "moved_share", "max_theory_mm")},
                         "capsule": {k: distribution(x[k] for x in cap)
                                     for k in ("peak_hu", "band_mean_hu", "width_mm", "max_hu",
                                               "offset_mm")}})
    return rows


# ---------------------------------------------------------------------------------------------
# Output: table, JSON, histograms


def _cell(d: dict, digits: int = 1) -> str:
    if not d or d["n"] == 0:
        return "n/a"
    return f"{d['median']:.{digits}f} [{d['q1']:.{digits}f}, {d['q3']:.{digits}f}]"


def _share(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def format_table(rows: list[dict], post_rows: list[dict], versus_real: list[dict] = ()) -> str:
    """The report as text: one line per (input, origin, size type); medians [quartiles]."""
    head = ("source", "origin", "type", "lesions", "radius mm", "contrast HU", "HU drop",
            "depth mm", "depth/ref", "tex sd ratio", "tumors", "inside", ">=90% in", "vessel hit",
            "fallback")
    lines = []
    for r in rows:
        m = r["measures"]
        fb = r["fallback"]
        fallback = "n/a" if fb is None else _share(fb["share"]) + (
            " (" + ", ".join(f"{k} {_share(v)}" for k, v in fb["by_reason"].items()) + ")"
            if fb["by_reason"] else "")
        inside = m["inside_fraction"]
        lines.append((r["source"], r["origin"], r["type"],
                      f"{r['lesions']}" + (f" ({r['cut_by_crop']} cut)" if r["cut_by_crop"] else ""),
                      _cell(m["radius_mm"]), _cell(m["contrast_hu"]), _cell(m["hu_drop_hu"]),
                      _cell(m["depth_mm"]), _cell(m["depth_ratio"], 2), _cell(m["texture_ratio"], 2),
                      str(r["tumors"]) if r["tumors"] else "-",
                      "n/a" if inside["n"] == 0 else f"{inside['median']:.2f}",
                      _share(r["inside_90_share"]), _share(r["vessel_hit_share"]), fallback))
    text = [_columns(head, lines)]
    sat = [r for r in rows if r.get("in_shell_share") is not None and r["type"] != "all"]
    if sat:
        text.append("satellites (distance to the large lesion's center, in its r):\n" + _columns(
            ("source", "type", "satellites", "in shell", "distance r"),
            [(r["source"], r["type"], str(r["measures"]["shell_r"]["n"]),
              _share(r["in_shell_share"]), _cell(r["measures"]["shell_r"], 2)) for r in sat]))
    if post_rows:
        phead = ("source", "type", "tumors", "mass effect max mm", "moved share", "eq.5 max mm",
                 "capsule peak HU", "band mean HU", "band width mm", "rim offset mm")
        plines = [(p["source"], p["type"], str(p["tumors"]), _cell(p["mass_effect"]["max_mm"], 2),
                   _cell(p["mass_effect"]["moved_share"], 2),
                   _cell(p["mass_effect"]["max_theory_mm"], 2), _cell(p["capsule"]["peak_hu"]),
                   _cell(p["capsule"]["band_mean_hu"]), _cell(p["capsule"]["width_mm"]),
                   _cell(p["capsule"]["offset_mm"])) for p in post_rows]
        text.append("post-processing (paired synthesis, paper profile):\n" + _columns(phead, plines))
    if versus_real:
        def ks(t):
            return "n/a" if t["p"] is None else f"D {t['d']:.2f} p {t['p']:.2g}"
        text.append("synthetic vs real lesions of the same type (two-sample KS; p < 0.05: the "
                    "distributions differ):\n" + _columns(
                        ("source", "type", "vs real", *KS_MEASURES),
                        [(v["source"], v["type"], v["real_type"],
                          *(ks(v["tests"][k]) for k in KS_MEASURES)) for v in versus_real]))
    return "\n\n".join(text)


def _columns(head, lines) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def plot_histograms(inputs: list[Measured], out_dir: str) -> list[str]:
    """One PNG per measure (radius, contrast, HU drop, depth): a panel per size type (and one of
    all lesions), every (input, origin) overlaid on shared bins, as densities. Returns the file
    names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = {}
    for m in inputs:
        for les in m.lesions:
            series.setdefault((m.name, les.origin), []).append(les)
    groups = sorted({les.group for ls in series.values() for les in ls}, key=_group_order)
    groups += ["all"] if len(groups) > 1 else []
    written = []
    for measure, title in HISTOGRAMS:
        per = {(key, g): [getattr(les, measure) for les in ls if g in ("all", les.group)
                          and getattr(les, measure) is not None]
               for key, ls in series.items() for g in groups}
        if not any(per.values()):
            continue
        cols = min(3, len(groups))
        rows = int(math.ceil(len(groups) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, g in zip(axes.ravel(), groups):
            values = [v for (key, gg), vs in per.items() if gg == g for v in vs]
            if values:
                edges = np.histogram_bin_edges(values, bins=min(30, max(5, len(values) // 3)))
                for n, key in enumerate(series):
                    vs = per[(key, g)]
                    if vs:
                        ax.hist(vs, bins=edges, histtype="step", linewidth=1.5, density=True,
                                label=f"{key[0]} ({key[1]}, n={len(vs)})", color=f"C{n % 10}",
                                linestyle="--" if key[1] == "real" else "-")
                ax.legend(fontsize=7)
            ax.set_title(g)
            ax.set_xlabel(title, fontsize=8)
        for ax in axes.ravel()[len(groups):]:
            ax.axis("off")
        fig.tight_layout()
        name = f"{measure}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def versions() -> dict:
    import matplotlib
    import scipy
    from tumorforge.generator import GENERATOR_VERSION
    return {"tumorforge_generator": GENERATOR_VERSION, "numpy": np.__version__,
            "scipy": scipy.__version__, "matplotlib": matplotlib.__version__,
            "python": platform.python_version()}


def report(inputs: list[Measured], command: str, seconds: float, cache: ScanCache, bins,
           out_dir: str | None) -> dict:
    """The whole report as a JSON-ready dict; with ``out_dir``, also ``stats.json`` and the PNGs."""
    from tumorforge.manifests.bench_report import machine
    from tumorforge.manifests.records import json_safe
    result = {
        "tool": "tumorforge stats", "command": command, "date": time.strftime("%Y-%m-%d"),
        "machine": machine(), "versions": versions(), "seconds": round(seconds, 2),
        "scans_prepared": cache.prepared, "prepare_seconds": round(cache.seconds, 2),
        "definitions": DEFINITIONS,
        "real_size_bins_mm": {name: [lo, None if math.isinf(hi) else hi] for name, lo, hi in bins},
        "inputs": [{"name": m.name, "kind": m.kind, "path": m.path, **m.info,
                    "lesions": len(m.lesions), "tumors": len(m.tumors),
                    "satellites": {"placed": m.satellites_placed, "dropped": m.satellites_dropped,
                                   "dropped_share": (m.satellites_dropped /
                                                     (m.satellites_placed + m.satellites_dropped)
                                                     if m.satellites_placed + m.satellites_dropped
                                                     else None)},
                    "post_effects_measured": len(m.post)} for m in inputs],
        "groups": summarize(inputs), "post_effects": summarize_post(inputs),
        "versus_real": compare_to_real(inputs, bins),
        "lesions": [dataclasses.asdict(les) for m in inputs for les in m.lesions],
        "tumors": [dataclasses.asdict(t) for m in inputs for t in m.tumors],
        "post_effect_tumors": [dataclasses.asdict(p) for m in inputs for p in m.post],
        "figures": [],
    }
    if out_dir:
        import json
        os.makedirs(out_dir, exist_ok=True)
        result["figures"] = plot_histograms(inputs, out_dir)
        result = json_safe(result)
        with open(os.path.join(out_dir, "stats.json"), "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
    return json_safe(result)


# ---------------------------------------------------------------------------------------------
# The command


def _names(paths) -> list[str]:
    """Short, unique names for inputs: the last part of each path."""
    out, seen = [], {}
    for p in paths:
        base = p.rstrip("/").rsplit("/", 1)[-1] or p
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def _kind(path: str) -> str:
    """``dataset`` (an index.json) or ``synthesize`` (a synthesize output folder)."""
    from tumorforge.manifests import storage
    from tumorforge.manifests.dataset import names
    if not storage.exists(path.rstrip("/")):
        raise FidelityError("no such file or folder")
    return "dataset" if storage.exists(storage.join(path, names.INDEX)) else "synthesize"


def run(inputs, real=(), *, samples: int | None = None, manifest: str | None = None,
        allow_roots=(), backend: str = "numpy", post_effects_max: int = DEFAULT_POST_EFFECTS,
        out_dir: str | None = None, command: str = "", log=print) -> dict:
    """Measure every input and write the report (see the module text). ``inputs``: datasets or
    synthesize output folders; ``real``: manifests of annotated scans. Raises
    :class:`FidelityError` naming the input at fault."""
    from tumorforge.generator.backend import BackendError, get_backend
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.prepare import PrepareError
    from tumorforge.manifests.dataset.reader import DatasetError
    from tumorforge.manifests.nifti import ScanError
    from tumorforge.manifests.records import RecordError
    from tumorforge.manifests.schema import ManifestError
    known = (FidelityError, DatasetError, ManifestError, ScanError, PrepareError, RecordError,
             BackendError, OSError, ValueError)
    if not inputs and not real:
        raise FidelityError("no input: name a dataset or synthesize output, or --real MANIFEST")
    if samples is not None and samples < 1:
        raise FidelityError(f"--samples {samples}: expected at least 1")
    if post_effects_max < 0:
        raise FidelityError(f"--post-effects {post_effects_max}: expected 0 or more")
    try:
        synthesis = get_backend(backend)
    except BackendError as exc:
        raise FidelityError(f"--backend {backend}: {exc}") from None
    started = time.perf_counter()
    cache = ScanCache()
    bins = size_bins()
    names = _names([*inputs, *real])
    measured: list[Measured] = []
    spacing = None
    for path, name in zip(inputs, names):
        log(f"stats: reading {path}")
        try:
            kind = _kind(path)
            if kind == "dataset":
                m = measure_dataset(path, name, samples, manifest, allow_roots, synthesis, cache,
                                    post_effects_max, bins, log)
            else:
                m = measure_synthesize(path, name, samples, allow_roots, synthesis, cache,
                                       post_effects_max, bins)
        except known as exc:
            raise FidelityError(f"{path}: {_one_line(exc)}") from None
        spacing = spacing or _spacing_of(m)
        measured.append(m)
    config = GeneratorConfig(**({"target_spacing_mm": spacing} if spacing else {}))
    for path, name in zip(real, names[len(inputs):]):
        log(f"stats: reading real lesions of {path}")
        try:
            measured.append(measure_real(path, name, samples, allow_roots, config, cache, bins))
        except known as exc:
            raise FidelityError(f"--real {path}: {_one_line(exc)}") from None
    try:
        return report(measured, command, time.perf_counter() - started, cache, bins, out_dir)
    except OSError as exc:
        raise FidelityError(f"--out {out_dir}: {_one_line(exc)}") from None


def _spacing_of(m: Measured):
    config = m.info.get("generator_config") or {}
    spacing = config.get("target_spacing_mm")
    return tuple(float(s) for s in spacing) if spacing else None


def _one_line(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def measure_synthesize(path: str, name: str, samples: int | None, allow_roots, backend,
                       cache: ScanCache, post_budget: int, bins) -> Measured:
    """Lesions, tumor records and post-processing of (up to ``samples``) cases of a ``tumorforge
    synthesize`` output, measured on the whole scans as written (prepared or native grid)."""
    from tumorforge.generator.scans import read_scan
    from tumorforge.generator.whole_scan import SynthesizeError, output_grid, read_run
    from tumorforge.manifests import storage
    from tumorforge.manifests.conventions import to_ras
    from tumorforge.manifests.readers import read_volume
    try:
        run = read_run(path)
    except SynthesizeError as exc:
        raise FidelityError(f"not a tumorforge dataset (no index.json) nor a synthesize output "
                            f"({_one_line(exc).removeprefix(path + ': ')})") from None
    config = run.config()
    picks = chosen(len(run.cases), samples)
    measured = Measured(name, "synthesize", path, {
        "cases": len(run.cases), "cases_read": len(picks), "manifest": run.manifest,
        "grid": run.grid, "profile": config.profile, "generator_config": run.generator_config,
        "corrupt_samples": []})
    entries = _entries(run.manifest, [*run.allow_roots, *allow_roots])
    grids: dict = {}
    for i in sorted(picks, key=lambda n: (run.cases[n].scan_id, n)):
        case = run.cases[i]
        entry = entries.get(case.scan_id)
        if entry is None:
            raise FidelityError(f"scan {case.scan_id} of case {case.case} is not in {run.manifest}")
        if entry.sha256 != case.scan_sha256:
            raise FidelityError(f"scan {case.scan_id} in {run.manifest} has other sha256 than the "
                                f"one case {case.case} was made from (the scan changed since)")
        image_vol = read_volume(storage.join(path, case.image))
        label_vol = read_volume(storage.join(path, case.label))
        if {"image": image_vol.sha256, "label": label_vol.sha256} != case.sha256:
            measured.info["corrupt_samples"].append(case.case)
            continue
        prepared = cache.get(entry, config)
        params = case.sample_params()
        image, affine = to_ras(np.asarray(image_vol.data, np.float32), image_vol.info.affine)
        label, _ = to_ras(np.asarray(label_vol.data).astype(np.uint8), label_vol.info.affine)
        base = grids.get(case.scan_id)
        if base is None:               # cases come sorted by scan: keep one scan's grid
            grids = {case.scan_id: output_grid(run.grid, *read_scan(entry), entry,
                                               prepared.scan).image.astype(np.float32)}
            base = grids[case.scan_id]
        measure_whole(measured, prepared, params, image, label, affine, base, case.case)
        _post(measured, prepared, params, case.case, backend, post_budget)
    return measured


def measure_whole(measured: Measured, prepared: Prepared, params, image, label, affine, base,
                  sample: str) -> None:
    """One whole synthetic scan (RAS arrays, ``affine`` voxel -> world): its lesions, each typed
    by the record it holds, and its tumor records."""
    from tumorforge.generator.whole_scan import spacing_of
    spacing = spacing_of(affine)
    labels, comps = component_measures(image, label, spacing, base=base,
                                       parenchyma_sd_hu=float(params.parenchyma_sd_hu))
    organ = label >= LIVER
    depth = organ_depth(organ, spacing)
    reference = float(np.median(depth[organ])) if organ.any() else None
    # Record centers are voxels of the prepared grid: through world mm onto this array's grid.
    scan = prepared.scan
    to_here = np.linalg.inv(affine) @ scan.affine
    centers = [np.rint(to_here[:3, :3] @ (np.asarray(t.center) - np.asarray(scan.origin_vox))
                       + to_here[:3, 3]).astype(int) for t in params.tumors]
    visible = set()
    for comp, recs in zip(comps, match_records(labels, len(comps), centers)):
        visible.update(recs)
        t = params.tumors[max(recs, key=lambda r: params.tumors[r].radius_mm)]
        d = float(depth[comp["center"]])
        measured.lesions.append(_lesion(
            measured.name, "synthetic", group_of(params.kind, t.kind), params.scan_id, sample, comp,
            depth=d, reference=reference, cut=comp["touches_edge"], records=len(recs)))
    record_tumors(measured, prepared, params, sample, visible)
