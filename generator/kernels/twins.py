"""NumPy twins of the kernels in ``paint.cu``: one function per kernel, with the kernel's name and
arguments (the packed tables and work buffers of ``paint.plan``, written in place), computed with
array operations, tumor by tumor. Tests hold each kernel (built for the CPU, ``module.CpuModule``)
to its twin and each twin to the array path it replaces (``shape``, ``texture``, ``effects``), so
a wrong index in either shows up on a machine without a GPU."""

from __future__ import annotations

import numpy as np

from .. import noise
from .paint import CI, TD, TF, TI

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


def paint_blur(ti, wt, src, dst, axis: int) -> None:
    for r in ti:
        n = tuple(_v(r, "s_hi") - _v(r, "s_lo"))
        a, size = r[_C["ws"]], int(np.prod(n))
        x = np.moveaxis(src[a:a + size].reshape(n).astype(np.float64), axis, -1)
        rad = int(r[_C["radius"]])
        w = wt[r[_C["w_off"]]:r[_C["w_off"]] + 2 * rad + 1]
        padded = np.concatenate([np.zeros(x.shape[:-1] + (rad,)), x,
                                 np.zeros(x.shape[:-1] + (rad,))], axis=-1)
        m = x.shape[-1]
        acc = x * w[rad]
        for j in range(-rad, 0):          # scipy's order for a symmetric kernel
            acc = acc + (padded[..., rad + j:rad + j + m] + padded[..., rad - j:rad - j + m]) * w[rad + j]
        dst[a:a + size] = np.moveaxis(acc, -1, axis).astype(np.float32).ravel()


def paint_noise(ti, seeds, zbuf) -> None:
    for t, r in enumerate(ti):
        lo, dim = _v(r, "z_lo"), _v(r, "z_dim")
        z = noise.normal(np, tuple(_v(r, "coarse")), int(seeds[t]), lo=lo, hi=lo + dim)
        zbuf[r[_C["z_off"]]:r[_C["z_off"]] + z.size] = z.astype(np.float64).ravel()


def paint_texture(ti, td, ops, src, dst, tex, pass_: int) -> None:
    for t, r in enumerate(ti):
        m = _v(r, "r_hi") - _v(r, "r_lo")
        z = _v(r, "z_dim")
        op = lambda a, rows: ops[r[_C[f"op_off{a}"]]:r[_C[f"op_off{a}"]] + rows * z[a]].reshape(rows, z[a])
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


def paint_blend(ci, ti, volumes, mask, tex, images, labels, sx: int, sy: int, sz: int) -> None:
    """``volumes``: per scan, its (image int16, label uint8) arrays (the kernel gets pointers)."""
    c_ = {n: i for i, n in enumerate(CI)}
    for c in ci:
        image, label = volumes[c[c_["scan"]]]
        lo = np.array([c[c_["lo0"]], c[c_["lo1"]], c[c_["lo2"]]])
        hi = lo + (sx, sy, sz)
        img = np.full((sx, sy, sz), -1024.0, np.float32)
        lab = np.zeros((sx, sy, sz), np.uint8)
        a, b = np.maximum(lo, 0), np.minimum(hi, image.shape)
        if np.all(b > a):
            dst = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, lo))
            src = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
            img[dst], lab[dst] = image[src], label[src]
        for r in ti[c[c_["t0"]]:c[c_["t1"]]]:
            r_lo, r_hi, s_lo, s_hi = (_v(r, n) for n in ("r_lo", "r_hi", "s_lo", "s_hi"))
            m_all = mask[r[_C["ws"]]:][:np.prod(s_hi - s_lo)].reshape(tuple(s_hi - s_lo))
            m = m_all[tuple(slice(int(x), int(y)) for x, y in zip(r_lo - s_lo, r_hi - s_lo))]
            x = tex[r[_C["tex_off"]]:][:np.prod(r_hi - r_lo)].reshape(tuple(r_hi - r_lo))
            region = tuple(slice(int(x0), int(x1)) for x0, x1 in zip(r_lo, r_hi))
            m = m * (lab[region] >= 1).astype(np.float32)
            img[region] = (np.float32(1) - m) * img[region] + m * x
            lab[region] = np.where(m >= 0.5, np.uint8(2), lab[region])
        o = c[c_["out"]]
        images[o] = np.clip(np.rint(img), -1024, 3071).astype(np.int16).transpose(2, 1, 0)
        labels[o] = lab.transpose(2, 1, 0)
