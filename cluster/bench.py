"""``tumorforge bench ...``: the project's benchmark commands. Figures in the README come from here.

``bench generator`` times synthesis alone: one scan prepared once (reported apart), then crops drawn
and synthesized one after another, with a per-step breakdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _machine() -> dict:
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version()}


def _bench_scan(args, config):
    """The scan to benchmark on: a manifest scan, or a built-in phantom (synthetic CT)."""
    import numpy as np
    from tumorforge.generator.prepare import prepare_scan
    if args.manifest:
        from tumorforge.manifests.schema import default_roots, read_manifest
        from tumorforge.generator.scans import load_prepared
        entries = read_manifest(args.manifest, default_roots(args.manifest, args.allow_root))
        healthy = [e for e in entries if e.role == "healthy"] or entries
        entry = next((e for e in healthy if e.scan_id == args.scan), healthy[0])
        return load_prepared(entry, config), entry.scan_id
    from tumorforge.manifests.phantoms import make_phantom
    ph = make_phantom(np.random.default_rng(args.phantom_seed), scale=args.phantom_scale)
    scan_id = f"phantom-{args.phantom_seed}"
    return prepare_scan(scan_id, ph.image, ph.organs, ph.affine, organ_values=(6,),
                        config=config), scan_id + f" (built-in phantom, scale {args.phantom_scale})"


def bench_generator(args) -> int:
    import numpy as np
    from tumorforge.generator.backend import BackendError, get_backend
    from tumorforge.generator.sample import sample_params, sample_seed
    from tumorforge.generator.synthesize import StepTimer, synthesize
    from tumorforge.generator.options import config_from_args

    config = config_from_args(args)
    try:
        backend = get_backend(args.backend)
    except BackendError as exc:
        sys.exit(f"bench generator: {exc}")
    t0 = time.perf_counter()
    scan, described = _bench_scan(args, config)
    prepare_s = time.perf_counter() - t0
    rng_of = lambda i: np.random.default_rng(sample_seed(args.seed, i))
    for i in range(args.warmup):
        synthesize(scan, sample_params(rng_of(i), scan, config), backend)
    timer = StepTimer(backend)
    t_sample = 0.0
    start = time.perf_counter()
    kinds: dict[str, int] = {}
    for i in range(args.warmup, args.warmup + args.samples):
        ts = time.perf_counter()
        params = sample_params(rng_of(i), scan, config)
        t_sample += time.perf_counter() - ts
        kinds[params.kind] = kinds.get(params.kind, 0) + 1
        synthesize(scan, params, backend, timer)
    wall = time.perf_counter() - start
    steps = {"sample_params": t_sample, **timer.seconds}
    report = {"benchmark": "generator", "backend": backend.name, "versions": backend.versions(),
              "profile": config.profile, "size_mix": {**config.size_mix, **config.scenario_mix},
              "crop_size": list(config.crop_size), "scan": described,
              "prepare_seconds": round(prepare_s, 3), "samples": args.samples,
              "kinds": kinds, "seconds": round(wall, 3),
              "crops_per_second": round(args.samples / wall, 3),
              "ms_per_crop": {k: round(1000 * v / args.samples, 3) for k, v in steps.items()},
              "machine": _machine(), "date": time.strftime("%Y-%m-%d")}
    print(f"backend: {backend.name} ({backend.why})")
    print(f"generator benchmark: {backend.name}, profile {config.profile}, {args.samples} crops of "
          f"{'x'.join(map(str, config.crop_size))} from {described}")
    print(f"  prepare (once per scan): {prepare_s:.2f} s")
    print(f"  {report['crops_per_second']:.2f} crops/s ({wall:.2f} s)  kinds {kinds}")
    for k, v in report["ms_per_crop"].items():
        print(f"  {k:14s} {v:10.3f} ms/crop")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _report(report: dict, path: str | None) -> int:
    report.update(machine=_machine(), date=time.strftime("%Y-%m-%d"))
    for k, v in report.items():
        print(f"  {k:20s} {v}")
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def bench_loader(args) -> int:
    from tumorforge.trainer.bench import bench_loader as run
    print(f"loader benchmark: {args.dataset} ({args.format}), {args.workers} worker(s)")
    return _report(run(args.dataset, args.format, args.workers, args.batch_size, args.batches),
                   args.json)


def bench_train(args) -> int:
    from tumorforge.trainer.bench import bench_train as run
    print(f"training benchmark: {args.model}, batch {args.batch_size}, {args.crop}^3 crops")
    return _report(run(args.model, args.batch_size, args.steps, args.crop, args.device), args.json)


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.trainer.models import MODELS
    from tumorforge.generator.options import add_generator_options
    from tumorforge.manifests.flags import add_allow_root
    b = sub.add_parser("bench", help="benchmarks (figures for the README's performance section)")
    bsub = b.add_subparsers(dest="bench_cmd", required=True, metavar="{generator,loader,train}")
    lo = bsub.add_parser("loader", help="samples/s the training reader delivers",
                         description="Samples per second delivered by the DataLoader over a "
                                     "dataset (local or s3://) with N workers.")
    lo.add_argument("dataset")
    lo.add_argument("--format", choices=("zarr", "wds"), default="zarr")
    lo.add_argument("--workers", type=int, default=2)
    lo.add_argument("--batch-size", type=int, default=2)
    lo.add_argument("--batches", type=int, default=30)
    lo.add_argument("--json")
    lo.set_defaults(func=bench_loader)
    tr = bsub.add_parser("train", help="training samples/s of a model",
                         description="Forward, DiceCE, backward and AdamW step on random crops.")
    tr.add_argument("--model", default="unet", choices=MODELS)
    tr.add_argument("--batch-size", type=int, default=2)
    tr.add_argument("--steps", type=int, default=5)
    tr.add_argument("--crop", type=int, default=96)
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    tr.add_argument("--json")
    tr.set_defaults(func=bench_train)
    g = bsub.add_parser("generator", help="synthesis throughput with a per-step breakdown",
                        description="Crops per second of tumor synthesis alone on one prepared "
                                    "scan, with milliseconds per crop for each step.")
    g.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy")
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
    g.set_defaults(func=bench_generator)
