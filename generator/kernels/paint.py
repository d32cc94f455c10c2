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

from ..shape import blur_radius, control_grid, tumor_halves
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


@functools.lru_cache(maxsize=256)
def gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights (order 0), float64, for ``sigma`` voxels."""
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


def plan(scans, packed, crops) -> Plan:
    """The kernels' tables for the crops ``crops`` (indices into ``packed``, all ``eligible``)."""
    col = {n: i for i, n in enumerate(TI)}
    ci_rows, ti_rows, tf_rows, td_rows, seeds, weights, ops, which = [], [], [], [], [], [], [], []
    sizes = dict(ws=0, z=0, p1=0, p2=0, tex=0)
    w_len = op_len = 0
    for out, b in enumerate(crops):
        r = packed.crops[int(b)]
        scan = scans[int(r.scan)]
        s = float(scan.spacing_mm[0])
        size = np.asarray(r.crop_size, np.int64)
        crop_lo = np.asarray(r.origin, np.int64) - np.asarray(scan.origin_vox, np.int64)
        t0 = len(ti_rows)
        rows = packed.tumors_of(int(b))
        if len(rows):
            halves = tumor_halves(rows, s)
            from ..shape import shape_halves
            grid_halves = shape_halves(rows, s)
        for n in range(len(rows)):
            t = rows[n]
            hb = halves[n]
            box_lo = np.asarray(t.center, np.int64) - np.asarray(r.origin, np.int64) - hb
            box_hi = box_lo + 2 * hb + 1
            r_lo, r_hi = np.maximum(box_lo, 0), np.minimum(box_hi, size)
            if np.any(r_hi <= r_lo):
                continue
            pad = blur_radius(t, s)
            s_lo, s_hi = np.maximum(box_lo, r_lo - pad), np.minimum(box_hi, r_hi + pad)
            row = np.zeros(len(TI), np.int64)

            def put(name, values):
                values = np.atleast_1d(values)
                row[col[name if len(values) == 1 else name + "0"]:][:len(values)] = values

            put("crop", out)
            put("r_lo", r_lo), put("r_hi", r_hi), put("s_lo", s_lo), put("s_hi", s_hi)
            put("shape_off", grid_halves[n] - hb + (s_lo - box_lo))
            put("grid_half", grid_halves[n])
            put("ws", sizes["ws"])
            sizes["ws"] += int(np.prod(s_hi - s_lo))
            sigma_c = float(t.sigma_c_mm) / s
            w = gaussian_weights(sigma_c, pad)
            put("radius", pad), put("w_off", w_len)
            weights.append(w)
            w_len += len(w)
            # texture: the noise block the R part's operator rows read, and those rows
            step = max(float(t.eta) / s, 1.0)
            box = 2 * hb + 1
            coarse = np.array([max(2, int(math.ceil(v / step))) for v in box])
            z_lo, z_dim, offs = [], [], []
            for a in range(3):
                op, first, last = axis_operator(int(box[a]), int(coarse[a]), float(t.sigma_b_mm) / s)
                lo, hi = int(r_lo[a] - box_lo[a]), int(r_hi[a] - box_lo[a])
                w0, w1 = int(first[lo:hi].min()), int(last[lo:hi].max())
                block = np.ascontiguousarray(op[lo:hi, w0:w1]).ravel()
                z_lo.append(w0), z_dim.append(w1 - w0), offs.append(op_len)
                ops.append(block)
                op_len += block.size
            put("z_lo", z_lo), put("z_dim", z_dim), put("coarse", coarse), put("op_off", offs)
            m = r_hi - r_lo
            put("z_off", sizes["z"]), put("p1_off", sizes["p1"]), put("p2_off", sizes["p2"])
            put("tex_off", sizes["tex"])
            sizes["z"] += int(np.prod(z_dim))
            sizes["p1"] += int(m[0] * z_dim[1] * z_dim[2])
            sizes["p2"] += int(m[0] * z_dim[1] * m[2])
            sizes["tex"] += int(np.prod(m))
            ti_rows.append(row)
            f = np.zeros(TF["columns"], np.float32)
            f[TF["half_axes"]:TF["half_axes"] + 3] = [np.float32(float(v) / s) for v in t.half_axes_mm]
            f[TF["grid"]:TF["grid"] + 81] = control_grid(t, s).ravel()
            tf_rows.append(f)
            td_rows.append([float(t.mu_t), float(t.sigma_p)])
            seeds.append(int(t.texture_seed))
            which.append(int(packed.crops.first_tumor[int(b)]) + n)
        ci_rows.append([int(r.scan), out, *crop_lo, t0, len(ti_rows)])
    if len(ti_rows) >= 65535:
        raise ValueError(f"a batch of {len(ti_rows)} tumors: the kernels take at most 65,534 per call")
    big = max(sizes.values(), default=0) + op_len + w_len
    if big >= 2 ** 31:
        raise ValueError("a batch too large for the kernels' int32 offsets; use smaller batches")
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return Plan(ci=np.asarray(ci_rows, np.int32).reshape(-1, len(CI)),
                ti=np.asarray(ti_rows, np.int32).reshape(-1, len(TI)),
                tf=np.asarray(tf_rows, np.float32).reshape(-1, TF["columns"]),
                td=np.asarray(td_rows, np.float64).reshape(-1, len(TD)),
                seeds=np.asarray(seeds, np.uint64), weights=cat(weights, np.float64),
                ops=cat(ops, np.float64), sizes=sizes, rows=np.asarray(which, np.int64))


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
