"""``tumorforge bench generate``: a generation job end to end against the generator alone, in one
run on the same plan, and what the writer's host work costs per crop.

- generator only: this process prepares the plan's scans, then makes every sample of the plan
  (parameters, synthesis, hashes and provenance: ``worker.make_samples``) with no encoding, no
  writing and no Ray; that work (each scan prepared once, every sample made) spread perfectly over
  the actors the machine can run at once (``min(actors, cores)``) is the ceiling a job could
  reach;
- end to end: the same plan as a regular job (``run_job``) into a temporary folder on local disk,
  on an embedded Ray cluster started beforehand (its start-up is reported apart);
- the share of each stage of the job's actor time (``actors x wall``): scan load and preparation,
  synthesis, encoding and writing (from the commit records), and the rest (Ray: actor start,
  scheduling, transfers; the driver's index and checks);
- the writer's host work besides synthesis, in CPU ms per crop by stage (the commit records'
  ``host_cpu_s``: CPU time of every thread, so other load on the machine hardly moves it),
  against the writer's budget (3 ms with one storage format, 4 with zarr and wds).

``ray=False`` (``--no-ray``) skips the first two: one ``ShardWorker`` in this process writes the
plan, which is enough for the host-work table and much cheaper. Without ``--manifest`` it writes
two BTCV-layout phantoms (simulated CT) to the temporary folder. ``dataset_formats`` (``--dataset-
format 2,3``) writes the same plan once per dataset format (the integrity contract: sha256
throughout, or BLAKE3 samples and crc32c objects), ``rounds`` times in turn (2, 3, 2, 3, ...),
and reports each format's stages, averaged over its rounds, in one run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from tumorforge.manifests.dataset.formats import FORMATS

# The writer's budget for host work besides synthesis, CPU ms per crop, by the number of formats.
HOST_BUDGET_MS = {1: 3.0, 2: 4.0}
# The writer's clock stages: the storage formats' encoders between compression and writing.
HOST_STAGES = ("hash", "provenance", "compress", *(f.stage for f in FORMATS.values()), "write",
               "record")


def _phantom_manifest(folder: str) -> str:
    from tumorforge.manifests.build import build_manifest
    from tumorforge.manifests.phantoms import write_layout
    write_layout("btcv", os.path.join(folder, "btcv"), 2, seed=11, scale=0.5)
    path = os.path.join(folder, "btcv.jsonl")
    build_manifest("btcv", os.path.join(folder, "btcv"), path)
    return path


def host_work(commits, samples: int) -> dict:
    """CPU ms per crop of each host stage, summed over ``commits`` (ShardCommit records) and
    divided by ``samples``, with their total."""
    ms = {stage: 1000.0 * sum(c.host_cpu_s.get(stage, 0.0) for c in commits) / samples
          for stage in HOST_STAGES}
    ms["total"] = sum(ms.values())
    return {k: round(v, 3) for k, v in ms.items()}


def _host_table(by_format: dict, budget: float, log) -> None:
    """The stages of each dataset format (``by_format``: format -> ms per stage), side by side."""
    fmts = list(by_format)
    log("host work besides synthesis, CPU ms per crop (every thread), by dataset format:")
    log(f"  {'stage':<11s}" + "".join(f"{'format ' + str(f):>10s}" for f in fmts))
    for stage in (*HOST_STAGES, "total"):
        log(f"  {stage:<11s}" + "".join(f"{by_format[f][stage]:10.3f}" for f in fmts))
    for f in fmts:
        verdict = "within" if by_format[f]["total"] <= budget else "over"
        log(f"  format {f}: {verdict} the {budget:g} ms budget")


def _mean(tables: list[dict]) -> dict:
    return {k: round(sum(t[k] for t in tables) / len(tables), 3) for k in tables[0]}


def _commits(output: str) -> list:
    from tumorforge.manifests.dataset.records import ShardCommit
    folder = os.path.join(output, "_commits")
    return [ShardCommit.from_json(json.loads(open(os.path.join(folder, name)).read()), name)
            for name in sorted(os.listdir(folder))]


def _ceiling(plan, actors: int, log) -> dict:
    """The generator alone in this process: each scan prepared once, every sample made."""
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.scans import load_prepared
    from .worker import make_samples
    samples = plan.spec.samples
    t0 = time.perf_counter()
    scans = {sid: load_prepared(entry, plan.spec.generator) for sid, entry in plan.scans.items()}
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_samples(plan, scans, range(samples), get_backend(plan.spec.backend))
    generator_s = time.perf_counter() - t0
    lanes = max(1, min(actors, os.cpu_count() or 1))
    # The work any run must do spread perfectly over the lanes: what a job is measured against.
    ceiling = samples / ((prepare_s + generator_s) / lanes)
    log(f"generator only: {samples / generator_s:.2f} samples/s in one process, plus "
        f"{prepare_s:.1f} s preparing {len(plan.scans)} scans; ceiling with {lanes} "
        f"actor(s): {ceiling:.2f} samples/s")
    return {"generator_only_samples_per_s_one_process": round(samples / generator_s, 3),
            "scan_preparation_s": round(prepare_s, 2), "ceiling_samples_per_s": round(ceiling, 3)}


def _job(spec, actors: int, ceiling: float, log) -> dict:
    """The plan as a regular job on an embedded Ray cluster, and each stage's share of the
    actors' time."""
    from .job import _init_ray, run_job
    t0 = time.perf_counter()
    _init_ray(None)
    ray_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_job(spec, progress=False, log=lambda m: None)
    wall = time.perf_counter() - t0
    if not result.ok:
        raise RuntimeError(f"the benchmark job failed: {result.failed}")
    stages = {k: sum(c.seconds.get(k, 0.0) for c in _commits(spec.output))
              for k in ("load", "synthesize", "encode_write")}
    shares = {k: v / (actors * wall) for k, v in stages.items()}
    shares["ray_and_driver"] = max(0.0, 1.0 - sum(shares.values()))
    rate = spec.samples / wall
    log(f"end to end: {rate:.2f} samples/s ({wall:.1f} s for {spec.samples} samples, Ray "
        f"started in {ray_start_s:.1f} s beforehand): {100 * rate / ceiling:.0f} % of the "
        "ceiling")
    return {"end_to_end_samples_per_s": round(rate, 3),
            "end_to_end_over_ceiling": round(rate / ceiling, 3),
            "job_wall_s": round(wall, 2), "ray_start_s": round(ray_start_s, 2),
            "stage_share_of_actor_time": {k: round(v, 3) for k, v in shares.items()},
            "largest_stage": max(shares, key=shares.get)}


def _in_process(plan, log) -> dict:
    """The plan written by one ``ShardWorker`` in this process (no Ray)."""
    from .worker import ShardWorker
    t0 = time.perf_counter()
    worker = ShardWorker(plan)
    for shard in plan.shards:
        worker.write_shard(shard.index)
    wall = time.perf_counter() - t0
    samples = plan.spec.samples
    stages = {k: sum(c.seconds.get(k, 0.0) for c in _commits(plan.spec.output))
              for k in ("load", "synthesize", "encode_write")}
    shares = {k: round(v / wall, 3) for k, v in stages.items()}
    log(f"in process (no Ray, backend {worker.backend.name}): {samples / wall:.2f} samples/s "
        f"({wall:.1f} s for {samples} samples, {len(plan.scans)} scans prepared); wall time: "
        + ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items()))
    return {"in_process_samples_per_s": round(samples / wall, 3),
            # without the scans' load and preparation: the rate of a running writer
            "in_process_samples_per_s_loaded": round(samples / max(wall - stages["load"], 1e-9), 3),
            "stage_share_of_wall": shares, "largest_stage": max(shares, key=shares.get),
            **({"gpu_memory": worker.backend.memory()} if worker.backend.name == "cupy" else {})}


def bench_generate(manifest: str | None = None, samples: int = 128, samples_per_shard: int = 16,
                   actors: int = 2, crop: int = 96, allow_roots=(), formats=None,
                   compression: str | None = None, ray: bool = True, backend: str = "numpy",
                   gpus_per_actor: float = 0.0, dataset_formats=None, rounds: int = 1,
                   log=print) -> dict:
    """Run the benchmark (see the module's text). ``formats``, ``compression`` and
    ``dataset_formats``: the job spec's defaults when None; ``backend``: the synthesis backend
    (``cupy`` on a GPU node). The report's top-level figures are the first dataset format's
    (averaged over ``rounds``); ``by_dataset_format`` holds each format's."""
    from dataclasses import replace
    from tumorforge.generator.config import GeneratorConfig
    from .job import read_entries
    from .plan import make_plan
    from .spec import JobSpec, Resources
    work = tempfile.mkdtemp(prefix="tumorforge-bench-generate-")
    try:
        simulated = manifest is None
        manifest = manifest or _phantom_manifest(work)
        chosen = {k: v for k, v in (("formats", tuple(formats or ())),
                                    ("compression", compression)) if v}
        spec = JobSpec(manifest=manifest, output=os.path.join(work, "dataset"), samples=samples,
                       samples_per_shard=samples_per_shard, backend=backend,
                       allow_roots=tuple(allow_roots),
                       generator=GeneratorConfig(crop_size=(crop, crop, crop)),
                       resources=Resources(actors=actors, gpus_per_actor=gpus_per_actor),
                       **chosen)
        plan = make_plan(spec, read_entries(spec))
        fmts = list(dict.fromkeys(dataset_formats or [spec.dataset_format]))
        budget = HOST_BUDGET_MS[len(spec.formats)]
        report = {"benchmark": "generate", "samples": samples,
                  "samples_per_shard": samples_per_shard, "actors": actors if ray else 1,
                  "crop": crop, "formats": list(spec.formats), "compression": spec.compression,
                  "dataset_formats": fmts, "rounds": rounds,
                  "ray": ray, "backend": backend, "gpus_per_actor": gpus_per_actor,
                  "scans": len(plan.scans),
                  "input": "built-in phantoms (simulated CT)" if simulated else manifest}
        if ray:
            report.update(_ceiling(plan, actors, log))
        runs: dict = {f: [] for f in fmts}
        for r in range(rounds):                  # formats in turn: noise hits each alike
            for f in fmts:
                out = os.path.join(work, f"dataset-{f}-{r}")
                spec_f = replace(spec, dataset_format=f, output=out)
                log(f"dataset format {f}, round {r + 1} of {rounds}:")
                run = _job(spec_f, actors, report["ceiling_samples_per_s"], log) if ray else \
                    _in_process(replace(plan, spec=spec_f), log)
                commits = _commits(out)
                written = sum(x.bytes for c in commits for x in c.files.values())
                runs[f].append({**run, "host_cpu_ms_per_crop": host_work(commits, samples),
                                "bytes_written": written})
                shutil.rmtree(out, ignore_errors=True)
        by_format = {}
        for f, done in runs.items():
            ms = _mean([d["host_cpu_ms_per_crop"] for d in done])
            by_format[f] = {**done[0], "host_cpu_ms_per_crop": ms,
                            "host_total_ms_by_round": [d["host_cpu_ms_per_crop"]["total"]
                                                       for d in done],
                            "host_within_budget": ms["total"] <= budget,
                            "bytes_per_sample": round(done[0]["bytes_written"] / samples)}
        _host_table({f: v["host_cpu_ms_per_crop"] for f, v in by_format.items()}, budget, log)
        report.update(by_format[fmts[0]])
        report["host_budget_ms"] = budget
        if len(fmts) > 1 or rounds > 1:
            report["by_dataset_format"] = {str(f): v for f, v in by_format.items()}
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
