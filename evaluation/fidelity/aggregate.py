"""Aggregating the fidelity report's measures: per input, lesion origin and size type, the
distribution (median and quartiles) of every measure, the shares the location rules are judged
by, the post-processing figures, and the two-sample tests of synthetic against real lesions.

Rows are plain dicts ready for JSON, in the order a reader scans them: sizes from tiny to large,
then ``mix`` and ``satellite``, then ``all``.
"""

from __future__ import annotations

import numpy as np

from tumorforge.generator.api import GeneratorConfig

from .inputs import Measured

INSIDE_TARGET = 0.9                   # a tumor "keeps its volume" with this share inside the liver
SIZE_ORDER = ("tiny", "small", "medium", "large", "mix", "satellite")
LESION_MEASURES = ("radius_mm", "contrast_hu", "hu_drop_hu", "depth_mm", "reference_depth_mm",
                   "depth_ratio", "texture_sd_hu", "parenchyma_sd_hu", "texture_ratio", "grain_mm",
                   "parenchyma_grain_mm", "grain_ratio")
TUMOR_MEASURES = ("inside_fraction", "vessel_voxels", "shell_r")
KS_MEASURES = ("radius_mm", "contrast_hu", "depth_ratio", "texture_ratio")
# Against another generator's tumors (a lesion table): what a generator draws, size and darkening.
REFERENCE_MEASURES = ("radius_mm", "hu_drop_hu")


def distribution(values) -> dict:
    """n, median, quartiles and IQR of the values that are not None."""
    v = np.asarray([x for x in values if x is not None], float)
    if v.size == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None, "iqr": None}
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(v.size), "median": float(med), "q1": float(q1), "q3": float(q3),
            "iqr": float(q3 - q1)}


def group_order(name: str):
    """Sort key of a size type: :data:`SIZE_ORDER`, then other names, ``all`` last."""
    return (SIZE_ORDER.index(name) if name in SIZE_ORDER else len(SIZE_ORDER), name == "all", name)


def summarize_groups(inputs: list[Measured]) -> list[dict]:
    """One row per (input, lesion origin, size type), plus ``all`` per input and origin."""
    rows = []
    for m in inputs:
        origins = sorted({les.origin for les in m.lesions} | ({"synthetic"} if m.tumors else set()))
        for origin in origins:
            lesions_ = [les for les in m.lesions if les.origin == origin]
            tumors = m.tumors if origin == "synthetic" else []
            groups = sorted({les.group for les in lesions_} | {t.group for t in tumors},
                            key=group_order)
            for group in groups + ["all"]:
                ls = [les for les in lesions_ if group in ("all", les.group)]
                ts = [t for t in tumors if group in ("all", t.group)]
                row = {"source": m.name, "input": m.kind, "origin": origin, "type": group,
                       "lesions": len(ls), "tumors": len(ts),
                       "cut_by_crop": sum(les.cut_by_crop for les in ls),
                       "merged": sum(les.records > 1 for les in ls),
                       "measures": {k: distribution(getattr(les, k) for les in ls)
                                    for k in LESION_MEASURES}}
                row["measures"].update({k: distribution(getattr(t, k) for t in ts)
                                        for k in TUMOR_MEASURES})
                if ts:
                    reasons = sorted({t.location_reason for t in ts if t.location_fallback})
                    row["vessel_hit_share"] = sum((t.vessel_voxels or 0) > 0 for t in ts) / len(ts)
                    row["inside_90_share"] = sum((t.inside_fraction or 0) >= INSIDE_TARGET
                                                 for t in ts) / len(ts)
                    shells = [t.shell_r for t in ts if t.shell_r is not None]
                    lo, hi = (m.info.get("generator_config") or {}).get(
                        "satellite_shell", GeneratorConfig().satellite_shell)
                    row["in_shell_share"] = (sum(lo <= v <= hi for v in shells) / len(shells)
                                             if shells else None)
                    row["fallback"] = {
                        "share": sum(t.location_fallback for t in ts) / len(ts),
                        "by_reason": {r or "unspecified": sum(t.location_fallback and
                                                              t.location_reason == r for t in ts)
                                      / len(ts) for r in reasons}}
                else:
                    row["vessel_hit_share"] = None
                    row["inside_90_share"] = None
                    row["in_shell_share"] = None
                    row["fallback"] = None
                rows.append(row)
    return rows


def compare_to_real(inputs: list[Measured], bins) -> list[dict]:
    """Two-sample Kolmogorov-Smirnov tests of each synthetic size type against the real lesions of
    the same type (every real input pooled; ``mix`` and ``satellite`` against all real lesions),
    per measure of ``KS_MEASURES``: n on each side, the statistic D and its p-value, with tumors
    as the unit (``tests``) and with volumes as the unit (``volume_tests``: each volume's mean,
    :func:`_volume_means`)."""
    real = [les for m in inputs for les in m.lesions if les.origin == "real"]
    if not real:
        return []
    rows = []
    for m in inputs:
        synthetic = [les for les in m.lesions if les.origin == "synthetic"]
        for group in sorted({les.group for les in synthetic}, key=group_order):
            versus = "all" if group not in {name for name, _, _ in bins} else group
            ref = [les for les in real if versus == "all" or les.group == versus]
            mine = [les for les in synthetic if les.group == group]
            row = {"source": m.name, "type": group, "real_type": versus, "tests": {},
                   "volume_tests": {}}
            for k in KS_MEASURES:
                row["tests"][k] = _ks([getattr(les, k) for les in mine],
                                      [getattr(les, k) for les in ref])
                row["volume_tests"][k] = _ks(_volume_means(mine, k), _volume_means(ref, k))
            rows.append(row)
    return rows


def compare_to_reference(inputs: list[Measured]) -> list[dict]:
    """Two-sample KS tests of each synthetic size type against every reference generator's
    lesions of the same type (lesion tables, ``kind == "reference"``), per measure of
    ``REFERENCE_MEASURES``, with tumors and with volumes as the unit (as :func:`compare_to_real`).
    Types the reference does not have are left out."""
    references = [m for m in inputs if m.kind == "reference"]
    rows = []
    for m in inputs:
        if m.kind == "reference":
            continue
        synthetic = [les for les in m.lesions if les.origin == "synthetic"]
        for ref in references:
            for group in sorted({les.group for les in synthetic}, key=group_order):
                theirs = [les for les in ref.lesions if les.group == group]
                if not theirs:
                    continue
                mine = [les for les in synthetic if les.group == group]
                rows.append({
                    "source": m.name, "reference": ref.name, "type": group,
                    "tests": {k: _ks([getattr(les, k) for les in mine],
                                     [getattr(les, k) for les in theirs], "n_reference")
                              for k in REFERENCE_MEASURES},
                    "volume_tests": {k: _ks(_volume_means(mine, k), _volume_means(theirs, k),
                                            "n_reference")
                                     for k in REFERENCE_MEASURES}})
    return rows


def _volume_means(lesions, measure: str) -> list[float]:
    """The mean of ``measure`` over the lesions of each volume (a dataset sample, a synthesized
    or real case: one ``(source, scan_id, sample)``). Tumors of one volume share its draws (one
    texture, blur and darkening per released sample; one scan's parenchyma), so they are not
    independent; one value per volume is."""
    per: dict = {}
    for les in lesions:
        value = getattr(les, measure)
        if value is not None:
            per.setdefault((les.source, les.scan_id, les.sample), []).append(value)
    return [float(np.mean(v)) for _, v in sorted(per.items())]


def _ks(a, b, other: str = "n_real") -> dict:
    """Two-sample KS of ``a`` against ``b`` (None values left out); d and p None below 2 each.
    ``other`` names the count of ``b``."""
    from scipy.stats import ks_2samp
    a, b = [x for x in a if x is not None], [x for x in b if x is not None]
    if len(a) < 2 or len(b) < 2:
        return {"n": len(a), other: len(b), "d": None, "p": None}
    test = ks_2samp(a, b)
    return {"n": len(a), other: len(b), "d": float(test.statistic), "p": float(test.pvalue)}


def summarize_post(inputs: list[Measured]) -> list[dict]:
    """Post-processing figures per (input, size type): distributions over the tumors measured."""
    rows = []
    for m in inputs:
        for group in sorted({p.group for p in m.post}, key=group_order):
            ps = [p for p in m.post if p.group == group]
            mass = [p.mass_effect for p in ps if p.mass_effect]
            cap = [p.capsule for p in ps if p.capsule]
            rows.append({"source": m.name, "type": group, "tumors": len(ps),
                         "mass_effect": {k: distribution(x[k] for x in mass)
                                         for k in ("max_mm", "median_mm", "median_moved_mm",
                                                   "moved_share", "max_theory_mm")},
                         "capsule": {k: distribution(x[k] for x in cap)
                                     for k in ("peak_hu", "band_mean_hu", "width_mm", "max_hu",
                                               "offset_mm")}})
    return rows

