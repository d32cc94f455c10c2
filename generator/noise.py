"""Counter-based random numbers that NumPy and CuPy produce bit for bit alike.

Philox4x32-10 (Salmon et al., SC'11) maps a 128-bit counter and a 64-bit key to four 32-bit words
using only integer multiply, xor and add, so the same code on ``numpy`` and ``cupy`` arrays gives the
same bits. Each voxel's counter is its flat index; ``stream`` separates independent fields drawn
from one seed. Uniform floats are exact (24-bit mantissas); Gaussians go through log/cos and agree
across backends only to floating-point rounding.
"""

from __future__ import annotations

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox4x32(xp, n: int, seed: int, stream: int = 0):
    """Four uint32 arrays of length ``n`` for counters 0..n-1 under key ``seed`` (64-bit)."""
    idx = xp.arange(n, dtype=xp.uint64)
    c0 = idx & xp.uint64(_MASK32)
    c1 = idx >> xp.uint64(32)
    c2 = xp.full(n, stream & _MASK32, dtype=xp.uint64)
    c3 = xp.zeros(n, dtype=xp.uint64)
    u64 = xp.uint64
    # Explicit uint64 scalars: array modules differ in how they promote bare Python ints.
    m0, m1, mask, shift = u64(_M0), u64(_M1), u64(_MASK32), u64(32)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        p0 = c0 * m0
        p1 = c2 * m1
        c0, c1, c2, c3 = ((p1 >> shift) ^ c1 ^ u64(k0), p1 & mask,
                          (p0 >> shift) ^ c3 ^ u64(k1), p0 & mask)
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def uniform(xp, shape, seed: int, stream: int = 0):
    """U[0, 1) float32 of ``shape``; identical bits on every backend."""
    n = _size(shape)
    words = philox4x32(xp, n, seed, stream)[0]
    return ((words >> xp.uint64(8)).astype(xp.float32) * xp.float32(2.0 ** -24)).reshape(shape)


def normal(xp, shape, seed: int, stream: int = 0):
    """Standard normal float32 of ``shape`` by Box-Muller (float64 inside)."""
    n = _size(shape)
    w0, w1, _, _ = philox4x32(xp, n, seed, stream)
    u1 = ((w0 >> xp.uint64(11)) + xp.uint64(1)).astype(xp.float64) * 2.0 ** -21   # (0, 1]
    u2 = (w1 >> xp.uint64(8)).astype(xp.float64) * 2.0 ** -24                     # [0, 1)
    z = xp.sqrt(-2.0 * xp.log(u1)) * xp.cos(2.0 * xp.pi * u2)
    return z.astype(xp.float32).reshape(shape)


def _size(shape) -> int:
    n = 1
    for s in (shape if isinstance(shape, tuple) else (shape,)):
        n *= int(s)
    return n
