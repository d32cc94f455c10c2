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
    for layout in ("lits", "msd", "btcv", "chaos"):
        assert (out / "data" / f"{layout}.jsonl").stat().st_size > 0
        assert any((out / "previews").glob(f"{layout}-*.png"))
    healthy = [json.loads(x) for x in (out / "data" / "healthy.jsonl").read_text().splitlines()]
    assert {e["source"] for e in healthy} == {"chaos", "btcv", "lits"}
    assert all(e["role"] == "healthy" for e in healthy)
    pngs = sorted((out / "synthetic").glob("*.png"))
    labels = sorted((out / "synthetic").glob("*.label.nii.gz"))
    assert len(pngs) == 4 and len(labels) == 4
    assert "verify: 0 problem(s)" in text and "bit-exact" in text
    assert (out / "dataset" / "index.json").exists()
    assert "trained to step 2" in text and (out / "train" / "checkpoints").is_dir()
    assert (out / "evaluation" / "report.html").exists()
    # The trained model carries its preprocessing into evaluation: the dataset it saw, its crops.
    index = json.loads((out / "dataset" / "index.json").read_text())
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["inference"]["dataset_ids"] == [index["dataset_id"]]
    assert summary["inference"]["roi_zyx"] == [32, 32, 32]
    assert summary["inference"]["spacing_mm"] == [3.0, 3.0, 3.0]
