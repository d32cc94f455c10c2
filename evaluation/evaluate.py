"""``tumorforge evaluate`` (score a checkpoint on annotated scans) and ``tumorforge compare``."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time

import nibabel as nib
import numpy as np

from .metrics import EMPTY_RULE, case_metrics, summarize

CSV_FIELDS = ("scan_id", "role", "source", "fold", "tumor_dice", "tumor_nsd", "liver_dice",
              "tumor_volume_true_ml", "tumor_volume_pred_ml", "tumor_volume_error_ml",
              "lesions", "lesions_detected", "false_positive_lesions", "any_predicted_tumor",
              "seconds")


def truth_labels(label: np.ndarray, label_map) -> np.ndarray:
    """A scan's label as 0 background, 1 liver, 2 tumor, from its manifest label map."""
    out = np.zeros(label.shape, np.uint8)
    out[np.isin(label, label_map.organ_values())] = 1
    out[np.isin(label, label_map.tumor)] = 2
    return out


def strict(obj):
    """JSON-safe: NaN and infinities become null (summary.json is strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def evaluate(checkpoint: str, manifest: str, out: str, *, allow_roots=(), fold: int | None = None,
             limit: int | None = None, overlap: float = 0.75, sw_batch: int = 2, roi: int = 96,
             tolerance_mm: float = 2.0, device: str = "auto", seed: int = 0, log=print) -> dict:
    from tumorforge.manifests.nifti import read_volume
    from tumorforge.manifests.schema import default_roots, read_manifest
    from .model import load_model
    from .infer import segment

    entries = read_manifest(manifest, default_roots(manifest, allow_roots))
    if fold is not None:
        entries = [e for e in entries if e.fold == fold]
    entries = entries[:limit] if limit else entries
    if not entries:
        raise ValueError(f"{manifest}: no scans to evaluate (fold {fold})")
    model, train_cfg = load_model(checkpoint, device)
    os.makedirs(os.path.join(out, "predictions"), exist_ok=True)
    cases, examples = [], []
    for n, e in enumerate(entries, start=1):
        t0 = time.perf_counter()
        image, label = read_volume(e.image), read_volume(e.label)
        pred = segment(model, image.data, image.info.affine, roi=roi, overlap=overlap,
                       sw_batch=sw_batch)
        truth = truth_labels(np.asarray(label.data), e.label_map)
        img = nib.Nifti1Image(pred, image.info.affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, os.path.join(out, "predictions", f"{e.scan_id}.nii.gz"))
        m = case_metrics(pred, truth, image.info.spacing_mm, tolerance_mm)
        m.update(scan_id=e.scan_id, role=e.role, source=e.source, fold=e.fold,
                 seconds=round(time.perf_counter() - t0, 2))
        cases.append(m)
        if truth.max() == 2 and len(examples) < 3:
            examples.append((e.scan_id, image.data, image.info.affine, truth, pred))
        log(f"[{n}/{len(entries)}] {e.scan_id}: tumor DSC {_fmt(m['tumor_dice'])}, NSD "
            f"{_fmt(m['tumor_nsd'])}, liver DSC {_fmt(m['liver_dice'])}, lesions "
            f"{sum(l['detected'] for l in m['lesions'])}/{len(m['lesions'])}, FP lesions "
            f"{m['false_positive_lesions']} ({m['seconds']} s)")
    summary = {"checkpoint": train_cfg["checkpoint"], "model": train_cfg["model"],
               "step": train_cfg["step"], "manifest": manifest, "fold": fold,
               "inference": {"spacing_mm": 1.0, "roi": roi, "overlap": overlap, "mode": "gaussian",
                             "window_hu": [-21, 189], "postprocess": "largest liver component; "
                             "tumor within the liver dilated by 5 mm"},
               "nsd_tolerance_mm": tolerance_mm, "aggregate": summarize(cases, seed=seed),
               "cases": cases, "empty_mask_rule": EMPTY_RULE}
    summary = strict(summary)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, allow_nan=False)
    _write_csv(os.path.join(out, "cases.csv"), cases)
    from .report import write_report
    write_report(out, summary, examples)
    return summary


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _write_csv(path: str, cases: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for c in cases:
            row = {k: c.get(k) for k in CSV_FIELDS}
            row["lesions"] = len(c["lesions"])
            row["lesions_detected"] = sum(l["detected"] for l in c["lesions"])
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def compare(a_path: str, b_path: str) -> dict:
    """Paired comparison on shared cases: Wilcoxon signed-rank on per-case tumor DSC, exact
    McNemar on lesions (the same ground-truth lesion detected by one model and missed by the other)."""
    from scipy.stats import binomtest, wilcoxon
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    ca = {c["scan_id"]: c for c in a["cases"]}
    cb = {c["scan_id"]: c for c in b["cases"]}
    shared = sorted(set(ca) & set(cb))
    if not shared:
        raise ValueError(f"{a_path} and {b_path} share no scan")
    pairs = [(ca[s]["tumor_dice"], cb[s]["tumor_dice"]) for s in shared
             if ca[s]["tumor_dice"] is not None and cb[s]["tumor_dice"] is not None]
    diffs = [x - y for x, y in pairs]
    if len(pairs) >= 1 and any(d != 0 for d in diffs):
        w = wilcoxon([x for x, _ in pairs], [y for _, y in pairs], zero_method="wilcox")
        wil = {"n": len(pairs), "statistic": float(w.statistic), "p_value": float(w.pvalue)}
    else:
        wil = {"n": len(pairs), "statistic": None, "p_value": None,
               "note": "no case with a non-zero difference"}
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
    return strict({"a": a_path, "b": b_path, "shared_cases": len(shared),
                   "tumor_dice_mean": {"a": mean([x for x, _ in pairs]),
                                       "b": mean([y for _, y in pairs])},
                   "wilcoxon_tumor_dice": wil, "mcnemar_lesions": mc})


def _cmd_evaluate(args) -> int:
    from tumorforge.manifests.schema import ManifestError
    try:
        summary = evaluate(args.checkpoint, args.manifest, args.out, allow_roots=args.allow_root,
                           fold=args.fold, limit=args.limit, overlap=args.overlap,
                           sw_batch=args.sw_batch, roi=args.roi, tolerance_mm=args.tolerance,
                           device=args.device)
    except (ManifestError, ValueError, FileNotFoundError) as exc:
        sys.exit(f"evaluate: {exc}")
    agg = summary["aggregate"]
    print(f"tumor DSC {_fmt(agg['tumor_dice']['mean'])} (95% CI {agg['tumor_dice']['ci95']}), "
          f"NSD {_fmt(agg['tumor_nsd']['mean'])}, global DSC {_fmt(agg['global_tumor_dice'])}, "
          f"liver DSC {_fmt(agg['liver_dice']['mean'])}, lesion sensitivity "
          f"{_fmt(agg['detection']['all']['sensitivity'])}, specificity "
          f"{_fmt(agg['specificity']['value'])}")
    print(f"report: {os.path.join(args.out, 'report.html')} (and report.md, summary.json, cases.csv)")
    return 0


def _cmd_compare(args) -> int:
    try:
        result = compare(args.a, args.b)
    except (ValueError, OSError, KeyError) as exc:
        sys.exit(f"compare: {exc}")
    w, m = result["wilcoxon_tumor_dice"], result["mcnemar_lesions"]
    print(f"{result['shared_cases']} shared case(s); mean tumor DSC A {_fmt(result['tumor_dice_mean']['a'])}"
          f" vs B {_fmt(result['tumor_dice_mean']['b'])}")
    print(f"Wilcoxon signed-rank on tumor DSC: n={w['n']}, p={_fmt(w['p_value'])}")
    print(f"McNemar on lesions: detected only by A {m['a_only']}, only by B {m['b_only']}, "
          f"both {m['both']}, neither {m['neither']}, exact p={_fmt(m['p_value'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from tumorforge.manifests.flags import add_allow_root
    e = sub.add_parser("evaluate", help="score a checkpoint on annotated scans (DSC, NSD, detection)",
                       description="Whole-scan sliding-window inference (RAS, 1 mm, overlap 0.75, "
                                   "Gaussian), post-processing, predictions saved as NIfTI on each "
                                   "scan's grid, metrics in physical spacing, and a report.")
    e.add_argument("--checkpoint", required=True, help="step-*.pt, or a training output folder")
    e.add_argument("--manifest", required=True, help="annotated scans (tumor and healthy)")
    e.add_argument("--out", required=True)
    e.add_argument("--fold", type=int, help="only scans of this fold")
    e.add_argument("--limit", type=int, help="only the first N scans")
    e.add_argument("--overlap", type=float, default=0.75)
    e.add_argument("--sw-batch", type=int, default=2)
    e.add_argument("--roi", type=int, default=96, help="sliding-window side in voxels (96)")
    e.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (2)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_allow_root(e)
    e.set_defaults(func=_cmd_evaluate)
    c = sub.add_parser("compare", help="paired comparison of two evaluations (e.g. synthetic vs real)",
                       description="Wilcoxon signed-rank on per-case tumor DSC and exact McNemar "
                                   "on lesion detection, over the cases both summaries share.")
    c.add_argument("a", help="summary.json of model A")
    c.add_argument("b", help="summary.json of model B")
    c.add_argument("--json", help="write the result here")
    c.set_defaults(func=_cmd_compare)
