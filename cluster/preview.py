"""``tumorforge preview``: generate one sample from a manifest scan and write it for a person to see."""

from __future__ import annotations

import argparse
import json
import os
import sys


def write_preview(scan, config, seed: int, index: int, out_dir: str, backend) -> list[str]:
    """Synthesize sample ``index`` of root ``seed`` into ``scan``; write PNG, NIfTI pair, params."""
    import numpy as np
    from tumorforge.generator.preview import crop_affine, save_montage, save_nifti
    from tumorforge.generator.sample import sample_params, sample_seed
    from tumorforge.generator.synthesize import synthesize

    params = sample_params(np.random.default_rng(sample_seed(seed, index)), scan, config)
    crop = synthesize(scan, params, backend)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{scan.scan_id}-seed{seed}-{index}")
    title = (f"{scan.scan_id}  seed {seed} index {index}  {config.profile}/{params.kind}  "
             f"{len(params.tumors)} tumor(s) drawn  backend {backend.name}")
    png = save_montage(crop.image, crop.label, stem + ".png", title)
    image_path, label_path = save_nifti(crop.image, crop.label, crop_affine(scan, params), stem)
    with open(stem + ".params.json", "w") as f:
        json.dump({"config": config.to_json(), "params": params.to_json(), "scan": scan.stats()},
                  f, indent=1)
    return [png, image_path, label_path, stem + ".params.json"]


def run(args) -> int:
    from tumorforge.generator.backend import BackendError, get_backend
    from tumorforge.manifests.nifti import ScanError
    from tumorforge.manifests.schema import ManifestError, default_roots, read_manifest
    from tumorforge.generator.options import config_from_args
    from tumorforge.generator.scans import load_prepared

    config = config_from_args(args)
    try:
        entries = read_manifest(args.manifest, default_roots(args.manifest, args.allow_root))
        backend = get_backend(args.backend)
    except (ManifestError, BackendError) as exc:
        sys.exit(f"preview: {exc}")
    pool = {e.scan_id: e for e in entries if args.scan or e.role == "healthy"}
    if not pool:
        sys.exit(f"preview: {args.manifest} has no healthy scan to put tumors in")
    scan_id = args.scan or sorted(pool)[0]
    if scan_id not in pool:
        sys.exit(f"preview: scan {scan_id!r} is not in {args.manifest}")
    try:
        scan = load_prepared(pool[scan_id], config)
    except ScanError as exc:
        sys.exit(f"preview: {exc}")
    print(f"backend: {backend.name} ({backend.why})")
    print("\n".join(write_preview(scan, config, args.seed, args.index, args.out, backend)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.generator.options import add_generator_options
    from tumorforge.manifests.flags import add_allow_root
    p = sub.add_parser("preview", help="generate one sample and write a PNG montage and NIfTI",
                       description="Synthesize sample INDEX of root SEED into a healthy scan of the "
                                   "manifest; write a PNG (axial, coronal, sagittal through each "
                                   "tumor, with contours), the crop as NIfTI, and its parameters.")
    p.add_argument("--manifest", required=True)
    p.add_argument("--scan", help="scan_id (default: the first healthy scan)")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    p.add_argument("--index", type=int, default=0, help="sample index (default 0)")
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    p.add_argument("--out", default="preview", help="output folder (default preview/)")
    add_allow_root(p)
    add_generator_options(p)
    p.set_defaults(func=run)
