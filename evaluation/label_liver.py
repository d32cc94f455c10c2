"""Liver masks for scans without labels (``tumorforge manifest label-liver``): Section 3.1 of the
paper ran a pre-trained liver model over its healthy CT before painting tumors; healthy pools such
as Pancreas-CT and MSD Pancreas/Spleen/Colon have no liver label.

For each scan of an image list (or a manifest, its labels ignored) the liver comes from either

- a tumorforge-trained model (``--checkpoint``): whole-scan inference as ``evaluate`` runs it
  (the checkpoint's spacing, window and crop size; Gaussian sliding window; post-processing keeps
  the largest liver component), the liver class and any tumor it predicts counted as liver; or
- masks another tool made (``--masks DIR``): ``DIR/<case>/liver.nii.gz`` (TotalSegmentator's
  per-case folders), ``DIR/<case>/segmentations/liver.nii.gz`` or ``DIR/<case>.nii.gz``, where
  ``<case>`` is the scan id or the image's file name without extension; any non-zero voxel is
  liver; the mask must be on the image's grid.

Quality checks reject a mask, with the reason, when its liver volume is outside
``[min_ml, max_ml]``, when the model's liver answer was fragmented (less than
``min_largest_fraction`` of its voxels in the largest component) or when the model was unsure
(mean liver probability over the mask below ``min_confidence``). Kept masks are written as
``<out folder>/liver-masks/<scan_id>.nii.gz`` (uint8, 1 = liver, the image's affine) and the scans
enter the manifest as healthy scans with ``label_map {liver: [1]}``; rejected scans go to
``<out>.rejected.jsonl`` with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tumorforge.manifests import storage
from tumorforge.manifests.build import check_pair, entry_of
from tumorforge.manifests.conventions import dice
from tumorforge.manifests.layouts import Candidate
from tumorforge.manifests.nifti import GZIP_OS_UNIX, write_nifti
from tumorforge.manifests.readers import ScanError, read_volume
from tumorforge.manifests.schema import (ImageEntry, LabelMap, Rejection, ScanEntry,
                                         default_roots, read_images, rejected_path, write_jsonl)
from tumorforge.manifests.errors import UserError

MIN_LIVER_ML = 600.0          # adult livers: about 1,000-2,500 mL; below or above is a bad mask
MAX_LIVER_ML = 4000.0
MIN_LARGEST_FRACTION = 0.7    # of the model's liver voxels in its largest component (docs/how-to/evaluate.md)
MIN_CONFIDENCE = 0.8          # mean liver probability over the kept mask
MASK_FOLDER = "liver-masks"

# (image in the file's voxel order, its affine) -> (liver mask bool, quality report dict)
LiverSegmenter = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, dict]]


class LabelLiverError(UserError, ValueError):
    pass


@dataclass
class LabelLiverResult:
    manifest: str
    rejected: str
    entries: list[ScanEntry]
    rejections: list[Rejection]
    checks: dict = field(default_factory=dict)      # scan_id -> quality figures


def model_segmenter(checkpoint: str, device: str = "auto", overlap: float = 0.5
                    ) -> LiverSegmenter:
    """A tumorforge checkpoint's liver answer, with the figures the quality checks need."""
    from .infer import segment
    from .model import load_model
    trained = load_model(checkpoint, device)

    def run(image: np.ndarray, affine: np.ndarray):
        report: dict = {}
        labels = segment(trained.model, image, affine, trained.preprocessing, overlap=overlap,
                         report=report)
        return labels >= 1, report
    return run


def find_mask(folder: str, entry: ImageEntry) -> str | None:
    """The external mask of ``entry`` in ``folder`` (see the module's layouts), or None."""
    stem = os.path.basename(entry.image)
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[:-len(ext)]
    names = []
    for case in dict.fromkeys((entry.scan_id, stem)):
        names += [f"{case}/liver.nii.gz", f"{case}/segmentations/liver.nii.gz",
                  f"{case}.nii.gz", f"{case}/liver.nii"]
    for name in names:
        path = storage.join(folder, name)
        if storage.exists(path):
            return path
    return None


def quality_problem(volume_ml: float, report: dict, min_ml: float = MIN_LIVER_ML,
                    max_ml: float = MAX_LIVER_ML,
                    min_largest_fraction: float = MIN_LARGEST_FRACTION,
                    min_confidence: float = MIN_CONFIDENCE) -> str | None:
    """Why a liver mask is not trusted, or None."""
    if not min_ml <= volume_ml <= max_ml:
        return (f"liver volume {volume_ml:.0f} mL outside the plausible {min_ml:.0f}-"
                f"{max_ml:.0f} mL")
    frac = report.get("liver_largest_fraction")
    if frac is not None and frac < min_largest_fraction:
        return (f"fragmented liver: the largest component holds {frac:.0%} of the predicted liver "
                f"(expected >= {min_largest_fraction:.0%})")
    conf = report.get("liver_confidence")
    if conf is not None and conf < min_confidence:
        return f"low confidence: mean liver probability {conf:.2f} (expected >= {min_confidence})"
    return None


def label_liver(images: str, out: str, *, checkpoint: str | None = None,
                masks: str | None = None, segmenter: LiverSegmenter | None = None,
                allow_roots=(), device: str = "auto", overlap: float = 0.5,
                min_ml: float = MIN_LIVER_ML, max_ml: float = MAX_LIVER_ML,
                min_largest_fraction: float = MIN_LARGEST_FRACTION,
                min_confidence: float = MIN_CONFIDENCE, truth: str | None = None,
                log=print) -> LabelLiverResult:
    """Liver masks for the scans of ``images`` and the manifest ``out`` of those that pass.

    ``truth``: a manifest with the same scans' real liver labels (a check of the method, as on
    phantoms): each scan's mask is also scored against it (liver Dice in ``checks``, rejected
    masks included)."""
    if sum(x is not None for x in (checkpoint, masks, segmenter)) != 1:
        raise LabelLiverError("give exactly one of --checkpoint (a tumorforge model) and --masks "
                              "(a folder of liver masks)")
    entries = read_images(images, default_roots(images, allow_roots))
    if masks is not None and not storage.exists(masks):
        raise LabelLiverError(f"--masks {masks}: no such folder")
    if checkpoint is not None:
        segmenter = model_segmenter(checkpoint, device, overlap)
    truths = {}
    if truth is not None:
        from tumorforge.manifests.schema import read_manifest
        truths = {e.scan_id: e for e in read_manifest(truth, default_roots(truth, allow_roots))}
    folder = storage.join(storage.parent(out), MASK_FOLDER)
    kept, rejected, checks = [], [], {}
    for n, entry in enumerate(entries, start=1):
        try:
            image = read_volume(entry.image)
            if image.sha256 != entry.sha256:
                raise ScanError(entry.image, "sha256 differs from the image list's (the file "
                                             "changed since the list was built)")
            if masks is not None:
                found = find_mask(masks, entry)
                if found is None:
                    raise ScanError(entry.image, f"no liver mask for {entry.scan_id} in {masks}")
                vol = read_volume(found)
                check_pair(entry.image, found, image, vol)         # on the image's grid
                mask, report = np.asarray(vol.data) != 0, {"mask": found}
            else:
                mask, report = segmenter(image.data, image.info.affine)
            volume_ml = float(mask.sum()) * float(np.prod(image.info.spacing_mm)) / 1000.0
            report = {**report, "liver_volume_ml": round(volume_ml, 1)}
            if entry.scan_id in truths:
                t = truths[entry.scan_id]
                real = np.isin(np.asarray(read_volume(t.label, like=image).data),
                               t.label_map.organ_values())
                report["liver_dice_vs_truth"] = round(float(dice(mask, real) or 0.0), 4)
            checks[entry.scan_id] = report
            problem = quality_problem(volume_ml, report, min_ml, max_ml, min_largest_fraction,
                                      min_confidence)
            if problem:
                raise ScanError(entry.image, problem)
            path = storage.join(folder, f"{entry.scan_id}.nii.gz")
            write_nifti(path, mask.astype(np.uint8), image.info.affine, gzip_os=GZIP_OS_UNIX)
            kept.append(entry_of(Candidate(entry.scan_id, entry.image, path, LabelMap(organ=(1,)),
                                           entry.source, (0, 1)), image, read_volume(path)))
            log(f"[{n}/{len(entries)}] {entry.scan_id}: liver {volume_ml:.0f} mL")
        except ScanError as exc:
            rejected.append(Rejection(entry.scan_id, entry.image, "", exc.problem))
            log(f"[{n}/{len(entries)}] {entry.scan_id}: rejected ({exc.problem})")
    write_jsonl(out, kept)
    write_jsonl(rejected_path(out), rejected)
    return LabelLiverResult(out, rejected_path(out), kept, rejected, checks)
