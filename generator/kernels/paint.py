"""The fused synthesis path: a whole batch of ``paper`` / ``paper-train`` crops painted by the
kernels of ``paint.cu`` from packed tables, with one host plan per batch.

``plan(scans, packed, crops)`` turns the crops' packed rows (``batch``) into the kernels' tables:
one int32 row per tumor that reaches its crop (its boxes R, S and work box W in canvas voxels,
buffer offsets, texture noise block and operator rows in ``OPERATORS``), its float32 control grid,
half-axes and post-processing constants, float64 texture mean and sd, its texture seed, and one row
per crop (its scan, corner, tumors and canvas). ``paint(module, backend, scans, packed, crops,
images, labels)`` runs them: shape on S, the mask blur along each axis, the texture's noise block
and three operator passes on R; then for a crop no tumor with mass effect or capsule reaches, one
pass over its output voxels that reads the scan, blends its tumors in their order (eq. 4), sets
labels and writes int16 / uint8 in (Z, Y, X) order into ``images`` / ``labels`` (device buffers
``(B, Z, Y, X)``); for the others, a canvas painted tumor by tumor (eq. 4, eq. 5's warp, eqs. 6-8)
and the crop cut out of it.

Every ``paper`` / ``paper-train`` crop takes this path (``eligible``); ``released`` crops take the
array code (``synthesize``). The result equals the array code's up to the texture's float64
summation order (``tests/test_kernels.py``: bit-identical on every crop tried), and the kernels'
text runs on a CPU through ``module.CpuModule``, their NumPy twins (``tests/kernel_twins.py``)
through ``TwinModule``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import kernel_setting
from ..shape import blur_radius, gaussian_weights, control_grid, shape_halves, tumor_halves, work_boxes
from ..texture import axis_operator
from . import released
from .module import block_size, grid_size

SOURCE_FILE = Path(__file__).with_name("paint.cu")
RELEASED_FILE = Path(__file__).with_name("released.cu")


def _triples(*names: str) -> tuple[str, ...]:
    return tuple(f"{n}{a}" for n in names for a in range(3))


# Columns of the kernels' tables, defined here once and given to the source as #defines.
TI = (("crop",) + _triples("r_lo", "r_hi", "s_lo", "s_hi", "shape_off", "grid_half")
      + ("ws", "radius", "w_off") + _triples("z_lo", "z_dim", "coarse")
      + ("z_off", "p1_off", "p2_off") + _triples("op_base", "op_c", "band_row") + ("tex_off",)
      # post-processing (mass effect, capsule): work box W, its buffers, the warp's cube
      + ("post",) + _triples("w_lo", "w_hi", "center") + ("wk_off", "cap_radius", "cap_w_off",
                                                           "cube", "cube_off"))
TF = {"half_axes": 0, "grid": 3, "gamma": 84, "intensity": 85, "band_lo": 86, "band_hi": 87,
      "capsule_hu": 88, "columns": 89}
TD = ("mu_t", "sigma_p")
# per crop: its scan, row of the output batch, corner (scan voxels), tumors [t0, t1), and its
# canvas (corner in scan voxels, size, offset in the canvas buffer; the crop itself unless a
# tumor with post-processing reaches it)
CI = ("scan", "out", "lo0", "lo1", "lo2", "t0", "t1") + _triples("cv_lo", "cv_dim") + ("cv_off",
                                                                                      "canvas")
NULL = np.uint64(0)          # a null pointer argument (sel: every tumor)


def noise_precision() -> str:
    """How ``paint_noise`` computes Box-Muller (``TUMORFORGE_KERNEL_NOISE``): ``float64``
    (default: NumPy's arithmetic, the array path's values up to the device's libm) or ``float32``
    (values within a few float32 ulp, far cheaper on a GPU, whose float64 log / sin / cos are
    slow)."""
    return kernel_setting("TUMORFORGE_KERNEL_NOISE")


def source() -> str:
    """``paint.cu`` and ``released.cu`` with the table columns defined in front of them."""
    lines = [f"#define TI_{n.upper()} {i}" for i, n in enumerate(TI)]
    lines += [f"#define TI_COLUMNS {len(TI)}"]
    lines += [f"#define TF_{n.upper()} {i}" for n, i in TF.items()]
    lines += [f"#define TD_{n.upper()} {i}" for i, n in enumerate(TD)] + [f"#define TD_COLUMNS {len(TD)}"]
    lines += [f"#define CI_{n.upper()} {i}" for i, n in enumerate(CI)] + [f"#define CI_COLUMNS {len(CI)}"]
    return ("\n".join(lines) + "\n" + released.defines() + SOURCE_FILE.read_text() + "\n"
            + RELEASED_FILE.read_text())


@functools.lru_cache(maxsize=1)
def cuda_module():
    from .module import CudaModule
    return CudaModule(source())


@functools.lru_cache(maxsize=1)
def cpu_module():
    from .module import CpuModule
    return CpuModule(source())


def eligible(packed) -> np.ndarray:
    """Per crop of ``packed``: whether the kernels of this module paint it: the ``paper``-family
    crops of tumor models that declare themselves fused (``TumorModel.fused``); ``released``
    crops of fused models go to ``released.paint``, the others take the array code."""
    return np.array([m.fused and m.family == "paper" for m in packed.models], bool).reshape(-1)


class OperatorTable:
    """Every texture axis operator (``texture.axis_operator``) the kernels have used, in one flat
    float64 array (row-major, one operator after another) with each row's first and last + 1
    non-zero column (int32 pairs), kept on the host and mirrored once per change on a device, so a
    batch's plan passes offsets instead of slicing operators per tumor. Cleared when it would pass
    ``CAP_BYTES`` (the default draws need about 1,000 operators, ~15 MB)."""

    CAP_BYTES = 256 << 20

    def __init__(self):
        self.version = 0
        self.clear()

    def clear(self) -> None:
        self._index: dict = {}
        self._ops: list = []
        self._bands: list = []
        self.values = self.rows = 0
        self._flat = None
        self._device: dict = {}
        self.version += 1

    @property
    def count(self) -> int:
        return len(self._index)

    def lookup(self, n: int, c: int, sigma: float) -> tuple[int, int]:
        """(offset of the operator's first value, index of its first row) for (n, c, sigma)."""
        key = (int(n), int(c), round(float(sigma), 12))
        got = self._index.get(key)
        if got is None:
            op, first, last = axis_operator(*key)
            got = self._index[key] = (self.values, self.rows)
            self._ops.append(op.ravel())
            self._bands.append(np.stack([first, last], axis=1).astype(np.int32).ravel())
            self.values += op.size
            self.rows += op.shape[0]
            self._flat = None
            self.version += 1
        return got

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(operators float64, bands int32 (first, last) per row plus a sentinel row) on the host."""
        return self._arrays()[:2]

    def first_last(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's first and last + 1 non-zero column (contiguous int32, a sentinel row)."""
        return self._arrays()[2:]

    def _arrays(self):
        if self._flat is None:
            ops = np.concatenate(self._ops) if self._ops else np.zeros(1)
            bands = np.concatenate(self._bands + [np.zeros(2, np.int32)])
            self._flat = (ops, bands, np.ascontiguousarray(bands[0::2]),
                          np.ascontiguousarray(bands[1::2]))
        return self._flat

    def on(self, module):
        """The arrays on ``module``'s device, uploaded again only after a change."""
        got = self._device.get(id(module))
        if got is None or got[0] != self.version:
            ops, bands = self.arrays()
            xp = module.xp
            got = self._device[id(module)] = (self.version, xp.asarray(ops), xp.asarray(bands))
        return got[1], got[2]


OPERATORS = OperatorTable()


@dataclass
class PaintPlan:
    ci: np.ndarray        # (C, len(CI)) int32: per crop painted
    ti: np.ndarray        # (T, len(TI)) int32: per tumor reaching its crop
    tf: np.ndarray        # (T, TF["columns"]) float32: half-axes (voxels), control grid
    td: np.ndarray        # (T, len(TD)) float64
    seeds: np.ndarray     # (T,) uint64 texture seeds
    weights: np.ndarray   # float64 blur weights, per tumor 2 radius + 1 at w_off
    ops: np.ndarray       # float64 texture operators (OPERATORS), rows at op_base, stride op_c
    bands: np.ndarray     # int32 (first, last) non-zero column of each operator row (band_row)
    sizes: dict           # ws, z, p1, p2, tex: lengths of the work buffers
    rows: np.ndarray      # (T,) each tumor's row in ``packed.tumors``

    @property
    def tumors(self) -> int:
        return len(self.ti)


def _filter_radius(sigma_vox) -> np.ndarray:
    """``ndimage.gaussian_filter``'s radius for each sd (voxels) at its default truncate 4."""
    return (4.0 * np.asarray(sigma_vox, float) + 0.5).astype(np.int64)




def _offsets(lengths) -> np.ndarray:
    """Where each of consecutive blocks of ``lengths`` starts."""
    lengths = np.asarray(lengths, np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths


def plan(scans, packed, crops) -> PaintPlan:
    """The kernels' tables for the crops ``crops`` (indices into ``packed``, all ``eligible``), in
    array operations over their tumors (a loop only to slice each tumor's texture operators).
    Boxes as the array code (``synthesize``) draws them, from the same ``shape.work_boxes``: a
    tumor counts when its reach meets the crop; its work box is its tumor box cut to the crop, or
    its whole reach with post-processing; the canvas holds the crop and every work box; all boxes
    in canvas voxels."""
    crops = np.asarray(crops, np.int64)
    cr = packed.crops[crops]
    counts = np.asarray(cr.tumors, np.int64)
    idx = (np.concatenate([np.arange(f, f + c) for f, c in zip(cr.first_tumor, counts)])
           if counts.sum() else np.zeros(0, np.int64)).astype(np.int64)
    rows = packed.tumors[idx]
    pos = np.repeat(np.arange(len(crops)), counts)               # each tumor's crop (position)
    s = np.array([float(scans[int(k)].spacing_mm[0]) for k in np.asarray(cr.scan)[pos]])
    size = np.asarray(cr.crop_size[0], np.int64) if len(crops) else np.zeros(3, np.int64)
    T = len(rows)
    hb = tumor_halves(rows, s) if T else np.zeros((0, 3), np.int64)
    c = np.asarray(rows.center, np.int64).reshape(-1, 3) - np.asarray(cr.origin, np.int64)[pos]
    keep, post, work_lo, work_hi = work_boxes(rows, s, c, 0, size)   # crop voxels: [0, size)
    idx, rows, pos, s, hb, c, post = idx[keep], rows[keep], pos[keep], s[keep], hb[keep], c[keep], post[keep]
    work_lo, work_hi = work_lo[keep], work_hi[keep]
    T = len(rows)
    if T >= 65535:
        raise ValueError(f"a batch of {T} tumors: the kernels take at most 65,534 per call")
    # canvases: the crop and every work box of its tumors (the crop alone without post-processing)
    cv_lo = np.zeros((len(crops), 3), np.int64)
    cv_hi = np.tile(size, (len(crops), 1))
    np.minimum.at(cv_lo, pos, work_lo)
    np.maximum.at(cv_hi, pos, work_hi)
    canvas = np.bincount(pos, weights=post, minlength=len(crops)) > 0 if len(crops) else np.zeros(0, bool)
    cv_dim = cv_hi - cv_lo
    cv_vol = np.where(canvas, np.prod(cv_dim, axis=1), 0)
    kept = np.bincount(pos, minlength=len(crops)) if len(crops) else np.zeros(0, np.int64)
    t1 = np.cumsum(kept)
    crop_lo = np.asarray(cr.origin, np.int64) - np.array(
        [scans[int(k)].origin_vox for k in cr.scan], np.int64).reshape(-1, 3)
    ci = np.column_stack([np.asarray(cr.scan, np.int64), np.arange(len(crops)), crop_lo,
                          t1 - kept, t1, crop_lo + cv_lo, cv_dim, _offsets(cv_vol),
                          canvas]).astype(np.int32).reshape(-1, len(CI))
    sizes = dict(ws=0, z=0, p1=0, p2=0, tex=0, wk=0, cube=0, canvas=int(cv_vol.sum()))
    if T == 0:
        return PaintPlan(ci=ci, ti=np.zeros((0, len(TI)), np.int32),
                    tf=np.zeros((0, TF["columns"]), np.float32), td=np.zeros((0, len(TD))),
                    seeds=np.zeros(0, np.uint64), weights=np.zeros(0), ops=np.zeros(1),
                    bands=np.zeros(2, np.int32), sizes=sizes, rows=idx)
    gh = shape_halves(rows, s)
    shift = cv_lo[pos]                                           # crop -> canvas voxels
    box_lo = c - hb
    box_hi = box_lo + 2 * hb + 1
    r_lo, r_hi = np.maximum(box_lo, work_lo), np.minimum(box_hi, work_hi)
    sigma_c = np.asarray(rows.sigma_c_mm, float) / s
    pad = blur_radius(rows, s)                                   # S: R plus the blur's reach
    radius = _filter_radius(sigma_c)                             # the blur's own (scipy's)
    s_lo = np.maximum(box_lo, r_lo - pad[:, None])
    s_hi = np.minimum(box_hi, r_hi + pad[:, None])
    m = r_hi - r_lo
    weights = [gaussian_weights(float(a), int(b)) for a, b in zip(sigma_c, radius)]
    # post-processing: mass effect's cube, the capsule's blur
    mass = post & np.asarray(rows.mass_effect, bool)
    cap = post & np.asarray(rows.capsule, bool)
    gamma = np.asarray(rows.gamma_max_mm, float) / s
    cube = np.where(mass, np.ceil(gamma), 0).astype(np.int64)
    sigma_d = np.asarray(rows.sigma_d_mm, float) / s
    cap_radius = np.where(cap, _filter_radius(sigma_d), 0)
    cap_weights = [gaussian_weights(float(a), int(b)) if f else np.zeros(0)
                   for a, b, f in zip(sigma_d, cap_radius, cap)]
    # texture: the operators' rows for R (OPERATORS) and the noise block they read
    eta = np.asarray(rows.eta, float)                            # per axis (T, 3), or (T,)
    step = np.maximum((eta if eta.ndim == 2 else eta[:, None]) / s[:, None], 1.0)
    box = 2 * hb + 1
    coarse = np.maximum(2, np.ceil(box / step).astype(np.int64))
    sigma_b = np.asarray(rows.sigma_b_mm, float) / s
    a_lo, a_hi = r_lo - box_lo, r_hi - box_lo
    if OPERATORS.values * 8 > OPERATORS.CAP_BYTES:
        OPERATORS.clear()
    keys = np.stack([box, coarse, np.repeat(sigma_b[:, None], 3, axis=1)], axis=-1).reshape(-1, 3)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    where = np.array([OPERATORS.lookup(int(n), int(cc), float(sg)) for n, cc, sg in uniq],
                     np.int64).reshape(-1, 2)[inverse.reshape(-1)]
    op_row0 = where[:, 1].reshape(T, 3)
    ops, bands = OPERATORS.arrays()
    starts, ends = (op_row0 + a_lo).ravel(), (op_row0 + a_hi).ravel()
    pairs = np.stack([starts, ends], axis=1).ravel()
    first, last = OPERATORS.first_last()
    z_lo = np.minimum.reduceat(first, pairs)[0::2].reshape(T, 3).astype(np.int64)
    z_hi = np.maximum.reduceat(last, pairs)[0::2].reshape(T, 3).astype(np.int64)
    z_dim = z_hi - z_lo
    op_base = where[:, 0].reshape(T, 3) + a_lo * coarse          # row lo of each operator
    lengths = {"ws": np.prod(s_hi - s_lo, axis=1), "z": np.prod(z_dim, axis=1),
               "p1": m[:, 0] * z_dim[:, 1] * z_dim[:, 2], "p2": m[:, 0] * z_dim[:, 1] * m[:, 2],
               "tex": np.prod(m, axis=1),
               "wk": np.where(post, np.prod(work_hi - work_lo, axis=1), 0),
               "cube": (2 * cube + 1) ** 3 * mass}
    all_w = weights + cap_weights
    w_off = _offsets([len(w) for w in all_w])
    cols = {"crop": pos, "r_lo": r_lo - shift, "r_hi": r_hi - shift, "s_lo": s_lo - shift,
            "s_hi": s_hi - shift, "shape_off": gh - hb + (s_lo - box_lo), "grid_half": gh,
            "ws": _offsets(lengths["ws"]), "radius": radius, "w_off": w_off[:T], "z_lo": z_lo,
            "z_dim": z_dim, "coarse": coarse, "z_off": _offsets(lengths["z"]),
            "p1_off": _offsets(lengths["p1"]), "p2_off": _offsets(lengths["p2"]),
            "op_base": op_base, "op_c": coarse, "band_row": op_row0 + a_lo,
            "tex_off": _offsets(lengths["tex"]),
            "post": post, "w_lo": work_lo - shift, "w_hi": work_hi - shift, "center": c - shift,
            "wk_off": _offsets(lengths["wk"]), "cap_radius": cap_radius, "cap_w_off": w_off[T:],
            "cube": cube, "cube_off": _offsets(lengths["cube"])}
    ti = np.zeros((T, len(TI)), np.int64)
    for name, values in cols.items():
        at = TI.index(name) if name in TI else TI.index(name + "0")
        values = np.asarray(values).reshape(T, -1)
        ti[:, at:at + values.shape[1]] = values
    sizes.update({k: int(v.sum()) for k, v in lengths.items()})
    if max(max(sizes.values()), int(ops.size)) >= 2 ** 31:
        raise ValueError("a batch too large for the kernels' int32 offsets; use smaller batches")
    tf = np.zeros((T, TF["columns"]), np.float32)
    tf[:, TF["half_axes"]:TF["half_axes"] + 3] = np.asarray(rows.half_axes_mm, float) / s[:, None]
    tf[:, TF["grid"]:TF["grid"] + 81] = control_grid(rows, s).reshape(T, 81)
    tf[:, TF["gamma"]] = gamma
    tf[:, TF["intensity"]] = np.asarray(rows.intensity, float) / 100.0
    band = np.asarray(rows.capsule_band, float).reshape(T, 2)
    tf[:, TF["band_lo"]], tf[:, TF["band_hi"]] = band[:, 0], band[:, 1]
    tf[:, TF["capsule_hu"]] = np.asarray(rows.capsule_hu, float)
    td = np.column_stack([np.asarray(rows.mu_t, float), np.asarray(rows.sigma_p, float)])
    return PaintPlan(ci=ci, ti=ti.astype(np.int32), tf=tf, td=td,
                seeds=np.ascontiguousarray(rows.texture_seed, np.uint64),
                weights=np.concatenate(all_w), ops=ops, bands=bands, sizes=sizes, rows=idx)


def paint(module, backend, scans, packed, crops, images, labels, timer=None) -> None:
    """Paint the crops ``crops`` of ``packed`` into ``images`` / ``labels`` (``(B, Z, Y, X)`` int16
    / uint8 arrays on ``module``'s device, indexed by crop) with the kernels of ``module``
    (``cuda_module()``, or ``cpu_module()`` with NumPy arrays)."""
    crops = np.asarray(crops, np.int64)
    if len(crops) == 0:
        return
    p = plan(scans, packed, crops)
    if timer is not None:
        timer.mark("plan")
    xp = module.xp
    ci = p.ci.copy()
    ci[:, CI.index("out")] = crops                  # write each crop to its row of the batch
    used = sorted({int(packed.crops.scan[b]) for b in crops})
    ptrs = np.zeros(2 * len(scans), np.uint64)
    shapes = np.zeros(3 * len(scans), np.int32)
    for k in used:
        image, label = scans[k].on(backend)
        ptrs[2 * k], ptrs[2 * k + 1] = module.pointer(image), module.pointer(label)
        shapes[3 * k:3 * k + 3] = image.shape
    dev = lambda a: xp.ascontiguousarray(xp.asarray(a))
    ti, tf, d_ci, d_ptrs, d_shapes = dev(p.ti), dev(p.tf), dev(ci), dev(ptrs), dev(shapes)
    T, block = p.tumors, block_size(module)
    if T:
        ws_a = xp.empty(p.sizes["ws"], xp.float32)
        ws_b = xp.empty(p.sizes["ws"], xp.float32)
        zbuf = xp.empty(p.sizes["z"], xp.float64)
        p1 = xp.empty(p.sizes["p1"], xp.float64)
        p2 = xp.empty(p.sizes["p2"], xp.float64)
        tex = xp.empty(p.sizes["tex"], xp.float32)
        td, wt = dev(p.td), dev(p.weights)
        ops, bands = OPERATORS.on(module)
        gx = grid_size(module, max(_most(p.ti, "s_lo", "s_hi"), _most(p.ti, "r_lo", "r_hi"),
                               int(np.prod(p.ti[:, _cols("z_dim")], 1).max())))
        module.launch("paint_shape", (gx, T), block, (ti, tf, ws_a))
        for axis, (src, dst) in enumerate([(ws_a, ws_b), (ws_b, ws_a), (ws_a, ws_b)]):
            module.launch("paint_blur", (gx, T), block, (ti, NULL, wt, src, dst, np.int32(axis),
                                                         np.int32(0)))
        mask = ws_b
        module.launch("paint_noise", (gx, T), block,
                      (ti, dev(p.seeds), zbuf, np.int32(noise_precision() == "float32")))
        for k, (src, dst) in enumerate([(zbuf, p1), (p1, p2), (p2, p2)]):
            module.launch("paint_texture", (gx, T), block,
                          (ti, td, ops, bands, src, dst, tex, np.int32(k)))
    else:
        mask = tex = xp.zeros(1, xp.float32)
    sx, sy, sz = (int(v) for v in packed.crops.crop_size[crops[0]])
    on_canvas = p.ci[:, CI.index("canvas")] > 0
    if (~on_canvas).any():                          # one fused pass per crop
        module.launch("paint_blend", (grid_size(module, sx * sy * sz), int((~on_canvas).sum())), block,
                      (dev(ci[~on_canvas]), ti, d_ptrs, d_shapes, mask, tex, images, labels,
                       np.int32(sx), np.int32(sy), np.int32(sz)))
    if on_canvas.any():                             # tumor by tumor on canvases
        _paint_canvases(module, p, ci, on_canvas, ti, tf, d_ci, d_ptrs, d_shapes, mask, tex,
                        images, labels, (sx, sy, sz))
    if timer is not None:
        timer.mark("kernels")


def _paint_canvases(module, p, ci, on_canvas, ti, tf, d_ci, d_ptrs, d_shapes, mask, tex, images,
                    labels, size) -> None:
    """Crops reached by a tumor with mass effect or capsule: canvas, then each crop's k-th tumor
    for k = 0, 1, ... (place; mass effect; capsule), then the crop out of the canvas."""
    xp, block = module.xp, block_size(module)
    dev = lambda a: xp.ascontiguousarray(xp.asarray(a))
    rows = ci[on_canvas]
    d_rows = dev(rows)
    cimg = xp.empty(p.sizes["canvas"], xp.float32)
    clab = xp.empty(p.sizes["canvas"], xp.uint8)
    dims = rows[:, [CI.index(f"cv_dim{a}") for a in range(3)]].astype(np.int64)
    module.launch("paint_canvas", (grid_size(module, int(np.prod(dims, 1).max())), len(rows)), block,
                  (d_rows, d_ptrs, d_shapes, cimg, clab))
    mask_w = xp.zeros(max(p.sizes["wk"], 1), xp.float32)
    edge = xp.empty(max(p.sizes["wk"], 1), xp.float32)
    blurred = xp.empty(max(p.sizes["wk"], 1), xp.float32)
    q_img = xp.empty(max(p.sizes["cube"], 1), xp.float32)
    q_lab = xp.empty(max(p.sizes["cube"], 1), xp.uint8)
    q_mask = xp.empty(max(p.sizes["cube"], 1), xp.float32)
    wt = dev(p.weights)
    t0, t1 = rows[:, CI.index("t0")], rows[:, CI.index("t1")]
    col = lambda name: p.ti[:, TI.index(name)]
    mass = (col("cube") > 0)
    cap = (col("cap_radius") > 0) & (col("post") > 0)
    for k in range(int((t1 - t0).max(initial=0))):
        sel = (t0 + k)[t1 - t0 > k]
        gx = grid_size(module, _most(p.ti[sel], "r_lo", "r_hi"))
        module.launch("paint_place", (gx, len(sel)), block,
                      (d_ci, ti, dev(sel.astype(np.int32)), mask, tex, cimg, clab, mask_w))
        m = sel[mass[sel]].astype(np.int32)
        if len(m):
            n = int((2 * col("cube")[m] + 1).max()) ** 3
            d_m = dev(m)
            module.launch("paint_warp_copy", (grid_size(module, n), len(m)), block,
                          (d_ci, ti, d_m, cimg, clab, mask_w, q_img, q_lab, q_mask))
            module.launch("paint_warp", (grid_size(module, n), len(m)), block,
                          (d_ci, ti, d_m, tf, cimg, clab, mask_w, q_img, q_lab, q_mask))
        c = sel[cap[sel]].astype(np.int32)
        if len(c):
            d_c = dev(c)
            gx = grid_size(module, _most(p.ti[c], "w_lo", "w_hi"))
            module.launch("paint_band", (gx, len(c)), block, (ti, d_c, tf, mask_w, edge))
            for axis, (src, dst) in enumerate([(edge, blurred), (blurred, edge), (edge, blurred)]):
                module.launch("paint_blur", (gx, len(c)), block,
                              (ti, d_c, wt, src, dst, np.int32(axis), np.int32(1)))
            module.launch("paint_capsule", (gx, len(c)), block, (d_ci, ti, d_c, tf, blurred, cimg))
    sx, sy, sz = size
    module.launch("paint_output", (grid_size(module, sx * sy * sz), len(rows)), block,
                  (d_rows, cimg, clab, images, labels, np.int32(sx), np.int32(sy), np.int32(sz)))


def _most(ti, lo: str, hi: str) -> int:
    """The largest box volume between columns ``lo`` and ``hi`` of the rows ``ti``."""
    if len(ti) == 0:
        return 1
    return int(np.prod(ti[:, _cols(hi)] - ti[:, _cols(lo)], axis=1).max())


def _cols(name: str) -> list[int]:
    return [TI.index(f"{name}{a}") for a in range(3)]


