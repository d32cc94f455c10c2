"""``tumorforge bench encode``: what a zarr shard costs to encode per crop, for each of the job
spec's compressions, interleaved in one run on the same crops: the Blosc codec alone (the floor),
tumorforge's direct encoder (``codecs.zarr_shard_objects``) and zarr-python's pipeline
(``zarr_shard_objects_reference``, what 0.2 used), with the bytes per crop. CPU time per crop, best
of the rounds, Blosc on one thread (as the writer's threads run it); the two encoders' bytes are
checked equal."""

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
    import numcodecs.blosc
    from tumorforge.manifests.dataset import codecs
    images, labels = _crops(samples, side)
    keys = [f"tfbench000000_{i:010d}" for i in range(samples)]
    prov = ['{"index":%d}' % i for i in range(samples)]
    ways = {}
    for c in codecs.COMPRESSIONS:
        args = (0, images, labels, keys, range(samples), prov, samples, c)

        def codec_only(c=c):
            for image, label in zip(images, labels):
                codecs.compress_sample(image, label, c)
        ways[f"{c}/codec_only"] = codec_only
        ways[f"{c}/direct"] = lambda args=args: codecs.zarr_shard_objects(*args)
        ways[f"{c}/zarr_python"] = lambda args=args: codecs.zarr_shard_objects_reference(*args)
    best = {k: float("inf") for k in ways}
    threads = numcodecs.blosc.get_nthreads()
    numcodecs.blosc.set_nthreads(1)
    try:
        for _ in range(rounds):                       # interleaved: noise hits every way alike
            for name, fn in ways.items():
                t0 = time.process_time()
                fn()
                best[name] = min(best[name], time.process_time() - t0)
    finally:
        numcodecs.blosc.set_nthreads(threads)
    ms = {k: 1000.0 * v / samples for k, v in best.items()}
    out = {"benchmark": "encode", "samples": samples, "crop": side, "rounds": rounds,
           "compressions": list(codecs.COMPRESSIONS),
           "ms_per_crop": {k: round(v, 3) for k, v in ms.items()}}
    for c in codecs.COMPRESSIONS:
        args = (0, images, labels, keys, range(samples), prov, samples, c)
        direct = codecs.zarr_shard_objects(*args)
        out[c] = {"direct_over_codec": round(ms[f"{c}/direct"] / ms[f"{c}/codec_only"], 3),
                  "zarr_python_over_codec": round(ms[f"{c}/zarr_python"]
                                                  / ms[f"{c}/codec_only"], 3),
                  "mb_per_crop": round(sum(map(len, direct.values())) / samples / 1e6, 3),
                  "bytes_identical": direct == codecs.zarr_shard_objects_reference(*args)}
    return out
