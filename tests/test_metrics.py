"""Metrics on constructed cases with known answers, and the paired comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tumorforge.evaluation.evaluate import compare
from tumorforge.evaluation.metric_table import case_metrics, summarize
from tumorforge.evaluation.metrics import dice, lesions, nsd
from conftest import user_error


def ball(shape, center, radius_mm, spacing):
    ax = [(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing)]
    x, y, z = np.meshgrid(*ax, indexing="ij")
    return x ** 2 + y ** 2 + z ** 2 <= radius_mm ** 2


def test_dice_known_values_and_empty_rule():
    a = np.zeros((10, 10, 10), bool)
    b = a.copy()
    assert dice(a, b) is None                         # both empty: undefined
    a[2:4, 2:4, 2:4] = True                           # 8 voxels
    assert dice(a, b) == 0.0                          # one empty: 0
    b[3:5, 2:4, 2:4] = True                           # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)


def test_nsd_known_values_with_anisotropic_spacing():
    spacing = (0.5, 0.5, 3.0)
    shape = (40, 40, 12)
    cube = np.zeros(shape, bool)
    cube[10:30, 10:30, 3:9] = True
    assert nsd(cube, cube, spacing) == 1.0
    assert nsd(cube, np.zeros(shape, bool), spacing) == 0.0
    assert nsd(np.zeros(shape, bool), np.zeros(shape, bool), spacing) is None
    # One slice thicker (3 mm along z): top face 3 mm away -> beyond a 2 mm tolerance, within 4 mm.
    taller = cube.copy()
    taller[10:30, 10:30, 9] = True
    assert 0.5 < nsd(cube, taller, spacing, 2.0) < 1.0
    assert nsd(cube, taller, spacing, 3.01) == 1.0
    # Shifted 1 mm in-plane (2 voxels of 0.5 mm): every surface point within 2 mm.
    shifted = np.roll(cube, 2, axis=0)
    assert nsd(cube, shifted, spacing, 2.0) == 1.0
    assert nsd(cube, shifted, spacing, 0.5) < 0.9


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 2.5), (1.5, 1.5, 5.0), (2.5, 0.7, 1.0)])
def test_nsd_agrees_with_monai_surface_dice(spacing):
    """An independent implementation: MONAI's compute_surface_dice with use_subvoxels=True."""
    import torch
    from monai.metrics import compute_surface_dice
    rng = np.random.default_rng(int(spacing[0] * 10))
    shape = (64, 60, 40)
    c = np.array(shape) / 2
    for _ in range(3):
        r = rng.uniform(8, 18)
        p = ball(shape, c, r, spacing)
        t = ball(shape, c + rng.uniform(-2, 2, 3), r * rng.uniform(0.85, 1.15), spacing)
        to = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
        ref = float(compute_surface_dice(to(p), to(t), [2.0], include_background=False,
                                         spacing=list(spacing), use_subvoxels=True)[0, 0])
        assert abs(nsd(p, t, spacing, 2.0) - ref) <= 0.025, (nsd(p, t, spacing, 2.0), ref)


def test_lesions_detection_and_false_positives():
    spacing = (1.0, 1.0, 2.0)
    truth = np.zeros((60, 60, 30), np.uint8)
    truth[5:55, 5:55, 2:28] = 1
    small = ball(truth.shape, (15, 15, 10), 3.0, spacing)      # r ~3 mm -> "<5"
    medium = ball(truth.shape, (40, 15, 10), 7.0, spacing)     # "5-10"
    large = ball(truth.shape, (30, 40, 15), 14.0, spacing)     # ">10"
    for m in (small, medium, large):
        truth[m] = 2
    pred = (truth >= 1).astype(np.uint8)
    pred[medium | large] = 2                                   # misses the small one
    pred[ball(truth.shape, (10, 45, 5), 2.0, spacing)] = 2     # a false positive
    m = case_metrics(pred, truth, spacing)
    sizes = {les["size_bin"]: les["detected"] for les in m["lesions"]}
    assert sizes == {"<5": False, "5-10": True, ">10": True}
    assert m["false_positive_lesions"] == 1 and m["any_predicted_tumor"]
    radii = sorted(les["radius_mm"] for les in m["lesions"])
    assert radii[0] == pytest.approx(3.0, abs=0.5) and radii[2] == pytest.approx(14.0, abs=0.5)
    _, comps = lesions(truth == 2, spacing)
    assert len(comps) == 3


def test_summary_sensitivity_specificity_and_strictness():
    spacing = (1.0, 1.0, 1.0)
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[2:28, 2:28, 2:28] = 1
    tumor = truth.copy()
    tumor[10:16, 10:16, 10:16] = 2
    hit = case_metrics(tumor, tumor, spacing)
    miss = case_metrics(truth, tumor, spacing)
    healthy_ok = case_metrics(truth, truth, spacing)
    healthy_fp = case_metrics(tumor, truth, spacing)
    s = summarize([hit, miss, healthy_ok, healthy_fp])
    assert s["detection"]["all"] == {**s["detection"]["all"], "lesions": 2, "detected": 1,
                                     "sensitivity": 0.5}
    assert s["specificity"]["value"] == 0.5 and s["specificity"]["healthy_scans"] == 2
    assert s["tumor_dice"]["mean"] == 0.5 and s["tumor_dice"]["n"] == 2
    assert s["global_tumor_dice"] == pytest.approx(2 * 216 / (216 * 3))
    json.loads(json.dumps(s, allow_nan=False))
    assert "both empty" in s["empty_mask_rule"]


def _summary(path, dices, detections):
    cases = [{"scan_id": f"s{i}", "tumor_dice": d,
              "lesions": [{"id": j + 1, "detected": x} for j, x in enumerate(det)]}
             for i, (d, det) in enumerate(zip(dices, detections))]
    path.write_text(json.dumps({"cases": cases}))
    return str(path)


def test_compare_wilcoxon_and_mcnemar(tmp_path):
    a = _summary(tmp_path / "a.json", [0.8, 0.7, 0.9, 0.6, 0.75, 0.85],
                 [[True, True], [True], [True, False], [True], [True], [True]])
    b = _summary(tmp_path / "b.json", [0.5, 0.4, 0.6, 0.3, 0.45, 0.55],
                 [[False, False], [False], [False, False], [False], [True], [False]])
    r = compare(a, b)
    assert r["shared_cases"] == 6
    assert r["wilcoxon_tumor_dice"]["p_value"] == pytest.approx(0.03125)   # 6 wins of 6, exact
    m = r["mcnemar_lesions"]
    assert (m["a_only"], m["b_only"], m["both"], m["neither"]) == (6, 0, 1, 1)
    assert m["p_value"] == pytest.approx(2 * 0.5 ** 6)


def test_compare_command_writes_json(tmp_path, capsys):
    from tumorforge.cluster.front_door import main
    a = _summary(tmp_path / "a.json", [0.8, 0.6], [[True], [False]])
    b = _summary(tmp_path / "b.json", [0.7, 0.6], [[False], [False]])
    out = tmp_path / "cmp.json"
    assert main(["compare", a, b, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["shared_cases"] == 2 and result["mcnemar_lesions"]["a_only"] == 1
    assert "Wilcoxon" in capsys.readouterr().out


def test_blob_touching_a_lesion_is_not_a_detection_under_the_strict_rule():
    """Issue 13: a model predicting a 6 L blob of tumor 'detected' every lesion under the any-voxel
    rule. By default a lesion needs one predicted component with Dice >= 0.2; the blob is counted
    as a false positive instead."""
    spacing = (1.0, 1.0, 1.0)
    truth = np.zeros((80, 80, 80), np.uint8)
    truth[2:78, 2:78, 2:78] = 1
    lesion = ball(truth.shape, (20, 20, 20), 5.0, spacing)               # ~520 voxels
    truth[lesion] = 2
    pred = (truth >= 1).astype(np.uint8)
    blob = ball(truth.shape, (38, 38, 38), 30.0, spacing)               # ~113,000 voxels
    pred[blob] = 2                                                      # covers part of the lesion
    assert (blob & lesion).any() and not lesion[blob].all()
    strict = case_metrics(pred, truth, spacing)
    (les,) = strict["lesions"]
    assert not les["detected"] and les["best_dice"] < 0.2
    assert strict["false_positive_lesions"] == 1 and "Dice >= 0.2" in strict["detection_rule"]
    lenient = case_metrics(pred, truth, spacing, rule="any-voxel")
    assert lenient["lesions"][0]["detected"] and lenient["false_positive_lesions"] == 0
    # A partial but real match detects it: half the lesion predicted, Dice ~0.67.
    half = (truth >= 1).astype(np.uint8)
    half[lesion & (np.indices(truth.shape)[0] >= 20)] = 2
    ok = case_metrics(half, truth, spacing)
    assert ok["lesions"][0]["detected"] and 0.5 < ok["lesions"][0]["best_dice"] < 0.8
    assert ok["false_positive_lesions"] == 0 and ok["lesions"][0]["center_vox"] == [20, 20, 20]
    summary = summarize([strict, ok])
    assert summary["detection"]["all"]["false_positive_lesions"] == 1
    with pytest.raises(ValueError, match="detection rule"):
        case_metrics(pred, truth, spacing, rule="overlap")


def test_compare_matches_scans_by_content_and_refuses_same_ids_with_other_contents(tmp_path,
                                                                                    capsys):
    """compare paired two evaluations of different phantom sets because their scan ids matched,
    and printed a p-value without a warning. Summaries now carry each scan's sha256."""
    from tumorforge.cluster.front_door import main

    def summary(path, shas):
        cases = [{"scan_id": f"lits-{i}", "scan_sha256": {"image": sha, "label": "l" + sha},
                  "tumor_dice": 0.5 + 0.1 * i, "lesions": [{"id": 1, "detected": True}]}
                 for i, sha in enumerate(shas)]
        path.write_text(json.dumps({"cases": cases}))
        return str(path)
    a = summary(tmp_path / "a.json", ["s0", "s1", "s2"])
    same = summary(tmp_path / "same.json", ["s0", "s1", "s2"])
    other = summary(tmp_path / "other.json", ["s0", "x1", "x2"])
    assert compare(a, same)["matched_by"] == "scan sha256"
    with pytest.raises(ValueError) as exc:
        compare(a, other)
    assert "['lits-1', 'lits-2']" in str(exc.value)
    assert "same scan id but other contents" in user_error(capsys, ["compare", a, other])
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"cases": [{k: v for k, v in c.items() if k != "scan_sha256"}
                                            for c in json.loads(open(a).read())["cases"]]}))
    assert compare(a, str(legacy))["matched_by"].startswith("scan id only")


def test_froc_points_trade_false_positives_for_sensitivity():
    """Issue 13: the FROC-style curve. A lesion predicted at probability 0.8 and a false blob at
    0.3: below 0.3 both are components (one detection, one false positive), above 0.8 neither."""
    from tumorforge.evaluation.metrics import froc_points, summarize_froc
    spacing = (1.0, 1.0, 1.0)
    truth = np.zeros((60, 60, 60), np.uint8)
    truth[5:55, 5:55, 5:55] = 1
    lesion = ball(truth.shape, (20, 20, 20), 11.0, spacing)
    truth[lesion] = 2
    prob = np.zeros(truth.shape, np.uint8)
    prob[lesion] = round(0.8 * 255)
    prob[ball(truth.shape, (40, 40, 40), 5.0, spacing)] = round(0.3 * 255)
    prob[50, 50, 50] = 255                      # one voxel: a speck under a 2 mm sphere
    points = froc_points(prob, truth >= 1, truth, spacing, min_radius_mm=2.0,
                         thresholds=(0.1, 0.5, 0.9))
    assert [p["false_positive_lesions"] for p in points] == [1, 0, 0]
    assert [p["detected"][">10"] for p in points] == [1, 1, 0]
    assert points[0]["lesions"] == {"<5": 0, "5-10": 0, ">10": 1}
    outside = froc_points(prob, np.zeros_like(truth, bool), truth, spacing, thresholds=(0.1,))
    assert outside[0]["detected"][">10"] == 0         # nothing predicted outside the region
    # The post-processing's liver-contact rule applies at every threshold: the false blob moved
    # to the liver's edge, mostly outside it, no longer counts once the rule is on.
    edge = np.where(ball(truth.shape, (40, 40, 40), 5.0, spacing), 0, prob)
    edge[ball(truth.shape, (57, 30, 30), 5.0, spacing)] = round(0.3 * 255)
    region = (truth >= 1) | (edge > 0)
    fp = lambda contact: froc_points(edge, region, truth, spacing, min_radius_mm=2.0,
                                     thresholds=(0.1,), min_liver_contact=contact
                                     )[0]["false_positive_lesions"]
    assert (fp(0.0), fp(0.6)) == (1, 0)
    pooled = summarize_froc([{"froc": points}, {"froc": points}])
    assert [p["sensitivity"] for p in pooled] == [1.0, 1.0, 0.0]
    assert pooled[0]["false_positive_lesions_per_scan"] == 1.0
    assert summarize_froc([{"froc": points}, {}]) is None


def test_intervals_do_not_collapse_on_zero_counts_or_one_case():
    """0 of 10 lesions found is not "0 % [0 %, 0 %]": Wilson's interval reaches 28 %; one case
    gives no interval at all; the sensitivity interval is at least as wide as Wilson's and as the
    case bootstrap's."""
    from tumorforge.evaluation.metrics import (bootstrap_ci, case_bootstrap_sensitivity,
                                               sensitivity_ci, wilson)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    missed = [(i, {"detected": False}) for i in range(10)]
    assert case_bootstrap_sensitivity(missed, 10, seed=0) == (0.0, 0.0)     # what it said before
    assert sensitivity_ci(missed, 10, seed=0) == pytest.approx((0.0, 0.2775), abs=1e-4)
    clustered = [(0, {"detected": True})] * 6 + [(1, {"detected": False})] * 6
    lo, hi = sensitivity_ci(clustered, 2, seed=0)
    w, b = wilson(6, 12), case_bootstrap_sensitivity(clustered, 2, seed=0)
    assert lo == min(w[0], b[0]) and hi == max(w[1], b[1]) and (lo, hi) == (0.0, 1.0)
    assert bootstrap_ci([0.7]) is None and sensitivity_ci(missed[:1], 1, seed=0) is None
    assert bootstrap_ci([0.5, 0.5]) == (0.5, 0.5)          # two alike cases: every resample alike
