"""``tumorforge generate`` and ``tumorforge submit``: run a generation job here or on a Ray cluster."""

from __future__ import annotations

import argparse
import os
import sys


def _overrides(args) -> dict:
    from tumorforge.generator.options import generator_overrides
    res = {k: getattr(args, k) for k in ("actors", "gpus_per_actor", "cpus_per_actor",
                                         "scan_cache_mb", "scan_retries", "shard_retries")}
    gen = generator_overrides(args)
    return {"manifest": args.manifest, "output": args.output, "samples": args.samples,
            "samples_per_shard": args.samples_per_shard, "root_seed": args.root_seed,
            "backend": args.backend, "scans_per_shard": args.scans_per_shard,
            "formats": args.formats.split(",") if args.formats else None,
            "allow_roots": args.allow_root or None,
            "generator": gen or None,
            "resources": {k: v for k, v in res.items() if v is not None} or None}


def _cmd_generate(args) -> int:
    from .job import JobError, run_job
    from .plan import PlanError
    from .spec import SpecError, load_spec
    try:
        spec = load_spec(args.job, _overrides(args))
        result = run_job(spec, address=args.address, progress=not args.no_progress)
    except (SpecError, JobError, PlanError) as exc:
        sys.exit(f"generate: {exc}")
    rate = result.samples / max(result.seconds, 1e-9)
    print(f"dataset {result.dataset_id} at {result.output}")
    print(f"  shards: {result.shards} total, {result.committed_before} already committed, "
          f"{result.written} written, {len(result.failed)} failed")
    print(f"  samples written: {result.samples}  bytes: {result.bytes / 1e6:.1f} MB  "
          f"time: {result.seconds:.1f} s  ({rate:.2f} samples/s)  actor restarts: "
          f"{result.actor_restarts}")
    if result.failed:
        print("  FAILED shards (fix the cause and rerun the same command to finish):")
        for shard, reason in sorted(result.failed.items()):
            print(f"    shard {shard}: {reason}")
        print("  index.json was not written; the committed shards are kept for the rerun")
        return 1
    print(f"  index: {result.output.rstrip('/')}/index.json")
    return 0


def _cmd_submit(args) -> int:
    from ray.job_submission import JobSubmissionClient
    job = os.path.abspath(args.job)
    if not os.path.isfile(job):
        sys.exit(f"submit: {args.job}: no such job file")
    # The cluster runs the job with its own Python, which must have tumorforge installed
    # (the image of a KubeRay cluster, or --pip).
    entrypoint = f"python -m cluster.cli generate {os.path.basename(job)} --address auto --no-progress"
    runtime_env = {"working_dir": os.path.dirname(job)}
    if args.pip:
        runtime_env["pip"] = args.pip
    job_id = JobSubmissionClient(args.address).submit_job(entrypoint=entrypoint,
                                                          runtime_env=runtime_env)
    print(f"submitted {job_id} to {args.address}: {entrypoint}")
    print(f"follow it with: ray job logs --address {args.address} --follow {job_id}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.generator.options import add_generator_options
    from tumorforge.manifests.flags import add_allow_root
    g = sub.add_parser("generate", help="run a generation job (Ray) writing Zarr/WebDataset shards",
                       description="Run or resume the job JOB.yaml (every field is also a flag; "
                                   "flags win). Without --address an embedded local Ray cluster "
                                   "is started. Rerunning the same job finishes what is missing.")
    g.add_argument("job", nargs="?", help="job spec YAML (optional if flags give everything)")
    g.add_argument("--manifest")
    g.add_argument("--output", help="local folder, file:// or s3:// URL")
    g.add_argument("--samples", type=int)
    g.add_argument("--samples-per-shard", type=int)
    g.add_argument("--root-seed", type=int)
    g.add_argument("--backend", choices=("numpy", "cupy", "auto"))
    g.add_argument("--formats", help="zarr, wds or zarr,wds (default both)")
    g.add_argument("--scans-per-shard", type=int)
    add_allow_root(g)
    r = g.add_argument_group("resources")
    r.add_argument("--actors", type=int)
    r.add_argument("--gpus-per-actor", type=float)
    r.add_argument("--cpus-per-actor", type=float)
    r.add_argument("--scan-cache-mb", type=int)
    r.add_argument("--scan-retries", type=int)
    r.add_argument("--shard-retries", type=int)
    g.add_argument("--address", help="Ray cluster address (default: start an embedded one)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generator_options(g, defaults=False)
    g.set_defaults(func=_cmd_generate)

    s = sub.add_parser("submit", help="send a generation job to a Ray cluster (Ray Jobs API)",
                       description="Submit JOB.yaml to the cluster whose dashboard is at ADDRESS; "
                                   "the job's folder is uploaded as the working directory and "
                                   "the cluster runs `tumorforge generate JOB.yaml --address auto`.")
    s.add_argument("job")
    s.add_argument("--address", required=True, help="dashboard URL, e.g. http://head:8265")
    s.add_argument("--pip", nargs="*", help="packages to install on the cluster (runtime_env)")
    s.set_defaults(func=_cmd_submit)
