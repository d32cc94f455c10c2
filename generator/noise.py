"""Counter-based random numbers that NumPy and CuPy produce bit for bit alike.

Philox4x32-10 (Salmon et al., SC'11) maps a 128-bit counter and a 64-bit key to four 32-bit words
using only integer multiply, xor and add, so the same code on ``numpy`` and ``cupy`` arrays gives the
same bits. A uniform's counter is its flat index; normals come in Box-Muller pairs, one counter
per two neighbours (``normal``); ``stream`` separates independent fields drawn from one seed. Uniform floats are exact (24-bit mantissas); Gaussians go through log/cos and agree
across backends only to floating-point rounding.
"""

from __future__ import annotations

import numpy as np

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


CHUNK = 16384           # NumPy: counters per pass, so the round's arrays stay in the CPU's cache


def philox4x32(xp, n, seed: int, stream: int = 0):
    """Four uint32 arrays (held in uint64) for counters 0..n-1 (``n`` an int) or for the
    counters ``n`` (a 1-D uint64 array) under key ``seed`` (64-bit)."""
    seed = int(seed)                 # a Python int whatever it came as (record field, NumPy row)
    idx = xp.arange(n, dtype=xp.uint64) if isinstance(n, int) else n
    if xp.__name__ == "numpy" and idx.size > CHUNK:
        out = tuple(xp.empty(idx.size, xp.uint64) for _ in range(4))
        for a in range(0, idx.size, CHUNK):
            for w, part in zip(out, _philox(xp, idx[a:a + CHUNK], seed, stream)):
                w[a:a + CHUNK] = part
        return out
    return _philox(xp, idx, seed, stream)


def _philox(xp, idx, seed, stream: int):
    """``seed``: a Python int, or a uint64 array of keys that broadcasts against ``idx``."""
    u64 = xp.uint64
    # Explicit uint64 scalars: array modules differ in how they promote bare Python ints.
    m0, m1, mask, shift = u64(_M0), u64(_M1), u64(_MASK32), u64(32)
    if isinstance(seed, int):
        k0, k1 = u64(seed & _MASK32), u64((seed >> 32) & _MASK32)
        w0, w1 = u64(_W0), u64(_W1)
    else:
        k0, k1 = seed & mask, (seed >> shift) & mask
        w0, w1 = u64(_W0), u64(_W1)
        idx = idx + xp.zeros_like(k0)                   # the counters for every key
    n = idx.shape
    c0 = idx & mask
    c1 = idx >> shift
    c2 = xp.full(n, stream & _MASK32, dtype=xp.uint64)
    c3 = xp.zeros(n, dtype=xp.uint64)
    for _ in range(10):
        p0 = c0 * m0
        p1 = c2 * m1
        c0, c1, c2, c3 = ((p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask)
        k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
    return c0, c1, c2, c3


def uniform(xp, shape, seed: int, stream: int = 0):
    """U[0, 1) float32 of ``shape``; identical bits on every backend."""
    n = _size(shape)
    words = philox4x32(xp, n, seed, stream)[0]
    return ((words >> xp.uint64(8)).astype(xp.float32) * xp.float32(2.0 ** -24)).reshape(shape)


def normal(xp, shape, seed: int, stream: int = 0, lo=None, hi=None):
    """Standard normal float32 of ``shape`` by Box-Muller (float64 inside); or only its block
    ``[lo, hi)`` (per axis): the same values as ``normal(xp, shape, ...)[lo:hi]``, computed for
    the block's counters alone.

    One Philox counter gives two values, the cosine and sine halves of one Box-Muller pair, at
    neighbouring positions along the last axis: value ``(..., k)`` of a row (a flat index ``r``
    over the leading axes) is half ``k % 2`` of counter ``r * ceil(n / 2) + k // 2`` (``n``: the
    last axis' length)."""
    shape = tuple(int(v) for v in (shape if isinstance(shape, tuple) else (shape,)))
    lo = (0,) * len(shape) if lo is None else tuple(int(v) for v in lo)
    hi = shape if hi is None else tuple(int(v) for v in hi)
    half = (shape[-1] + 1) // 2                       # counters per row
    p_lo, p_hi = lo[-1] // 2, (hi[-1] + 1) // 2       # the block's pairs along the last axis
    counters = xp.arange(p_lo, p_hi, dtype=xp.uint64)
    stride = half
    for axis in reversed(range(len(shape) - 1)):      # rows: the leading axes
        pos = xp.arange(lo[axis], hi[axis], dtype=xp.uint64) * xp.uint64(stride)
        counters = pos.reshape((-1,) + (1,) * (len(shape) - 1 - axis)) + counters
        stride *= shape[axis]
    counters = counters.ravel()
    pairs = xp.empty((counters.size, 2), xp.float32)
    step = CHUNK if xp.__name__ == "numpy" else max(1, counters.size)
    for a in range(0, counters.size, step):          # NumPy: in cache-sized passes
        w0, w1, _, _ = philox4x32(xp, counters[a:a + step], seed, stream)
        _box_muller(xp, w0, w1, pairs[a:a + step])
    rows = tuple(b - a for a, b in zip(lo[:-1], hi[:-1]))
    values = pairs.reshape(rows + (2 * (p_hi - p_lo),))
    start = lo[-1] - 2 * p_lo
    return xp.ascontiguousarray(values[..., start:start + hi[-1] - lo[-1]])


def normal_many(shape, seeds, stream: int = 0) -> np.ndarray:
    """``normal(numpy, shape, seed, stream)`` for every seed of ``seeds`` at once (NumPy, host):
    ``(len(seeds),) + shape`` float32, row ``n`` bit for bit ``normal(np, shape, seeds[n])``."""
    shape = tuple(int(v) for v in shape)
    seeds = np.asarray(seeds, np.uint64).reshape(-1, 1)
    half = (shape[-1] + 1) // 2
    rows = _size(shape[:-1]) if len(shape) > 1 else 1
    counters = np.arange(rows * half, dtype=np.uint64)[None, :]
    w0, w1, _, _ = _philox(np, counters, seeds, stream)
    pairs = np.empty(w0.shape + (2,), np.float32)
    _box_muller(np, w0, w1, pairs)
    values = pairs.reshape((len(seeds),) + shape[:-1] + (2 * half,))
    return np.ascontiguousarray(values[..., :shape[-1]])


def _box_muller(xp, w0, w1, pairs) -> None:
    """Two Philox words per counter -> a pair of standard normals (float64 inside) written into
    ``pairs[..., 0]`` (cosine half) and ``pairs[..., 1]`` (sine half)."""
    u1 = ((w0 >> xp.uint64(11)) + xp.uint64(1)).astype(xp.float64) * 2.0 ** -21   # (0, 1]
    u2 = (w1 >> xp.uint64(8)).astype(xp.float64) * 2.0 ** -24                     # [0, 1)
    radius = xp.sqrt(-2.0 * xp.log(u1))
    angle = 2.0 * xp.pi * u2
    pairs[..., 0] = radius * xp.cos(angle)
    pairs[..., 1] = radius * xp.sin(angle)


def _size(shape) -> int:
    n = 1
    for s in (shape if isinstance(shape, tuple) else (shape,)):
        n *= int(s)
    return n
