"""PNG preview of an image/label NIfTI pair: axial slices through the liver and its lesions."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from ..conventions import DISPLAY_WINDOW_HU


def _pick_slices(liver: np.ndarray, tumor: np.ndarray, n: int) -> list[int]:
    """Slice indices (k): the largest cross-section of each lesion first (biggest lesions
    first), then slices spread evenly over the liver's extent."""
    chosen: list[int] = []
    components, count = ndimage.label(tumor)
    if count:
        sizes = ndimage.sum_labels(tumor, components, index=np.arange(1, count + 1))
        for c in np.argsort(-sizes, kind="stable")[:n]:
            area = (components == c + 1).sum(axis=(0, 1))
            k = int(np.argmax(area))
            if k not in chosen:
                chosen.append(k)
    ks = np.flatnonzero(liver.any(axis=(0, 1)))
    lo, hi = (int(ks[0]), int(ks[-1])) if ks.size else (0, liver.shape[2] - 1)
    for k in np.linspace(lo, hi, n + 2)[1:-1].round().astype(int):
        if len(chosen) >= n:
            break
        if int(k) not in chosen:
            chosen.append(int(k))
    return sorted(chosen[:n])


def _radiological(slice_ij: np.ndarray) -> np.ndarray:
    """RAS axial slice (i, j) -> display rows/cols: anterior up, patient right on the image left."""
    return slice_ij.T[::-1, ::-1]


def save_preview(
    image_path: str | Path,
    label_path: str | Path,
    png_path: str | Path,
    liver_values: tuple[int, ...] = (1, 2),
    tumor_values: tuple[int, ...] = (2,),
    n_slices: int = 6,
) -> Path:
    """Write a PNG of n_slices axial slices of a CT image with its liver/tumor label contours.

    image_path, label_path: NIfTI files in any orientation; both are
    reoriented to canonical RAS before slicing.  liver_values / tumor_values:
    label values counted as liver (contoured green) and as tumor (red); use
    layouts.LABEL_VALUES[layout] (BTCV liver is 6, CHAOS liver is 1).
    Slices go through the lesions first, then spread over the liver's z range.
    Display: radiological convention (patient right on the image's left,
    anterior up), window [-160, 240] HU; each panel is titled with its world
    z (mm).  Returns the PNG path.
    """
    image_path, label_path, png_path = Path(image_path), Path(label_path), Path(png_path)
    img = nib.as_closest_canonical(nib.load(image_path))
    lab = nib.as_closest_canonical(nib.load(label_path))
    hu = np.asanyarray(img.dataobj)
    label = np.asanyarray(lab.dataobj)
    if hu.shape != label.shape:
        raise ValueError(f"preview {image_path.name}: label {label_path.name} has shape {label.shape}, image {hu.shape}")
    liver = np.isin(label, liver_values)
    tumor = np.isin(label, tumor_values) if tumor_values else np.zeros_like(liver)
    ks = _pick_slices(liver, tumor, n_slices)
    spacing = img.header.get_zooms()[:3]

    cols = min(3, int(np.ceil(np.sqrt(len(ks)))))
    rows = int(np.ceil(len(ks) / cols))
    fig = Figure(figsize=(4.2 * cols, 4.4 * rows + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    for n, k in enumerate(ks):
        ax = fig.add_subplot(rows, cols, n + 1)
        ax.imshow(_radiological(hu[:, :, k]), cmap="gray", vmin=DISPLAY_WINDOW_HU[0],
                  vmax=DISPLAY_WINDOW_HU[1], aspect=spacing[1] / spacing[0],
                  interpolation="nearest")
        for mask, colour in ((liver, "lime"), (tumor, "red")):
            view = _radiological(mask[:, :, k])
            if view.any():
                ax.contour(view.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.8)
        z = float((img.affine @ np.array([0.0, 0.0, k, 1.0]))[2])
        ax.set_title(f"z = {z:.1f} mm", fontsize=9)
        ax.text(0.01, 0.5, "R", transform=ax.transAxes, color="yellow", fontsize=9, va="center")
        ax.text(0.97, 0.5, "L", transform=ax.transAxes, color="yellow", fontsize=9, va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{image_path.name}   spacing {spacing[0]:.2f} x {spacing[1]:.2f} x {spacing[2]:.2f} mm", fontsize=10)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    return png_path
