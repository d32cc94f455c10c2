"""The table of metrics an evaluation reports: one record per metric says how it is measured on a
case, how it pools over cases (with its 95 % interval) and how reports show it.

The per-case CSV, the summary's aggregate, the evaluation report's metrics table and the
experiment's comparison of arms all iterate over :data:`METRICS`, so a new metric is one entry here
(a :class:`Metric`, usually made by :func:`mean_over_cases`) and no edit anywhere else.

Per-case functions see a :class:`Case` (the two label volumes and the measures several metrics
share, computed once); pooling functions see the finished per-case records, so a metric may pool a
field another metric records (detection states the false-positive count beside each sensitivity).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import numpy as np

from tumorforge.manifests.conventions import ORGAN, TUMOR, dice

from .metrics import (DEFAULT_MIN_DICE, DETECTION_RULES, EMPTY_RULE, MIN_INTERVAL_N, SIZE_BINS_MM,
                      bootstrap_ci, detection_rule_text, lesion_detection, nsd, sensitivity_ci,
                      summarize_froc, wilson)


class Case:
    """One scan's predicted and true labels (0 background, 1 liver, 2 tumor, on one grid;
    ``spacing``: mm per voxel along the arrays' axes) and what several metrics share."""

    def __init__(self, pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float = 2.0,
                 rule: str = "dice", min_dice: float = DEFAULT_MIN_DICE):
        self.pred, self.truth = pred, truth
        self.spacing = tuple(float(s) for s in spacing)
        self.tolerance_mm, self.rule, self.min_dice = tolerance_mm, rule, min_dice
        self.pred_tumor, self.true_tumor = pred == TUMOR, truth == TUMOR
        self.pred_voxels, self.true_voxels = int(self.pred_tumor.sum()), int(self.true_tumor.sum())
        self.voxel_ml = float(np.prod(self.spacing)) / 1000.0

    @cached_property
    def detection(self) -> tuple[list[dict], int, int]:
        """(true lesions with their match, false-positive components, predicted components), as
        :func:`metrics.lesion_detection` gives them under the case's detection rule."""
        return lesion_detection(self.pred_tumor, self.true_tumor, self.spacing, self.rule,
                                self.min_dice)


@dataclass(frozen=True)
class Figure:
    """One number a report shows: ``value`` with its 95 % interval (``ci95``, or None) and the cases
    (or lesions) it rests on (``n``). ``label``: its row in the evaluation report (it may name a
    field of the evaluation summary in braces); ``brief``: its column in the experiment's
    comparison (None leaves it out); ``note``: what that column writes beside it."""

    label: str
    brief: str | None
    value: float | None
    ci95: Sequence[float] | None
    n: int
    note: str = ""


# A per-case CSV column: its name and its value from a case's record.
Column = tuple[str, Callable[[dict], object]]


@dataclass(frozen=True)
class Metric:
    """One entry of the table.

    ``case(Case) -> dict``: the fields the metric adds to a case's record. ``pool(records, seed)
    -> dict``: the entries it adds to the summary's aggregate (usually one, named after the
    metric; ``seed`` seeds its bootstrap). ``figures(aggregate) -> [Figure]``: what reports show of
    it. ``columns``: its per-case CSV columns. ``percent``: shown as a percentage; ``digits``:
    decimals in the experiment's comparison otherwise. ``report_row``: its figures are rows of the
    evaluation report's metrics table (detection has a section of its own instead).
    """

    name: str
    case: Callable[[Case], dict]
    pool: Callable[[list[dict], int], dict]
    figures: Callable[[dict], list[Figure]]
    columns: tuple[Column, ...] = ()
    percent: bool = False
    digits: int = 3
    report_row: bool = True


def record_columns(*names: str) -> tuple[Column, ...]:
    """CSV columns that copy these fields of a case's record (empty where a record lacks one)."""
    return tuple((k, lambda record, k=k: record.get(k)) for k in names)


def tumor_cases(records: list[dict]) -> list[dict]:
    """The cases whose truth has tumor."""
    return [c for c in records if c["tumor_voxels_true"] > 0]


def healthy_cases(records: list[dict]) -> list[dict]:
    """The cases whose truth has no tumor."""
    return [c for c in records if c["tumor_voxels_true"] == 0]


def all_cases(records: list[dict]) -> list[dict]:
    return list(records)


def mean_ci(values, seed: int) -> dict:
    """Mean over cases with its 95 % bootstrap interval; undefined values (None) left out."""
    vals = [v for v in values if v is not None]
    ci = bootstrap_ci(vals, seed=seed)
    return {"mean": float(np.mean(vals)) if vals else None, "n": len(vals),
            "ci95": list(ci) if ci else None}


def mean_over_cases(name: str, label: str, brief: str | None, case: Callable[[Case], dict],
                    over: Callable[[list[dict]], list[dict]] = all_cases, *,
                    columns: tuple[Column, ...] | None = None, percent: bool = False,
                    digits: int = 3) -> Metric:
    """A metric with one value per case (the field ``name`` of ``case``'s answer), pooled as its
    mean over the cases ``over`` selects with a 95 % bootstrap interval (``{"mean", "n",
    "ci95"}``); one CSV column of that field unless ``columns`` says otherwise."""
    def pool(records: list[dict], seed: int) -> dict:
        return {name: mean_ci([c[name] for c in over(records)], seed)}

    def figures(aggregate: dict) -> list[Figure]:
        m = aggregate[name]
        return [Figure(label, brief, m["mean"], m["ci95"], m["n"])]
    return Metric(name, case, pool, figures,
                  record_columns(name) if columns is None else columns, percent, digits)


def _volumes(c: Case) -> dict:
    return {"tumor_volume_true_ml": round(c.true_voxels * c.voxel_ml, 4),
            "tumor_volume_pred_ml": round(c.pred_voxels * c.voxel_ml, 4),
            "tumor_volume_error_ml": round((c.pred_voxels - c.true_voxels) * c.voxel_ml, 4)}


def _global_dice(records: list[dict], seed: int) -> dict:
    """Tumor Dice over all voxels of all tumor cases (pooled counts, no interval)."""
    tumor = tumor_cases(records)
    inter = sum(c["tumor_overlap_voxels"] for c in tumor)
    total = sum(c["tumor_voxels_true"] + c["tumor_voxels_pred"] for c in tumor)
    return {"global_tumor_dice": (2.0 * inter / total) if total else None}


BIN_NAMES = tuple(name for name, _, _ in SIZE_BINS_MM)
_BIN_BRIEFS = {"<5": "sensitivity < 5 mm", "5-10": "5-10 mm", ">10": "> 10 mm"}


def _detection(records: list[dict], seed: int) -> dict:
    """Lesion sensitivity per size bin and over all sizes, each with its interval (cases
    resampled, their lesions together) and the false-positive lesions of all cases beside it."""
    found = [(i, les) for i, c in enumerate(records) for les in c["lesions"]]
    fp_total = int(sum(c["false_positive_lesions"] for c in records))
    out = {}
    for name in (*BIN_NAMES, "all"):
        pool = [(i, les) for i, les in found if name == "all" or les["size_bin"] == name]
        hits = sum(les["detected"] for _, les in pool)
        ci = sensitivity_ci(pool, len(records), seed)
        out[name] = {"lesions": len(pool), "detected": hits,
                     "sensitivity": hits / len(pool) if pool else None,
                     "ci95": list(ci) if ci else None, "false_positive_lesions": fp_total}
    return {"detection": out}


def _detection_figures(aggregate: dict) -> list[Figure]:
    det = aggregate["detection"]
    return [Figure(f"lesion sensitivity, radius {b} mm", _BIN_BRIEFS.get(b, b),
                   det[b]["sensitivity"], det[b]["ci95"], det[b]["lesions"],
                   f"{det[b]['detected']}/{det[b]['lesions']}") for b in BIN_NAMES]


def _false_positives(records: list[dict], seed: int) -> dict:
    counts = [c["false_positive_lesions"] for c in records]
    ci = bootstrap_ci(counts, seed=seed)
    return {"false_positive_lesions_per_scan": float(np.mean(counts)) if counts else None,
            "false_positive_lesions_per_scan_ci95": list(ci) if ci else None}


def _specificity(records: list[dict], seed: int) -> dict:
    """Scan-level specificity: healthy scans with no predicted tumor voxel (Wilson interval: the
    scans are independent; n/a below two scans)."""
    fp_free = [not c["any_predicted_tumor"] for c in healthy_cases(records)]
    ci = wilson(int(sum(fp_free)), len(fp_free)) if len(fp_free) >= MIN_INTERVAL_N else None
    return {"specificity": {"healthy_scans": len(fp_free), "true_negatives": int(sum(fp_free)),
                            "value": (sum(fp_free) / len(fp_free)) if fp_free else None,
                            "ci95": list(ci) if ci else None}}


def _specificity_figures(aggregate: dict) -> list[Figure]:
    s = aggregate["specificity"]
    return [Figure("specificity (healthy scans)", "specificity (healthy scans)", s["value"],
                   s.get("ci95"), s["healthy_scans"], f"n {s['healthy_scans']}")]


METRICS: dict[str, Metric] = {m.name: m for m in (
    mean_over_cases("tumor_dice", "tumor DSC (mean over tumor cases)", "tumor DSC",
                    lambda c: {"tumor_dice": dice(c.pred_tumor, c.true_tumor)}, tumor_cases),
    mean_over_cases("tumor_nsd", "tumor NSD ({nsd_tolerance_mm} mm)", "NSD",
                    lambda c: {"tumor_nsd": nsd(c.pred_tumor, c.true_tumor, c.spacing,
                                                c.tolerance_mm)}, tumor_cases),
    Metric("global_tumor_dice",
           lambda c: {"tumor_overlap_voxels": int((c.pred_tumor & c.true_tumor).sum())},
           _global_dice,
           lambda agg: [Figure("global tumor DSC", None, agg["global_tumor_dice"], None,
                               agg["tumor_cases"])]),
    mean_over_cases("liver_dice", "liver DSC", "liver DSC",
                    lambda c: {"liver_dice": dice(c.pred >= ORGAN, c.truth >= ORGAN)}),
    mean_over_cases("tumor_volume_error_ml", "tumor volume error (mL)", None, _volumes,
                    tumor_cases, columns=record_columns("tumor_volume_true_ml",
                                                        "tumor_volume_pred_ml",
                                                        "tumor_volume_error_ml")),
    Metric("detection", lambda c: {"lesions": c.detection[0]}, _detection, _detection_figures,
           (("lesions", lambda r: len(r["lesions"])),
            ("lesions_detected", lambda r: sum(les["detected"] for les in r["lesions"]))),
           percent=True, report_row=False),
    Metric("false_positive_lesions_per_scan",
           lambda c: {"false_positive_lesions": c.detection[1],
                      "predicted_lesions": c.detection[2]},
           _false_positives,
           lambda agg: [Figure("false-positive lesions per scan", "FP lesions / scan",
                               agg["false_positive_lesions_per_scan"],
                               agg.get("false_positive_lesions_per_scan_ci95"), agg["cases"])],
           record_columns("false_positive_lesions"), digits=1),
    Metric("specificity", lambda c: {"any_predicted_tumor": bool(c.pred_tumor.any())},
           _specificity, _specificity_figures, record_columns("any_predicted_tumor"),
           percent=True),
)}


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float = 2.0,
                 rule: str = "dice", min_dice: float = DEFAULT_MIN_DICE) -> dict:
    """One case's record from label volumes (0 background, 1 liver, 2 tumor) on one grid
    (``spacing``: mm per voxel): every metric's fields in table order, then the tumor voxel counts
    that make it a tumor or a healthy case and the detection rule in words.

    Liver is liver or tumor voxels; NSD is at ``tolerance_mm``; lesions are matched under ``rule``
    and ``min_dice`` (:func:`metrics.lesion_detection`).
    """
    if rule not in DETECTION_RULES:
        raise ValueError(f"detection rule {rule!r}: expected one of {DETECTION_RULES}")
    case = Case(pred, truth, spacing, tolerance_mm, rule, min_dice)
    record: dict = {}
    for metric in METRICS.values():
        record.update(metric.case(case))
    record.update(tumor_voxels_true=case.true_voxels, tumor_voxels_pred=case.pred_voxels,
                  detection_rule=detection_rule_text(rule, min_dice))
    return record


def summarize(records: list[dict], seed: int = 0) -> dict:
    """The aggregate of per-case records: how many cases (tumor, healthy), every metric's pooled
    entries in table order (intervals bootstrapped with ``seed``), the empty-mask and detection
    rules, and the pooled FROC curve when every case has its points."""
    out = {"cases": len(records), "tumor_cases": len(tumor_cases(records)),
           "healthy_cases": len(healthy_cases(records))}
    for metric in METRICS.values():
        out.update(metric.pool(records, seed))
    out.update(empty_mask_rule=EMPTY_RULE,
               detection_rule=next((c["detection_rule"] for c in records
                                    if "detection_rule" in c), detection_rule_text()),
               froc=summarize_froc(records))
    return out


def with_interval(value: float | None, ci95: Sequence[float] | None,
                  number: Callable[[float], str]) -> str:
    """``value [low, high]``, or the value alone without an interval ("n/a" when undefined), each
    number written by ``number``."""
    text = "n/a" if value is None else number(value)
    return f"{text} [{number(ci95[0])}, {number(ci95[1])}]" if ci95 else text
