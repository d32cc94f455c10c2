"""Audit (one sample: how it was made, and regenerate it from its seed), verify (every shard and
sample against the index) and the cross-backend agreement an audit on another backend is held to."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tumorforge.manifests.conventions import TUMOR, dice
from tumorforge.manifests.dataset import names
from tumorforge.manifests.dataset.formats import FORMATS
from tumorforge.manifests.dataset.names import COMMITS, TOP_LEVEL, commit_key
from tumorforge.manifests.dataset.reader import (COMMIT_MAX_BYTES, PLAN_MAX_BYTES, Dataset,
                                                 DatasetError)
from tumorforge.manifests.dataset.records import (Provenance, ShardCommit, ShardEntry,
                                                  image_digest, label_digest)
from tumorforge.manifests.records import RecordError, loads

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
    lines.append(f"  image {p.sample_digest} {p.image_digest}\n"
                 f"  label {p.sample_digest} {p.label_digest}")
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
    config = GeneratorConfig.from_json(p.generator_config,
                                       f"sample {p.index}'s provenance: generator_config")
    scan = load_prepared(entry, config)
    params = sample_params(np.random.default_rng(sample_seed(p.root_seed, p.spawn_key[0])),
                           scan, config)
    backend = get_backend(backend_name or p.backend)
    crop = synthesize(scan, SampleParams.from_json(p.params, f"sample {p.index}'s provenance: "
                                                             "params"), backend)
    image, label, _ = ds.sample(p.index)
    out = {"params_match": params.to_json() == p.params, "backend": backend.name,
           "same_backend": backend.name == p.backend,
           "image_match": image_digest(crop.image, p.sample_digest) == p.image_digest,
           "label_match": label_digest(crop.label, p.sample_digest) == p.label_digest,
           "stored_matches_provenance": image_digest(image, p.sample_digest) == p.image_digest
           and label_digest(label, p.sample_digest) == p.label_digest}
    out.update(agreement(image, label, crop.image, crop.label))
    return out


def _commit_problems(ds: Dataset, shard: ShardEntry) -> list[tuple[str, str]]:
    """A shard's commit record must exist, parse, and say what the index (format 1) or the
    shard's record (formats 2-3) says of the shard."""
    key = commit_key(shard.shard)
    try:
        data = loads(ds.read(key, COMMIT_MAX_BYTES), key)
    except FileNotFoundError:
        return [(key, "missing commit record")]
    except (RecordError, DatasetError) as exc:
        return [(key, f"unreadable commit record: {exc}")]
    if ds.index.table is None:       # format 1: the index entry, plus how the shard was made
        if not isinstance(data, dict) or {k: v for k, v in data.items()
                                          if k not in ("seconds", "worker")} != shard.to_json():
            return [(key, "commit record differs from index.json (files, sample hashes or "
                          "layout)")]
        return []
    try:
        commit = ShardCommit.from_json(data, key)
    except RecordError as exc:
        return [(key, f"unreadable commit record: {exc}")]
    want = {**shard.files, names.record_key(shard.shard): ds.index.table.record(shard.shard)}
    if (commit.dataset_id, commit.shard, commit.start, commit.count, commit.scans,
            commit.files) != (shard.dataset_id, shard.shard, shard.start, shard.count,
                              shard.scans, want):
        return [(key, "commit record differs from the shard's record and index.json (files or "
                      "layout)")]
    return []


def _committed_files(ds: Dataset, k: int) -> list[str]:
    """The objects shard ``k``'s commit lists (for a shard whose record is bad: its objects are
    then not 'extra')."""
    try:
        return list(ShardCommit.from_json(loads(ds.read(commit_key(k), COMMIT_MAX_BYTES),
                                                commit_key(k)), commit_key(k)).files)
    except (FileNotFoundError, RecordError, DatasetError):
        return []


def _plan_problems(ds: Dataset) -> list[tuple[str, str]]:
    """``plan.json`` must hash to its dataset_id, name the index's dataset, and agree with the
    index's spec and shard layout."""
    from .plan import plan_id
    try:
        plan = loads(ds.read(names.PLAN, PLAN_MAX_BYTES), names.PLAN)
    except FileNotFoundError:
        return [(names.PLAN, "missing")]
    except (RecordError, DatasetError) as exc:
        return [(names.PLAN, str(exc))]
    if not isinstance(plan, dict) or plan_id(plan) != plan.get("dataset_id"):
        return [(names.PLAN, "its dataset_id is not the hash of its contents (edited)")]
    problems = []
    if plan["dataset_id"] != ds.dataset_id:
        problems.append((names.INDEX, f"dataset_id {ds.dataset_id}, plan.json says "
                                      f"{plan['dataset_id']}"))
    spec = {k: v for k, v in ds.index.spec.items() if k not in ("allow_roots", "manifest")}
    identity = plan.get("identity")
    if isinstance(identity, dict) and "samples" not in identity:   # plan v2: samples beside it
        if spec.pop("samples", None) != plan.get("samples") or plan.get("samples") != len(ds):
            problems.append((names.INDEX, f"{len(ds)} samples; plan.json says "
                                          f"{plan.get('samples')} (edited)"))
    if spec != identity:
        problems.append((names.INDEX, "spec differs from the plan's (edited)"))
    layout = [{"index": k, "start": ds.index.layout(k)[0], "count": ds.index.layout(k)[1],
               "scans": list(ds.index.table.scans(k) if ds.index.table is not None
                             else ds.index.shards[k].scans)}
              for k in range(ds.index.shard_count)]
    if layout != plan.get("shards"):
        problems.append((names.INDEX, "shard layout or scans differ from the plan's"))
    return problems


def verify(ds: Dataset, shards: set[int] | None = None, jobs: int = 1,
           progress: bool = False) -> list[tuple[str, str]]:
    """Problems as (object or sample, what is wrong); empty when everything matches the index.

    ``shards``: check only these shards (their records, objects, commits and samples) besides the
    plan and the formats' metadata; objects the index does not list are looked for only when
    every shard is checked. ``jobs``: shards whose samples are decoded and hashed at once
    (threads). ``progress``: a bar over the shards on stderr."""
    problems = _plan_problems(ds)
    count = ds.index.shard_count
    wanted = range(count) if shards is None else sorted(k for k in shards if 0 <= k < count)
    if shards is not None and len(wanted) != len(shards):
        problems.append(("--shards", f"{sorted(set(shards) - set(wanted))} not in the dataset's "
                                     f"{count} shard(s)"))
    listed, bad_files = set(), set()
    checked = []
    for k in wanted:
        try:
            checked.append(ds.shard(k))          # formats 2-3: the record, checked against the index
        except DatasetError as exc:
            problems.append((names.record_key(k), str(exc)))
            listed.update(_committed_files(ds, k))
        if ds.index.table is not None:
            listed.add(names.record_key(k))
    listed_files = [*((k, f) for s in checked for k, f in s.files.items()),
                    *ds.index.metadata.items()]
    for key, want in listed_files:
        listed.add(key)
        problem = ds.object_problem(key, want)
        if problem:
            problems.append((key, problem))
    for shard in checked:
        problems += _commit_problems(ds, shard)
    if not ds.index.metadata:        # an index from before it listed the formats' metadata
        listed.update(key for fmt in ds.formats for key in FORMATS[fmt].metadata_keys)
    if shards is None:
        for key in ds.list_objects():
            if key in listed or key in TOP_LEVEL or key.startswith(COMMITS + "/"):
                continue
            problems.append((key, "extra: not listed in index.json"))
    for fmt in ds.formats:
        try:
            ds.reader(fmt).check()
        except DatasetError as exc:
            problems.append((f"{FORMATS[fmt].root} metadata", str(exc)))
            bad_files.update(k for s in checked for k in ds.shard_files(s, fmt))
    bad_files.update(k for k, _ in problems)

    def samples(shard) -> list[tuple[str, str]]:
        found_problems = []
        expected = {s.key: s for s in shard.samples}
        for fmt in ds.formats:
            if any(k in bad_files for k in ds.shard_files(shard, fmt)):
                continue
            try:
                found = ds.shard_samples(shard, fmt)
            except Exception as exc:      # a decoding error is a finding, not a crash
                found_problems.append((f"shard {shard.shard} ({fmt})", f"unreadable: {exc}"))
                continue
            for key, image, label in found:
                want = expected.get(key)
                if want is None:
                    found_problems.append((f"{key} ({fmt})", "sample not listed in the index"))
                elif not want.matches(image, label):
                    found_problems.append((f"{key} ({fmt})", f"sample's {want.digest} digest "
                                                             "differs from the index"))
            if len(found) != len(expected):
                found_problems.append((f"shard {shard.shard} ({fmt})",
                                       f"{len(found)} samples, index lists {len(expected)}"))
        return found_problems

    from tumorforge.manifests.progress import progress as bar
    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        for found_problems in bar(pool.map(samples, checked), "verify", "shard", len(checked),
                                  progress):           # in shard order
            problems += found_problems
    return problems
