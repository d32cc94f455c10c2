"""``make demo`` in miniature: the whole chain on small phantoms."""

from __future__ import annotations

import json

import pytest

from tumorforge.cluster.front_door import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys, monkeypatch):
    import ray
    from tumorforge.cluster import demo
    # Fewer phantom cases than the demo's own; each layout keeps what the chain needs: LiTS five
    # for the 5-fold split, one of them (case 3) tumor-free for the healthy pool.
    monkeypatch.setattr(demo, "DEMO_CASES", {"lits": 5, "msd": 2, "btcv": 1, "chaos": 1})
    out = tmp_path / "demo"
    try:
        # 8 samples: the audit regenerates sample 7.
        assert main(["demo", "--out", str(out), "--scale", "0.15", "--train-steps", "2",
                     "--eval-cases", "1", "--samples", "8", "--eval-overlap", "0",
                     "--crop", "32", "--spacing", "3"]) == 0
    finally:
        ray.shutdown()
    text = capsys.readouterr().out
    assert "validation problems: 0" in text and "demo finished" in text
    # The last line says what the model did on the held-out scans, in figures.
    last = text.strip().splitlines()[-1]
    assert last.startswith("demo finished") and "2-step CPU model on 1 held-out scan(s)" in last
    assert all(w in last for w in ("liver DSC", "tumor DSC", "lesions found", "false-positive"))
    for layout in ("lits", "msd", "btcv", "chaos"):
        assert (out / "data" / f"{layout}.jsonl").stat().st_size > 0
        assert any((out / "previews").glob(f"{layout}-*.png"))
    healthy = [json.loads(x) for x in (out / "data" / "healthy.jsonl").read_text().splitlines()]
    assert {e["source"] for e in healthy} == {"chaos", "btcv", "lits"}
    assert all(e["role"] == "healthy" for e in healthy)
    pngs = sorted((out / "synthetic").glob("*.png"))
    labels = sorted((out / "synthetic").glob("*.label.nii.gz"))
    assert len(pngs) == 4 and len(labels) == 4
    # Two datasets (tumor-centred crops; organ/background crops), both verified, one audited.
    assert "dataset: 0 problem(s)" in text and "dataset-pos-neg: 0 problem(s)" in text
    assert "bit-exact" in text
    plans = [json.loads((out / name / "plan.json").read_text())
             for name in ("dataset", "dataset-pos-neg")]
    policies = [p["identity"]["generator"]["crop_policy"] for p in plans]
    assert policies == ["tumor-centred", "pos-neg"]
    assert "trained to step 2" in text and (out / "train" / "checkpoints").is_dir()
    assert (out / "evaluation" / "report.html").exists()
    # The trained model carries its preprocessing into evaluation: the datasets it saw, its crops.
    ids = [json.loads((out / name / "index.json").read_text())["dataset_id"]
           for name in ("dataset", "dataset-pos-neg")]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["inference"]["dataset_ids"] == ids
    assert summary["inference"]["roi_zyx"] == [32, 32, 32]
    assert summary["inference"]["spacing_mm"] == [3.0, 3.0, 3.0]
