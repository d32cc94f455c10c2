"""NumPy twins of the ``released`` kernels in ``generator/kernels/released.cu`` (test code, not
shipped): one function per kernel, with its name and arguments (the tables and buffers of
``kernels.released.plan``, written in place), computed with array operations crop by crop and
part by part. ``ReleasedTwins`` runs them behind ``module.launch`` (and the ``paper`` kernels'
twins of ``kernel_twins``), so ``synthesize_batch`` runs on them whole."""

from __future__ import annotations

import numpy as np

from kernel_twins import TwinModule
from tumorforge.generator.kernels.released import RC, RF, RT, RTD, RTF
from tumorforge.generator.shape import _quadratic

_RC = {n: i for i, n in enumerate(RC)}
_RT = {n: i for i, n in enumerate(RT)}
_RTD = {n: i for i, n in enumerate(RTD)}


def _three(row, cols, name):
    return np.array([int(row[cols[f"{name}{a}"]]) for a in range(3)])


def _canvas(c, buf):
    dims = tuple(_three(c, _RC, "cv_dim"))
    off = int(c[_RC["cv_off"]])
    return buf[off:off + int(np.prod(dims))].reshape(dims)


def released_union(rc, rt, rtf, rtd, uni) -> None:
    for t, r in enumerate(rt):
        c = rc[r[_RT["crop"]]]
        a, b = _three(r, _RT, "a"), _three(r, _RT, "b")
        pos = [np.arange(a[x], b[x], dtype=np.float32).reshape([-1 if y == x else 1
                                                                for y in range(3)])
               for x in range(3)]
        half = rtf[t, RTF["half0"]:RTF["half0"] + 3]
        grid = rtf[t, RTF["grid"]:RTF["grid"] + 54].reshape(3, 2, 3, 3)
        for p, (x, y) in reversed(list(enumerate(((0, 1), (1, 2), (0, 2))))):
            u = np.clip(pos[x] / half[x] - np.float32(1), -1, 1)
            v = np.clip(pos[y] / half[y] - np.float32(1), -1, 1)
            moved = [_quadratic(v, *[_quadratic(u, *grid[p, comp][:, j]) for j in range(3)])
                     for comp in range(2)]
            pos[x], pos[y] = pos[x] + moved[0], pos[y] + moved[1]
        d = rtd[t]
        s2 = [(np.floor(pos[x] + np.float32(0.5)).astype(np.float64)
               - d[_RTD[f"center{x}"]]) ** 2 for x in range(3)]
        inside = s2[0] * d[_RTD["p0"]] + s2[1] * d[_RTD["p1"]] + s2[2] * d[_RTD["p2"]]
        inside = np.broadcast_to(inside < d[_RTD["threshold"]], tuple(b - a))
        corner = _three(r, _RT, "corner")
        view = _canvas(c, uni)[tuple(slice(int(corner[x] + a[x]), int(corner[x] + b[x]))
                                     for x in range(3))]
        view[inside] = 1


def _scan_block(volumes, c, lo, dims):
    image, label = volumes[int(c[_RC["scan"]])]
    img = np.full(tuple(dims), -1024.0, np.float32)
    lab = np.zeros(tuple(dims), np.uint8)
    a, b = np.maximum(lo, 0), np.minimum(lo + dims, image.shape)
    if np.all(b > a):
        src = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
        dst = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, lo))
        img[dst], lab[dst] = image[src], label[src]
    return img, lab


def released_liver(rc, volumes, uni, field) -> None:
    for c in rc:
        dims = _three(c, _RC, "cv_dim")
        if not np.prod(dims):
            continue
        _, lab = _scan_block(volumes, c, _three(c, _RC, "lo") - c[_RC["margin"]], dims)
        u = _canvas(c, uni)
        u[...] = (u > 0) & (lab >= 1)
        _canvas(c, field)[...] = u.astype(np.float32)


def released_blur(rc, wt, src, dst, axis: int) -> None:
    for c in rc:
        dims = tuple(_three(c, _RC, "cv_dim"))
        if not np.prod(dims):
            continue
        rad, w_off = int(c[_RC["radius"]]), int(c[_RC["w_off"]])
        w = wt[w_off:w_off + 2 * rad + 1]
        x = np.moveaxis(_canvas(c, src).astype(np.float64), axis, -1)
        pad = np.concatenate([np.zeros(x.shape[:-1] + (rad,)), x,
                              np.zeros(x.shape[:-1] + (rad,))], axis=-1)
        m = x.shape[-1]
        acc = x * w[rad]
        for j in range(rad, 0, -1):            # the outermost pair first, as scipy sums
            acc = acc + (pad[..., rad - j:rad - j + m] + pad[..., rad + j:rad + j + m]) * w[rad - j]
        _canvas(c, dst)[...] = np.moveaxis(acc.astype(np.float32), -1, axis)


def _window(c, banks):
    from tumorforge.generator.texture import mirror_rows
    edge = int(c[_RC["edge"]])
    rows = mirror_rows(edge, tuple(_three(c, _RC, "cv_dim")), tuple(_three(c, _RC, "off")))
    return banks[int(c[_RC["bank"]])][np.ix_(*rows)]


def released_stats(rc, banks, sums, counts) -> None:
    for n, c in enumerate(rc):
        if c[_RC["tumors"]]:
            w = _window(c, banks)
            above = w[w > np.float32(0.12)].astype(np.float64)
            sums[n] += np.cumsum(above)[-1] if above.size else 0.0
            counts[n] += above.size


def released_fallback(rc, banks, sums, counts) -> None:
    for n, c in enumerate(rc):
        if c[_RC["tumors"]] and not counts[n]:
            sums[n] = np.cumsum(_window(c, banks).astype(np.float64).ravel())[-1]   # row-major


def released_output(rc, rf, volumes, banks, uni, blur, sums, counts, images, labels,
                    sx: int, sy: int, sz: int) -> None:
    for n, c in enumerate(rc):
        size = np.array([sx, sy, sz])
        img, lab = _scan_block(volumes, c, _three(c, _RC, "lo"), size)
        if c[_RC["tumors"]]:
            m = int(c[_RC["margin"]])
            inner = tuple(slice(m, m + int(v)) for v in size)
            cells = int(np.prod(_three(c, _RC, "cv_dim")))
            mean = np.float32(sums[n] / (int(counts[n]) or cells))
            factor = rf[n, RF.index("mean")] / np.maximum(mean, np.float32(1e-6))
            tex = np.clip(_window(c, banks)[inner] * factor, 0, 1)
            liver = (lab >= 1).astype(np.float32)
            img = img - tex * _canvas(c, blur)[inner] * liver * rf[n, RF.index("delta")]
            lab = np.where(_canvas(c, uni)[inner] > 0, np.uint8(2), lab)
        out = int(c[_RC["out"]])
        images[out] = np.clip(np.rint(img), -1024, 3071).astype(np.int16).transpose(2, 1, 0)
        labels[out] = lab.transpose(2, 1, 0)


class ReleasedTwins(TwinModule):
    """``TwinModule`` that also runs the ``released`` kernels' twins (pointers resolved to the
    registered scan and bank arrays)."""

    def launch(self, name: str, grid, block, args) -> None:
        if not name.startswith("released_"):
            return super().launch(name, grid, block, args)
        args = [a.item() if isinstance(a, np.generic) else a for a in args]
        arrays = lambda ptrs: [self._arrays.get(int(p)) for p in ptrs]
        if name == "released_liver":
            scans = arrays(args[1])
            args = [args[0], {k: (scans[2 * k], scans[2 * k + 1]) for k in range(len(scans) // 2)}
                    ] + args[3:]
        elif name in ("released_stats", "released_fallback"):
            args = [args[0], arrays(args[1])] + args[2:]
        elif name == "released_output":
            scans = arrays(args[2])
            args = [args[0], args[1],
                    {k: (scans[2 * k], scans[2 * k + 1]) for k in range(len(scans) // 2)},
                    arrays(args[4])] + args[5:]
        globals()[name](*args)
