"""Conventions every stage shares, defined once: label values, the axis order of crops, the RAS
orientation step, intensity windows and the Dice overlap.

Axes. Scans are reoriented to RAS (voxel axes running toward the patient's Right, Anterior,
Superior) before anything else happens to them. Generated crops, the zarr and tar arrays and the
tensors a model sees are ``(Z, Y, X)`` = (S, A, R): the RAS array with its axes reversed, so a crop's
first axis is axial slices, as CT viewers and MONAI's channel-first arrays expect.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

# Label values of generated crops, of model outputs and of ``truth_labels``: background, the organ
# tumors are painted into (its name is the organ record's ``classes[ORGAN]``), tumor.
BACKGROUND, ORGAN, TUMOR = 0, 1, 2

# The HU window pictures are shown in (an abdominal soft-tissue window; the window models are
# trained in is the organ record's ``training_window_hu``).
DISPLAY_WINDOW_HU = (-160.0, 240.0)


def ras_to_zyx(array):
    """(i, j, k) = (R, A, S) array -> (Z, Y, X) crop order. A view; works for NumPy and CuPy."""
    return array.transpose(2, 1, 0)


def zyx_to_ras(array):
    """(Z, Y, X) crop order -> (R, A, S) voxel order (the inverse of :func:`ras_to_zyx`)."""
    return array.transpose(2, 1, 0)


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip voxel axes so they run R, A, S; the affine is updated to match."""
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt("RAS"))
    out = nib.orientations.apply_orientation(data, transform)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(transform, data.shape)


def from_ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A RAS-ordered array back into the voxel order of a file whose affine is ``affine``."""
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.io_orientation(affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, transform))


def dice(a, b) -> float | None:
    """Dice overlap of two boolean masks (NumPy arrays or CPU tensors).

    Both empty -> None (undefined: nothing to score; callers leave it out of means); exactly one
    empty -> 0. This is the rule every report of tumorforge states.
    """
    p, t = np.asarray(a, bool), np.asarray(b, bool)
    total = int(p.sum()) + int(t.sum())
    return None if total == 0 else 2.0 * int((p & t).sum()) / total
