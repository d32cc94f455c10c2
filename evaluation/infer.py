"""Whole-scan inference as the paper does it, mapped back to the scan's own grid.

RAS, 1 mm isotropic, window [-21, 189] HU, sliding window of the training crop size with overlap
0.75 and Gaussian weighting (MONAI), argmax; post-processing at 1 mm (keep the largest 26-connected
liver component, tumor only inside that liver dilated by ``dilate_mm``); then back to the original
voxel grid by nearest neighbour. The model sees (Z, Y, X) = (S, A, R) arrays, as in training.
Inference runs inside the body's bounding box (voxels above -500 HU plus a margin): outside it the
answer is background anyway, and CPUs are spared the air.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi
import torch

from tumorforge.generator.prepare import Regrid, to_ras
from tumorforge.trainer.augment import window

from .metrics import CONNECTIVITY_26

BODY_HU = -500.0
BODY_MARGIN_MM = 8


def postprocess(labels: np.ndarray, dilate_mm: float = 5.0, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Keep the largest liver component (labels >= 1); tumor only within it dilated by
    ``dilate_mm``; everything else background."""
    liver = labels >= 1
    comps, n = ndi.label(liver, structure=CONNECTIVITY_26)
    if n == 0:
        return np.zeros_like(labels)
    largest = np.argmax(np.bincount(comps.ravel())[1:]) + 1
    keep = comps == largest
    near = ndi.distance_transform_edt(~keep, sampling=spacing) <= dilate_mm
    out = keep.astype(np.uint8)
    out[(labels == 2) & near] = 2
    return out


@torch.no_grad()
def segment(model, image: np.ndarray, affine: np.ndarray, roi: int = 96, overlap: float = 0.75,
            sw_batch: int = 2, dilate_mm: float = 5.0, device=None) -> np.ndarray:
    """Labels (0/1/2, uint8) for a whole scan in its own voxel order and grid."""
    from monai.inferers import sliding_window_inference
    device = device or next(model.parameters()).device
    ras, ras_affine = to_ras(np.asarray(image, np.float32), affine)
    grid = Regrid.of(ras_affine, ras.shape, (1.0, 1.0, 1.0))
    iso = grid.sample(ras, (0, 0, 0), grid.full_shape, 1, -1024.0)
    body = np.argwhere(ndi.uniform_filter(iso, 3) > BODY_HU)
    lab_iso = np.zeros(iso.shape, np.uint8)
    if len(body):
        lo = np.maximum(body.min(0) - BODY_MARGIN_MM, 0)
        hi = np.minimum(body.max(0) + BODY_MARGIN_MM + 1, iso.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        x = window(torch.from_numpy(np.ascontiguousarray(iso[box].transpose(2, 1, 0))))[None, None]
        logits = sliding_window_inference(x, (roi, roi, roi), sw_batch, model, overlap=overlap,
                                          mode="gaussian", sw_device=device, device="cpu")
        lab_iso[box] = logits.argmax(1)[0].numpy().astype(np.uint8).transpose(2, 1, 0)
    lab_iso = postprocess(lab_iso, dilate_mm)
    # Back to the RAS grid of the file (shared voxel 0; input voxel v is at v / factors), then to
    # the file's own axis order.
    back = ndi.affine_transform(lab_iso, np.diag(1.0 / grid.factors), output_shape=ras.shape,
                                order=0, mode="constant", cval=0)
    current = nib.orientations.io_orientation(affine)
    to_file = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), current)
    return np.ascontiguousarray(nib.orientations.apply_orientation(back, to_file)).astype(np.uint8)
