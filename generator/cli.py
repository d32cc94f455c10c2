"""The generator's commands: ``preview`` (one sample written for a person to look at) and
``bench generator`` (registered into the front door's ``bench`` group)."""

from __future__ import annotations

import argparse
import sys


def _cmd_preview(args) -> int:
    from .backend import BackendError, get_backend
    from tumorforge.manifests.nifti import ScanError
    from tumorforge.manifests.schema import ManifestError, default_roots, read_manifest
    from .options import config_from_args
    from .preview import write_preview
    from .scans import load_prepared

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
    from tumorforge.manifests.flags import add_allow_root
    from .backend import BACKENDS
    from .options import add_generator_options
    p = sub.add_parser("preview", help="generate one sample and write a PNG montage and NIfTI",
                       description="Synthesize sample INDEX of root SEED into a healthy scan of the "
                                   "manifest; write a PNG (axial, coronal, sagittal through each "
                                   "tumor, with contours), the crop as NIfTI, and its parameters.")
    p.add_argument("--manifest", required=True)
    p.add_argument("--scan", help="scan_id (default: the first healthy scan)")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    p.add_argument("--index", type=int, default=0, help="sample index (default 0)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--out", default="preview", help="output folder (default preview/)")
    add_allow_root(p)
    add_generator_options(p)
    p.set_defaults(func=_cmd_preview)


def _bench_generator(args) -> int:
    from .bench import bench_generator
    return bench_generator(args)


def register_bench(bsub: argparse._SubParsersAction) -> None:
    from tumorforge.manifests.flags import add_allow_root
    from .backend import BACKENDS, DEFAULT_BACKEND
    from .options import add_generator_options
    g = bsub.add_parser("generator", help="synthesis throughput with a per-step breakdown",
                        description="Crops per second of tumor synthesis alone on one prepared "
                                    "scan, with milliseconds per crop for each step.")
    g.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    g.add_argument("--samples", type=int, default=50)
    g.add_argument("--warmup", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--manifest", help="take the scan from this manifest (default: a phantom)")
    g.add_argument("--scan", help="scan_id in --manifest (default: the first healthy scan)")
    add_allow_root(g)
    g.add_argument("--phantom-scale", type=float, default=0.5)
    g.add_argument("--phantom-seed", type=int, default=0)
    g.add_argument("--json", help="also write the report as JSON here")
    add_generator_options(g)
    g.set_defaults(func=_bench_generator)
