"""The seed authors' tumor generator as a reference lesion table for ``tumorforge stats --reference``.

How docs/results/fidelity.md measured the released twin against the code it twins. Three steps,
in two Python environments, because the authors' code needs numpy 1.x builds of ``elasticdeform``
and ``opencv``, while tumorforge runs on numpy 2:

1. ``export`` (tumorforge's environment): every healthy scan of a manifest prepared as the
   generator prepares it (RAS, the default 1 mm grid), saved as ``<scan>.npz`` (int16 HU image,
   0/1 liver mask, spacing).
2. ``synthesize`` (an environment with numpy<2, scipy, opencv-python-headless, elasticdeform and
   nothing of tumorforge): the authors' ``SynthesisTumor`` (``TumorGenerated/utils.py`` of a
   checkout of their repository, which you supply; nothing of it is copied here, this script only
   calls it) paints tumors of each size type into each exported scan, ``--per-scan`` volumes per
   scan and type, with their ten predefined textures (sigma_a 3-15 x sigma_b 4, 7, at their
   420x300x320 shape), seeded per volume. Writes ``<type>/<scan>-<k>.npz`` (image, label).
3. ``measure`` (tumorforge's environment): every tumor (26-connected component of label 2) of each
   volume measured with the fidelity report's own ``measure_scan`` against the exported tumor-free
   scan, written as a lesion table (group = the size type, sample = the volume).

Then: ``tumorforge stats OURS/TYPE ... --reference authors=TABLE.csv``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

TYPES = ("tiny", "small", "medium", "large", "mix")


def export(args) -> None:
    import numpy as np
    from tumorforge.evaluation.fidelity.prepared import ScanCache
    from tumorforge.generator.api import GeneratorConfig
    from tumorforge.manifests.schema import default_roots, read_manifest
    os.makedirs(args.out, exist_ok=True)
    cache, config = ScanCache(), GeneratorConfig()
    for entry in read_manifest(args.manifest, default_roots(args.manifest, args.allow_root)):
        scan = cache.get(entry, config).scan
        np.savez(os.path.join(args.out, f"{entry.scan_id}.npz"), image=scan.image.astype(np.int16),
                 liver=scan.organ.astype(np.uint8), spacing=np.asarray(scan.spacing_mm))
        print(f"exported {entry.scan_id}: {scan.shape} at {scan.spacing_mm} mm")


def synthesize(args) -> None:
    import random
    import numpy as np
    sys.path.insert(0, os.path.join(args.authors, "TumorGenerated"))
    import utils  # the authors' TumorGenerated/utils.py (their package __init__ imports monai)
    random.seed(args.seed)
    np.random.seed(args.seed)
    textures = [utils.get_predefined_texture((420, 300, 320), a, b)
                for a in (3, 6, 9, 12, 15) for b in (4, 7)]
    print(f"{len(textures)} predefined textures made")
    scans = sorted(glob.glob(os.path.join(args.scans, "*.npz")))
    for t, kind in enumerate(args.types.split(",")):
        os.makedirs(os.path.join(args.out, kind), exist_ok=True)
        for s, path in enumerate(scans):
            data = np.load(path, allow_pickle=False)
            for k in range(args.per_scan):
                seed = args.seed * 1_000_000 + t * 10_000 + s * 100 + k
                random.seed(seed)
                np.random.seed(seed % 2**32)
                image = data["image"].astype(np.float32)
                liver = data["liver"].astype(np.uint8)
                texture = random.choice(textures)
                out_image, out_label = utils.SynthesisTumor(image, liver, kind, texture)
                name = f"{os.path.splitext(os.path.basename(path))[0]}-{k}"
                np.savez(os.path.join(args.out, kind, f"{name}.npz"), image=out_image,
                         label=np.asarray(out_label, np.uint8))
                print(f"{kind} {name}: {int((np.asarray(out_label) == 2).sum())} tumor voxels")


def measure(args) -> None:
    import numpy as np
    from tumorforge.evaluation.fidelity.lesion_table import write_table
    from tumorforge.evaluation.fidelity.lesions import lesion_of, measure_scan
    lesions = []
    for kind in sorted(os.listdir(args.synthesized)):
        for path in sorted(glob.glob(os.path.join(args.synthesized, kind, "*.npz"))):
            volume = os.path.splitext(os.path.basename(path))[0]
            scan_id = volume.rsplit("-", 1)[0]
            base = np.load(os.path.join(args.scans, f"{scan_id}.npz"), allow_pickle=False)
            out = np.load(path, allow_pickle=False)
            label = out["label"].astype(np.uint8)
            for comp in measure_scan(out["image"], label, tuple(base["spacing"]),
                                     base=base["image"].astype(np.float32)):
                lesions.append(lesion_of(args.name, "reference", kind, scan_id, volume, comp,
                                         depth=comp["depth_mm"],
                                         reference=comp["reference_depth_mm"]))
    write_table(args.table, lesions)
    print(f"wrote {args.table}: {len(lesions)} lesions")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    e = sub.add_parser("export", help="step 1 (tumorforge's environment)")
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--allow-root", action="append", default=[])
    e.set_defaults(func=export)
    s = sub.add_parser("synthesize", help="step 2 (the authors' environment)")
    s.add_argument("--authors", required=True, help="checkout of the authors' repository")
    s.add_argument("--scans", required=True, help="step 1's folder")
    s.add_argument("--out", required=True)
    s.add_argument("--types", default=",".join(TYPES))
    s.add_argument("--per-scan", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=synthesize)
    m = sub.add_parser("measure", help="step 3 (tumorforge's environment)")
    m.add_argument("--scans", required=True, help="step 1's folder")
    m.add_argument("--synthesized", required=True, help="step 2's folder")
    m.add_argument("--table", required=True, help="lesion table to write (.csv)")
    m.add_argument("--name", default="authors")
    m.set_defaults(func=measure)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
