"""Scan preparation, once per scan: RAS, target spacing, liver, parenchyma statistics, vessels.

The result, :class:`PreparedScan`, is what every synthesis call reads. It keeps only the liver's
bounding box plus a margin of half a crop, so a scan cache holds tens of MB per scan, not hundreds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi

from tumorforge.manifests.conventions import BACKGROUND, ORGAN, TUMOR, to_ras

from .config import GeneratorConfig
from .grain import axis_grain_mm, interior, local_sd_hu
from tumorforge.manifests.errors import UserError

PAD_HU = -1024          # what lies outside the scan (air)


class PrepareError(UserError, ValueError):
    pass


@dataclass
class PreparedScan:
    """A scan ready for synthesis. Arrays are indexed (i, j, k) along R, A, S at ``spacing_mm``.

    ``origin_vox`` is where index (0, 0, 0) of these arrays sits in the full resampled scan, so crop
    origins recorded in provenance refer to the whole resampled scan, not to this sub-volume.
    """

    scan_id: str
    image: np.ndarray            # int16 HU
    organ: np.ndarray            # bool: the organ (its label values, and tumor and vessel ones)
    vessel: np.ndarray           # bool: eq. 1 vessel mask inside the organ (plus vessel labels)
    tumor: np.ndarray            # bool: tumor voxels the scan's own label marks (real tumors)
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray           # voxel (i, j, k) of these arrays -> RAS+ world mm
    origin_vox: tuple[int, int, int]
    organ_mean_hu: float         # mean HU over the whole organ (eq. 2)
    vessel_threshold_hu: float   # T of eq. 2
    sigma_a_mm: float            # smoothing of eq. 1
    parenchyma_mean_hu: float    # mu_p: organ without vessels
    parenchyma_sd_hu: float      # sigma_p
    organ_voxels: np.ndarray     # flat indices of organ voxels, deepest first (location sampling)
    organ_depth_mm: np.ndarray   # float32: each one's distance to the organ's surface, descending
    _device: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)     # host tables (``location.tables``)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)

    @property
    def parenchyma_grain_mm(self) -> tuple[float | None, float | None, float | None]:
        """Correlation length (mm) of the parenchyma's HU (organ without vessels and tumors) along
        i, j, k on its interior (``grain.axis_grain_mm``, ``grain.interior``): what a scan-matched texture is shaped to. Measured on
        first use from the arrays above (so cached scans need no new field) and kept."""
        if "grain" not in self._cache:
            self._cache["grain"] = axis_grain_mm(self.image, self._interior(), self.spacing_mm)
        return self._cache["grain"]

    @property
    def parenchyma_local_sd_hu(self) -> float:
        """The parenchyma interior's sd about its 20 mm block means (``grain.local_sd_hu``): its
        fine-scale spread, without the organ's slow shading that ``parenchyma_sd_hu`` holds.
        Measured on first use and kept."""
        if "local_sd" not in self._cache:
            sd = local_sd_hu(self.image, self._interior(), self.spacing_mm)
            self._cache["local_sd"] = self.parenchyma_sd_hu if sd is None else sd
        return self._cache["local_sd"]

    def _interior(self) -> np.ndarray:
        if "interior" not in self._cache:
            self._cache["interior"] = interior(self.organ & ~self.vessel & ~self.tumor)
        return self._cache["interior"]

    def stats(self) -> dict:
        # "liver_mean_hu": the key provenance and reports have always read (a liver scan's value).
        return {"liver_mean_hu": round(self.organ_mean_hu, 3),
                "vessel_threshold_hu": round(self.vessel_threshold_hu, 3),
                "sigma_a_mm": round(self.sigma_a_mm, 4),
                "parenchyma_mean_hu": round(self.parenchyma_mean_hu, 3),
                "parenchyma_sd_hu": round(self.parenchyma_sd_hu, 3),
                "vessel_fraction": round(float(self.vessel.sum()) / max(1, len(self.organ_voxels)), 4),
                "shape": list(self.shape), "origin_vox": list(self.origin_vox)}

    def label(self) -> np.ndarray:
        """uint8 BACKGROUND/ORGAN/TUMOR of these arrays. The scan's own tumor voxels (``real``
        profile) lie inside its liver mask."""
        return np.where(self.tumor, TUMOR, np.where(self.organ, ORGAN, BACKGROUND)).astype(np.uint8)

    def on(self, backend):
        """(image, :meth:`label`) on the backend's device; copied once and cached."""
        if backend.name not in self._device:
            self._device[backend.name] = (backend.asarray(self.image), backend.asarray(self.label()))
        return self._device[backend.name]


def organ_depth(organ: np.ndarray, spacing) -> np.ndarray:
    """Depth (mm) of every organ voxel: Euclidean distance to the nearest voxel outside the organ
    (the array's outside counts as outside), float32, 0 outside. The transform runs on the organ's
    box plus one background layer: an organ voxel's nearest background voxel is never farther than
    that layer (clamping a background voxel outside onto it shortens every axis's offset), so the
    depths are those over the whole array, for a fraction of the work."""
    organ = np.asarray(organ, bool)
    out = np.zeros(organ.shape, np.float32)
    if not organ.any():
        return out
    box = []
    for axis in range(organ.ndim):
        hit = np.flatnonzero(organ.any(axis=tuple(a for a in range(organ.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = tuple(box)
    d = ndi.distance_transform_edt(np.pad(organ[box], 1), sampling=tuple(float(s) for s in spacing))
    out[box] = d[(slice(1, -1),) * organ.ndim]
    return out


@dataclass(frozen=True)
class Regrid:
    """A RAS volume's grid at a target spacing: output voxel o of the window starting at ``lo``
    samples the input at (lo + o) * factors (the two grids share voxel (0, 0, 0))."""

    factors: np.ndarray          # target spacing / input spacing, per axis
    full_shape: tuple[int, int, int]

    @classmethod
    def of(cls, ras_affine: np.ndarray, shape, target_mm) -> "Regrid":
        spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(0))
        factors = np.asarray(target_mm, float) / spacing
        full = tuple(int(n) for n in np.maximum(1, np.floor((np.array(shape) - 1) / factors) + 1))
        return cls(factors, full)

    def sample(self, data, lo, shape, order: int, cval) -> np.ndarray:
        return ndi.affine_transform(data, np.diag(self.factors), offset=np.asarray(lo) * self.factors,
                                    output_shape=tuple(int(n) for n in shape), order=order,
                                    mode="constant", cval=cval, prefilter=False)

    def affine(self, ras_affine: np.ndarray, lo) -> np.ndarray:
        """Voxel -> world of the resampled window starting at ``lo``."""
        out = ras_affine @ np.diag([*self.factors, 1.0])
        out[:3, 3] = ras_affine[:3, :3] @ (np.asarray(lo) * self.factors) + ras_affine[:3, 3]
        return out


def prepare_scan(scan_id: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray,
                 organ_values, vessel_values=(), config: GeneratorConfig | None = None,
                 tumor_values=()) -> PreparedScan:
    """Prepare one healthy scan.

    ``image`` is HU and ``label`` integer classes, both in the file's voxel order with ``affine``
    (voxel -> RAS+ mm). ``organ_values`` are the label values of the liver organ (liver, and tumor and
    vessel if the dataset labels them); ``vessel_values`` are added to the thresholded vessel mask;
    ``tumor_values`` mark the scan's own tumors, kept as label 2 in its crops (``real`` profile).

    Steps: reorient to RAS; resample to ``config.target_spacing_mm`` (image linear, label nearest);
    crop to the liver box plus half a crop; mean liver HU and threshold T = mean + b (eq. 2);
    sigma_p estimated on liver voxels at or below T; vessels = liver voxels whose CT smoothed with
    sigma_a = 0.5 + 0.025 sigma_p (mm) exceeds T (eq. 1); parenchyma mu_p, sigma_p = liver minus
    vessels; each liver voxel's depth below the liver surface (mm).
    """
    config = config or GeneratorConfig()
    p = config.paper
    if image.shape != label.shape:
        raise PrepareError(f"scan {scan_id}: image shape {image.shape} != label shape {label.shape}")
    image, ras_affine = to_ras(np.asarray(image, np.float32), affine)
    label, _ = to_ras(np.asarray(label), affine)
    target = np.asarray(config.target_spacing_mm, float)
    grid = Regrid.of(ras_affine, image.shape, target)
    factors, full_shape = grid.factors, grid.full_shape

    organ = np.isin(label, np.asarray(organ_values))
    if not organ.any():
        raise PrepareError(f"scan {scan_id}: no {config.organ} voxel ({config.organ} values "
                           f"{list(organ_values)})")
    # Crop (in output voxels) to the liver box plus half a crop, before resampling the image.
    idx = np.argwhere(organ)
    lo_in, hi_in = idx.min(0), idx.max(0)
    margin = np.asarray(config.crop_size) // 2 + 8
    lo = np.maximum(0, np.floor(lo_in / factors).astype(int) - margin)
    hi = np.minimum(full_shape, np.ceil(hi_in / factors).astype(int) + margin + 1)
    shape = tuple(int(n) for n in hi - lo)

    def resample(data, order, cval):
        return grid.sample(data, lo, shape, order, cval)

    img = resample(image, 1, PAD_HU)
    organ_r = resample(organ.astype(np.uint8), 0, 0).astype(bool)
    def resampled_mask(values):
        if not len(values):
            return np.zeros(shape, bool)
        return resample(np.isin(label, np.asarray(values)).astype(np.uint8), 0, 0).astype(bool)

    labelled_vessel = resampled_mask(vessel_values)
    tumor = resampled_mask(tumor_values) & organ_r
    out_affine = grid.affine(ras_affine, lo)

    liver_hu = img[organ_r]
    liver_mean = float(liver_hu.mean())
    threshold = liver_mean + p.vessel_b_hu
    sigma_p0 = float(liver_hu[liver_hu <= threshold].std())
    sigma_a = p.sigma_a_base_mm + p.sigma_a_slope_mm * sigma_p0
    smoothed = ndi.gaussian_filter(img, sigma_a / target[0], mode="nearest")
    vessel = (organ_r & (smoothed > threshold)) | (labelled_vessel & organ_r)
    parenchyma = img[organ_r & ~vessel]
    if parenchyma.size < 100:
        raise PrepareError(f"scan {scan_id}: only {parenchyma.size} liver voxels without vessels "
                           f"at {tuple(target)} mm; expected a liver")
    # Depth of every liver voxel below the organ's surface (mm): location draws centers deep enough
    # for the tumor to fit. Sorted deepest first, so "at least d mm deep" is a prefix.
    flat = np.flatnonzero(organ_r)
    d = organ_depth(organ_r, target).ravel()[flat]
    order = np.argsort(-d, kind="stable")
    return PreparedScan(
        scan_id=scan_id, image=np.clip(np.rint(img), -32768, 32767).astype(np.int16),
        organ=organ_r, vessel=vessel, tumor=tumor, spacing_mm=tuple(float(t) for t in target),
        affine=out_affine, origin_vox=tuple(int(v) for v in lo), organ_mean_hu=liver_mean,
        vessel_threshold_hu=threshold, sigma_a_mm=sigma_a,
        parenchyma_mean_hu=float(parenchyma.mean()), parenchyma_sd_hu=float(parenchyma.std()),
        organ_voxels=flat[order], organ_depth_mm=d[order])
