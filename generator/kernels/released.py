"""The fused path of the ``released`` recipe: a batch of its crops painted by the kernels of
``released.cu`` (compiled with ``paint.cu`` into one module) from packed tables.

``plan(scans, packed, crops, s_of)`` turns the crops' packed rows into the kernels' tables (column
names below, given to the source as #defines): per crop its scan, batch row, corner, canvas (the
crop and its blur margin, as ``synthesize._released_crop`` makes it), bank volume and window
offsets, blur radius and weights, target mean and delta; per tumor part (the part of a tumor's
shape box on its crop's canvas) its box corner, part, centre, half-sizes, control grid and the
ellipsoid test's constants. ``paint(module, backend, scans, packed, crops, images, labels)`` runs
them: union of the shapes, union within the liver, the blur along each axis, the window's sum and
count above 0.12, then one pass per output voxel.

The result equals the array path's bit for bit (``tests/test_released_kernels.py``): every step is
the same float32 / float64 operation in the same order (the blur's sums in scipy's order; the
texture's mean an exact float64 sum), except a window with no voxel above 0.12, whose mean over
all voxels the kernels sum in row-major order and NumPy pairwise (a rounding apart, at worst).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..shape import (gaussian_weights, released_control_grid, released_margin, released_parts,
                     shape_halves)
from ..texture import bank_edge, bank_offsets, bank_volume
from .module import block_size, grid_size

# Columns of the kernels' tables (#defines RC_*, RT_*, RF_*, RTF_*, RTD_* of released.cu).
RC = ("scan", "out", "lo0", "lo1", "lo2", "margin", "cv_dim0", "cv_dim1", "cv_dim2", "cv_off",
      "t0", "t1", "bank", "edge", "off0", "off1", "off2", "radius", "w_off", "tumors")
RT = ("crop", "corner0", "corner1", "corner2", "a0", "a1", "a2", "b0", "b1", "b2")
RF = ("mean", "delta")
RTF = {"half0": 0, "half1": 1, "half2": 2, "grid": 3, "columns": 57}
RTD = ("p0", "p1", "p2", "threshold", "center0", "center1", "center2")


def defines() -> str:
    """The tables' columns as #defines, for the module's source."""
    lines = [f"#define RC_{n.upper()} {i}" for i, n in enumerate(RC)]
    lines += [f"#define RC_COLUMNS {len(RC)}"]
    lines += [f"#define RT_{n.upper()} {i}" for i, n in enumerate(RT)]
    lines += [f"#define RT_COLUMNS {len(RT)}"]
    lines += [f"#define RF_{n.upper()} {i}" for i, n in enumerate(RF)]
    lines += [f"#define RF_COLUMNS {len(RF)}"]
    lines += [f"#define RTF_{n.upper()} {i}" for n, i in RTF.items() if n != "columns"]
    lines += [f"#define RTF_COLUMNS {RTF['columns']}"]
    lines += [f"#define RTD_{n.upper()} {i}" for i, n in enumerate(RTD)]
    lines += [f"#define RTD_COLUMNS {len(RTD)}"]
    return "\n".join(lines) + "\n"


@dataclass
class ReleasedPlan:
    rc: np.ndarray        # (C, len(RC)) int32
    rf: np.ndarray        # (C, len(RF)) float32
    rt: np.ndarray        # (T, len(RT)) int32
    rtf: np.ndarray       # (T, RTF["columns"]) float32
    rtd: np.ndarray       # (T, len(RTD)) float64
    weights: np.ndarray   # float64 blur weights, per crop 2 radius + 1 at w_off
    banks: list           # bank volumes (backend arrays), indexed by RC bank
    canvas: int           # canvas voxels of the batch


def eligible(packed) -> np.ndarray:
    """Per crop of ``packed``: whether these kernels paint it (a fused ``released``-family model)."""
    return np.array([m.fused and m.family == "released" for m in packed.models], bool).reshape(-1)


def plan(backend, scans, packed, crops) -> ReleasedPlan:
    """The tables of the ``released`` crops ``crops`` (indices into ``packed``)."""
    crops = np.asarray(crops, np.int64)
    rc = np.zeros((len(crops), len(RC)), np.int32)
    rf = np.zeros((len(crops), len(RF)), np.float32)
    rt, rtf, rtd, weights, banks, bank_at = [], [], [], [], [], {}
    col = {n: i for i, n in enumerate(RC)}
    canvas_off = w_off = 0
    for n, b in enumerate(crops):
        r = packed.crops[b]
        scan = scans[int(r.scan)]
        s = float(scan.spacing_mm[0])
        size = np.asarray(r.crop_size, np.int64)
        crop_lo = np.asarray(r.origin) - np.asarray(scan.origin_vox)
        rows = packed.tumors_of(b)
        rc[n, col["scan"]], rc[n, col["out"]] = int(r.scan), int(b)
        rc[n, col["lo0"]:col["lo2"] + 1] = crop_lo
        rc[n, col["t0"]] = rc[n, col["t1"]] = len(rt)
        if not len(rows):
            continue
        margin = released_margin(r.mask_blur_mm, s)
        dims = size + 2 * margin
        halves = shape_halves(rows, s)
        for k, corner, a, e in released_parts(rows, s, scan.origin_vox, crop_lo - margin, dims):
            t, h = rows[k], halves[k]
            h2 = [(float(t.half_axes_mm[x]) / s) ** 2 for x in range(3)]
            rt.append([n, *corner, *a, *e])
            rtf.append([max(2 * int(v), 1) / 2.0 for v in h]
                       + list(released_control_grid(t, s).ravel()))
            rtd.append([h2[1] * h2[2], h2[0] * h2[2], h2[0] * h2[1], h2[0] * h2[1] * h2[2],
                        *(float(v) for v in h)])
        rc[n, col["t1"]] = len(rt)
        if rc[n, col["t1"]] == rc[n, col["t0"]]:
            continue                                      # no tumor reaches the canvas
        sigma = float(r.mask_blur_mm) / s
        radius = int(4.0 * sigma + 0.5)
        edge = bank_edge(tuple(dims))
        key = (edge, s, float(r.texture_sigma_mm), float(r.texture_blur_mm),
               tuple(float(v) for v in r.texture_prob))
        if key not in bank_at:
            bank_at[key] = len(banks)
            banks.append(bank_volume(backend, *key))
        rc[n, col["margin"]] = margin
        rc[n, col["cv_dim0"]:col["cv_dim2"] + 1] = dims
        rc[n, col["cv_off"]] = canvas_off
        rc[n, col["bank"]], rc[n, col["edge"]] = bank_at[key], edge
        rc[n, col["off0"]:col["off2"] + 1] = bank_offsets(int(r.texture_seed), edge)
        rc[n, col["radius"]], rc[n, col["w_off"]] = radius, w_off
        rc[n, col["tumors"]] = 1
        rf[n] = (np.float32(r.texture_mean), np.float32(r.delta_hu))
        weights.append(gaussian_weights(sigma, radius))
        w_off += 2 * radius + 1
        canvas_off += int(np.prod(dims))
    return ReleasedPlan(rc, rf, np.array(rt, np.int32).reshape(-1, len(RT)),
                        np.array(rtf, np.float32).reshape(-1, RTF["columns"]),
                        np.array(rtd, np.float64).reshape(-1, len(RTD)),
                        np.concatenate(weights) if weights else np.zeros(1), banks, canvas_off)


def paint(module, backend, scans, packed, crops, images, labels, timer=None) -> None:
    """Paint the ``released`` crops ``crops`` of ``packed`` into ``images`` / ``labels``
    (``(B, Z, Y, X)`` arrays on ``module``'s device) with ``module``'s kernels."""
    crops = np.asarray(crops, np.int64)
    if len(crops) == 0:
        return
    p = plan(backend, scans, packed, crops)
    if timer is not None:
        timer.mark("plan")
    xp, block = module.xp, block_size(module)
    dev = lambda a: xp.ascontiguousarray(xp.asarray(a))
    ptrs = np.zeros(2 * len(scans), np.uint64)
    shapes = np.zeros(3 * len(scans), np.int32)
    for k in sorted({int(packed.crops.scan[b]) for b in crops}):
        image, label = scans[k].on(backend)
        ptrs[2 * k], ptrs[2 * k + 1] = module.pointer(image), module.pointer(label)
        shapes[3 * k:3 * k + 3] = image.shape
    bank_ptrs = np.array([module.pointer(v) for v in p.banks] or [0], np.uint64)
    rc, d_ptrs, d_shapes, d_banks = dev(p.rc), dev(ptrs), dev(shapes), dev(bank_ptrs)
    C = len(crops)
    uni = xp.zeros(max(p.canvas, 1), xp.uint8)
    field = xp.zeros(max(p.canvas, 1), xp.float32)
    other = xp.zeros(max(p.canvas, 1), xp.float32)
    sums = xp.zeros(C, xp.float64)
    counts = xp.zeros(C, xp.uint64)
    if len(p.rt):
        dims = p.rt[:, [RT.index(f"b{a}") for a in range(3)]] - \
            p.rt[:, [RT.index(f"a{a}") for a in range(3)]]
        module.launch("released_union", (grid_size(module, int(np.prod(dims, 1).max())), len(p.rt)),
                      block, (rc, dev(p.rt), dev(p.rtf), dev(p.rtd), uni))
        cells = int(np.prod(p.rc[:, [RC.index(f"cv_dim{a}") for a in range(3)]], 1).max())
        gx = grid_size(module, cells)
        module.launch("released_liver", (gx, C), block, (rc, d_ptrs, d_shapes, uni, field))
        wt = dev(p.weights)
        for axis, (src, dst) in enumerate([(field, other), (other, field), (field, other)]):
            module.launch("released_blur", (gx, C), block, (rc, wt, src, dst, np.int32(axis)))
        module.launch("released_stats", (gx, C), block, (rc, d_banks, sums, counts))
        module.launch("released_fallback", (1, C), block, (rc, d_banks, sums, counts))
    sx, sy, sz = (int(v) for v in packed.crops.crop_size[crops[0]])
    module.launch("released_output", (grid_size(module, sx * sy * sz), C), block,
                  (rc, dev(p.rf), d_ptrs, d_shapes, d_banks, uni, other, sums, counts, images,
                   labels, np.int32(sx), np.int32(sy), np.int32(sz)))
    if timer is not None:
        timer.mark("kernels")
