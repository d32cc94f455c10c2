"""Segmentation and detection measures in physical spacing: Dice, NSD, lesions and their matching,
the FROC points, bootstrap intervals, and the post-processing filters inference shares with them.

What an evaluation reports per case and pools over cases is the table in ``metric_table.py``; this
module holds the measures it is built from.

Rules for empty masks (stated in every report):
- Dice: both masks empty -> undefined (None), excluded from means; exactly one empty -> 0.
- NSD: both surfaces empty -> undefined (None); exactly one empty -> 0.
- A scan without ground-truth tumor scores no tumor Dice/NSD; it counts for specificity instead
  (any predicted tumor voxel after post-processing makes it a false positive).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

# ``dice`` is the one Dice of tumorforge (same empty-mask rule everywhere); importable from here too.
from tumorforge.manifests.conventions import TUMOR, dice

CONNECTIVITY_26 = np.ones((3, 3, 3), bool)
SIZE_BINS_MM = (("<5", 0.0, 5.0), ("5-10", 5.0, 10.0), (">10", 10.0, float("inf")))


def _surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """Boundary area of a voxel mask lumped onto the voxel corners, in mm^2 per corner.

    Every face between a voxel inside and one outside (or the array edge) has the area of the two
    spacings it spans; a quarter of it goes to each of its four corners. Corner (u, v, w) sits at
    voxel coordinates (u - 1.5, v - 1.5, w - 1.5) of ``mask`` (the mask is padded by one voxel).
    """
    padded = np.pad(mask, 1)
    area = np.zeros(tuple(n + 1 for n in padded.shape))
    for a in range(3):
        b, c = [x for x in range(3) if x != a]
        idx = np.argwhere(np.diff(padded.astype(np.int8), axis=a) != 0)
        idx[:, a] += 1                       # the face plane's corner index along a
        quarter = spacing[b] * spacing[c] / 4.0
        for db in (0, 1):
            for dc in (0, 1):
                corner = idx.copy()
                corner[:, b] += db
                corner[:, c] += dc
                np.add.at(area, tuple(corner.T), quarter)
    return area


def nsd(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float = 2.0) -> float | None:
    """Normalized surface Dice at ``tolerance_mm``: the boundary area of each mask lying within the
    tolerance of the other mask's boundary, over the total boundary area.

    Boundaries are sampled at voxel corners, each carrying the area of the voxel faces around it
    (areas and distances in mm, so anisotropic grids are handled); distances come from a Euclidean
    distance transform on the corner grid. Work is restricted to the joint bounding box plus the
    tolerance.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() and not t.any():
        return None
    if not p.any() or not t.any():
        return 0.0
    spacing = tuple(float(s) for s in spacing)
    both = np.argwhere(p | t)
    margin = np.ceil(tolerance_mm / np.asarray(spacing)).astype(int) + 2
    lo = np.maximum(both.min(0) - margin, 0)
    hi = np.minimum(both.max(0) + margin + 1, p.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ap, at = _surface_points(p[box], spacing), _surface_points(t[box], spacing)
    dp = ndi.distance_transform_edt(at == 0, sampling=spacing)   # to the truth's boundary
    dt = ndi.distance_transform_edt(ap == 0, sampling=spacing)   # to the prediction's boundary
    near = ap[dp <= tolerance_mm].sum() + at[dt <= tolerance_mm].sum()
    return float(near / (ap.sum() + at.sum()))


def lesions(mask: np.ndarray, spacing) -> tuple[np.ndarray, list[dict]]:
    """26-connected components of ``mask`` with their size: volume (mm^3) and equivalent-sphere
    radius (mm), r = (3 V / 4 pi)^(1/3)."""
    labels, n = ndi.label(np.asarray(mask, bool), structure=CONNECTIVITY_26)
    if n == 0:
        return labels, []
    counts = np.bincount(labels.ravel())[1:]
    voxel = float(np.prod(spacing))
    out = []
    for i, c in enumerate(counts, start=1):
        v = float(c) * voxel
        out.append({"id": i, "voxels": int(c), "volume_mm3": v,
                    "radius_mm": (3.0 * v / (4.0 * np.pi)) ** (1.0 / 3.0)})
    return labels, out


def size_bin(radius_mm: float) -> str:
    return next(name for name, lo, hi in SIZE_BINS_MM if lo <= radius_mm < hi)


DETECTION_RULES = ("dice", "any-voxel")
DEFAULT_MIN_DICE = 0.2


def detection_rule_text(rule: str = "dice", min_dice: float = DEFAULT_MIN_DICE) -> str:
    """The detection rule in words, as every report states it."""
    if rule == "any-voxel":
        return ("any-voxel: a true lesion is detected when any predicted tumor voxel overlaps it; "
                "a predicted component touching no true tumor is a false positive")
    return (f"dice >= {min_dice:g}: a true lesion is detected when one predicted component (26-"
            f"connected) matches it with Dice >= {min_dice:g}; a predicted component that matches "
            f"no true lesion so is a false positive")


def match_lesions(gt_labels: np.ndarray, n_gt: int, pred_labels: np.ndarray, n_pred: int
                  ) -> np.ndarray:
    """Dice of every (true lesion, predicted component) pair, shape (n_gt, n_pred), from their
    component labels (1-based; 0 is background)."""
    overlap = (gt_labels > 0) & (pred_labels > 0)
    pairs = np.bincount(gt_labels[overlap].astype(np.int64) * (n_pred + 1)
                        + pred_labels[overlap].astype(np.int64),
                        minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)[1:, 1:]
    gt_size = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)[1:]
    pred_size = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[1:]
    denom = gt_size[:, None] + pred_size[None, :]
    return np.where(denom > 0, 2.0 * pairs / np.maximum(denom, 1), 0.0)


def drop_specks(mask: np.ndarray, spacing, min_radius_mm: float) -> np.ndarray:
    """``mask`` without its 26-connected components smaller than a sphere of ``min_radius_mm``
    (``spacing``: mm per voxel along the array's axes)."""
    mask = np.asarray(mask, bool)
    if min_radius_mm <= 0 or not mask.any():
        return mask
    parts, _ = ndi.label(mask, structure=CONNECTIVITY_26)
    min_voxels = 4.0 / 3.0 * np.pi * min_radius_mm ** 3 / float(np.prod(spacing))
    return (np.bincount(parts.ravel()) >= min_voxels)[parts] & mask


# Predicted tumor components whose outer border is less than this fraction liver are dropped by
# post-processing: liver lesions are mostly enclosed by liver, while a model's extrahepatic false
# positives (stomach, bowel, kidney next to the liver) are mostly bordered by other tissue.
# Chosen on scans no cpu-small model is tested on (docs/how-to/evaluate.md, "What `evaluate` does"); 0 turns it off.
MIN_LIVER_CONTACT = 0.6


def drop_outside_organ(mask: np.ndarray, organ: np.ndarray, min_contact: float) -> np.ndarray:
    """``mask`` without its 26-connected components whose outer border (the voxels 26-adjacent to
    the component) is less than ``min_contact`` ``organ``: a lesion of an organ is mostly enclosed
    by it; a blob mostly bordered by fat, air or another organ is a false positive outside it.
    ``organ``: the organ's voxels without the tumor, on ``mask``'s grid."""
    mask = np.asarray(mask, bool)
    if min_contact <= 0 or not mask.any():
        return mask
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 1, 0), np.minimum(idx.max(0) + 2, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    parts, n = ndi.label(mask[box], structure=CONNECTIVITY_26)
    # Each border voxel is credited to its neighbouring component (the larger label where two
    # meet, which only happens between components two voxels apart).
    owner = ndi.grey_dilation(parts, footprint=np.ones((3, 3, 3), bool), mode="constant", cval=0)
    border = (owner > 0) & (parts == 0)
    total = np.bincount(owner[border], minlength=n + 1)
    on_organ = np.bincount(owner[border & np.asarray(organ, bool)[box]], minlength=n + 1)
    keep = on_organ >= min_contact * np.maximum(total, 1)
    keep[0] = False
    out = np.zeros_like(mask)
    out[box] = keep[parts]
    return out




def _detections(scores: np.ndarray, n_pred: int, rule: str, min_dice: float
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """(best match Dice per true lesion, detected per true lesion, false-positive components) from
    the (true lesion, predicted component) Dice matrix, under ``rule``."""
    n_gt = scores.shape[0]
    best = scores.max(axis=1) if n_pred else np.zeros(n_gt)
    hit = (scores > 0) if rule == "any-voxel" else (scores >= min_dice)
    matched = hit.any(axis=0) if n_gt else np.zeros(n_pred, bool)
    return best, hit.any(axis=1) if n_pred else np.zeros(n_gt, bool), \
        int(n_pred - np.count_nonzero(matched))


def lesion_detection(pred_tumor: np.ndarray, true_tumor: np.ndarray, spacing, rule: str = "dice",
                     min_dice: float = DEFAULT_MIN_DICE) -> tuple[list[dict], int, int]:
    """The true lesions of one case, matched against the predicted tumor's components.

    Detection (``rule``, see :func:`detection_rule_text`): by default a true lesion is detected
    when one predicted component matches it with Dice >= ``min_dice``, so a blob of false positive
    tumor that merely touches a lesion does not detect it; ``any-voxel`` is the lenient rule.
    Returns each true lesion (its size as :func:`lesions` gives it, center in voxels, best match
    Dice, whether it was detected, size bin; floats rounded to 4 decimals), the false-positive
    components and all predicted components.
    """
    gt_labels, gt = lesions(true_tumor, spacing)
    pred_labels, predicted = lesions(pred_tumor, spacing)
    scores = match_lesions(gt_labels, len(gt), pred_labels, len(predicted))
    best, detected, fp = _detections(scores, len(predicted), rule, min_dice)
    centers = ndi.center_of_mass(np.ones_like(gt_labels), gt_labels, range(1, len(gt) + 1)) \
        if gt else []
    for n, les in enumerate(gt):
        les["best_dice"] = float(best[n])
        les["center_vox"] = [int(round(c)) for c in centers[n]]
        les["detected"] = bool(detected[n])
        les["size_bin"] = size_bin(les["radius_mm"])
    return ([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in les.items()}
             for les in gt], fp, len(predicted))


# Probability thresholds of the FROC-style curve (the argmax answer is the operating point).
FROC_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
PROBABILITY_SCALE = 255          # tumor probabilities travel as uint8: p * 255, rounded


def froc_points(probability: np.ndarray, region: np.ndarray, truth: np.ndarray, spacing,
                rule: str = "dice", min_dice: float = DEFAULT_MIN_DICE,
                min_radius_mm: float = 0.0, thresholds=FROC_THRESHOLDS,
                min_liver_contact: float = 0.0) -> list[dict]:
    """Lesion detection and false-positive components of one case at each probability threshold.

    ``probability``: the model's tumor probability (uint8, ``PROBABILITY_SCALE`` = 1) on the
    truth's grid; ``region``: where tumor may be predicted (the post-processed liver, tumor
    included); ``truth``: labels 0/1/2. At threshold t the predicted tumor is ``probability >= t``
    inside ``region``, without components under a ``min_radius_mm`` sphere or whose border is
    less than ``min_liver_contact`` liver (the rest of ``region``); lesions are matched
    with ``rule`` as in :func:`case_metrics`. Returns, per threshold, detected and total true
    lesions per size bin and the false-positive components.
    """
    spacing = tuple(float(s) for s in spacing)
    tt = truth == TUMOR
    both = np.argwhere(region | tt)
    if len(both):
        box = tuple(slice(a, b + 1) for a, b in zip(both.min(0), both.max(0)))
        probability, region, tt = probability[box], region[box], tt[box]
    gt_labels, gt = lesions(tt, spacing)
    bins = [size_bin(les["radius_mm"]) for les in gt]
    totals = {name: bins.count(name) for name, _, _ in SIZE_BINS_MM}
    out = []
    for t in thresholds:
        pt = drop_specks((probability >= round(t * PROBABILITY_SCALE)) & region, spacing,
                         min_radius_mm)
        pt = drop_outside_organ(pt, region & ~pt, min_liver_contact)
        pred_labels, n_pred = ndi.label(pt, structure=CONNECTIVITY_26)
        scores = match_lesions(gt_labels, len(gt), pred_labels, n_pred)
        _, detected, fp = _detections(scores, n_pred, rule, min_dice)
        hits = {name: int(sum(d for d, b in zip(detected, bins) if b == name))
                for name, _, _ in SIZE_BINS_MM}
        out.append({"threshold": t, "detected": hits, "lesions": totals,
                    "false_positive_lesions": fp})
    return out


def summarize_froc(cases: list[dict]) -> list[dict] | None:
    """The pooled FROC-style curve: per threshold, lesion sensitivity (all sizes and > 10 mm) and
    false-positive components per scan over ``cases`` (None unless every case has its points)."""
    if not cases or not all(c.get("froc") for c in cases):
        return None
    out = []
    for k, point in enumerate(cases[0]["froc"]):
        rows = [c["froc"][k] for c in cases]
        det = {n: sum(r["detected"][n] for r in rows) for n, _, _ in SIZE_BINS_MM}
        tot = {n: sum(r["lesions"][n] for r in rows) for n, _, _ in SIZE_BINS_MM}
        all_det, all_tot = sum(det.values()), sum(tot.values())
        out.append({"threshold": point["threshold"],
                    "sensitivity": all_det / all_tot if all_tot else None,
                    "sensitivity_over_10mm": det[">10"] / tot[">10"] if tot[">10"] else None,
                    "detected": all_det, "lesions": all_tot,
                    "false_positive_lesions_per_scan": float(np.mean(
                        [r["false_positive_lesions"] for r in rows]))})
    return out


MIN_INTERVAL_N = 2       # below this many cases no interval is given (n/a): one case says nothing
INTERVALS = ("95 % intervals: for means a bootstrap over cases, for specificity Wilson's, for "
             "lesion sensitivity the hull of Wilson's and a bootstrap over cases (lesions resampled "
             "with their case); none below n = 2")


def bootstrap_ci(values, statistic=np.mean, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over cases (resampled with replacement;
    scipy.stats.bootstrap, seeded); None (n/a) below ``MIN_INTERVAL_N`` cases. Cases all alike
    give the value itself (every resample is that value)."""
    from scipy.stats import bootstrap
    vals = np.asarray([v for v in values if v is not None], float)
    if len(vals) < MIN_INTERVAL_N:
        return None
    if np.all(vals == vals[0]):
        value = float(statistic(vals))
        return value, value
    result = bootstrap((vals,), statistic, n_resamples=n_boot, confidence_level=level,
                       method="percentile", random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of the proportion k/n (scipy.stats); None when n == 0. Unlike a
    percentile bootstrap it does not collapse on 0/n or n/n (0 of 10 gives [0, 0.28])."""
    if n == 0:
        return None
    from scipy.stats import binomtest
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def sensitivity_ci(pool, n_cases: int, seed: int, n_boot: int = 2000
                   ) -> tuple[float, float] | None:
    """Interval of lesion sensitivity: the hull of the Wilson interval over lesions (binomial
    uncertainty, which a bootstrap misses at 0 % and 100 %) and the percentile interval resampling
    cases (lesions of one case stay together: the clustering Wilson ignores). None below
    ``MIN_INTERVAL_N`` lesions. ``pool``: (case index, lesion record with ``detected``) pairs."""
    if len(pool) < MIN_INTERVAL_N:
        return None
    lo, hi = wilson(int(sum(les["detected"] for _, les in pool)), len(pool))
    boot = case_bootstrap_sensitivity(pool, n_cases, seed, n_boot)
    if boot is not None:
        lo, hi = min(lo, boot[0]), max(hi, boot[1])
    return lo, hi


def case_bootstrap_sensitivity(pool, n_cases: int, seed: int, n_boot: int = 2000
                                ) -> tuple[float, float] | None:
    """Percentile interval of lesion sensitivity resampling cases (the lesions of one case stay
    together). ``pool``: (case index, lesion record with ``detected``) pairs."""
    by_case = np.zeros((n_cases, 2))
    for i, les in pool:
        by_case[i] += (les["detected"], 1)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        pick = by_case[rng.integers(0, n_cases, n_cases)].sum(0)
        if pick[1] > 0:
            stats.append(pick[0] / pick[1])
    if not stats:
        return None
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return float(lo), float(hi)


EMPTY_RULE = ("Dice and NSD: undefined (null, left out of means) when prediction and truth are both "
              "empty, 0 when only one is empty. Scans without ground-truth tumor get no tumor "
              "Dice/NSD; they count for specificity (any predicted tumor voxel after "
              "post-processing is a false-positive scan).")
