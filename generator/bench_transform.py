"""``tumorforge bench transform``: milliseconds per sample of the MONAI transform on a whole scan,
one step (``TumorSynthesisd`` prepares the scan on every call) against two (``PrepareTumorSynthesisd``
cached by ``CacheDataset``, then ``TumorSynthesisd`` draws and paints), in one run on one scan.

Imports MONAI and torch (as the transform does): it lives beside the transform, not in the
generator's own benchmark."""

from __future__ import annotations

import copy
import json
import time


def bench_transform(args) -> int:
    import numpy as np
    import torch
    from monai.data import CacheDataset, MetaTensor
    from monai.transforms import Compose
    from tumorforge.manifests.phantoms import ORGAN_CODES, make_phantom
    from .options import config_from_args
    from .transform import PrepareTumorSynthesisd, TumorSynthesisd

    config = config_from_args(args)
    ph = make_phantom(np.random.default_rng(args.phantom_seed), scale=args.phantom_scale)
    affine = torch.from_numpy(np.asarray(ph.affine, np.float64))
    sample = {"image": MetaTensor(torch.from_numpy(ph.image[None].astype(np.float32)),
                                  affine=affine),
              "label": MetaTensor(torch.from_numpy(ph.organs[None].astype(np.float32)),
                                  affine=affine)}
    kw = dict(liver_values=(ORGAN_CODES["liver"],), tumor_values=(), config=config,
              backend=args.backend)
    print(f"scan: built-in phantom {args.phantom_seed}, scale {args.phantom_scale}, "
          f"{tuple(ph.image.shape)} voxels at {tuple(float(s) for s in ph.spacing_mm)} mm; "
          f"profile {config.profile}, spacing {config.target_spacing_mm} mm; "
          f"{args.samples} samples each")

    one = Compose([TumorSynthesisd(("image", "label"), **kw)])
    one.set_random_state(args.seed)
    one(copy.deepcopy(sample))                                   # warm-up: caches, banks
    t0 = time.perf_counter()
    for _ in range(args.samples):
        one(copy.deepcopy(sample))
    one_ms = (time.perf_counter() - t0) * 1000 / args.samples

    prep_kw = {k: v for k, v in kw.items() if k != "backend"}
    two = Compose([PrepareTumorSynthesisd(("image", "label"), **prep_kw),
                   TumorSynthesisd(("image", "label"), **kw)])
    two.set_random_state(args.seed)
    t0 = time.perf_counter()
    ds = CacheDataset([sample], transform=two, progress=False)   # runs the preparation once
    fill_ms = (time.perf_counter() - t0) * 1000
    ds[0]                                                         # warm-up
    t0 = time.perf_counter()
    for _ in range(args.samples):
        ds[0]
    two_ms = (time.perf_counter() - t0) * 1000 / args.samples
    report = {"one_step_ms_per_sample": round(one_ms, 1),
              "cached_preparation_ms_once": round(fill_ms, 1),
              "cached_ms_per_sample": round(two_ms, 1),
              "speedup": round(one_ms / max(two_ms, 1e-9), 2),
              "profile": config.profile, "samples": args.samples,
              "scan_shape": list(ph.image.shape)}
    print(f"  one step (TumorSynthesisd prepares each call): {one_ms:8.1f} ms per sample")
    print(f"  CacheDataset (PrepareTumorSynthesisd once:     {fill_ms:8.1f} ms,")
    print(f"    then TumorSynthesisd):                       {two_ms:8.1f} ms per sample "
          f"({report['speedup']:.1f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
