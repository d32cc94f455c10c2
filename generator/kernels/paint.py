"""The fused synthesis path: a whole batch of ``paper`` / ``paper-train`` crops painted by five
kernels (``paint.cu``) from packed tables, with one host plan per batch.

``plan(scans, packed, crops)`` turns the crops' packed rows (``batch``) into the kernels' tables:
one int32 row per tumor that reaches its crop (its boxes R and S, workspace offsets, texture block
and operators), its float32 control grid and half-axes, float64 texture mean and sd, its texture
seed, and one row per crop. ``paint(module, backend, scans, packed, crops, images, labels)`` runs
them: shape on S, the mask blur along each axis, the texture's noise block and three operator
passes on R, then one pass over every output voxel that reads the scan, blends the crop's tumors in
their order (eq. 4), sets labels and writes int16 / uint8 in (Z, Y, X) order into ``images`` /
``labels`` (device buffers ``(B, Z, Y, X)``).

A crop takes this path when it is a ``paper`` / ``paper-train`` crop none of whose reaching tumors
has mass effect or capsule (``eligible``): all of ``paper-train``'s and the small tumors of
``paper``. Other crops take the array path (``synthesize``). The result equals the array path's
up to the texture's float64 summation order (tests: ``tests/test_kernels.py``), and the kernels'
text runs on a CPU through ``module.CpuModule``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..shape import control_grid, shape_halves, tumor_halves
from ..texture import axis_operator

SOURCE_FILE = Path(__file__).with_name("paint.cu")


def _triples(*names: str) -> tuple[str, ...]:
    return tuple(f"{n}{a}" for n in names for a in range(3))


# Columns of the kernels' tables, defined here once and given to the source as #defines.
TI = (("crop",) + _triples("r_lo", "r_hi", "s_lo", "s_hi", "shape_off", "grid_half")
      + ("ws", "radius", "w_off") + _triples("z_lo", "z_dim", "coarse")
      + ("z_off", "p1_off", "p2_off") + _triples("op_off") + ("tex_off",))
TF = {"half_axes": 0, "grid": 3, "columns": 3 + 81}
TD = ("mu_t", "sigma_p")
CI = ("scan", "out", "lo0", "lo1", "lo2", "t0", "t1")
BLOCK = 256


def source() -> str:
    """``paint.cu`` with the table columns defined in front of it."""
    lines = [f"#define TI_{n.upper()} {i}" for i, n in enumerate(TI)]
    lines += [f"#define TI_COLUMNS {len(TI)}"]
    lines += [f"#define TF_{n.upper()} {i}" for n, i in TF.items()]
    lines += [f"#define TD_{n.upper()} {i}" for i, n in enumerate(TD)] + [f"#define TD_COLUMNS {len(TD)}"]
    lines += [f"#define CI_{n.upper()} {i}" for i, n in enumerate(CI)] + [f"#define CI_COLUMNS {len(CI)}"]
    return "\n".join(lines) + "\n" + SOURCE_FILE.read_text()


@functools.lru_cache(maxsize=1)
def cuda_module():
    from .module import CudaModule
    return CudaModule(source())


@functools.lru_cache(maxsize=1)
def cpu_module():
    from .module import CpuModule
    return CpuModule(source())


def _post(rows) -> np.ndarray:
    return np.asarray(rows.paper & (rows.mass_effect | rows.capsule), bool).reshape(-1)


def eligible(scans, packed) -> np.ndarray:
    """Per crop of ``packed``: whether the kernels paint it (a paper crop none of whose tumors
    that reach it has mass effect or capsule)."""
    from ..synthesize import tumor_reach
    out = np.zeros(len(packed), bool)
    size = np.asarray(packed.crops.crop_size[0]) if len(packed) else None
    for b in range(len(packed)):
        r = packed.crops[b]
        if r.released:
            continue
        rows = packed.tumors_of(b)
        post = _post(rows)
        if post.any():
            scan = scans[int(r.scan)]
            s = float(scan.spacing_mm[0])
            c = np.asarray(rows.center).reshape(-1, 3) - np.asarray(r.origin)
            h = tumor_reach(rows[post], s)
            c = c[post]
            if np.any(np.all((c - h < size) & (0 < c + h + 1), axis=-1)):
                continue
        out[b] = True
    return out


@dataclass
class Plan:
    ci: np.ndarray        # (C, len(CI)) int32: per crop painted
    ti: np.ndarray        # (T, len(TI)) int32: per tumor reaching its crop
    tf: np.ndarray        # (T, TF["columns"]) float32: half-axes (voxels), control grid
    td: np.ndarray        # (T, len(TD)) float64
    seeds: np.ndarray     # (T,) uint64 texture seeds
    weights: np.ndarray   # float64 blur weights, per tumor 2 radius + 1 at w_off
    ops: np.ndarray       # float64 texture operator blocks, per tumor and axis at op_off
    sizes: dict           # ws, z, p1, p2, tex: lengths of the work buffers
    rows: np.ndarray      # (T,) each tumor's row in ``packed.tumors``

    @property
    def tumors(self) -> int:
        return len(self.ti)


@functools.lru_cache(maxsize=8192)
def gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights (order 0), float64, for ``sigma`` voxels."""
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


def _offsets(lengths) -> np.ndarray:
    """Where each of consecutive blocks of ``lengths`` starts."""
    lengths = np.asarray(lengths, np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths


def plan(scans, packed, crops) -> Plan:
    """The kernels' tables for the crops ``crops`` (indices into ``packed``, all ``eligible``), in
    array operations over their tumors (a loop only to slice each tumor's texture operators)."""
    crops = np.asarray(crops, np.int64)
    cr = packed.crops[crops]
    counts = np.asarray(cr.tumors, np.int64)
    idx = (np.concatenate([np.arange(f, f + c) for f, c in zip(cr.first_tumor, counts)])
           if counts.sum() else np.zeros(0, np.int64)).astype(np.int64)
    rows = packed.tumors[idx]
    pos = np.repeat(np.arange(len(crops)), counts)               # each tumor's crop (position)
    s = np.array([float(scans[int(k)].spacing_mm[0]) for k in np.asarray(cr.scan)[pos]])
    size = np.asarray(cr.crop_size[0], np.int64) if len(crops) else np.zeros(3, np.int64)
    if len(rows):
        hb = tumor_halves(rows, s)
        gh = shape_halves(rows, s)
        box_lo = np.asarray(rows.center, np.int64) - np.asarray(cr.origin, np.int64)[pos] - hb
        box_hi = box_lo + 2 * hb + 1
        r_lo, r_hi = np.maximum(box_lo, 0), np.minimum(box_hi, size)
        keep = np.all(r_hi > r_lo, axis=1)                       # tumors that reach their crop
    else:
        keep = np.zeros(0, bool)
    idx, rows, pos, s = idx[keep], rows[keep], pos[keep], s[keep]
    T = len(rows)
    kept = np.bincount(pos, minlength=len(crops)) if len(crops) else np.zeros(0, np.int64)
    t1 = np.cumsum(kept)
    crop_lo = np.asarray(cr.origin, np.int64) - np.array(
        [scans[int(k)].origin_vox for k in cr.scan], np.int64).reshape(-1, 3)
    ci = np.column_stack([np.asarray(cr.scan, np.int64), np.arange(len(crops)), crop_lo,
                          t1 - kept, t1]).astype(np.int32).reshape(-1, len(CI))
    empty = Plan(ci=ci, ti=np.zeros((0, len(TI)), np.int32),
                 tf=np.zeros((0, TF["columns"]), np.float32), td=np.zeros((0, len(TD))),
                 seeds=np.zeros(0, np.uint64), weights=np.zeros(0), ops=np.zeros(0),
                 sizes=dict(ws=0, z=0, p1=0, p2=0, tex=0), rows=idx)
    if T == 0:
        return empty
    if T >= 65535:
        raise ValueError(f"a batch of {T} tumors: the kernels take at most 65,534 per call")
    hb, gh, box_lo, box_hi = hb[keep], gh[keep], box_lo[keep], box_hi[keep]
    r_lo, r_hi = r_lo[keep], r_hi[keep]
    sigma_c = np.asarray(rows.sigma_c_mm, float) / s
    pad = (4.0 * sigma_c + 0.5).astype(np.int64)                 # shape.blur_radius
    s_lo = np.maximum(box_lo, r_lo - pad[:, None])
    s_hi = np.minimum(box_hi, r_hi + pad[:, None])
    m = r_hi - r_lo
    weights = [gaussian_weights(float(a), int(b)) for a, b in zip(sigma_c, pad)]
    # texture: the noise block the R part's operator rows read, and those rows
    step = np.maximum(np.asarray(rows.eta, float) / s, 1.0)
    box = 2 * hb + 1
    coarse = np.maximum(2, np.ceil(box / step[:, None]).astype(np.int64))
    sigma_b = np.asarray(rows.sigma_b_mm, float) / s
    a_lo, a_hi = r_lo - box_lo, r_hi - box_lo
    z_lo = np.zeros((T, 3), np.int64)
    z_hi = np.zeros((T, 3), np.int64)
    blocks = []
    for n in range(T):
        for a in range(3):
            op, first, last = axis_operator(int(box[n, a]), int(coarse[n, a]), float(sigma_b[n]))
            lo, hi = int(a_lo[n, a]), int(a_hi[n, a])
            w0, w1 = int(first[lo:hi].min()), int(last[lo:hi].max())
            z_lo[n, a], z_hi[n, a] = w0, w1
            blocks.append(op[lo:hi, w0:w1].ravel())
    z_dim = z_hi - z_lo
    op_len = np.array([b.size for b in blocks], np.int64)
    op_off = _offsets(op_len).reshape(T, 3)
    sizes = {"ws": np.prod(s_hi - s_lo, axis=1), "z": np.prod(z_dim, axis=1),
             "p1": m[:, 0] * z_dim[:, 1] * z_dim[:, 2], "p2": m[:, 0] * z_dim[:, 1] * m[:, 2],
             "tex": np.prod(m, axis=1)}
    cols = {"crop": pos, "r_lo": r_lo, "r_hi": r_hi, "s_lo": s_lo, "s_hi": s_hi,
            "shape_off": gh - hb + (s_lo - box_lo), "grid_half": gh, "ws": _offsets(sizes["ws"]),
            "radius": pad, "w_off": _offsets([len(w) for w in weights]), "z_lo": z_lo,
            "z_dim": z_dim, "coarse": coarse, "z_off": _offsets(sizes["z"]),
            "p1_off": _offsets(sizes["p1"]), "p2_off": _offsets(sizes["p2"]), "op_off": op_off,
            "tex_off": _offsets(sizes["tex"])}
    ti = np.zeros((T, len(TI)), np.int64)
    for name, values in cols.items():
        at = TI.index(name) if name in TI else TI.index(name + "0")
        values = np.asarray(values).reshape(T, -1)
        ti[:, at:at + values.shape[1]] = values
    total = {k: int(v.sum()) for k, v in sizes.items()}
    if max(max(total.values()), int(op_len.sum())) >= 2 ** 31:
        raise ValueError("a batch too large for the kernels' int32 offsets; use smaller batches")
    tf = np.zeros((T, TF["columns"]), np.float32)
    tf[:, TF["half_axes"]:TF["half_axes"] + 3] = np.asarray(rows.half_axes_mm, float) / s[:, None]
    tf[:, TF["grid"]:TF["grid"] + 81] = control_grid(rows, s).reshape(T, 81)
    td = np.column_stack([np.asarray(rows.mu_t, float), np.asarray(rows.sigma_p, float)])
    return Plan(ci=ci, ti=ti.astype(np.int32), tf=tf, td=td,
                seeds=np.ascontiguousarray(rows.texture_seed, np.uint64),
                weights=np.concatenate(weights),
                ops=np.concatenate(blocks), sizes=total, rows=idx)


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
    ti = dev(p.ti)
    T = p.tumors
    if T:
        ws_a = xp.empty(p.sizes["ws"], xp.float32)
        ws_b = xp.empty(p.sizes["ws"], xp.float32)
        zbuf = xp.empty(p.sizes["z"], xp.float64)
        p1 = xp.empty(p.sizes["p1"], xp.float64)
        p2 = xp.empty(p.sizes["p2"], xp.float64)
        tex = xp.empty(p.sizes["tex"], xp.float32)
        td, ops, wt, tf = dev(p.td), dev(p.ops), dev(p.weights), dev(p.tf)
        gx = _grid(module, max(int(np.prod(p.ti[:, _cols("s_hi")] - p.ti[:, _cols("s_lo")], 1).max()),
                               int(np.prod(p.ti[:, _cols("z_dim")], 1).max()),
                               int(np.prod(p.ti[:, _cols("r_hi")] - p.ti[:, _cols("r_lo")], 1).max())))
        block = _block(module)
        module.launch("paint_shape", (gx, T), block, (ti, tf, ws_a))
        module.launch("paint_blur", (gx, T), block, (ti, wt, ws_a, ws_b, np.int32(0)))
        module.launch("paint_blur", (gx, T), block, (ti, wt, ws_b, ws_a, np.int32(1)))
        module.launch("paint_blur", (gx, T), block, (ti, wt, ws_a, ws_b, np.int32(2)))
        mask = ws_b
        module.launch("paint_noise", (gx, T), block, (ti, dev(p.seeds), zbuf))
        module.launch("paint_texture", (gx, T), block, (ti, td, ops, zbuf, p1, tex, np.int32(0)))
        module.launch("paint_texture", (gx, T), block, (ti, td, ops, p1, p2, tex, np.int32(1)))
        module.launch("paint_texture", (gx, T), block, (ti, td, ops, p2, p2, tex, np.int32(2)))
    else:
        mask = tex = xp.zeros(1, xp.float32)
    sx, sy, sz = (int(v) for v in packed.crops.crop_size[crops[0]])
    gx = _grid(module, sx * sy * sz)
    module.launch("paint_blend", (gx, len(crops)), _block(module),
                  (dev(ci), ti, dev(ptrs), dev(shapes), mask, tex, images, labels,
                   np.int32(sx), np.int32(sy), np.int32(sz)))
    if timer is not None:
        timer.mark("kernels")


def _cols(name: str) -> list[int]:
    return [TI.index(f"{name}{a}") for a in range(3)]


def _block(module) -> int:
    return BLOCK if module.device == "cuda" else 1


def _grid(module, n: int) -> int:
    """Blocks along x: enough for ``n`` items per row on a GPU (capped: the loops stride), one on
    the CPU build (its threads run one after another anyway)."""
    if module.device != "cuda":
        return 1
    return int(min(max(1, -(-n // BLOCK)), 4096))
