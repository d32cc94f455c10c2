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
DEMO_SAMPLES = 96
# The demo trains a model on a 2-core CPU in minutes: the experiment's cpu-small grid (64^3 crops at
# 2 mm) and two datasets mixed 1:1 in training, as nnU-Net oversamples foreground: one of crops
# centred on their tumor, one with `released`'s own 1:1 organ / background crops; one crop in five
# tumor-free in both. Measured on the demo's phantoms (2026-12-07, 900 steps, 3 held-out scans):
# tumor-centred crops alone found 3 of 4 lesions but liver DSC 0.54 and 52 false-positive
# lesions (the model never saw background); organ/background crops alone liver DSC 0.92 and no
# lesion found; both, liver DSC 0.93, 2 of 4 lesions, 4 false positives.
DEMO_CROP, DEMO_SPACING_MM = 64, 2.0
DEMO_DATASETS = {"dataset": dict(crop_policy="tumor-centred", negative_fraction=0.2),
                 "dataset-pos-neg": dict(crop_policy="pos-neg", negative_fraction=0.2)}


def run(out: str, scale: float, seed: int, train_steps: int | None = None,
        eval_cases: int = DEMO_CASES["lits"], samples: int = DEMO_SAMPLES,
        eval_overlap: float = 0.25,
        crop: int = DEMO_CROP, spacing_mm: float = DEMO_SPACING_MM) -> int:
    """The demo; ``crop`` (voxels per side) and ``spacing_mm`` (the generator's isotropic grid)
    set the crops of the previews and the job, and so what the model is trained and evaluated at
    (64 voxels at 2 mm by default: a CPU learns there in minutes; the paper's is 96 at 1 mm)."""
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
    failed += _generate(out, healthy_path, seed, samples, grid)
    if not failed:
        failed += _train(out, list(DEMO_DATASETS), train_steps)
    figures = ""
    if not failed:
        figures = _evaluate(out, lits, eval_cases, eval_overlap)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s{figures}; outputs under "
          f"{os.path.abspath(out)}")
    return 1 if failed else 0


def _generate(out: str, manifest: str, seed: int, samples: int, grid: dict) -> int:
    """Steps 5-6: the generation jobs of ``DEMO_DATASETS`` (two actors each; seeds ``seed``,
    ``seed`` + 1, ...), then verify them all and audit a sample of the first."""
    from tumorforge.generator.config import GeneratorConfig
    from .audit import describe, regenerate, verify
    from tumorforge.manifests.dataset.reader import Dataset
    from .job import run_job
    from .spec import JobSpec, Resources

    print(f"[5/8] {len(DEMO_DATASETS)} generation jobs of {samples} samples, 2 Ray actors each")
    for n, (name, crops) in enumerate(DEMO_DATASETS.items()):
        config = GeneratorConfig(**grid, **crops)
        dataset = os.path.join(out, name)
        print(f"      {config.profile} profile, {config.effective_crop_policy} crops -> {dataset}")
        spec = JobSpec(manifest=manifest, output=dataset, samples=samples, samples_per_shard=16,
                       root_seed=seed + n, generator=config, resources=Resources(actors=2))
        result = run_job(spec, log=lambda msg: print(f"      {msg}"))
        print(f"      {result.samples} samples written in {result.seconds:.1f} s, "
              f"{result.bytes / 1e6:.1f} MB, {len(result.failed)} failed shard(s)")
        if not result.ok:
            return 1
    print(f"[6/8] verify {len(DEMO_DATASETS)} datasets, audit one sample")
    problems = 0
    for name in DEMO_DATASETS:
        ds = Dataset(os.path.join(out, name))
        found = verify(ds)
        problems += len(found)
        print(f"      {name}: {len(found)} problem(s) in {len(ds.shards)} shards, "
              f"{len(ds)} samples")
    dataset = os.path.join(out, next(iter(DEMO_DATASETS)))
    ds = Dataset(dataset)
    _, _, prov = ds.sample(7)
    print("\n".join("      " + line for line in describe(prov).splitlines()[:7]))
    check = regenerate(ds, prov, None, None, [])
    ok = check["params_match"] and check["image_match"] and check["label_match"]
    print(f"      audit of sample 7: regenerated from its seed, "
          f"{'bit-exact' if ok else 'MISMATCH'}")
    print(f"      next: tumorforge audit {dataset} --index 7 ; tumorforge verify {dataset}")
    return int(bool(problems) or not ok)


def _train(out: str, datasets: list[str], steps: int | None) -> int:
    """Step 7: the small CPU training configuration on the demo's datasets, equal weights; the
    first dataset's crops validate."""
    from tumorforge import trainer
    from tumorforge.trainer.config import load_config
    from tumorforge.trainer.train import train
    urls = [os.path.join(out, name) for name in datasets]
    path = os.path.join(os.path.dirname(trainer.__file__), "configs", "cpu-small.yaml")
    cfg = load_config(path, {"sources": [{"url": u, "weight": 1.0} for u in urls],
                             "val": {"url": urls[0]},
                             "out": os.path.join(out, "train"), "steps": steps})
    print(f"[7/8] training {cfg.model} for {cfg.steps} steps on the CPU ({path}) -> {cfg.out}")
    summary = train(cfg, resume=os.path.isdir(os.path.join(cfg.out, "checkpoints")),
                    log=lambda msg: print(f"      {msg}"))
    print(f"      trained to step {summary['step']} in {summary['seconds']} s "
          f"({summary['samples_per_s']} samples/s); metrics {cfg.out}/metrics.jsonl, "
          f"TensorBoard {cfg.out}/tensorboard")
    return 0


def _evaluate(out: str, lits_manifest: str, n: int, overlap: float) -> str:
    """Step 8: whole-scan evaluation on the first ``n`` LiTS-style phantoms with tumors (the
    tumor-free ones are in the healthy pool the generator painted into, so not held out); the
    figures for the demo's last line."""
    from tumorforge.evaluation.evaluate import evaluate
    from tumorforge.manifests.schema import read_manifest, write_jsonl
    chosen = [e for e in read_manifest(lits_manifest) if e.role == "tumor"][:max(1, n)]
    test = os.path.join(os.path.dirname(lits_manifest), "lits-test.jsonl")
    write_jsonl(test, chosen)
    folder = os.path.join(out, "evaluation")
    print(f"[8/8] evaluation on {len(chosen)} phantom LiTS scan(s) with tumors the generator never "
          f"saw (whole scans, sliding window with overlap {overlap} to spare the CPU; the paper "
          f"uses 0.75) -> {folder}")
    summary = evaluate(os.path.join(out, "train"), test, folder, overlap=overlap,
                       log=lambda msg: print(f"      {msg}"))
    figures = _figures(summary["aggregate"], len(chosen), summary["step"])
    print(f"      {figures}")
    print(f"      report: {folder}/report.html")
    return f": {figures}"


def _figures(agg: dict, scans: int, step: int) -> str:
    """One line a newcomer reads: liver and tumor Dice, lesions found, false positives."""
    def num(value):
        return "n/a" if value is None else f"{value:.2f}"
    det = agg["detection"]
    large = det.get(">10", {})
    return (f"{step}-step CPU model on {scans} held-out scan(s): liver DSC "
            f"{num(agg['liver_dice']['mean'])}, tumor DSC {num(agg['tumor_dice']['mean'])}, "
            f"lesions found {det['all']['detected']}/{det['all']['lesions']} "
            f"(> 10 mm: {large.get('detected', 0)}/{large.get('lesions', 0)}), "
            f"{det['all']['false_positive_lesions']} false-positive lesion(s)")


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
    p.add_argument("--eval-cases", type=int, default=DEMO_CASES["lits"],
                   help="LiTS phantoms with tumors to evaluate (default: all of them)")
    p.add_argument("--samples", type=int, default=DEMO_SAMPLES,
                   help=f"samples of each of the two generation jobs (default {DEMO_SAMPLES})")
    p.add_argument("--eval-overlap", type=float, default=0.25,
                   help="sliding-window overlap of the evaluation (default 0.25; the paper's 0.75 "
                        "takes minutes per scan on a CPU)")
    p.add_argument("--crop", type=int, default=DEMO_CROP,
                   help=f"crop side in voxels of the previews and the job (default {DEMO_CROP}; "
                        "the paper's is 96)")
    p.add_argument("--spacing", type=float, default=DEMO_SPACING_MM,
                   help=f"the generator's isotropic spacing in mm (default {DEMO_SPACING_MM:g}; "
                        "the paper's is 1)")
    p.set_defaults(func=lambda a: run(a.out, a.scale, a.seed, a.train_steps, a.eval_cases,
                                      a.samples, a.eval_overlap, a.crop, a.spacing))
