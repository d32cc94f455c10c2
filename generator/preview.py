"""Looking at a generated sample: a PNG montage and a NIfTI pair for ITK-SNAP or 3D Slicer."""

from __future__ import annotations

import numpy as np

from tumorforge.manifests.conventions import DISPLAY_WINDOW_HU, ORGAN, TUMOR, zyx_to_ras
from tumorforge.manifests.nifti import write_nifti

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
        path = f"{stem}.{suffix}.nii.gz"
        write_nifti(path, np.ascontiguousarray(zyx_to_ras(data)), affine)
        paths.append(path)
    return paths[0], paths[1]


def _views(image, label, c):
    """Axial, coronal, sagittal slices through voxel c of (Z, Y, X) arrays, displayed as 3D
    Slicer and ITK-SNAP show them: axial and coronal with the patient's right on the image's left
    (radiological convention), anterior or superior up; sagittal with anterior on the left and
    superior up; with the orientation letters of their (left, right, top, bottom) edges."""
    z, y, x = c
    return [("axial", image[z][::-1, ::-1], label[z][::-1, ::-1], "RLAP"),
            ("coronal", image[:, y, :][::-1, ::-1], label[:, y, :][::-1, ::-1], "RLSI"),
            ("sagittal", image[:, :, x][::-1, ::-1], label[:, :, x][::-1, ::-1], "APSI")]


# mm per display pixel along each panel's horizontal axis, from the crop's (R, A, S) spacing
_HORIZONTAL = {"axial": 0, "coronal": 0, "sagittal": 1}


def decorate_panel(ax, letters: str, shape, mm_per_px: float, bar_mm: float = 10.0) -> None:
    """Orientation letters at the panel's edges and a scale bar of ``bar_mm`` in its lower left."""
    h, w = shape
    style = dict(color="yellow", fontsize=7, fontweight="bold", ha="center", va="center")
    left, right, top, bottom = letters
    ax.text(0.03 * w, h / 2, left, **style)
    ax.text(0.97 * w, h / 2, right, **style)
    ax.text(w / 2, 0.04 * h, top, **style)
    ax.text(w / 2, 0.96 * h, bottom, **style)
    px = bar_mm / mm_per_px
    x0, y0 = 0.06 * w, 0.90 * h
    ax.plot([x0, x0 + px], [y0, y0], color="white", lw=2)
    ax.text(x0 + px / 2, y0 - 0.05 * h, f"{bar_mm:g} mm", color="white", fontsize=6,
            ha="center", va="bottom")


def save_montage(image_zyx: np.ndarray, label_zyx: np.ndarray, png: str, title: str = "",
                 max_rows: int = 4, healthy_zyx: np.ndarray | None = None,
                 spacing_mm=(1.0, 1.0, 1.0)) -> str:
    """One row per tumor (largest first, at most ``max_rows``; captioned with its volume in mL and
    equivalent radius in mm): the axial slice through it without the tumor (``healthy_zyx``, the
    same crop before synthesis, when given) and with it, both without contours, then the three
    planes with the liver contour green, the row's tumor red with a marker above it and the crop's
    other tumors orange. CT window [-160, 240] HU; orientation letters on every panel; a 10 mm scale bar
    (``spacing_mm``: the crop's spacing along R, A, S)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.ndimage as ndi

    comps, n = ndi.label(label_zyx == TUMOR, structure=np.ones((3, 3, 3)))
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    if n:
        sizes = ndi.sum_labels(np.ones_like(comps), comps, index=range(1, n + 1))
        order = np.argsort(sizes)[::-1][:max_rows] + 1
        centers = [_inside(comps == k) for k in order]
        captions = [tumor_caption(i + 1, sizes[k - 1] * voxel_ml, _touches_edge(comps == k))
                    for i, k in enumerate(order)]
    else:
        order = [0]
        centers = [tuple(s // 2 for s in image_zyx.shape)]
        captions = ["no tumor in this crop (center)"]
    plain = ([("without the tumor", healthy_zyx)] if healthy_zyx is not None else []) + \
        [("with it, no contours", image_zyx)]
    cols = len(plain) + 3
    fig, axes = plt.subplots(len(centers), cols, figsize=(3 * cols, 3 * len(centers)),
                             squeeze=False)
    show = dict(cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1],
                interpolation="nearest")
    for row, (c, caption, k) in enumerate(zip(centers, captions, order)):
        this = comps == k if n else np.zeros(label_zyx.shape, bool)      # the row's tumor
        for col, (what, volume) in enumerate(plain):
            _, img, _, letters = _views(volume, label_zyx, c)[0]
            ax = axes[row][col]
            ax.imshow(img, **show)
            decorate_panel(ax, letters, img.shape, spacing_mm[0])
            ax.set_title(f"{caption}\naxial, {what}" if col == 0 else f"axial, {what}",
                         fontsize=8)
            ax.axis("off")
        views = zip(_views(image_zyx, label_zyx, c), _views(this, this, c))
        for col, ((plane, img, lab, letters), (_, mine, _, _)) in enumerate(views,
                                                                             start=len(plain)):
            ax = axes[row][col]
            ax.imshow(img, **show)
            if (lab >= ORGAN).any():
                ax.contour(lab >= ORGAN, levels=[0.5], colors="lime", linewidths=0.7)
            others = (lab == TUMOR) & ~mine
            if others.any():                        # other tumors of the crop: orange
                ax.contour(others, levels=[0.5], colors="orange", linewidths=0.7)
            if mine.any():                          # the row's tumor: red, with a marker
                ax.contour(mine, levels=[0.5], colors="red", linewidths=1.0)
                rows, cols_ = np.nonzero(mine)
                ax.plot([cols_.mean()], [rows.min() - 2.5], marker="v", color="red", ms=6)
            decorate_panel(ax, letters, img.shape, spacing_mm[_HORIZONTAL[plane]])
            ax.set_title(f"{plane}, contours", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def tumor_caption(number: int, volume_ml: float, at_edge: bool) -> str:
    """A row's caption: the tumor's volume in mL and its equivalent-sphere radius in mm."""
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    edge = " (cut by the crop's edge)" if at_edge else ""
    return f"tumor {number}: {volume_ml:.2f} mL, r {radius_mm:.1f} mm{edge}"


def _inside(mask: np.ndarray) -> tuple[int, int, int]:
    """A voxel of ``mask`` near its center of mass (the center itself may lie outside a
    crescent or a tumor cut by the crop's edge, where the slices would miss it)."""
    import scipy.ndimage as ndi
    com = np.asarray(ndi.center_of_mass(mask))
    idx = np.argwhere(mask)
    return tuple(int(v) for v in idx[np.argmin(((idx - com) ** 2).sum(axis=1))])


def _touches_edge(mask: np.ndarray) -> bool:
    return any(mask.take(0, axis=a).any() or mask.take(-1, axis=a).any() for a in range(3))


def write_preview(scan, config, seed: int, index: int, out_dir: str, backend) -> list[str]:
    """Synthesize sample ``index`` of root ``seed`` into ``scan``; write PNG, NIfTI pair, params."""
    import json
    import os
    from .sample import sample_params, sample_seed
    from .synthesize import synthesize

    params = sample_params(np.random.default_rng(sample_seed(seed, index)), scan, config)
    crop = synthesize(scan, params, backend)
    import dataclasses
    healthy = synthesize(scan, dataclasses.replace(params, kind="negative", tumors=(),
                                                   released=None), backend)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{scan.scan_id}-seed{seed}-{index}")
    title = (f"{scan.scan_id}  seed {seed} index {index}  {config.profile}/{params.kind}  "
             f"{len(params.tumors)} tumor(s) drawn  backend {backend.name}")
    png = save_montage(crop.image, crop.label, stem + ".png", title, healthy_zyx=healthy.image,
                       spacing_mm=config.target_spacing_mm)
    image_path, label_path = save_nifti(crop.image, crop.label, crop_affine(scan, params), stem)
    with open(stem + ".params.json", "w") as f:
        json.dump({"config": config.to_json(), "params": params.to_json(), "scan": scan.stats()},
                  f, indent=1)
    return [png, image_path, label_path, stem + ".params.json"]
