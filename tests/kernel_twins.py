"""NumPy twins of the GPU kernels in ``generator/kernels/paint.cu`` (test code, not shipped): one
function per kernel, with the kernel's name and arguments (the packed tables and work buffers of
``paint.plan``, written in place), computed with array operations, tumor by tumor. Tests hold
each kernel (built for the CPU, ``module.CpuModule``) to its twin and each twin to the array path
it replaces (``shape``, ``texture``, ``effects``), so a wrong index in either shows up on a
machine without a GPU."""

from __future__ import annotations

import numpy as np

from tumorforge.generator import noise
from tumorforge.generator.kernels.paint import CI, TD, TF, TI

_C = {n: i for i, n in enumerate(TI)}


def _v(r, name: str) -> np.ndarray:
    return np.array([int(r[_C[f"{name}{a}"]]) for a in range(3)])


def _lagrange(idx: np.ndarray, g: int) -> np.ndarray:
    u = np.linspace(-1.0, 1.0, 2 * g + 1, dtype=np.float32)[idx]
    return np.stack([np.float32(0.5) * u * (u - np.float32(1)), np.float32(1) - u * u,
                     np.float32(0.5) * u * (u + np.float32(1))], axis=-1)


def paint_shape(ti, tf, ws) -> None:
    for t, r in enumerate(ti):
        n = _v(r, "s_hi") - _v(r, "s_lo")
        off, gh = _v(r, "shape_off"), _v(r, "grid_half")
        w = [_lagrange(np.arange(n[a]) + off[a], int(gh[a])) for a in range(3)]
        g = tf[t, TF["grid"]:TF["grid"] + 81].reshape(3, 3, 3, 3)
        q = np.zeros(tuple(n), np.float32)
        for a in range(3):
            d = sum(w[0][:, i, None, None] * g[a, i] for i in range(3))              # (x, j, k)
            d = sum(d[:, None, j, :] * w[1][None, :, j, None] for j in range(3))     # (x, y, k)
            d = sum(d[..., k, None] * w[2][:, k] for k in range(3))                 # (x, y, z)
            coord = (np.arange(n[a]) + off[a]).astype(np.float32).reshape(
                [-1 if b == a else 1 for b in range(3)])
            d = (d + coord - np.float32(gh[a])) / tf[t, TF["half_axes"] + a]
            q = d * d if a == 0 else q + d * d
        ws[r[_C["ws"]]:r[_C["ws"]] + q.size] = (q <= 1.0).astype(np.float32).ravel()


def paint_blur(ti, sel, wt, src, dst, axis: int, which: int) -> None:
    """``sel``: the tumors (rows of ``ti``), or 0 / None for every one."""
    for t in (range(len(ti)) if sel is None or np.ndim(sel) == 0 else sel):
        r = ti[t]
        box, off, radius, w_off = (("w", "wk_off", "cap_radius", "cap_w_off") if which
                                   else ("s", "ws", "radius", "w_off"))
        n = tuple(_v(r, f"{box}_hi") - _v(r, f"{box}_lo"))
        a, size = r[_C[off]], int(np.prod(n))
        x = np.moveaxis(src[a:a + size].reshape(n).astype(np.float64), axis, -1)
        rad = int(r[_C[radius]])
        w = wt[r[_C[w_off]]:r[_C[w_off]] + 2 * rad + 1]
        padded = np.concatenate([np.zeros(x.shape[:-1] + (rad,)), x,
                                 np.zeros(x.shape[:-1] + (rad,))], axis=-1)
        m = x.shape[-1]
        acc = x * w[rad]
        for j in range(-rad, 0):          # scipy's order for a symmetric kernel
            acc = acc + (padded[..., rad + j:rad + j + m] + padded[..., rad - j:rad - j + m]) * w[rad + j]
        dst[a:a + size] = np.moveaxis(acc, -1, axis).astype(np.float32).ravel()


def paint_noise(ti, seeds, zbuf, single: int = 0) -> None:
    """``single``: the kernel's float32 transform; the twin computes NumPy's float64 one (the
    kernel's float32 values lie within a few float32 ulp of these)."""
    for t, r in enumerate(ti):
        lo, dim = _v(r, "z_lo"), _v(r, "z_dim")
        z = noise.normal(np, tuple(_v(r, "coarse")), int(seeds[t]), lo=lo, hi=lo + dim)
        zbuf[r[_C["z_off"]]:r[_C["z_off"]] + z.size] = z.astype(np.float64).ravel()


def paint_texture(ti, td, ops, bands, src, dst, tex, pass_: int) -> None:
    """The operators' rows for R as dense blocks (their zeros included: the same sums)."""
    for t, r in enumerate(ti):
        m = _v(r, "r_hi") - _v(r, "r_lo")
        z, z_lo, base, c = _v(r, "z_dim"), _v(r, "z_lo"), _v(r, "op_base"), _v(r, "op_c")

        def op(a, rows):
            full = ops[base[a]:base[a] + rows * c[a]].reshape(rows, c[a])
            return full[:, z_lo[a]:z_lo[a] + z[a]]

        if pass_ == 0:
            x = src[r[_C["z_off"]]:][:z.prod()].reshape(z[0], z[1] * z[2])
            out = op(0, m[0]) @ x
            dst[r[_C["p1_off"]]:][:out.size] = out.ravel()
        elif pass_ == 1:
            x = src[r[_C["p1_off"]]:][:m[0] * z[1] * z[2]].reshape(m[0] * z[1], z[2])
            out = x @ op(2, m[2]).T
            dst[r[_C["p2_off"]]:][:out.size] = out.ravel()
        else:
            x = src[r[_C["p2_off"]]:][:m[0] * z[1] * m[2]].reshape(m[0], z[1], m[2])
            field = np.einsum("iuk,ju->ijk", x, op(1, m[1]))
            out = (field * td[t, TD.index("sigma_p")] + td[t, TD.index("mu_t")]).astype(np.float32)
            tex[r[_C["tex_off"]]:][:out.size] = out.ravel()


_CI = {n: i for i, n in enumerate(CI)}


def _rows(sel, n: int):
    return range(n) if sel is None or np.ndim(sel) == 0 else [int(t) for t in sel]


def _crop_in(volumes, c, lo_name: str, dims):
    """The scan's (image float32, label) on a box with corner ``c[lo_name]`` (scan voxels) and
    size ``dims``; air and background outside the scan."""
    image, label = volumes[int(c[_CI["scan"]])]
    lo = np.array([c[_CI[f"{lo_name}{a}"]] for a in range(3)])
    hi = lo + dims
    img = np.full(tuple(dims), -1024.0, np.float32)
    lab = np.zeros(tuple(dims), np.uint8)
    a, b = np.maximum(lo, 0), np.minimum(hi, image.shape)
    if np.all(b > a):
        dst = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, lo))
        src = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
        img[dst], lab[dst] = image[src], label[src]
    return img, lab


def _box(r, lo: str, hi: str, origin=(0, 0, 0)):
    return tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(_v(r, lo), _v(r, hi), origin))


def _view(buf, off: int, shape):
    return buf[int(off):int(off) + int(np.prod(shape))].reshape(tuple(int(v) for v in shape))


def _place(img, lab, r, mask, tex):
    """Eq. 4 for tumor row ``r`` on a canvas (img, lab); returns its m on R."""
    s_dim, r_dim = _v(r, "s_hi") - _v(r, "s_lo"), _v(r, "r_hi") - _v(r, "r_lo")
    m = _view(mask, r[_C["ws"]], s_dim)[_box(r, "r_lo", "r_hi", _v(r, "s_lo"))]
    region = _box(r, "r_lo", "r_hi")
    m = m * (lab[region] >= 1).astype(np.float32)
    img[region] = (np.float32(1) - m) * img[region] + m * _view(tex, r[_C["tex_off"]], r_dim)
    lab[region] = np.where(m >= 0.5, np.uint8(2), lab[region])
    return m


def _out(img, lab, images, labels, o, corner, size) -> None:
    box = tuple(slice(int(a), int(a + n)) for a, n in zip(corner, size))
    images[o] = np.clip(np.rint(img[box]), -1024, 3071).astype(np.int16).transpose(2, 1, 0)
    labels[o] = lab[box].transpose(2, 1, 0)


def paint_blend(ci, ti, volumes, mask, tex, images, labels, sx: int, sy: int, sz: int) -> None:
    """``volumes``: per scan, its (image int16, label uint8) arrays (the kernel gets pointers)."""
    for c in ci:
        img, lab = _crop_in(volumes, c, "lo", np.array([sx, sy, sz]))
        for r in ti[c[_CI["t0"]]:c[_CI["t1"]]]:
            _place(img, lab, r, mask, tex)
        _out(img, lab, images, labels, c[_CI["out"]], (0, 0, 0), (sx, sy, sz))


def _canvas(c, *buffers):
    """The canvas of crop row ``c`` in each buffer (image, label)."""
    dims = [int(c[_CI[f"cv_dim{a}"]]) for a in range(3)]
    return tuple(_view(b, c[_CI["cv_off"]], dims) for b in buffers)


def paint_canvas(ci, volumes, cimg, clab) -> None:
    for c in ci:
        img, lab = _canvas(c, cimg, clab)
        img[...], lab[...] = _crop_in(volumes, c, "cv_lo", np.array(img.shape))


def paint_place(ci, ti, sel, mask, tex, cimg, clab, mask_w) -> None:
    for t in _rows(sel, len(ti)):
        r = ti[t]
        img, lab = _canvas(ci[r[_C["crop"]]], cimg, clab)
        m = _place(img, lab, r, mask, tex)
        if r[_C["post"]]:
            w = _view(mask_w, r[_C["wk_off"]], _v(r, "w_hi") - _v(r, "w_lo"))
            w[_box(r, "r_lo", "r_hi", _v(r, "w_lo"))] = m


def _cube(r, origin=(0, 0, 0)):
    g = int(r[_C["cube"]])
    return tuple(slice(int(c - o - g), int(c - o + g + 1)) for c, o in zip(_v(r, "center"), origin))


def paint_warp_copy(ci, ti, sel, cimg, clab, mask_w, q_img, q_lab, q_mask) -> None:
    for t in _rows(sel, len(ti)):
        r = ti[t]
        img, lab = _canvas(ci[r[_C["crop"]]], cimg, clab)
        w = _view(mask_w, r[_C["wk_off"]], _v(r, "w_hi") - _v(r, "w_lo"))
        n = (2 * int(r[_C["cube"]]) + 1,) * 3
        _view(q_img, r[_C["cube_off"]], n)[...] = img[_cube(r)]
        _view(q_lab, r[_C["cube_off"]], n)[...] = lab[_cube(r)]
        _view(q_mask, r[_C["cube_off"]], n)[...] = w[_cube(r, _v(r, "w_lo"))]


def paint_warp(ci, ti, sel, tf, cimg, clab, mask_w, q_img, q_lab, q_mask) -> None:
    import scipy.ndimage as ndi
    for t in _rows(sel, len(ti)):
        r = ti[t]
        img, lab = _canvas(ci[r[_C["crop"]]], cimg, clab)
        w = _view(mask_w, r[_C["wk_off"]], _v(r, "w_hi") - _v(r, "w_lo"))
        g = int(r[_C["cube"]])
        n = (2 * g + 1,) * 3
        v = np.meshgrid(*[np.arange(2 * g + 1, dtype=np.float32) - np.float32(g)] * 3, indexing="ij")
        dist = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
        gamma, inten = tf[t, TF["gamma"]], tf[t, TF["intensity"]]
        scale = np.where(dist < gamma, np.float32(1) - (np.float32(1) - dist / gamma) ** 2 * inten,
                         np.float32(1))
        coords = np.stack([np.float32(g) + vi * scale for vi in v])
        img[_cube(r)] = ndi.map_coordinates(_view(q_img, r[_C["cube_off"]], n), coords, order=1,
                                            mode="nearest")
        lab[_cube(r)] = ndi.map_coordinates(_view(q_lab, r[_C["cube_off"]], n), coords, order=0,
                                            mode="nearest")
        w[_cube(r, _v(r, "w_lo"))] = ndi.map_coordinates(_view(q_mask, r[_C["cube_off"]], n),
                                                          coords, order=1, mode="nearest")


def paint_band(ti, sel, tf, mask_w, edge) -> None:
    for t in _rows(sel, len(ti)):
        r = ti[t]
        size = int(np.prod(_v(r, "w_hi") - _v(r, "w_lo")))
        m = mask_w[r[_C["wk_off"]]:][:size]
        band = (m >= tf[t, TF["band_lo"]]) & (m <= tf[t, TF["band_hi"]])
        edge[r[_C["wk_off"]]:][:size] = band.astype(np.float32)


def paint_capsule(ci, ti, sel, tf, blurred, cimg) -> None:
    for t in _rows(sel, len(ti)):
        r = ti[t]
        img, = _canvas(ci[r[_C["crop"]]], cimg)
        b = _view(blurred, r[_C["wk_off"]], _v(r, "w_hi") - _v(r, "w_lo"))
        img[_box(r, "w_lo", "w_hi")] += tf[t, TF["capsule_hu"]] * b


def paint_output(ci, cimg, clab, images, labels, sx: int, sy: int, sz: int) -> None:
    for c in ci:
        img, lab = _canvas(c, cimg, clab)
        corner = [c[_CI[f"lo{a}"]] - c[_CI[f"cv_lo{a}"]] for a in range(3)]
        _out(img, lab, images, labels, c[_CI["out"]], corner, (sx, sy, sz))


class TwinModule:
    """The twins behind ``module.launch``'s interface, so ``paint.paint`` runs on them whole
    (``synthesize_batch(..., kernels=TwinModule())``). Pointers are handles to registered arrays."""

    device = "twin"
    xp = np

    def __init__(self):
        self._arrays: dict[int, np.ndarray] = {}

    def pointer(self, array) -> int:
        self._arrays[id(array)] = array
        return id(array)

    def launch(self, name: str, grid, block, args) -> None:
        args = [a.item() if isinstance(a, np.generic) else a for a in args]
        if name in ("paint_blend", "paint_canvas"):
            ci, ptrs = args[0], args[2 if name == "paint_blend" else 1]
            volumes = {int(c[_CI["scan"]]): (self._arrays[int(ptrs[2 * c[_CI["scan"]]])],
                                             self._arrays[int(ptrs[2 * c[_CI["scan"]] + 1])])
                       for c in ci}
            if name == "paint_blend":
                args = [ci, args[1], volumes] + args[4:]
            else:
                args = [ci, volumes] + args[3:]
        if name == "paint_blur" and np.ndim(args[1]) == 0:
            args[1] = None
        globals()[name](*args)
