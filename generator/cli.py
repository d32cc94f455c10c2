"""The generator's commands: ``preview`` (one sample written for a person to look at),
``synthesize`` (whole scans with tumors as NIfTI or an nnU-Net raw dataset) and ``bench generator``
(registered into the front door's ``bench`` group)."""

from __future__ import annotations

import argparse
import sys

from tumorforge.manifests.errors import UserError


def _cmd_preview(args) -> int:
    from .backend import get_backend
    from tumorforge.manifests.schema import default_roots, read_manifest
    from .options import config_from_args, print_warnings
    from .preview import write_preview
    from .scans import load_prepared

    # A preview shows a tumor: crops centred on one, whatever the profile's policy (the default
    # profile's pos-neg policy centres half its crops on background), unless the flags say so.
    config = config_from_args(args, crop_policy="tumor-centred")
    print_warnings(config)
    entries = read_manifest(args.manifest, default_roots(args.manifest, args.allow_root))
    backend = get_backend(args.backend)
    pool = {e.scan_id: e for e in entries if args.scan or e.role == "healthy"}
    if not pool:
        raise UserError(f"{args.manifest} has no healthy scan to put tumors in")
    scan_id = args.scan or sorted(pool)[0]
    if scan_id not in pool:
        raise UserError(f"scan {scan_id!r} is not in {args.manifest}")
    scan = load_prepared(pool[scan_id], config)
    print(f"backend: {backend.name} ({backend.why})")
    print("\n".join(write_preview(scan, config, args.seed, args.index, args.out, backend)))
    return 0


def _cmd_synthesize(args) -> int:
    import shlex
    from .backend import get_backend
    from tumorforge.manifests.schema import default_roots, read_manifest
    from .options import config_from_args, print_warnings
    from .whole_scan import run_synthesize

    if args.grid is None:             # nnU-Net plans its own spacing: give it the scans' grid
        args.grid = "native" if args.format == "nnunet" else "prepared"
    # A whole scan without a tumor is no use here: negatives only when asked for.
    config = config_from_args(args, negative_fraction=0.0)
    if config.profile == "real":
        raise UserError("profile 'real' paints no tumor; choose paper-train, paper or released")
    print_warnings(config)
    entries = read_manifest(args.manifest, default_roots(args.manifest, args.allow_root))
    backend = get_backend(args.backend)
    by_id = {e.scan_id: e for e in entries}
    missing = [s for s in args.scan if s not in by_id]
    if missing:
        raise UserError(f"scan(s) {missing} not in {args.manifest}")
    chosen = [by_id[s] for s in args.scan] if args.scan else \
        [e for e in entries if e.role == "healthy"]
    if not chosen:
        raise UserError(f"{args.manifest} has no healthy scan (name scans with --scan)")
    real = read_manifest(args.real, default_roots(args.real, args.allow_root)) if args.real else []
    # The generator configuration is recorded whole in synthesize.json; the command names the rest.
    command = ["tumorforge", "synthesize", "--manifest", args.manifest, "--count", str(args.count),
               "--seed", str(args.seed), "--grid", args.grid, "--format", args.format,
               "--profile", config.profile, "--out", args.out]
    command += [a for s in args.scan for a in ("--scan", s)]
    command += ["--real", args.real] if args.real else []
    command = shlex.join(command)
    folder, run = run_synthesize(
        chosen, config, out=args.out, manifest=args.manifest, allow_roots=args.allow_root,
        count=args.count, root_seed=args.seed, grid=args.grid, output_format=args.format,
        backend=backend, command=command, dataset_id=args.dataset_id,
        dataset_name=args.dataset_name, real_entries=real, real_manifest=args.real or "",
        log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {len(run.cases)} synthetic and {len(run.real_cases)} real case(s) to {folder} "
          f"(grid {run.grid}, format {run.output_format}, profile {config.profile}, backend "
          f"{backend.name}); {len(run.rejected)} scan(s) skipped")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.manifests.flags import add_allow_root
    from .backend import BACKENDS
    from .options import add_generator_options
    p = sub.add_parser("preview", help="generate one sample and write a PNG montage and NIfTI",
                       description="Synthesize sample INDEX of root SEED into a healthy scan of the "
                                   "manifest; write a PNG (axial, coronal, sagittal through each "
                                   "tumor, with contours), the crop as NIfTI, and its parameters. "
                                   "The crop is centred on a tumor (--crop-policy pos-neg gives "
                                   "the released profile's own crops).")
    p.add_argument("--manifest", required=True)
    p.add_argument("--scan", help="scan_id (default: the first healthy scan)")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    p.add_argument("--index", type=int, default=0, help="sample index (default 0)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--out", default="preview", help="output folder (default preview/)")
    add_allow_root(p)
    add_generator_options(p)
    p.set_defaults(func=_cmd_preview)

    from .whole_scan import GRIDS, OUTPUT_FORMATS
    w = sub.add_parser("synthesize", help="whole scans with synthetic tumors as NIfTI or an nnU-Net "
                                          "raw dataset",
                       description="Paint tumors into whole healthy scans: for each scan, --count "
                                   "cases, each sample index of --seed drawn as for a crop and "
                                   "synthesized over the whole liver region. Writes image, label "
                                   "(0 background, 1 liver, 2 tumor) and the parameters of every "
                                   "case, and synthesize.json, which tumorforge stats reads.")
    w.add_argument("--manifest", required=True)
    w.add_argument("--scan", action="append", default=[], metavar="SCAN_ID",
                   help="scan to use (repeatable; default: every healthy scan of the manifest)")
    w.add_argument("--count", type=int, default=1, help="cases per scan (default 1)")
    w.add_argument("--real", metavar="MANIFEST",
                   help="also write every scan of this annotated manifest (both roles) as a real "
                        "case <scan>_real: its own image and label on the same grid, no tumor "
                        "painted; nnU-Net's folds keep a scan's real and synthetic cases together")
    w.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    w.add_argument("--grid", choices=GRIDS, default=None,
                   help="prepared: the whole scan on the generator's RAS grid at --spacing; "
                        "native: the scan's own grid and voxel order (default: native for "
                        "--format nnunet, which resamples itself; prepared for nifti)")
    w.add_argument("--format", choices=OUTPUT_FORMATS, default="nifti",
                   help="nifti: images/, labels/, params/ under --out; nnunet: an nnU-Net v2 raw "
                        "dataset --out/Dataset<NNN>_<Name>/ (default nifti)")
    w.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset number NNN "
                                                               "(default 501)")
    w.add_argument("--dataset-name", default="TumorforgeLiver",
                   help="nnU-Net dataset name (default TumorforgeLiver)")
    w.add_argument("--backend", choices=BACKENDS, default="auto")
    w.add_argument("--out", required=True, help="output folder (local or s3://)")
    add_allow_root(w)
    add_generator_options(w)
    w.set_defaults(func=_cmd_synthesize)


def _bench_generator(args) -> int:
    from .bench import bench_generator
    return bench_generator(args)


def _bench_transform(args) -> int:
    from .bench_transform import bench_transform
    return bench_transform(args)


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
    g.add_argument("--batch", type=int, default=1,
                   help="crops per synthesis call (synthesize_batch over packed records; the "
                        "worker of a job uses 8)")
    g.add_argument("--kernels", choices=("auto", "off", "cpu"), default="auto",
                   help="auto: the fused CUDA kernels paint the crops they can on the cupy backend "
                        "(generator/kernels); off: the array code alone (the baseline); cpu: the "
                        "kernels' text built for this CPU with --backend numpy (a check of the "
                        "host plan's cost and the kernels' results, not a fast path)")
    g.add_argument("--draw-processes", type=int, default=0,
                   help="draw parameters in this many forked processes beside synthesis (as a "
                        "job's other actors do), so the rate is synthesis's when they keep up; "
                        "0: in the loop, before each batch")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--manifest", help="take the scan from this manifest (default: a phantom)")
    g.add_argument("--scan", help="scan_id in --manifest (default: the first healthy scan)")
    add_allow_root(g)
    g.add_argument("--phantom-scale", type=float, default=0.5)
    g.add_argument("--phantom-seed", type=int, default=0)
    g.add_argument("--json", help="also write the report as JSON here")
    add_generator_options(g)
    g.set_defaults(func=_bench_generator)

    t = bsub.add_parser("transform", help="the MONAI transform on a whole scan: preparing on "
                                          "every call against CacheDataset's cached preparation",
                        description="Milliseconds per sample of TumorSynthesisd alone against "
                                    "PrepareTumorSynthesisd (cached by CacheDataset) + "
                                    "TumorSynthesisd, in one run on one built-in phantom scan.")
    t.add_argument("--backend", choices=BACKENDS, default="numpy")
    t.add_argument("--samples", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--phantom-scale", type=float, default=0.5)
    t.add_argument("--phantom-seed", type=int, default=0)
    t.add_argument("--json", help="also write the report as JSON here")
    add_generator_options(t)
    t.set_defaults(func=_bench_transform)
