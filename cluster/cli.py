"""The generation service's commands: ``generate`` (run or resume a job here; ``--dry-run``),
``submit`` (send it to a Ray cluster), ``audit`` (one sample: how it was made, regenerated from its
seed), ``verify`` (every shard and sample against the index) and ``inspect`` (what a dataset
holds)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from tumorforge.manifests.errors import UserError, one_line

MODULE_ENTRY = "tumorforge.cluster"      # python -m tumorforge.cluster == the tumorforge script


def _spec_overrides(args) -> dict:
    from tumorforge.generator.options import generator_overrides
    from tumorforge.manifests.flags import config_overrides
    out = config_overrides(args, "job.")
    out["resources"] = config_overrides(args, "resources.")
    out["generator"] = generator_overrides(args)
    if args.allow_root:
        out["allow_roots"] = list(args.allow_root)
    return {k: v for k, v in out.items() if v not in (None, {})}


def _cmd_generate(args) -> int:
    from .job import run_job
    from .spec import load_spec
    from tumorforge.generator.options import print_warnings
    spec = load_spec(args.job, _spec_overrides(args))
    if args.print_config:
        from tumorforge.manifests.flags import config_yaml
        print(config_yaml(spec.to_json()), end="")
        return 0
    print_warnings(spec.generator)
    if args.dry_run:
        return _dry_run(spec)
    redo = frozenset()
    if args.repair:
        redo = frozenset(_repair_plan(spec))
    result = run_job(spec, address=args.address, progress=not args.no_progress, redo=redo)
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
    if args.repair:
        from tumorforge.manifests.dataset.reader import Dataset
        from .audit import verify
        left = verify(Dataset(spec.output))
        print(f"  repair: {'verify OK' if not left else f'{len(left)} problem(s) left'}")
        return 0 if not left else 1
    return 0


def _repair_plan(spec) -> list[int]:
    """The shards ``--repair`` rewrites (what verify finds bad), printed before the run."""
    from .job import shards_to_repair
    bad, other = shards_to_repair(spec)
    print(f"repair: verify finds {len(bad)} bad shard(s) {bad if bad else ''} in {spec.output}")
    for where, what in other:
        print(f"  not a shard's problem: {where}: {what} (plan.json, metadata and index.json are "
              f"rewritten by the run; extra objects are left for you to check)")
    return bad


def _dry_run(spec) -> int:
    from .dry_run import dry_run
    from .job import read_entries
    entries = read_entries(spec)
    try:
        result = dry_run(spec, entries)
    except (UserError, OSError) as exc:
        raise UserError(f"--dry-run: calibration failed: {one_line(exc)}") from None
    print("\n".join(result.lines()))
    return 0


def submit_entrypoint(job_file: str, python: str | None = None) -> str:
    """The Jobs API entrypoint for ``job_file`` (a name inside the uploaded working directory).

    By default the ``tumorforge`` script: its first line names the interpreter tumorforge was
    installed into, so the job runs there whichever ``python`` comes first on the cluster's PATH.
    With ``python`` (a path on the cluster) the module entry point of that interpreter is used.
    """
    command = "tumorforge" if python is None else f"{shlex.quote(python)} -m {MODULE_ENTRY}"
    return f"{command} generate {shlex.quote(job_file)} --address auto --no-progress"


AGENT_WAIT_S = 60.0      # how long submit waits for the job agent of a cluster just started


def _cmd_submit(args) -> int:
    from ray.job_submission import JobSubmissionClient
    from .job import OperatorError, check_reachable
    job = os.path.abspath(args.job)
    if not os.path.isfile(job):
        raise UserError(f"{args.job}: no such job file")
    # The cluster runs the job with its own environment, which must have tumorforge installed
    # (the image of a KubeRay cluster, or --pip).
    entrypoint = submit_entrypoint(os.path.basename(job), args.python)
    runtime_env = {"working_dir": os.path.dirname(job)}
    if args.pip:
        runtime_env["pip"] = args.pip
    check_reachable(args.address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            client = JobSubmissionClient(args.address)
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except Exception as exc:       # the Jobs API's refusals (auth, version, bad address)
            # A head started moments ago serves the API before its job agent is up; Ray answers
            # "No available agent to submit job, please try again later": so we do, for a while.
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2.0)
                continue
            raise OperatorError(f"the Ray Jobs API at {args.address} refused the job "
                                f"({type(exc).__name__}: {one_line(exc)})") from None
    print(f"submitted {job_id} to {args.address}: {entrypoint}")
    if not args.wait:
        print(f"follow it with: ray job logs --address {args.address} --follow {job_id}")
        return 0
    return _follow(client, job_id)


def _follow(client, job_id: str, poll_s: float = 1.0) -> int:
    """Print the job's logs as they grow until it ends; 0 if it succeeded, 1 otherwise."""
    import time
    from ray.job_submission import JobStatus
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(poll_s)
    info = client.get_job_info(job_id)
    if status == JobStatus.SUCCEEDED:
        print(f"job {job_id} succeeded")
        return 0
    print(f"job {job_id} {str(status).lower().split('.')[-1]}: {info.message or 'no message'}",
          file=sys.stderr)
    return 1


def _cmd_audit(args) -> int:
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    from .audit import describe, regenerate
    ds = Dataset(args.dataset)
    index = ds.index_of(args.key) if args.key else args.index
    copies = ds.copies(index)
    bad = {fmt: state for fmt, state in copies.items() if state != "ok"}
    if bad:
        raise DatasetError(f"sample {index} of {args.dataset} is corrupt: " + "; ".join(
            f"{fmt} copy {state}" for fmt, state in copies.items()))
    _, _, p = ds.sample(index)
    print(describe(p))
    print(f"  stored      {', '.join(f'{fmt} copy matches the index' for fmt in copies)}")
    if args.no_regenerate:
        return 0
    try:
        r = regenerate(ds, p, args.backend, args.manifest, args.allow_root)
    except (UserError, ValueError, OSError) as exc:
        raise UserError(f"cannot regenerate: {one_line(exc)}") from None
    print(f"regenerated on {r['backend']}: parameters {'match' if r['params_match'] else 'DIFFER'}; "
          f"image {'match' if r['image_match'] else 'differs'}, "
          f"label {'match' if r['label_match'] else 'differs'} ({p.sample_digest}); "
          f"tumor Dice {r['tumor_dice']:.4f}, mean |dHU| {r['mean_abs_hu']:.3f}")
    if not r["stored_matches_provenance"]:
        print("the stored sample does not match its own provenance digests: the shard is corrupt")
        return 1
    if r["same_backend"]:
        ok = r["params_match"] and r["image_match"] and r["label_match"]
        print("AUDIT OK: bit-exact" if ok else "AUDIT FAILED: not bit-exact on the same backend")
    else:
        ok = r["params_match"] and r["within_tolerance"]
        print(f"AUDIT {'OK' if ok else 'FAILED'}: other backend ({p.backend} -> {r['backend']}), "
              "compared within the documented tolerance")
    if args.json:
        print(json.dumps(r, sort_keys=True))
    return 0 if ok else 1



def parse_shards(text: str) -> set[int]:
    """``0-9,15,20-21`` as a set of shard numbers."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise UserError(f"--shards {text!r}: expected numbers and ranges like 0-9,15") \
                from None
        if first < 0 or last < first:
            raise UserError(f"--shards {text!r}: {part!r} is not a range of shard numbers")
        out.update(range(first, last + 1))
    if not out:
        raise UserError(f"--shards {text!r}: names no shard")
    return out


def _cmd_verify(args) -> int:
    from tumorforge.manifests.dataset.reader import Dataset
    from .audit import verify
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected at least 1")
    ds = Dataset(args.dataset)
    chosen = parse_shards(args.shards) if args.shards else None
    problems = verify(ds, shards=chosen, jobs=args.jobs, progress=not args.no_progress)
    # Counted from the index alone: a shard record verify found broken is not opened again here.
    count = ds.index.shard_count
    checked = [k for k in range(count) if chosen is None or k in chosen]
    samples = sum(ds.index.layout(k)[1] for k in checked)
    n_files = None
    if not problems:
        records = [s for s in ds.shards if s.shard in set(checked)]
        n_files = sum(len(s.files) for s in records) + \
            (len(records) if ds.index.table is not None else 0)     # format 2: the shard records
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "dataset_id": ds.dataset_id, "ok": not problems,
                       "shards_checked": checked, "objects_checked": n_files,
                       "samples_checked": samples,
                       "problems": [{"object": o, "problem": p} for o, p in problems]}, f, indent=1)
    if problems:
        from tumorforge.manifests.cli import format_table
        print(format_table(["object", "problem"], problems))
        print(f"{args.dataset}: {len(problems)} problem(s) in {len(checked)} shard(s)")
        return 1
    what = "" if chosen is None else f" of {count}"
    print(f"{args.dataset}: dataset {ds.dataset_id} OK: {len(checked)}{what} shard(s), {n_files} "
          f"object(s) and {samples} sample(s) in {'+'.join(ds.formats)} match the index")
    return 0


def _cmd_inspect(args) -> int:
    from .inspect_dataset import inspect, lines
    summary = inspect(args.dataset, args.out, args.max_samples, args.montage)
    print("\n".join(lines(summary)))
    for path in summary.get("files", []):
        print(f"  wrote {path}")
    return 0


def _bench_encode(args) -> int:
    from tumorforge.manifests.bench_report import finish_report
    from .bench_encode import bench_encode
    report = bench_encode(args.samples, args.crop, args.rounds)
    code = finish_report(report, args.json)
    same = all(report[c]["bytes_identical"] for c in report["compressions"])
    return code if same else 1


def _bench_scale(args) -> int:
    from tumorforge.manifests.bench_report import finish_report
    from .bench_scale import bench_scale
    report = bench_scale(args.samples, args.samples_per_shard, args.scans, args.workdir,
                         args.keep, log=lambda m: print(m, file=sys.stderr))
    return finish_report(report, args.json)


def _bench_generate(args) -> int:
    from tumorforge.manifests.bench_report import finish_report
    from .bench_generate import bench_generate
    report = bench_generate(args.manifest, args.samples, args.samples_per_shard, args.actors,
                            args.crop, args.allow_root,
                            args.formats.split(",") if args.formats else None,
                            args.compression, ray=not args.no_ray, backend=args.backend,
                            gpus_per_actor=args.gpus_per_actor,
                            dataset_formats=args.dataset_format, rounds=args.rounds,
                            log=lambda m: print(m, file=sys.stderr))
    return finish_report(report, args.json)


def register_bench(bsub: argparse._SubParsersAction) -> None:
    from tumorforge.manifests.flags import add_allow_root
    ge = bsub.add_parser("generate", help="a generation job end to end against the generator "
                                          "alone, with each stage's share",
                         description="Run the same plan twice in one run: synthesis alone in "
                                     "this process (the ceiling, times the actors the cores "
                                     "allow) and as a regular job into local shards; report "
                                     "both rates, the share of each stage and the writer's "
                                     "host work besides synthesis in CPU ms per crop.")
    ge.add_argument("--manifest", help="scans to use (default: two built-in BTCV phantoms)")
    ge.add_argument("--samples", type=int, default=128)
    ge.add_argument("--samples-per-shard", type=int, default=16)
    ge.add_argument("--actors", type=int, default=2)
    ge.add_argument("--crop", type=int, default=96)
    ge.add_argument("--formats", help="zarr, wds or zarr,wds (default: the job spec's, both)")
    ge.add_argument("--compression", help="lz4 or zstd (default: the job spec's, lz4)")
    ge.add_argument("--backend", choices=("numpy", "cupy", "auto"), default="numpy",
                    help="synthesis backend of the job's actors (cupy: a GPU node)")
    ge.add_argument("--gpus-per-actor", type=float, default=0.0,
                    help="GPU share of each actor (0.5: two actors per GPU); with --no-ray, the "
                         "share of the device's memory this process's pool may hold")
    ge.add_argument("--no-ray", action="store_true",
                    help="write the plan in this process only (no Ray, no generator-only run): "
                         "the host-work table at a fraction of the cost")
    ge.add_argument("--dataset-format", default=None, metavar="2,3",
                    type=lambda text: [int(f) for f in text.split(",")],
                    help="dataset format(s) to write the plan in, in turn (default: the job "
                         "spec's, 3); 2,3 compares sha256 throughout with BLAKE3 and crc32c")
    ge.add_argument("--rounds", type=int, default=1,
                    help="write each dataset format this many times, interleaved; stages are "
                         "averaged")
    add_allow_root(ge)
    ge.add_argument("--json", help="also write the report as JSON here")
    ge.set_defaults(func=_bench_generate)
    sc = bsub.add_parser("scale", help="bookkeeping of an N-sample dataset on fake data: index, "
                                       "dispatch, reader open",
                         description="Run the real plan, scheduler, commit, index and reader "
                                     "code on fake scans and shard contents (nothing is "
                                     "synthesized) and report index bytes and write time, "
                                     "driver memory, dispatch CPU per shard, and a fresh "
                                     "reader's open time and memory.")
    sc.add_argument("--samples", type=int, default=100_000)
    sc.add_argument("--samples-per-shard", type=int, default=64)
    sc.add_argument("--scans", type=int, default=100)
    sc.add_argument("--workdir", help="where the fake dataset goes (default: a temporary folder)")
    sc.add_argument("--keep", action="store_true", help="keep the fake dataset")
    sc.add_argument("--json", help="also write the report as JSON here")
    sc.set_defaults(func=_bench_scale)
    e = bsub.add_parser("encode", help="zarr shard encoding per crop: codec alone, direct, "
                                       "zarr-python",
                        description="CPU ms per crop to encode a zarr shard, interleaved: the "
                                    "Blosc codec alone, tumorforge's direct encoder and "
                                    "zarr-python's pipeline; checks their bytes are equal.")
    e.add_argument("--samples", type=int, default=8)
    e.add_argument("--crop", type=int, default=96)
    e.add_argument("--rounds", type=int, default=5)
    e.add_argument("--json", help="also write the report as JSON here")
    e.set_defaults(func=_bench_encode)


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.generator.backend import BACKENDS
    from tumorforge.generator.options import add_generator_options
    from tumorforge.manifests.flags import add_allow_root, add_config_flags, add_print_config
    from .spec import JobSpec, Resources

    g = sub.add_parser("generate", help="run a generation job (Ray) writing Zarr/WebDataset shards",
                       description="Run or resume the job JOB.yaml. Every field of the job spec "
                                   "(and of its generator and resources sections) is also a flag; "
                                   "flags win. Without --address an embedded local Ray cluster is "
                                   "started. Rerunning the same job finishes what is missing.")
    g.add_argument("job", nargs="?", help="job spec YAML (optional if flags give everything)")
    add_config_flags(g, JobSpec, prefix="job.", skip=("generator", "resources", "allow_roots"),
                     flags={"output": ["--out", "--output", "-o"],
                            "root_seed": ["--seed", "--root-seed"]},
                     options={"backend": {"choices": BACKENDS},
                              "formats": {"metavar": "FORMAT,..."}})
    add_allow_root(g)
    add_print_config(g, "job spec")
    add_config_flags(g.add_argument_group("resources (how to run; never change the dataset)"),
                     Resources, prefix="resources.")
    g.add_argument("--address", help="Ray cluster address (default: start an embedded one); "
                                     "`auto` joins whatever cluster is already running on this "
                                     "machine")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--repair", action="store_true",
                   help="verify the dataset at the output, rewrite exactly the shards it finds "
                        "bad (byte-identical to the plan), then verify again")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan (dataset id, samples per scan, scans it cannot use, what "
                        "the output holds) and estimates from a few samples made here; write "
                        "nothing, start no cluster")
    add_generator_options(g)
    g.set_defaults(func=_cmd_generate)

    s = sub.add_parser("submit", help="send a generation job to a Ray cluster (Ray Jobs API)",
                       description="Submit JOB.yaml to the cluster whose dashboard is at ADDRESS; "
                                   "the job's folder is uploaded as the working directory and "
                                   "the cluster runs `tumorforge generate JOB.yaml --address auto`.")
    s.add_argument("job")
    s.add_argument("--address", required=True, help="dashboard URL, e.g. http://head:8265")
    s.add_argument("--pip", nargs="*", help="packages to install on the cluster (runtime_env)")
    s.add_argument("--python", metavar="PATH",
                   help=f"run `PATH -m {MODULE_ENTRY}` on the cluster instead of the tumorforge "
                        "script (for images where the script is not on PATH)")
    s.add_argument("--wait", action="store_true",
                   help="follow the job's logs until it ends; exit 0 if it succeeded, 1 if it "
                        "failed or was stopped")
    s.set_defaults(func=_cmd_submit)

    a = sub.add_parser("audit", help="show how a sample was generated and regenerate it from its seed",
                       description="Print a sample's provenance, re-draw its parameters from its "
                                   "seed, re-synthesize it from the manifest scan and compare "
                                   "hashes (bit-exact on the same backend; within the documented "
                                   "tolerance across backends).")
    a.add_argument("dataset", help="dataset folder or URL (holds index.json)")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--key")
    which.add_argument("--index", type=int)
    a.add_argument("--backend", choices=BACKENDS,
                   help="regenerate on this backend (default: the one that made it)")
    a.add_argument("--manifest", help="manifest to take the scan from (default: the job's)")
    add_allow_root(a)
    a.add_argument("--no-regenerate", action="store_true", help="only print the provenance")
    a.add_argument("--json", action="store_true", help="also print the comparison as JSON")
    a.set_defaults(func=_cmd_audit)
    v = sub.add_parser("verify", help="check every shard and sample against the index",
                       description="Recompute each object's size and sha256 and each sample's "
                                   "image/label hashes; report missing, extra or corrupt shards.")
    v.add_argument("dataset")
    v.add_argument("--shards", metavar="LIST",
                   help="only these shards, e.g. 0-9,15 (default: every shard; objects the "
                        "index does not list are looked for only then)")
    v.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="shards decoded and hashed at once (threads; default 1)")
    v.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    v.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    v.set_defaults(func=_cmd_verify)

    i = sub.add_parser("inspect", help="what a generated dataset holds: sizes, configuration, "
                                       "scans, tumor counts and radii, a montage",
                       description="Summarize a dataset from its index and its samples' "
                                   "provenance; with --out also write inspect.json, "
                                   "histograms.png and montage.png.")
    i.add_argument("dataset", help="dataset folder or URL (holds index.json)")
    i.add_argument("--out", help="folder for inspect.json, histograms.png and montage.png")
    i.add_argument("--max-samples", type=int, default=20_000,
                   help="provenance records to read at most, on evenly spaced shards "
                        "(default %(default)s)")
    i.add_argument("--montage", type=int, default=8,
                   help="samples in the montage (default %(default)s; 0: none)")
    i.set_defaults(func=_cmd_inspect)
