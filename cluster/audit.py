"""``tumorforge audit`` (one sample: how it was made, and regenerate it) and ``tumorforge verify``
(every shard and sample against the index)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from tumorforge.manifests.conventions import TUMOR, dice
from tumorforge.manifests.dataset.names import COMMITS, TOP_LEVEL, commit_key
from tumorforge.manifests.dataset.reader import Dataset, DatasetError
from tumorforge.manifests.dataset.records import Provenance, image_sha256, label_sha256

# How closely crops from different backends (NumPy vs CuPy) must agree; same backend is bit-exact.
CROSS_BACKEND_TUMOR_DICE_MIN = 0.99
CROSS_BACKEND_MEAN_ABS_HU_MAX = 0.5


def agreement(a_image: np.ndarray, a_label: np.ndarray, b_image: np.ndarray,
              b_label: np.ndarray) -> dict:
    """Tumor-label Dice and mean absolute HU difference between two renderings of one sample
    (both tumor-free counts as Dice 1), and whether they are within the cross-backend tolerance."""
    d = dice(a_label == TUMOR, b_label == TUMOR)
    d = 1.0 if d is None else d
    mae = float(np.abs(a_image.astype(np.float64) - b_image).mean())
    return {"tumor_dice": d, "mean_abs_hu": mae,
            "within_tolerance": d >= CROSS_BACKEND_TUMOR_DICE_MIN
            and mae <= CROSS_BACKEND_MEAN_ABS_HU_MAX}


def describe(p: Provenance) -> str:
    params = p.params
    lines = [f"sample {p.index}  key {p.key}  shard {p.shard}  dataset {p.dataset_id}",
             f"  scan        {p.scan_id}  (image sha256 {p.scan_sha256['image'][:16]}...)",
             f"  seed        SeedSequence({p.root_seed}, spawn_key={tuple(p.spawn_key)})",
             f"  generator   {p.generator_version}  profile {p.profile}  backend {p.backend}  "
             f"{', '.join(f'{k} {v}' for k, v in sorted(p.versions.items()))}",
             f"  crop        origin {tuple(params['crop_origin'])} (voxels of the resampled scan), "
             f"size {tuple(params['crop_size'])}, kind {params['kind']}",
             f"  parenchyma  mu_p {params['parenchyma_mean_hu']} HU, sigma_p "
             f"{params['parenchyma_sd_hu']} HU",
             f"  tumors      {len(params['tumors'])} drawn"]
    for n, t in enumerate(params["tumors"]):
        fields = ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("kind", "center"))
        lines.append(f"    {n + 1:2d}. {t['kind']:9s} center {tuple(t['center'])}  {fields}")
    lines.append(f"  image sha256 {p.image_sha256}\n  label sha256 {p.label_sha256}")
    return "\n".join(lines)


def regenerate(ds: Dataset, p: Provenance, backend_name: str | None, manifest: str | None,
               allow_roots) -> dict:
    """Re-draw the sample's parameters from its seed and re-synthesize it from the manifest scan."""
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.params import SampleParams
    from tumorforge.generator.sample import sample_params, sample_seed
    from tumorforge.generator.synthesize import synthesize
    from tumorforge.manifests.schema import default_roots, read_manifest
    from tumorforge.generator.scans import load_prepared

    manifest = manifest or ds.index.manifest
    roots = default_roots(manifest, [*ds.index.allow_roots, *allow_roots])
    entries = {e.scan_id: e for e in read_manifest(manifest, roots)}
    if p.scan_id not in entries:
        raise DatasetError(f"scan {p.scan_id} is not in {manifest}")
    entry = entries[p.scan_id]
    if entry.sha256 != p.scan_sha256:
        raise DatasetError(f"scan {p.scan_id} in {manifest} has other sha256 than the one the "
                           f"sample was made from: the scan changed, it cannot be regenerated")
    config = GeneratorConfig.from_json(p.generator_config)
    scan = load_prepared(entry, config)
    params = sample_params(np.random.default_rng(sample_seed(p.root_seed, p.spawn_key[0])),
                           scan, config)
    backend = get_backend(backend_name or p.backend)
    crop = synthesize(scan, SampleParams.from_json(p.params), backend)
    image, label, _ = ds.sample(p.index)
    out = {"params_match": params.to_json() == p.params, "backend": backend.name,
           "same_backend": backend.name == p.backend,
           "image_match": image_sha256(crop.image) == p.image_sha256,
           "label_match": label_sha256(crop.label) == p.label_sha256,
           "stored_matches_provenance": image_sha256(image) == p.image_sha256
           and label_sha256(label) == p.label_sha256}
    out.update(agreement(image, label, crop.image, crop.label))
    return out


def _cmd_audit(args) -> int:
    try:
        ds = Dataset(args.dataset)
        index = ds.index_of(args.key) if args.key else args.index
        _, _, p = ds.sample(index)
    except DatasetError as exc:
        sys.exit(f"audit: {exc}")
    print(describe(p))
    if args.no_regenerate:
        return 0
    try:
        r = regenerate(ds, p, args.backend, args.manifest, args.allow_root)
    except (DatasetError, ValueError, OSError) as exc:
        sys.exit(f"audit: cannot regenerate: {exc}")
    print(f"regenerated on {r['backend']}: parameters {'match' if r['params_match'] else 'DIFFER'}; "
          f"image {'match' if r['image_match'] else 'differs'}, "
          f"label {'match' if r['label_match'] else 'differs'} (sha256); "
          f"tumor Dice {r['tumor_dice']:.4f}, mean |dHU| {r['mean_abs_hu']:.3f}")
    if not r["stored_matches_provenance"]:
        print("the stored sample does not match its own provenance hashes: the shard is corrupt")
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


def verify(ds: Dataset) -> list[tuple[str, str]]:
    """Problems as (object or sample, what is wrong); empty when everything matches the index."""
    problems = []
    listed = set()
    for shard in ds.shards:
        for key, want in shard.files.items():
            listed.add(key)
            try:
                size, digest = ds.file_sha256(key)
            except FileNotFoundError:
                problems.append((key, "missing"))
                continue
            if size != want.bytes or digest != want.sha256:
                problems.append((key, f"corrupt: {size} bytes sha256 {digest[:12]}..., index says "
                                      f"{want.bytes} bytes {want.sha256[:12]}..."))
        if not ds.has_object(commit_key(shard.shard)):
            problems.append((commit_key(shard.shard), "missing commit record"))
    for key in ds.list_objects():
        if key in listed or key in TOP_LEVEL or key.startswith(COMMITS + "/") \
                or key.endswith("zarr.json"):
            continue
        problems.append((key, "extra: not listed in index.json"))
    bad_files = {k for k, _ in problems}
    for shard in ds.shards:
        expected = {s.key: s for s in shard.samples}
        for fmt in ds.formats:
            if any(k in bad_files for k in ds.shard_files(shard, fmt)):
                continue
            try:
                found = ds.shard_samples(shard, fmt)
            except Exception as exc:      # a decoding error is a finding, not a crash
                problems.append((f"shard {shard.shard} ({fmt})", f"unreadable: {exc}"))
                continue
            for key, image, label in found:
                want = expected.get(key)
                if want is None:
                    problems.append((f"{key} ({fmt})", "sample not listed in the index"))
                elif not want.matches(image, label):
                    problems.append((f"{key} ({fmt})", "sample hash differs from the index"))
            if len(found) != len(expected):
                problems.append((f"shard {shard.shard} ({fmt})",
                                 f"{len(found)} samples, index lists {len(expected)}"))
    return problems


def _cmd_verify(args) -> int:
    try:
        ds = Dataset(args.dataset)
        problems = verify(ds)
    except DatasetError as exc:
        sys.exit(f"verify: {exc}")
    n_files = sum(len(s.files) for s in ds.shards)
    if problems:
        from tumorforge.manifests.cli import format_table
        print(format_table(["object", "problem"], problems))
        print(f"{args.dataset}: {len(problems)} problem(s) in {len(ds.shards)} shard(s)")
        return 1
    print(f"{args.dataset}: dataset {ds.dataset_id} OK: {len(ds.shards)} shard(s), {n_files} "
          f"object(s) and {len(ds)} sample(s) in {'+'.join(ds.formats)} match the index")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.manifests.flags import add_allow_root
    a = sub.add_parser("audit", help="show how a sample was generated and regenerate it from its seed",
                       description="Print a sample's provenance, re-draw its parameters from its "
                                   "seed, re-synthesize it from the manifest scan and compare "
                                   "hashes (bit-exact on the same backend; within the documented "
                                   "tolerance across backends).")
    a.add_argument("dataset", help="dataset folder or URL (holds index.json)")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--key")
    which.add_argument("--index", type=int)
    a.add_argument("--backend", choices=("numpy", "cupy", "auto"),
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
    v.set_defaults(func=_cmd_verify)
