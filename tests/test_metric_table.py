"""The metrics table is the one place a metric is declared: the per-case CSV, the summary, the
evaluation report and the experiment's comparison of arms all follow it."""

from __future__ import annotations

import csv
import json

import numpy as np

from conftest import tiny_scan
from tumorforge.cluster import experiment as X
from tumorforge.evaluation import metric_table as T
from tumorforge.evaluation.evaluate import csv_columns, evaluate
from tumorforge.manifests.conventions import ORGAN, TUMOR


def _precision(case: T.Case) -> dict:
    """Predicted tumor voxels that are tumor (undefined when none is predicted)."""
    hits = int((case.pred_tumor & case.true_tumor).sum())
    return {"tumor_precision": hits / case.pred_voxels if case.pred_voxels else None}


def _evaluated(tiny_lits, tmp_path):
    """An evaluation of the tiny LiTS scans by a segmenter that finds scan 0's lesion, misses scan
    1's and calls scan 2 (healthy) right; returns its folder and summary."""
    from tumorforge.manifests.build import build_manifest
    manifest = tmp_path / "lits.jsonl"
    build_manifest("lits", str(tiny_lits), str(manifest))
    answer = {}
    for n in range(3):
        image, label = tiny_scan(tumor=n != 2, seed=n)
        answer[image.tobytes()] = np.where(label == TUMOR, ORGAN, label) if n == 1 else label

    def oracle(image, affine):
        return answer[np.asarray(image, np.int16).tobytes()]
    out = tmp_path / "eval"
    return out, evaluate(None, str(manifest), str(out), segmenter=oracle, log=lambda _: None)


def test_a_metric_added_to_the_table_reaches_every_output(monkeypatch, tiny_lits, tmp_path):
    toy = T.mean_over_cases("tumor_precision", "tumor precision (toy)", "precision", _precision,
                            T.tumor_cases)
    monkeypatch.setitem(T.METRICS, toy.name, toy)
    out, summary = _evaluated(tiny_lits, tmp_path)
    # Per case and pooled over the tumor cases (scan 1 predicts no tumor: undefined, left out).
    precision = {c["scan_id"]: c["tumor_precision"] for c in summary["cases"]}
    assert precision == {"lits-0": 1.0, "lits-1": None, "lits-2": None}
    # One case: no interval (n/a), not a collapsed [1.0, 1.0].
    assert summary["aggregate"]["tumor_precision"] == {"mean": 1.0, "n": 1, "ci95": None}
    assert json.loads((out / "summary.json").read_text())["aggregate"]["tumor_precision"]["n"] == 1
    with open(out / "cases.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-2:] == ["tumor_precision", "seconds"]
    assert [r[-2] for r in rows[1:]] == ["1.0", "", ""]
    report = (out / "report.md").read_text()
    assert "| tumor precision (toy) | 1.000 | 1 |" in report
    # The experiment's comparison of arms, on arms pooled from this summary.
    arms = {"real": {"aggregate": summary["aggregate"]},
            "synthetic": {"aggregate": T.summarize(summary["cases"][1:], seed=0)}}
    head, table = X.comparison_table(arms)
    assert head[-1] == "precision"
    assert [row[-1] for row in table] == ["1.000", "n/a"]
    (tmp_path / "experiment").mkdir()
    X._report(str(tmp_path / "experiment"), {"experiment": "toy", "arms": arms, "pairs": [],
                              "lineage": {"folds": {"0": {}}}})
    header = next(line for line in (tmp_path / "experiment" / "report.md").read_text().splitlines()
                  if line.startswith("| arm |"))
    assert header.endswith("| specificity (healthy scans) | precision |")


def test_the_table_keeps_the_outputs_columns_in_their_order(tiny_lits, tmp_path):
    out, summary = _evaluated(tiny_lits, tmp_path)
    assert [name for name, _ in csv_columns()] == [
        "scan_id", "role", "source", "fold", "tumor_dice", "tumor_nsd", "liver_dice",
        "tumor_volume_true_ml", "tumor_volume_pred_ml", "tumor_volume_error_ml", "lesions",
        "lesions_detected", "false_positive_lesions", "any_predicted_tumor", "seconds"]
    table = (out / "report.md").read_text().split("| metric | value | n |\n|---|---|---|\n")[1]
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.split("\n\n")[0].splitlines()]
    assert rows == ["tumor DSC (mean over tumor cases)", "tumor NSD (2.0 mm)", "global tumor DSC",
                    "liver DSC", "tumor volume error (mL)", "false-positive lesions per scan",
                    "specificity (healthy scans)"]
    head, table = X.comparison_table({"real": {"aggregate": summary["aggregate"]}})
    assert head == ["arm", "tumor DSC", "NSD", "liver DSC", "sensitivity < 5 mm", "5-10 mm",
                    "> 10 mm", "FP lesions / scan", "specificity (healthy scans)"]
    assert table == [["real", "0.500 [0.000, 1.000]", "0.500 [0.000, 1.000]",
                      "1.000 [1.000, 1.000]", "50 % [0 %, 100 %] (1/2)", "n/a (0/0)", "n/a (0/0)",
                      "0.0 [0.0, 0.0]", "100 % (n 1)"]]
