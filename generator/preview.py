"""Looking at a generated sample: a PNG montage and a NIfTI pair for ITK-SNAP or 3D Slicer."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from tumorforge.manifests.conventions import DISPLAY_WINDOW_HU, LIVER, TUMOR, zyx_to_ras

from .params import SampleParams
from .prepare import PreparedScan


def crop_affine(scan: PreparedScan, params: SampleParams) -> np.ndarray:
    """Voxel (i, j, k) of a crop, in (X, Y, Z) = (R, A, S) order, to RAS+ world mm."""
    offset = np.asarray(params.crop_origin) - np.asarray(scan.origin_vox)
    affine = scan.affine.copy()
    affine[:3, 3] = scan.affine[:3, :3] @ offset + scan.affine[:3, 3]
    return affine


def save_nifti(image_zyx: np.ndarray, label_zyx: np.ndarray, affine: np.ndarray, stem: str
               ) -> tuple[str, str]:
    """Write ``stem.image.nii.gz`` and ``stem.label.nii.gz`` from (Z, Y, X) crops."""
    paths = []
    for suffix, data in (("image", image_zyx), ("label", label_zyx)):
        img = nib.Nifti1Image(np.ascontiguousarray(zyx_to_ras(data)), affine)
        img.header.set_xyzt_units("mm")
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        path = f"{stem}.{suffix}.nii.gz"
        nib.save(img, path)
        paths.append(path)
    return paths[0], paths[1]


def _views(image, label, c):
    """Axial, coronal, sagittal slices through voxel c of (Z, Y, X) arrays, displayed with
    anterior up and the patient's right on the image's left (radiological convention)."""
    z, y, x = c
    return [("axial", image[z][::-1, ::-1], label[z][::-1, ::-1]),
            ("coronal", image[:, y, :][::-1, ::-1], label[:, y, :][::-1, ::-1]),
            ("sagittal", image[:, :, x][::-1, :], label[:, :, x][::-1, :])]


def save_montage(image_zyx: np.ndarray, label_zyx: np.ndarray, png: str, title: str = "",
                 max_rows: int = 4) -> str:
    """One row per tumor (largest first, at most ``max_rows``): three planes through its center,
    CT window [-160, 240] HU, liver contour green, tumor contour red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.ndimage as ndi

    comps, n = ndi.label(label_zyx == TUMOR, structure=np.ones((3, 3, 3)))
    if n:
        sizes = ndi.sum_labels(np.ones_like(comps), comps, index=range(1, n + 1))
        order = np.argsort(sizes)[::-1][:max_rows] + 1
        centers = [tuple(int(v) for v in np.rint(ndi.center_of_mass(comps == k))) for k in order]
        captions = [f"tumor {i + 1}: {int(sizes[k - 1])} voxels" for i, k in enumerate(order)]
    else:
        centers = [tuple(s // 2 for s in image_zyx.shape)]
        captions = ["no tumor in this crop (center)"]
    fig, axes = plt.subplots(len(centers), 3, figsize=(9, 3 * len(centers)), squeeze=False)
    for row, (c, caption) in enumerate(zip(centers, captions)):
        for col, (plane, img, lab) in enumerate(_views(image_zyx, label_zyx, c)):
            ax = axes[row][col]
            ax.imshow(img, cmap="gray", vmin=DISPLAY_WINDOW_HU[0],
                      vmax=DISPLAY_WINDOW_HU[1], interpolation="nearest")
            if (lab >= LIVER).any():
                ax.contour(lab >= LIVER, levels=[0.5], colors="lime", linewidths=0.7)
            if (lab == TUMOR).any():
                ax.contour(lab == TUMOR, levels=[0.5], colors="red", linewidths=0.9)
            ax.set_title(f"{plane} - {caption}" if col == 0 else plane, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def write_preview(scan, config, seed: int, index: int, out_dir: str, backend) -> list[str]:
    """Synthesize sample ``index`` of root ``seed`` into ``scan``; write PNG, NIfTI pair, params."""
    import json
    import os
    from .sample import sample_params, sample_seed
    from .synthesize import synthesize

    params = sample_params(np.random.default_rng(sample_seed(seed, index)), scan, config)
    crop = synthesize(scan, params, backend)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{scan.scan_id}-seed{seed}-{index}")
    title = (f"{scan.scan_id}  seed {seed} index {index}  {config.profile}/{params.kind}  "
             f"{len(params.tumors)} tumor(s) drawn  backend {backend.name}")
    png = save_montage(crop.image, crop.label, stem + ".png", title)
    image_path, label_path = save_nifti(crop.image, crop.label, crop_affine(scan, params), stem)
    with open(stem + ".params.json", "w") as f:
        json.dump({"config": config.to_json(), "params": params.to_json(), "scan": scan.stats()},
                  f, indent=1)
    return [png, image_path, label_path, stem + ".params.json"]
