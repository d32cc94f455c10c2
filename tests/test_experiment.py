"""``tumorforge experiment``: three arms (real, synthetic, both) on one fold of phantom LiTS scans
(simulated CT), in miniature (32^3 crops at 4 mm, 8 samples, 2 training steps), then resumed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from tumorforge.cluster.front_door import main
from conftest import user_error


@pytest.fixture(scope="module")
def inputs(phantom_root, tmp_path_factory):
    from tumorforge.manifests.build import build_manifest
    from tumorforge.manifests.schema import default_roots, read_manifest, write_jsonl
    from tumorforge.manifests.split import assign_folds
    root, _ = phantom_root
    work = tmp_path_factory.mktemp("experiment")
    lits, btcv = work / "lits.jsonl", work / "btcv.jsonl"
    build_manifest("lits", str(root / "lits"), str(lits))
    build_manifest("btcv", str(root / "btcv"), str(btcv))
    entries = assign_folds(read_manifest(str(lits), default_roots(str(lits), [str(root)])), 2, 0)
    write_jsonl(str(lits), entries)
    # The healthy pool also names a scan of the test fold (as a user's pool might): the
    # experiment must leave it out of fold 0's training data.
    pool = read_manifest(str(btcv), default_roots(str(btcv), [str(root)]))
    tested = next(e for e in entries if e.fold == 0)
    healthy = work / "healthy.jsonl"
    write_jsonl(str(healthy), pool + [dataclasses.replace(tested, role="healthy", fold=None)])
    spec = {"name": "tiny", "annotated": str(lits), "healthy": str(healthy), "folds": [0],
            "arms": [{"name": "real", "profile": "real"},
                     {"name": "synthetic", "profile": "paper-train"},
                     {"name": "both", "mix": ["real", "synthetic"]}],
            "samples": 8, "samples_per_shard": 4, "actors": 1,
            "allow_roots": [str(root)],
            "generator": {"crop_size": [32, 32, 32], "target_spacing_mm": [4.0, 4.0, 4.0],
                          "size_mix": {"medium": 1.0}},
            "train": {"model": "unet", "steps": 2, "batch_size": 1, "workers": 0,
                      "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1,
                      "device": "cpu"},
            "evaluate": {"overlap": 0.0}}
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return work, path, tested.scan_id


@pytest.mark.slow
def test_experiment_runs_every_arm_reports_and_resumes(inputs, capsys):
    import ray
    work, spec, tested = inputs
    out = work / "out"
    try:
        assert main(["experiment", str(spec), "--out", str(out)]) == 0
        result = json.loads((out / "experiment.json").read_text())
        assert list(result["arms"]) == ["real", "synthetic", "both"]
        for arm in result["arms"].values():
            assert arm["aggregate"]["cases"] == 2            # fold 0 of four scans
        assert len(result["pairs"]) == 3
        assert all(p["matched_by"] == "scan sha256" and p["shared_cases"] == 2
                   for p in result["pairs"])
        fold = result["lineage"]["folds"]["0"]["arms"]
        ids = {name: [d["dataset_id"] for d in a["datasets"]] for name, a in fold.items()}
        assert ids["both"] == ids["real"] + ids["synthetic"]      # the mix is the two datasets
        assert all(len(a["checkpoint_sha256"]) == 64 for a in fold.values())
        assert result["lineage"]["spec_sha256"]
        # The test scan in the pool is left out: fold 0 gets a pool (and a dataset) of its own,
        # and no arm's training scans include it.
        lineage = result["lineage"]["folds"]["0"]
        assert lineage["held_out_of_pool"] == [tested]
        assert fold["synthetic"]["datasets"][0]["url"].endswith("fold-0/synthetic/dataset")
        plans = {name: json.loads((out / "fold-0" / name / "dataset" / "plan.json").read_text())
                 for name in ("real", "synthetic")}
        assert all(tested not in p["scans"] for p in plans.values())
        assert any(s.startswith("btcv") for s in plans["real"]["scans"])   # healthy negatives
        report = (out / "report.md").read_text()
        assert "| real |" in report and "real vs synthetic" in report
        assert "Detection rule: dice >= 0.2" in report and "![FROC](froc.png)" in report
        assert "data:image/png;base64," in (out / "report.html").read_text()   # self-contained
        assert result["arms"]["real"]["aggregate"]["froc"][0]["threshold"] == 0.05
        # Half-finished: one evaluation is lost. A rerun redoes only that.
        index = out / "fold-0" / "synthetic" / "dataset" / "index.json"
        before = index.stat().st_mtime_ns
        checkpoint = fold["real"]["checkpoint"]
        ck_before = json.dumps(fold)
        (out / "fold-0" / "synthetic" / "evaluation" / "summary.json").unlink()
        assert main(["experiment", str(spec), "--out", str(out)]) == 0
        again = json.loads((out / "experiment.json").read_text())
        assert index.stat().st_mtime_ns == before and json.dumps(
            again["lineage"]["folds"]["0"]["arms"]) == ck_before
        assert again["arms"]["synthetic"]["aggregate"] == result["arms"]["synthetic"]["aggregate"]
        assert (out / "fold-0" / "synthetic" / "evaluation" / "summary.json").exists()
        assert checkpoint.endswith("step-000000002.pt")
        summaries = [out / "fold-0" / a / "evaluation" / "summary.json" for a in result["arms"]]
        assert all(json.loads(p.read_text())["inference"]["min_liver_contact"] == 0.6
                   for p in summaries)
        # Other evaluation settings: every evaluation is redone, nothing upstream of it.
        looser = yaml.safe_load(spec.read_text())
        looser["evaluate"]["min_liver_contact"] = 0.0
        (work / "looser.yaml").write_text(yaml.safe_dump(looser))
        assert main(["experiment", str(work / "looser.yaml"), "--out", str(out)]) == 0
        assert all(json.loads(p.read_text())["inference"]["min_liver_contact"] == 0.0
                   for p in summaries)
        assert index.stat().st_mtime_ns == before
        # A changed spec never reuses data made with other settings.
        changed = yaml.safe_load(spec.read_text())
        changed["samples"] = 12
        other = work / "changed.yaml"
        other.write_text(yaml.safe_dump(changed))
        assert "made with other settings" in user_error(
            capsys, ["experiment", str(other), "--out", str(out)])
    finally:
        ray.shutdown()


@pytest.mark.parametrize("arms, names", [
    ([{"name": "both", "mix": ["nope"]}], ["nope"]),
    ([{"name": "a", "profile": "diverse"},
      {"name": "b", "profile": "released", "ablates": "a"}], ["'b' ablates 'a'", "same profile"]),
    ([{"name": "a", "profile": "diverse"},
      {"name": "b", "profile": "diverse", "ablates": "a"}], ["'b' ablates 'a'", "changes none"]),
    ([{"name": "syn", "profile": "paper-train"},
      {"name": "syn-swin", "mix": ["syn"], "train": {"model": "swin"}}], ["syn-swin", "swin"])])
def test_bad_spec_is_one_line(tmp_path, arms, names, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "annotated": "a.jsonl", "healthy": "h.jsonl",
                                   "folds": [0], "arms": arms}))
    message = user_error(capsys, ["experiment", str(bad)])
    assert message.startswith("experiment: ")
    assert all(n in message for n in names)


def test_resume_redoes_an_evaluation_made_with_another_roi(tmp_path, monkeypatch):
    """A resumed experiment kept an evaluation made with another `roi` (issue 26); the summary
    now records the override and a change redoes the evaluation, the same settings keep it."""
    from tumorforge.cluster import experiment as X
    from tumorforge.evaluation import evaluate as E
    checkpoint = tmp_path / "step-1.pt"
    checkpoint.write_bytes(b"weights")
    folder = tmp_path / "evaluation"
    folder.mkdir()
    calls = []

    def fake_evaluate(checkpoint, test, out, **kw):      # what evaluate() records, no model run
        from tumorforge.evaluation.metrics import detection_rule_text
        calls.append(kw["roi"])
        summary = {"checkpoint_sha256": E.file_sha256(checkpoint), "nsd_tolerance_mm": 2.0,
                   "detection_rule": detection_rule_text("dice", 0.2),
                   "inference": {"roi_override": kw["roi"], "overlap": 0.75,
                                 "test_time_flips": False,
                                 "min_liver_contact": kw["min_liver_contact"]}}
        (folder / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    base = dict(name="x", annotated="a.jsonl", healthy="h.jsonl", folds=(0,),
                arms=(X.Arm(name="real", profile="real"),))
    for roi, expected in ((None, [None]), (None, [None]), (64, [None, 64]), (64, [None, 64]),
                          (None, [None, 64, None])):
        spec = X.ExperimentSpec(**base, evaluate={"roi": roi} if roi else {})
        X._evaluate(spec, str(checkpoint), "test.jsonl", str(folder), log=lambda m: None)
        assert calls == expected, (roi, calls)


def _case(scan: str, dice: float, found: list[bool], fp: int) -> dict:
    return {"scan_id": scan, "scan_sha256": {"image": scan, "label": scan}, "tumor_dice": dice,
            "tumor_nsd": dice, "liver_dice": 0.9, "tumor_overlap_voxels": 5,
            "tumor_voxels_true": 10, "tumor_voxels_pred": 10, "tumor_volume_error_ml": 0.0,
            "any_predicted_tumor": True, "false_positive_lesions": fp,
            "lesions": [{"id": i, "detected": d, "size_bin": ">10"} for i, d in enumerate(found)]}


def test_report_says_what_each_ablation_moved_and_which_arms_meet_the_targets(tmp_path):
    """The report's ablation table names the one changed setting and what moved at p < 0.05 on
    the same scans (here: the ablation finds fewer lesions and makes more false positives, with
    tumor DSC unchanged); the target table holds each synthetic arm to the real arm."""
    from tumorforge.cluster import experiment as X
    from tumorforge.evaluation.evaluate import compare
    from tumorforge.evaluation.metric_table import summarize
    n = 12
    cases = {
        "real": [_case(f"s{i}", 0.5, [True, True], 2) for i in range(n)],
        "diverse": [_case(f"s{i}", 0.5, [True, True], 1) for i in range(n)],
        "diverse-paper-grid": [_case(f"s{i}", 0.5, [True, False], 4) for i in range(n)],
    }
    arms = {}
    for name, cs in cases.items():
        path = tmp_path / f"{name}-cases.json"
        path.write_text(json.dumps({"cases": cs}))
        arms[name] = {"cases": str(path), "aggregate": summarize(cs)}
    names = list(arms)
    pairs = [compare(arms[a]["cases"], arms[b]["cases"])
             for i, a in enumerate(names) for b in names[i + 1:]]
    spec = X.ExperimentSpec(
        name="t", annotated="a.jsonl", healthy="h.jsonl", folds=(0,),
        arms=(X.Arm("real", "real"), X.Arm("diverse", "diverse"),
              X.Arm("diverse-paper-grid", "diverse", ablates="diverse",
                    generator={"looks": {"texture_grid": "paper"}})))
    result = {"experiment": "t", "arms": arms, "pairs": pairs,
              "lineage": {"spec": spec.to_json(), "folds": {"0": {}}}}
    (row,) = X.ablation_rows(result)
    assert row[:3] == ["diverse-paper-grid", "diverse",
                       "generator.looks.texture_grid default -> paper"]
    assert "24/24 -> 12/24" in row[4] and row[5].startswith("+3.0")
    assert row[6] == "moved lesions found down, false positives up"
    targets = {r[0]: r for r in X.target_rows(result)}
    assert targets["diverse"][1:] == ["1.000 x (met)", "24/24 (met)", "0.50 x (met)"]
    assert targets["diverse-paper-grid"][2:] == ["12/24 (missed)", "2.00 x (missed)"]
    X._report(str(tmp_path), result)
    report = (tmp_path / "report.md").read_text()
    assert "## Ablations: one factor changed, what it moved" in report
    assert "## Synthetic arms against the real arm" in report


@pytest.mark.parametrize("name", ["experiment-cpu-small.yaml", "experiment-evidence.yaml",
                                  "experiment-paper.yaml"])
def test_shipped_experiment_specs_load(name):
    """The example specs pass the spec checks (arms, ablations, generator and training fields)."""
    from pathlib import Path
    from tumorforge.cluster.experiment import load_spec
    spec = load_spec(str(Path(__file__).resolve().parents[1] / "cluster" / "examples" / name))
    assert spec.arms and all(a.name for a in spec.arms)
    if name == "experiment-evidence.yaml":
        assert [a.name for a in spec.arms if a.ablates == "diverse"] == [
            "diverse-paper-grid", "diverse-paper-contrast", "diverse-paper-margins",
            "diverse-pos-neg"]
