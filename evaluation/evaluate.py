"""Score a segmenter on annotated scans (:func:`evaluate`) and compare two evaluations
(:func:`compare`); the commands are in ``cli.py``."""

from __future__ import annotations

import csv
import json
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from tumorforge.manifests.conventions import BACKGROUND, ORGAN, TUMOR
from tumorforge.manifests.nifti import write_nifti
from tumorforge.manifests.records import json_safe

from .metric_table import METRICS, Column, case_metrics, record_columns, summarize
from .metrics import (DEFAULT_MIN_DICE, EMPTY_RULE, MIN_LIVER_CONTACT, detection_rule_text,
                      froc_points)

if TYPE_CHECKING:            # infer imports torch; compare and the commands' parsers need none
    from .infer import Segmenter


def csv_columns() -> list[Column]:
    """The per-case CSV's columns (name, value from a case's record): the scan, every metric's
    columns in the order of the metrics table, the seconds the case took."""
    return [*record_columns("scan_id", "role", "source", "fold"),
            *(column for metric in METRICS.values() for column in metric.columns),
            *record_columns("seconds")]


def truth_labels(label: np.ndarray, label_map) -> np.ndarray:
    """A scan's label as 0 background, 1 liver, 2 tumor, from its manifest label map."""
    out = np.zeros(label.shape, np.uint8)
    out[np.isin(label, label_map.organ_values())] = ORGAN
    out[np.isin(label, label_map.tumor)] = TUMOR
    return out


def evaluate(checkpoint: str | None, manifest: str, out: str, *, segmenter: Segmenter | None = None,
             allow_roots=(), fold: int | None = None, limit: int | None = None,
             overlap: float = 0.75, sw_batch: int = 2, roi: int | None = None,
             tolerance_mm: float = 2.0, device: str = "auto", seed: int = 0,
             detection: str = "dice", min_dice: float = DEFAULT_MIN_DICE, progress: bool = False,
             flips: bool = False, min_liver_contact: float | None = None, log=print) -> dict:
    """Score a segmenter on the annotated scans of ``manifest`` (only ``fold``, the first ``limit``).

    ``segmenter(image, affine) -> labels``: HU in the file's voxel order and its 4x4 voxel-to-mm
    affine in, labels 0/1/2 (uint8, same shape) out, or ``(labels, tumor probability)`` (uint8,
    ``PROBABILITY_SCALE`` = 1) for a FROC-style curve. Default: the model of ``checkpoint``
    through :func:`infer.segment`, run with the checkpoint's preprocessing (spacing, HU window,
    window size; ``roi`` overrides the window with a cube of that many voxels; ``flips``: mirror
    test-time augmentation; ``min_liver_contact``: the post-processing's least liver fraction of a
    tumor component's border, default ``infer.MIN_LIVER_CONTACT``). With a ``segmenter`` given, no model is loaded and ``checkpoint`` is
    only recorded.

    Writes into ``out``: ``predictions/<scan_id>.nii.gz`` (labels on each scan's own grid),
    ``summary.json`` (strict JSON), ``cases.csv`` and ``report.md`` / ``report.html`` with their
    figures. Metrics are in the scans' physical spacing (NSD at ``tolerance_mm``). Returns the
    summary.
    """
    from tumorforge.manifests.readers import read_volume
    from tumorforge.manifests.schema import default_roots, read_manifest

    entries = read_manifest(manifest, default_roots(manifest, allow_roots))
    if fold is not None:
        entries = [e for e in entries if e.fold == fold]
    entries = entries[:limit] if limit else entries
    if not entries:
        raise ValueError(f"{manifest}: no scans to evaluate (fold {fold})")
    organs = sorted({e.organ for e in entries})
    if len(organs) > 1:
        raise ValueError(f"{manifest}: scans of {', '.join(organs)}; one evaluation scores one "
                         "organ (split the manifest by organ)")
    if segmenter is None:
        segmenter, source, inference = _model_segmenter(checkpoint, device, roi, overlap, sw_batch,
                                                        progress, flips, min_liver_contact,
                                                        organ=organs[0])
    else:
        source = {"checkpoint": checkpoint, "step": None,
                  "model": getattr(segmenter, "__name__", type(segmenter).__name__)}
        inference = {"segmenter": "supplied by the caller"}
    os.makedirs(os.path.join(out, "predictions"), exist_ok=True)
    cases, examples = [], []
    for n, e in enumerate(entries, start=1):
        t0 = time.perf_counter()
        image = read_volume(e.image)
        label = read_volume(e.label, like=image)
        answer = segmenter.for_entry(e, image) if hasattr(segmenter, "for_entry") else \
            segmenter(image.data, image.info.affine)
        prob = None
        if isinstance(answer, tuple):
            answer, prob = answer
        pred = _checked(answer, image.data.shape, e)
        truth = truth_labels(np.asarray(label.data), e.label_map)
        write_nifti(os.path.join(out, "predictions", f"{e.scan_id}.nii.gz"), pred,
                    image.info.affine, qform_code=0, sform_code=2)
        m = case_metrics(pred, truth, image.info.spacing_mm, tolerance_mm, detection, min_dice)
        if prob is not None and np.shape(prob) == pred.shape:
            m["froc"] = froc_points(np.asarray(prob, np.uint8), pred >= ORGAN, truth,
                                    image.info.spacing_mm, detection, min_dice,
                                    inference.get("min_tumor_radius_mm", 0.0),
                                    min_liver_contact=inference.get("min_liver_contact", 0.0))
        m.update(scan_id=e.scan_id, scan_sha256=dict(e.sha256), role=e.role, source=e.source,
                 fold=e.fold, seconds=round(time.perf_counter() - t0, 2))
        cases.append(m)
        if (truth == TUMOR).any() and len(examples) < 3:
            examples.append((e.scan_id, image.data, image.info.affine, truth, pred))
        log(f"[{n}/{len(entries)}] {e.scan_id}: tumor DSC {_fmt(m['tumor_dice'])}, NSD "
            f"{_fmt(m['tumor_nsd'])}, liver DSC {_fmt(m['liver_dice'])}, lesions "
            f"{sum(l['detected'] for l in m['lesions'])}/{len(m['lesions'])}, FP lesions "
            f"{m['false_positive_lesions']} ({m['seconds']} s)")
    summary = json_safe({**source, "manifest": manifest, "manifest_sha256": file_sha256(manifest),
                         "fold": fold, "inference": inference,
                         "nsd_tolerance_mm": tolerance_mm,
                         "detection_rule": detection_rule_text(detection, min_dice),
                         "aggregate": summarize(cases, seed=seed), "cases": cases,
                         "empty_mask_rule": EMPTY_RULE})
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, allow_nan=False)
    _write_csv(os.path.join(out, "cases.csv"), cases)
    from .report import write_report
    write_report(out, summary, examples)
    return summary


class predictions_segmenter:
    """The segmenter of ``evaluate --predictions DIR``: each scan's answer is a label map read
    from ``DIR`` (``<scan id>.nii.gz``, else the image's own file name, as nnU-Net names its
    predictions), on the scan's grid (its affine within the readers' tolerance). A missing file or
    another grid is an error naming the scan and the file."""

    def __init__(self, folder: str):
        if not os.path.isdir(folder):
            raise ValueError(f"--predictions {folder}: not a folder")
        self.folder = folder
        self.__name__ = f"predictions in {folder}"

    def path(self, entry) -> str:
        names = [f"{entry.scan_id}.nii.gz", os.path.basename(entry.image)]
        names.append(names[1].replace("_0000.nii.gz", ".nii.gz"))
        for name in names:
            path = os.path.join(self.folder, name)
            if os.path.isfile(path):
                return path
        raise ValueError(f"scan {entry.scan_id}: no prediction in {self.folder} (looked for "
                         f"{', '.join(dict.fromkeys(names))})")

    def for_entry(self, entry, image) -> np.ndarray:
        from tumorforge.manifests.build import check_pair
        from tumorforge.manifests.readers import read_volume
        path = self.path(entry)
        pred = read_volume(path, like=image)
        check_pair(entry.image, path, image, pred)       # same grid, integer labels
        return np.asarray(pred.data)

    def __call__(self, image, affine):
        raise TypeError("predictions are read per scan (for_entry)")


def _checked(pred, shape, entry) -> np.ndarray:
    pred = np.asarray(pred)
    values = np.unique(pred)
    if pred.shape != tuple(shape) or not np.isin(values, (BACKGROUND, ORGAN, TUMOR)).all():
        raise ValueError(f"scan {entry.scan_id} ({entry.image}): the segmenter returned shape "
                         f"{pred.shape} with values {values[:5].tolist()}; expected labels "
                         f"{BACKGROUND}, {ORGAN}, {TUMOR} in the scan's shape {tuple(shape)}")
    return pred.astype(np.uint8)


def _model_segmenter(checkpoint: str, device: str, roi: int | None, overlap: float,
                     sw_batch: int, progress: bool = False, flips: bool = False,
                     min_liver_contact: float | None = None,
                     organ: str = "liver") -> tuple[Segmenter, dict, dict]:
    """The checkpoint's model as a segmenter, what to record of the checkpoint, and the inference
    settings it runs with (from its preprocessing record, ``roi`` overriding the window size). A
    model whose classes are not ``organ``'s (a liver model on kidney scans) is refused."""
    import functools
    from .infer import DILATE_MM, MIN_TUMOR_RADIUS_MM, segment
    from .model import load_model
    contact = MIN_LIVER_CONTACT if min_liver_contact is None else float(min_liver_contact)
    if not 0.0 <= contact <= 1.0:
        raise ValueError(f"min_liver_contact {contact:g}: expected a fraction in [0, 1]")
    trained = load_model(checkpoint, device, organ=organ)
    prep = trained.preprocessing
    window_zyx = (roi,) * 3 if roi else prep.roi
    segmenter = functools.partial(segment, trained.model, prep=prep, roi=window_zyx,
                                  overlap=overlap, sw_batch=sw_batch, progress=progress,
                                  flips=flips, probability=True, min_liver_contact=contact)
    source = {"checkpoint": trained.checkpoint, "model": trained.name, "step": trained.step,
              "checkpoint_sha256": file_sha256(trained.checkpoint),
              "training_sources": [{k: src.get(k) for k in ("url", "dataset_id", "samples",
                                                            "format", "weight")}
                                   for src in trained.config.get("sources", [])]}
    inference = {"spacing_mm": list(prep.spacing_mm), "window_hu": list(prep.window_hu),
                 "roi_zyx": list(window_zyx), "roi_override": roi, "overlap": overlap,
                 "mode": "gaussian",
                 "test_time_flips": flips, "min_tumor_radius_mm": MIN_TUMOR_RADIUS_MM,
                 "min_liver_contact": contact,
                 "postprocess": f"largest liver component; tumor within the liver dilated by "
                                f"{DILATE_MM:g} mm, in components of at least a "
                                f"{MIN_TUMOR_RADIUS_MM:g} mm sphere whose border is at least "
                                f"{contact:.0%} liver",
                 "dataset_ids": list(prep.dataset_ids)}
    return segmenter, source, inference


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (local or s3://), read in blocks."""
    import hashlib
    from tumorforge.manifests import storage
    digest = hashlib.sha256()
    with storage.open_binary(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_csv(path: str, cases: list[dict]) -> None:
    columns = csv_columns()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([name for name, _ in columns])
        for c in cases:
            w.writerow(["" if v is None else v for v in (value(c) for _, value in columns)])


def compare(a_path: str, b_path: str) -> dict:
    """Paired comparison on shared cases: Wilcoxon signed-rank on per-case tumor DSC and on
    per-case false-positive lesions, exact McNemar on lesions (the same ground-truth lesion
    detected by one model and missed by the other)."""
    from scipy.stats import binomtest
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    hashed = all("scan_sha256" in c for c in [*a["cases"], *b["cases"]])
    if hashed:
        # Cases are the same scan when their files are: matched by content, never by name alone.
        key = lambda c: f"{c['scan_sha256']['image']}:{c['scan_sha256']['label']}"
        ids_a = {c["scan_id"]: key(c) for c in a["cases"]}
        clash = sorted(c["scan_id"] for c in b["cases"]
                       if c["scan_id"] in ids_a and ids_a[c["scan_id"]] != key(c))
        if clash:
            raise ValueError(f"{a_path} and {b_path} name different scans alike: {clash} have the "
                             f"same scan id but other contents (sha256); compare evaluations of "
                             f"the same scans")
    else:
        key = lambda c: c["scan_id"]
    ca = {key(c): c for c in a["cases"]}
    cb = {key(c): c for c in b["cases"]}
    shared = sorted(set(ca) & set(cb), key=lambda k: ca[k]["scan_id"])
    if not shared:
        raise ValueError(f"{a_path} and {b_path} share no scan")
    pairs = [(ca[s]["tumor_dice"], cb[s]["tumor_dice"]) for s in shared
             if ca[s]["tumor_dice"] is not None and cb[s]["tumor_dice"] is not None]
    wil = _paired_wilcoxon(pairs)
    fp_pairs = [(ca[s]["false_positive_lesions"], cb[s]["false_positive_lesions"]) for s in shared
                if "false_positive_lesions" in ca[s] and "false_positive_lesions" in cb[s]]
    only_a = only_b = both = neither = 0
    for s in shared:
        la = {l["id"]: l["detected"] for l in ca[s]["lesions"]}
        lb = {l["id"]: l["detected"] for l in cb[s]["lesions"]}
        for lid in la.keys() & lb.keys():
            only_a += la[lid] and not lb[lid]
            only_b += lb[lid] and not la[lid]
            both += la[lid] and lb[lid]
            neither += not la[lid] and not lb[lid]
    discordant = only_a + only_b
    mc = {"a_only": only_a, "b_only": only_b, "both": both, "neither": neither,
          "p_value": float(binomtest(only_a, discordant, 0.5).pvalue) if discordant else None}
    mean = lambda xs: float(np.mean(xs)) if xs else None
    return json_safe({"a": a_path, "b": b_path, "shared_cases": len(shared),
                   "matched_by": "scan sha256" if hashed else
                   "scan id only (a summary predates scan hashes: make sure both scored the "
                   "same scans)",
                   "a_checkpoint_sha256": a.get("checkpoint_sha256"),
                   "b_checkpoint_sha256": b.get("checkpoint_sha256"),
                   "tumor_dice_mean": {"a": mean([x for x, _ in pairs]),
                                       "b": mean([y for _, y in pairs])},
                   "wilcoxon_tumor_dice": wil, "mcnemar_lesions": mc,
                   "false_positive_lesions_per_scan": {"a": mean([x for x, _ in fp_pairs]),
                                                       "b": mean([y for _, y in fp_pairs])},
                   "wilcoxon_false_positives": _paired_wilcoxon(fp_pairs)})


def _paired_wilcoxon(pairs: list[tuple[float, float]]) -> dict:
    """Wilcoxon signed-rank test of paired per-case values (zero differences dropped)."""
    from scipy.stats import wilcoxon
    if any(x != y for x, y in pairs):
        w = wilcoxon([x for x, _ in pairs], [y for _, y in pairs], zero_method="wilcox")
        return {"n": len(pairs), "statistic": float(w.statistic), "p_value": float(w.pvalue)}
    return {"n": len(pairs), "statistic": None, "p_value": None,
            "note": "no case with a non-zero difference"}
