"""Benchmarking the generator: a per-step timer and ``tumorforge bench generator``.

``bench generator`` times synthesis alone: one scan prepared once (reported apart), then crops drawn
(``sample_params``, also in CPU time per crop: its target is 1 core-ms) and synthesized ``--batch``
at a time (``synthesize_batch`` over packed records), with milliseconds per crop for each step
synthesis marks.
Heavy imports happen inside the command, so building the command-line parser stays cheap.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING

from tumorforge.manifests.errors import UserError

if TYPE_CHECKING:
    from .backend import Backend


class StepTimer:
    """Wall time per named step, in seconds; synchronizes the GPU so a step's time is its own."""

    def __init__(self, backend: Backend | None = None):
        self.backend = backend
        self.seconds: dict[str, float] = defaultdict(float)
        self._t = None

    def start(self):
        self._sync()
        self._t = time.perf_counter()

    def mark(self, step: str):
        if self._t is None:
            return
        self._sync()
        now = time.perf_counter()
        self.seconds[step] += now - self._t
        self._t = now

    def _sync(self):
        if self.backend is not None and self.backend.name == "cupy":
            self.backend.xp.cuda.Device().synchronize()


def _bench_scan(args, config):
    """The scan to benchmark on: a manifest scan, or a built-in phantom (synthetic CT)."""
    import numpy as np
    from .prepare import prepare_scan
    if args.manifest:
        from tumorforge.manifests.schema import default_roots, read_manifest
        from .scans import load_prepared
        entries = read_manifest(args.manifest, default_roots(args.manifest, args.allow_root))
        healthy = [e for e in entries if e.role == "healthy"] or entries
        entry = next((e for e in healthy if e.scan_id == args.scan), healthy[0])
        return load_prepared(entry, config), entry.scan_id
    from tumorforge.manifests.phantoms import make_phantom
    from tumorforge.manifests.phantoms.layouts import PHANTOM_ORGAN_CODES
    if config.organ not in PHANTOM_ORGAN_CODES:
        raise UserError(f"--organ {config.organ}: the built-in phantom has no {config.organ}; "
                        f"name a --manifest of {config.organ} scans")
    # A healthy organ of the phantom (the kidney's simple cysts stay: they are not tumors).
    ph = make_phantom(np.random.default_rng(args.phantom_seed), scale=args.phantom_scale,
                      lesion_organ=config.organ)
    scan_id = f"phantom-{args.phantom_seed}"
    return prepare_scan(scan_id, ph.image, ph.organs, ph.affine,
                        organ_values=PHANTOM_ORGAN_CODES[config.organ], config=config), \
        scan_id + f" (built-in phantom, scale {args.phantom_scale}, {config.organ})"


_DRAW: dict = {}


def _build_texture_bank(backend, scan, config) -> int:
    """The ``released`` texture bank volumes the benchmark's crops read, built before timing (a
    worker builds each once, on first use); returns how many."""
    from .shape import released_margin
    from .texture import bank_edge, bank_volume
    from .tumor_models import tumor_model
    if tumor_model(config.profile).family != "released":
        return 0
    rel, s = config.released, float(scan.spacing_mm[0])
    margins = {released_margin(b, s) for b in rel.mask_blur_mm}
    edges = {bank_edge([c + 2 * m for c in config.crop_size]) for m in margins}
    for edge in edges:
        for sigma in rel.texture_sigmas_mm:
            for blur in rel.texture_blur_mm:
                bank_volume(backend, edge, s, float(sigma), float(blur), rel.texture_prob)
    return len(edges) * len(rel.texture_sigmas_mm) * len(rel.texture_blur_mm)


def _draw_pool(processes: int, scan, config, seed: int):
    """Processes that draw parameters beside synthesis, as a job's other cores do: forked after
    the scan is prepared, so they share it (they touch NumPy only, never the GPU)."""
    import multiprocessing
    _DRAW.update(scan=scan, config=config, seed=seed)
    return multiprocessing.get_context("fork").Pool(processes)


def _draw(bounds):
    import numpy as np
    from .sample import sample_params, sample_seed
    scan, config, seed = _DRAW["scan"], _DRAW["config"], _DRAW["seed"]
    return [sample_params(np.random.default_rng(sample_seed(seed, i)), scan, config)
            for i in range(*bounds)]


def _operators() -> int:
    """Texture operators the kernels' table holds (each built once per process on the host)."""
    from .kernels.paint import OPERATORS
    return OPERATORS.count


def _noise_precision() -> str:
    from .kernels.paint import noise_precision
    return noise_precision()


def bench_generator(args) -> int:
    """``tumorforge bench generator``: crops per second and ms per crop for each step."""
    import numpy as np
    from .backend import KERNEL_SETTINGS, get_backend, kernel_setting
    from .options import config_from_args
    from .batch import pack
    from .sample import sample_params, sample_seed
    from .synthesize import synthesize, synthesize_batch
    from tumorforge.manifests.bench_report import finish_report

    config = config_from_args(args)
    backend = get_backend(args.backend)
    for name in KERNEL_SETTINGS:
        kernel_setting(name)
    t0 = time.perf_counter()
    scan, described = _bench_scan(args, config)
    prepare_s = time.perf_counter() - t0
    rng_of = lambda i: np.random.default_rng(sample_seed(args.seed, i))
    kernels = getattr(args, "kernels", "auto")
    if kernels == "cpu":
        if backend.name != "numpy":
            raise UserError("--kernels cpu runs with --backend numpy")
        from .kernels.paint import cpu_module
        kernels = cpu_module()
    t0 = time.perf_counter()
    banked = _build_texture_bank(backend, scan, config)
    bank_s = time.perf_counter() - t0
    for i in range(args.warmup):
        synthesize(scan, sample_params(rng_of(i), scan, config), backend, kernels=kernels)
    timer = StepTimer(backend)
    t_sample = cpu_sample = 0.0
    batch = max(1, int(args.batch))
    kinds: dict[str, int] = {}
    first, end = args.warmup, args.warmup + args.samples
    ranges = [(b0, min(b0 + batch, end)) for b0 in range(first, end, batch)]
    drawers = max(0, int(getattr(args, "draw_processes", 0)))
    pool = _draw_pool(drawers, scan, config, args.seed) if drawers else None
    try:
        drawn = pool.imap(_draw, ranges) if pool else None
        start = time.perf_counter()
        for b0, b1 in ranges:
            ts, cs = time.perf_counter(), time.thread_time()
            # in this process, or waiting for the drawing processes (time the GPU idles)
            params = next(drawn) if pool else [sample_params(rng_of(i), scan, config)
                                               for i in range(b0, b1)]
            t_sample += time.perf_counter() - ts
            cpu_sample += time.thread_time() - cs
            for p in params:
                kinds[p.kind] = kinds.get(p.kind, 0) + 1
            synthesize_batch([scan], pack(params, [scan.scan_id]), backend, timer, kernels=kernels)
        wall = time.perf_counter() - start
    finally:
        if pool:
            pool.terminate()
    steps = {"sample_params": t_sample, **timer.seconds}
    report = {"benchmark": "generator", "backend": backend.name, "versions": backend.versions(),
              "profile": config.profile, "size_mix": {**config.size_mix, **config.scenario_mix},
              "crop_size": list(config.crop_size), "scan": described,
              "prepare_seconds": round(prepare_s, 3), "samples": args.samples,
              "texture_bank_seconds": round(bank_s, 3), "texture_bank_volumes": banked,
              "batch": batch, "kinds": kinds, "seconds": round(wall, 3),
              "draw_processes": drawers,
              "sample_params_core_ms_per_crop": (None if drawers else
                                                 round(1000 * cpu_sample / args.samples, 3)),
              "kernels": (getattr(args, "kernels", "auto") if backend.name == "cupy" or
                          getattr(args, "kernels", "auto") == "cpu" else "off (numpy backend)"),
              **({"kernel_noise": _noise_precision(), "kernel_operators": _operators()}
                 if backend.name == "cupy" or getattr(args, "kernels", "auto") == "cpu" else {}),
              "crops_per_second": round(args.samples / wall, 3),
              # synthesis alone (host plan, kernels or array code, copy to the host): the GPU's
              # rate when parameters are drawn elsewhere (the job's writer threads, other actors)
              "synthesis_crops_per_second": round(args.samples / max(wall - t_sample, 1e-9), 3),
              "ms_per_crop": {k: round(1000 * v / args.samples, 3) for k, v in steps.items()}}
    print(f"backend: {backend.name} ({backend.why})")
    print(f"generator benchmark: {backend.name}, profile {config.profile}, {args.samples} crops of "
          f"{'x'.join(map(str, config.crop_size))} from {described}")
    print(f"  prepare (once per scan): {prepare_s:.2f} s")
    if banked:
        print(f"  texture bank (once per process): {banked} volumes in {bank_s:.2f} s")
    print(f"  {report['crops_per_second']:.2f} crops/s ({wall:.2f} s, {batch} crop(s) per "
          f"synthesis call)  kinds {kinds}")
    print(f"  synthesis alone: {report['synthesis_crops_per_second']:.2f} crops/s (kernels: "
          f"{report['kernels']})")
    if drawers:
        print(f"  parameters drawn by {drawers} processes beside synthesis (sample_params below: "
              f"time spent waiting for them)")
    else:
        print(f"  parameter drawing: {report['sample_params_core_ms_per_crop']:.3f} core-ms/crop "
              f"(target <= 1)")
    for k, v in report["ms_per_crop"].items():
        print(f"  {k:14s} {v:10.3f} ms/crop")
    return finish_report(report, args.json, show=False)
