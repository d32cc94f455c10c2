"""``tumorforge demo``: the main job on built-in data, end to end.

Today it makes the phantom datasets (synthetic CT, not patient data) in all four layouts, builds and
validates a manifest for each, and assigns 5 folds to the LiTS-style test set. Later stages extend it.
"""

from __future__ import annotations

import argparse
import os
import time

DEMO_CASES = {"lits": 10, "msd": 4, "btcv": 4, "chaos": 4}


def run(out: str, scale: float, seed: int) -> int:
    from manifests.build import build_manifest, validate_manifest
    from manifests.phantoms import LABEL_VALUES, save_preview, write_layout
    from manifests.schema import read_manifest, write_jsonl
    from manifests.split import assign_folds

    t0 = time.perf_counter()
    data, manifests = os.path.join(out, "data"), os.path.join(out, "manifests")
    os.makedirs(manifests, exist_ok=True)
    print(f"[1/3] phantom CT datasets (synthetic, scale {scale}) -> {data}")
    for layout, n in DEMO_CASES.items():
        cases = write_layout(layout, os.path.join(data, layout), n, seed=seed, scale=scale)
        shown = next((c for c in cases if c["has_tumor"]), cases[0])
        png = os.path.join(out, "previews", f"{layout}-{shown['case']}.png")
        os.makedirs(os.path.dirname(png), exist_ok=True)
        save_preview(shown["image"], shown["label"], png, *LABEL_VALUES[layout])
        print(f"      {layout:6s} {n} cases, {sum(c['has_tumor'] for c in cases)} with tumors; "
              f"preview {png}")

    print(f"[2/3] scan manifests -> {manifests}")
    failed = 0
    for layout in DEMO_CASES:
        path = os.path.join(manifests, f"{layout}.jsonl")
        result = build_manifest(layout, os.path.join(data, layout), path)
        entries, problems = validate_manifest(path, allowed_roots=[data])
        failed += len(result.rejections) + len(problems)
        healthy = sum(e.role == "healthy" for e in entries)
        print(f"      {path}: {len(entries)} scans ({healthy} healthy), "
              f"{len(result.rejections)} rejected, validation problems: {len(problems)}")

    print("[3/3] 5-fold split of the LiTS-style set")
    lits = os.path.join(manifests, "lits.jsonl")
    entries = assign_folds(read_manifest(lits, _roots(lits, data)), 5, seed)
    write_jsonl(lits, entries)
    print(f"      {lits}: folds {[e.fold for e in entries]}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {os.path.abspath(out)}")
    return 1 if failed else 0


def _roots(manifest: str, data: str):
    from manifests.schema import default_roots
    return default_roots(manifest, [data])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on built-in phantom data",
                       description="Make phantom datasets, build and validate their manifests, "
                                   "split folds, and print where everything is.")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--scale", type=float, default=0.35, help="phantom size (default 0.35)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run(a.out, a.scale, a.seed))
