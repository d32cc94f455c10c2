"""``tumorforge demo``: the main job on built-in data, end to end.

It makes phantom datasets (synthetic CT, not patient data) in all four layouts, builds and validates a
manifest for each, assigns 5 folds to the LiTS-style set, pools the healthy scans as the paper does
(CHAOS + BTCV + tumor-free LiTS), previews synthetic tumors in them, runs a generation job on an
embedded Ray cluster, verifies the dataset, audits one sample, and trains the small CPU U-Net on it
(``trainer/configs/cpu-small.yaml``), and evaluates it on phantom LiTS scans the generator never saw,
with a report.
"""

from __future__ import annotations

import argparse
import os
import time

DEMO_CASES = {"lits": 10, "msd": 4, "btcv": 4, "chaos": 4}
PREVIEW_SIZES = ("tiny", "small", "medium", "large")
DEMO_SAMPLES = 48


def run(out: str, scale: float, seed: int, train_steps: int | None = None,
        eval_cases: int = 3, samples: int = DEMO_SAMPLES, eval_overlap: float = 0.25,
        crop: int = 96, spacing_mm: float = 1.0) -> int:
    """The demo; ``crop`` (voxels per side) and ``spacing_mm`` (the generator's isotropic grid)
    set the crops of the previews and the job, and so what the model is trained and evaluated at
    (the paper's 96 voxels at 1 mm by default)."""
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.config import DEFAULT_PROFILE, GeneratorConfig
    from tumorforge.manifests.build import build_manifest, validate_manifest
    from tumorforge.manifests.phantoms import LABEL_VALUES, save_preview, write_layout
    from tumorforge.manifests.schema import read_manifest, write_jsonl
    from tumorforge.manifests.split import assign_folds
    from tumorforge.generator.preview import write_preview
    from tumorforge.generator.scans import load_prepared

    t0 = time.perf_counter()
    grid = dict(crop_size=(crop,) * 3, target_spacing_mm=(spacing_mm,) * 3)
    data = os.path.join(out, "data")
    print(f"[1/8] phantom CT datasets (synthetic, scale {scale}) -> {data}")
    for layout, n in DEMO_CASES.items():
        cases = write_layout(layout, os.path.join(data, layout), n, seed=seed, scale=scale)
        shown = next((c for c in cases if c["has_tumor"]), cases[0])
        png = os.path.join(out, "previews", f"{layout}-{shown['case']}.png")
        os.makedirs(os.path.dirname(png), exist_ok=True)
        save_preview(shown["image"], shown["label"], png, *LABEL_VALUES[layout])
        print(f"      {layout:6s} {n} cases, {sum(c['has_tumor'] for c in cases)} with tumors; "
              f"preview {png}")

    # Manifests sit in the data folder, so the paths they name are inside their allowed root.
    print(f"[2/8] scan manifests -> {data}/<layout>.jsonl")
    failed = 0
    for layout in DEMO_CASES:
        path = os.path.join(data, f"{layout}.jsonl")
        result = build_manifest(layout, os.path.join(data, layout), path)
        entries, problems = validate_manifest(path)
        failed += len(result.rejections) + len(problems)
        healthy = sum(e.role == "healthy" for e in entries)
        print(f"      {path}: {len(entries)} scans ({healthy} healthy), "
              f"{len(result.rejections)} rejected, validation problems: {len(problems)}")

    print("[3/8] 5-fold split of the LiTS-style test set; healthy pool for synthesis")
    lits = os.path.join(data, "lits.jsonl")
    folds = assign_folds(read_manifest(lits), 5, seed)
    write_jsonl(lits, folds)
    print(f"      {lits}: folds {[e.fold for e in folds]}")
    pool = [e for layout in ("chaos", "btcv", "lits")
            for e in read_manifest(os.path.join(data, f"{layout}.jsonl")) if e.role == "healthy"]
    healthy_path = os.path.join(data, "healthy.jsonl")
    write_jsonl(healthy_path, pool)
    print(f"      {healthy_path}: {len(pool)} healthy scans (CHAOS + BTCV + tumor-free LiTS)")

    synthetic = os.path.join(out, "synthetic")
    print(f"[4/8] synthetic tumors ({DEFAULT_PROFILE} profile) -> {synthetic}")
    backend = get_backend("auto")
    print(f"      backend: {backend.name} ({backend.why})")
    for i, size in enumerate(PREVIEW_SIZES):
        config = GeneratorConfig(size_mix={size: 1.0}, negative_fraction=0.0, **grid)
        scan = load_prepared(pool[i % len(pool)], config)
        paths = write_preview(scan, config, seed, i, synthetic, backend)
        print(f"      {size:6s} {paths[0]}")
    failed += _generate(out, healthy_path, seed, samples, GeneratorConfig(**grid))
    if not failed:
        failed += _train(out, train_steps)
    if not failed:
        failed += _evaluate(out, lits, eval_cases, eval_overlap)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {os.path.abspath(out)}")
    return 1 if failed else 0


def _generate(out: str, manifest: str, seed: int, samples: int, config) -> int:
    """Steps 5-6: a generation job with two actors, then verify and audit."""
    from .audit import describe, regenerate, verify
    from tumorforge.manifests.dataset.reader import Dataset
    from .job import run_job
    from .spec import JobSpec, Resources

    dataset = os.path.join(out, "dataset")
    print(f"[5/8] generation job: {samples} samples, {config.profile} profile, 2 Ray actors -> "
          f"{dataset}")
    spec = JobSpec(manifest=manifest, output=dataset, samples=samples, samples_per_shard=16,
                   root_seed=seed, generator=config, resources=Resources(actors=2))
    result = run_job(spec, log=lambda msg: print(f"      {msg}"))
    print(f"      {result.samples} samples written in {result.seconds:.1f} s, "
          f"{result.bytes / 1e6:.1f} MB, {len(result.failed)} failed shard(s)")
    if not result.ok:
        return 1
    print(f"[6/8] verify and audit {dataset}")
    ds = Dataset(dataset)
    problems = verify(ds)
    print(f"      verify: {len(problems)} problem(s) in {len(ds.shards)} shards, {len(ds)} samples")
    _, _, prov = ds.sample(7)
    print("\n".join("      " + line for line in describe(prov).splitlines()[:7]))
    check = regenerate(ds, prov, None, None, [])
    ok = check["params_match"] and check["image_match"] and check["label_match"]
    print(f"      audit of sample 7: regenerated from its seed, "
          f"{'bit-exact' if ok else 'MISMATCH'}")
    print(f"      next: tumorforge audit {dataset} --index 7 ; tumorforge verify {dataset}")
    return int(bool(problems) or not ok)


def _train(out: str, steps: int | None) -> int:
    """Step 7: the small CPU training configuration on the demo dataset."""
    from tumorforge import trainer
    from tumorforge.trainer.config import load_config
    from tumorforge.trainer.train import train
    dataset = os.path.join(out, "dataset")
    path = os.path.join(os.path.dirname(trainer.__file__), "configs", "cpu-small.yaml")
    cfg = load_config(path, {"sources": [{"url": dataset}], "val": {"url": dataset},
                             "out": os.path.join(out, "train"), "steps": steps})
    print(f"[7/8] training {cfg.model} for {cfg.steps} steps on the CPU ({path}) -> {cfg.out}")
    summary = train(cfg, resume=os.path.isdir(os.path.join(cfg.out, "checkpoints")),
                    log=lambda msg: print(f"      {msg}"))
    print(f"      trained to step {summary['step']} in {summary['seconds']} s "
          f"({summary['samples_per_s']} samples/s); metrics {cfg.out}/metrics.jsonl, "
          f"TensorBoard {cfg.out}/tensorboard")
    return 0


def _evaluate(out: str, lits_manifest: str, n: int, overlap: float) -> int:
    """Step 8: whole-scan evaluation on LiTS-style phantoms with tumors (and one without)."""
    from tumorforge.evaluation.evaluate import evaluate
    from tumorforge.manifests.schema import read_manifest, write_jsonl
    entries = read_manifest(lits_manifest)
    tumor = [e for e in entries if e.role == "tumor"]
    healthy = [e for e in entries if e.role == "healthy"]
    chosen = tumor[:max(1, n - 1)] + healthy[:1] if n > 1 else tumor[:1]
    test = os.path.join(os.path.dirname(lits_manifest), "lits-test.jsonl")
    write_jsonl(test, chosen)
    folder = os.path.join(out, "evaluation")
    print(f"[8/8] evaluation on {len(chosen)} phantom LiTS scan(s) (whole scans, sliding window "
          f"with overlap {overlap} to spare the CPU; the paper uses 0.75) -> {folder}")
    summary = evaluate(os.path.join(out, "train"), test, folder, overlap=overlap,
                       log=lambda msg: print(f"      {msg}"))
    agg = summary["aggregate"]
    print(f"      tumor DSC {agg['tumor_dice']['mean']}, liver DSC {agg['liver_dice']['mean']}, "
          f"lesion sensitivity {agg['detection']['all']['sensitivity']}, specificity "
          f"{agg['specificity']['value']} (a {summary['step']}-step CPU model: expect little)")
    print(f"      report: {folder}/report.html")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on built-in phantom data",
                       description="Make phantom datasets, build and validate their manifests, "
                                   "split folds, pool healthy scans, preview synthetic tumors in "
                                   "them, run a generation job, verify and audit it, train a small "
                                   "CPU model on it and evaluate that model on phantom LiTS scans; "
                                   "print where everything is.")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--scale", type=float, default=0.35, help="phantom size (default 0.35)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, help="training steps (default: the config's)")
    p.add_argument("--eval-cases", type=int, default=3, help="LiTS phantoms to evaluate (3)")
    p.add_argument("--samples", type=int, default=DEMO_SAMPLES,
                   help=f"samples of the generation job (default {DEMO_SAMPLES})")
    p.add_argument("--eval-overlap", type=float, default=0.25,
                   help="sliding-window overlap of the evaluation (default 0.25; the paper's 0.75 "
                        "takes minutes per scan on a CPU)")
    p.add_argument("--crop", type=int, default=96,
                   help="crop side in voxels of the previews and the job (default 96, the paper's)")
    p.add_argument("--spacing", type=float, default=1.0,
                   help="the generator's isotropic spacing in mm (default 1, the paper's)")
    p.set_defaults(func=lambda a: run(a.out, a.scale, a.seed, a.train_steps, a.eval_cases,
                                      a.samples, a.eval_overlap, a.crop, a.spacing))
