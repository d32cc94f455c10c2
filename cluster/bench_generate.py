"""``tumorforge bench generate``: a generation job end to end against the generator alone, in one
run on the same plan.

- generator only: this process prepares the plan's scans, then makes every sample of the plan
  (parameters, synthesis, hashes and provenance: ``worker.make_samples``) with no encoding, no
  writing and no Ray; that work (each scan prepared once, every sample made) spread perfectly over
  the actors the machine can run at once (``min(actors, cores)``) is the ceiling a job could
  reach;
- end to end: the same plan as a regular job (``run_job``) into a temporary folder on local disk,
  on an embedded Ray cluster started beforehand (its start-up is reported apart);
- the share of each stage of the job's actor time (``actors x wall``): scan load and preparation,
  synthesis, encoding and writing (from the commit records), and the rest (Ray: actor start,
  scheduling, transfers; the driver's index and checks).

Without ``--manifest`` it writes two BTCV-layout phantoms (simulated CT) to the temporary folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time


def _phantom_manifest(folder: str) -> str:
    from tumorforge.manifests.build import build_manifest
    from tumorforge.manifests.phantoms import write_layout
    write_layout("btcv", os.path.join(folder, "btcv"), 2, seed=11, scale=0.5)
    path = os.path.join(folder, "btcv.jsonl")
    build_manifest("btcv", os.path.join(folder, "btcv"), path)
    return path


def bench_generate(manifest: str | None = None, samples: int = 128, samples_per_shard: int = 16,
                   actors: int = 2, crop: int = 96, allow_roots=(), formats=("zarr",),
                   log=print) -> dict:
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.scans import load_prepared
    from tumorforge.manifests.dataset.records import ShardCommit
    from .job import _init_ray, read_entries, run_job
    from .plan import make_plan
    from .spec import JobSpec, Resources
    from .worker import make_samples
    work = tempfile.mkdtemp(prefix="tumorforge-bench-generate-")
    try:
        simulated = manifest is None
        manifest = manifest or _phantom_manifest(work)
        spec = JobSpec(manifest=manifest, output=os.path.join(work, "dataset"), samples=samples,
                       samples_per_shard=samples_per_shard, backend="numpy",
                       formats=tuple(formats), allow_roots=tuple(allow_roots),
                       generator=GeneratorConfig(crop_size=(crop, crop, crop)),
                       resources=Resources(actors=actors))
        plan = make_plan(spec, read_entries(spec))
        t0 = time.perf_counter()
        scans = {sid: load_prepared(entry, spec.generator) for sid, entry in plan.scans.items()}
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        make_samples(plan, scans, range(samples), get_backend("numpy"))
        generator_s = time.perf_counter() - t0
        del scans
        lanes = max(1, min(actors, os.cpu_count() or 1))
        # The work any run must do (each scan prepared once, every sample made) spread perfectly
        # over the lanes: the ceiling a job is measured against.
        ceiling = samples / ((prepare_s + generator_s) / lanes)
        log(f"generator only: {samples / generator_s:.2f} samples/s in one process, plus "
            f"{prepare_s:.1f} s preparing {len(plan.scans)} scans; ceiling with {lanes} "
            f"actor(s): {ceiling:.2f} samples/s")
        t0 = time.perf_counter()
        _init_ray(None)
        ray_start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_job(spec, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t0
        if not result.ok:
            raise RuntimeError(f"the benchmark job failed: {result.failed}")
        commits = [ShardCommit.from_json(json.loads(open(os.path.join(spec.output, "_commits",
                                                                        name)).read()), name)
                   for name in sorted(os.listdir(os.path.join(spec.output, "_commits")))]
        stages = {k: sum(c.seconds.get(k, 0.0) for c in commits)
                  for k in ("load", "synthesize", "encode_write")}
        actor_time = actors * wall
        shares = {k: v / actor_time for k, v in stages.items()}
        shares["ray_and_driver"] = max(0.0, 1.0 - sum(shares.values()))
        rate = samples / wall
        log(f"end to end: {rate:.2f} samples/s ({wall:.1f} s for {samples} samples, Ray started "
            f"in {ray_start_s:.1f} s beforehand): {100 * rate / ceiling:.0f} % of the ceiling")
        limiting = max(shares, key=shares.get)
        return {"benchmark": "generate", "samples": samples,
                "samples_per_shard": samples_per_shard, "actors": actors, "crop": crop,
                "formats": list(formats),
                "scans": len(plan.scans), "input": "built-in phantoms (simulated CT)"
                if simulated else manifest,
                "generator_only_samples_per_s_one_process": round(samples / generator_s, 3),
                "scan_preparation_s": round(prepare_s, 2),
                "ceiling_samples_per_s": round(ceiling, 3),
                "end_to_end_samples_per_s": round(rate, 3),
                "end_to_end_over_ceiling": round(rate / ceiling, 3),
                "job_wall_s": round(wall, 2), "ray_start_s": round(ray_start_s, 2),
                "stage_share_of_actor_time": {k: round(v, 3) for k, v in shares.items()},
                "largest_stage": limiting,
                "bytes_written": result.bytes}
    finally:
        shutil.rmtree(work, ignore_errors=True)
