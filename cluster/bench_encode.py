"""``tumorforge bench encode``: what a zarr shard costs to encode per crop, three ways, interleaved
in one run on the same crops: the Blosc codec alone (the floor), tumorforge's direct encoder
(``codecs.zarr_shard_objects``) and zarr-python's pipeline (``zarr_shard_objects_reference``, what
0.2 used). CPU time per crop, best of the rounds; the two encoders' bytes are checked equal."""

from __future__ import annotations

import time

import numpy as np


def _crops(n: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CT-like crops: smooth structures in HU, labels by threshold (compress like real crops)."""
    import scipy.ndimage as ndi
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(0, 1, (n, side, side, side)), (0, 2, 2, 2))
    images = (field * 300 + 60 + rng.normal(0, 10, field.shape)).astype(np.int16)
    labels = ((images > 80).astype(np.uint8) + (images > 150)).astype(np.uint8)
    return images, labels


def bench_encode(samples: int = 8, side: int = 96, rounds: int = 5) -> dict:
    from numcodecs import Blosc
    from tumorforge.manifests.dataset import codecs
    images, labels = _crops(samples, side)
    keys = [f"tfbench000000_{i:010d}" for i in range(samples)]
    prov = ['{"index":%d}' % i for i in range(samples)]
    args = (0, images, labels, keys, range(samples), prov, samples)

    def codec_only():
        for arrays, size in ((images, 2), (labels, 1)):
            blosc = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE, typesize=size)
            for a in arrays:
                blosc.encode(a)
    ways = {"codec_only": codec_only, "direct": lambda: codecs.zarr_shard_objects(*args),
            "zarr_python": lambda: codecs.zarr_shard_objects_reference(*args)}
    best = {k: float("inf") for k in ways}
    for _ in range(rounds):                       # interleaved: noise hits every way alike
        for name, fn in ways.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    ms = {k: 1000.0 * v / samples for k, v in best.items()}
    same = codecs.zarr_shard_objects(*args) == codecs.zarr_shard_objects_reference(*args)
    return {"benchmark": "encode", "samples": samples, "crop": side, "rounds": rounds,
            "ms_per_crop": {k: round(v, 3) for k, v in ms.items()},
            "direct_over_codec": round(ms["direct"] / ms["codec_only"], 3),
            "zarr_python_over_codec": round(ms["zarr_python"] / ms["codec_only"], 3),
            "bytes_identical": same}
