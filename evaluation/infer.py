"""Whole-scan inference as the paper does it, mapped back to the scan's own grid.

The scan is run the way its model was trained (the checkpoint's preprocessing record): reoriented
to RAS, resampled to the training spacing (1 mm isotropic in the paper), windowed to the training
HU window ([-21, 189] in the paper), sliding window of the training crop size with overlap 0.75 and
Gaussian weighting (MONAI), argmax; post-processing on that grid (keep the largest 26-connected
liver component, tumor only inside that liver dilated by ``dilate_mm``, in components that are
not specks and are mostly bordered by liver); then back to the original
voxel grid by nearest neighbour. The model sees (Z, Y, X) = (S, A, R) arrays, as in training.
Inference runs inside the body's bounding box (voxels above -500 HU plus a margin): outside it the
answer is background anyway, and CPUs are spared the air.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.ndimage as ndi
import torch

from tumorforge.generator.api import Regrid
from tumorforge.manifests.conventions import (BACKGROUND, ORGAN, TUMOR, from_ras, ras_to_zyx,
                                              to_ras, zyx_to_ras)
from tumorforge.trainer.augment import window
from tumorforge.trainer.preprocessing import Preprocessing

from .metrics import (CONNECTIVITY_26, MIN_LIVER_CONTACT, PROBABILITY_SCALE, drop_outside_organ,
                      drop_specks)

BODY_HU = -500.0
BODY_MARGIN_MM = 8.0
DILATE_MM = 5.0
# Predicted tumor components smaller than a sphere of this radius are dropped (back to liver):
# specks of a few voxels are noise, not lesions; the smallest size bin scored starts at 0 mm, and
# a 2 mm sphere (34 mm^3) is far below LiTS's smallest annotated lesions.
MIN_TUMOR_RADIUS_MM = 2.0

# (image in the file's voxel order, its affine) -> labels 0/1/2 (uint8) of the same shape.
Segmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def postprocess(labels: np.ndarray, dilate_mm: float = DILATE_MM, spacing=(1.0, 1.0, 1.0),
                min_tumor_radius_mm: float = MIN_TUMOR_RADIUS_MM,
                min_liver_contact: float = MIN_LIVER_CONTACT) -> np.ndarray:
    """Keep the largest liver component (liver or tumor voxels); tumor only within it dilated by
    ``dilate_mm`` (``spacing``: mm per voxel along the array's axes), and only in 26-connected
    components at least as large as a sphere of ``min_tumor_radius_mm`` (smaller ones become
    liver) whose outer border is at least ``min_liver_contact`` liver (others become
    background); everything else background."""
    liver = labels >= ORGAN
    comps, n = ndi.label(liver, structure=CONNECTIVITY_26)
    if n == 0:
        return np.zeros_like(labels)
    largest = np.argmax(np.bincount(comps.ravel())[1:]) + 1
    keep = comps == largest
    # Distances only matter within dilate_mm of the liver: compute them in the liver's box plus
    # that margin (every liver voxel is inside it, so the result is the whole-volume one).
    idx = np.argwhere(keep)
    margin = np.ceil(dilate_mm / np.asarray(spacing, float)).astype(int) + 1
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, keep.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    near = np.zeros(keep.shape, bool)
    near[box] = ndi.distance_transform_edt(~keep[box], sampling=spacing) <= dilate_mm
    out = np.where(keep, ORGAN, BACKGROUND).astype(np.uint8)
    tumor = drop_specks((labels == TUMOR) & near, spacing, min_tumor_radius_mm)
    out[tumor] = TUMOR
    kept = drop_outside_organ(tumor, out == ORGAN, min_liver_contact)
    out[tumor & ~kept] = BACKGROUND
    return out


FLIP_AXES = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


@torch.no_grad()
def segment(model, image: np.ndarray, affine: np.ndarray, prep: Preprocessing,
            roi: tuple[int, int, int] | None = None, overlap: float = 0.75, sw_batch: int = 2,
            dilate_mm: float = DILATE_MM, device=None, progress: bool = False,
            flips: bool = False, probability: bool = False,
            min_liver_contact: float = MIN_LIVER_CONTACT, report: dict | None = None):
    """Labels (0/1/2, uint8) for a whole scan of HU values in its own voxel order and grid.

    ``prep``: the model's preprocessing (spacing in mm, HU window, sliding-window size); ``roi``
    overrides its window size, in voxels along the model's (Z, Y, X). ``progress``: a tqdm bar
    over the scan's sliding windows on stderr, with an ETA (a scan takes minutes on a CPU).
    ``flips``: test-time augmentation, the softmax averaged over the 8 mirrorings of the three
    axes (8x the inference time). ``probability``: also return the tumor probability before
    post-processing on the same grid (uint8, ``PROBABILITY_SCALE`` = 1), for FROC curves.
    ``min_liver_contact``: see :func:`postprocess`. ``report``: a dict filled with what the
    liver answer looked like before post-processing: ``liver_largest_fraction`` (share of the
    predicted liver voxels in the largest 26-connected component) and ``liver_confidence`` (mean
    liver-or-tumor probability over the kept liver), for quality checks of liver masks.
    """
    from monai.inferers import sliding_window_inference
    device = device or next(model.parameters()).device
    roi = tuple(roi or prep.roi)
    ras, ras_affine = to_ras(np.asarray(image, np.float32), affine)
    grid = Regrid.of(ras_affine, ras.shape, prep.spacing_mm)
    iso = grid.sample(ras, (0, 0, 0), grid.full_shape, 1, -1024.0)
    body = np.argwhere(ndi.uniform_filter(iso, 3) > BODY_HU)
    lab_iso = np.zeros(iso.shape, np.uint8)
    prob_iso = np.zeros(iso.shape, np.uint8)
    if len(body):
        margin = np.ceil(BODY_MARGIN_MM / np.asarray(prep.spacing_mm)).astype(int)
        lo = np.maximum(body.min(0) - margin, 0)
        hi = np.minimum(body.max(0) + margin + 1, iso.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        x = window(torch.from_numpy(np.ascontiguousarray(ras_to_zyx(iso[box]))), prep.window_hu)
        x = x[None, None]
        soft = None
        for axes in (FLIP_AXES if flips else ((),)):
            xf = x.flip(axes) if axes else x
            logits = sliding_window_inference(xf, roi, sw_batch, model, overlap=overlap,
                                              mode="gaussian", sw_device=device, device="cpu",
                                              progress=progress)
            p = torch.softmax(logits.float(), 1)
            p = p.flip(axes) if axes else p
            soft = p if soft is None else soft + p
        soft = soft[0] / (len(FLIP_AXES) if flips else 1)
        lab_iso[box] = zyx_to_ras(soft.argmax(0).numpy().astype(np.uint8))
        if report is not None:
            organ = zyx_to_ras((soft[ORGAN] + soft[TUMOR]).numpy())
            prob_organ = np.zeros(iso.shape, np.float32)
            prob_organ[box] = organ
        if probability:
            prob_iso[box] = zyx_to_ras(torch.round(soft[TUMOR] * PROBABILITY_SCALE)
                                       .numpy().astype(np.uint8))
    if report is not None:
        predicted = lab_iso >= ORGAN
        parts, n = ndi.label(predicted, structure=CONNECTIVITY_26)
        sizes = np.bincount(parts.ravel())[1:]
        report["liver_largest_fraction"] = float(sizes.max() / sizes.sum()) if n else 0.0
    lab_iso = postprocess(lab_iso, dilate_mm, prep.spacing_mm,
                          min_liver_contact=min_liver_contact)
    if report is not None:
        kept = lab_iso >= ORGAN
        report["liver_confidence"] = float(prob_organ[kept].mean()) \
            if kept.any() and len(body) else 0.0
    # Back to the RAS grid of the file (shared voxel 0; input voxel v is at v / factors), then to
    # the file's own axis order.
    back = lambda a: from_ras(ndi.affine_transform(a, np.diag(1.0 / grid.factors),
                                                   output_shape=ras.shape, order=0,
                                                   mode="constant", cval=0), affine)
    labels = back(lab_iso).astype(np.uint8)
    return (labels, back(prob_iso).astype(np.uint8)) if probability else labels
