"""Whole-scan inference and the evaluate command on phantom LiTS scans."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tumorforge.cluster.front_door import main
from tumorforge.evaluation.infer import postprocess, segment


class Threshold(torch.nn.Module):
    """A stand-in model: liver where the windowed CT is bright, tumor where it is brighter still."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        out[:, 0] = 0.5
        out[:, 1] = (x[:, 0] > 0.5).float()
        out[:, 2] = 2.0 * (x[:, 0] > 0.95).float()
        return out


def test_segment_maps_back_to_the_file_grid_in_any_orientation():
    image = np.full((60, 50, 20), -1000, np.int16)
    image[10:50, 10:40, 4:16] = 150            # "liver"
    image[20:26, 20:26, 8:11] = 300            # "tumor"
    image[2:5, 2:5, 1:3] = 150                 # a stray bright speck: not the largest component
    for affine in (np.diag([-0.8, -0.8, 2.5, 1.0]), np.diag([0.8, 0.8, -2.5, 1.0])):
        out = segment(Threshold(), image, affine, roi=32, overlap=0.5)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert (out[12:48, 12:38, 5:15] >= 1).mean() > 0.95
        assert (out[21:25, 21:25, 9] == 2).all()
        assert (out[2:5, 2:5, 1:3] == 0).all()    # post-processing kept the largest liver only


def test_postprocess_drops_tumor_far_from_the_liver():
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[5:20, 5:20, 5:20] = 1
    lab[10:12, 10:12, 10:12] = 2
    lab[35:38, 35:38, 35:38] = 2             # a separate blob: not the liver, too far
    out = postprocess(lab, dilate_mm=5.0)
    assert (out[10:12, 10:12, 10:12] == 2).all() and not out[35:38, 35:38, 35:38].any()


@pytest.mark.slow
def test_evaluate_command_writes_predictions_metrics_and_report(tmp_path, capsys):
    from tumorforge.manifests.build import build_manifest
    from tumorforge.manifests.phantoms import write_layout
    from tumorforge.trainer.models import build_model
    cases = write_layout("lits", tmp_path / "lits", 4, seed=3, scale=0.12)
    manifest = tmp_path / "lits" / "m.jsonl"
    build_manifest("lits", str(tmp_path / "lits"), str(manifest))
    ckpt = tmp_path / "step-000000000.pt"
    torch.manual_seed(0)
    torch.save({"model": build_model("unet").state_dict(), "step": 0,
                "config": json.dumps({"model": "unet"})}, ckpt)
    out = tmp_path / "eval"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    keep = [x for x in lines if x["scan_id"] in ("lits-0", "lits-3")]     # one tumor, one healthy
    manifest.write_text("".join(json.dumps(x) + "\n" for x in keep))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest),
                 "--out", str(out), "--roi", "48", "--overlap", "0", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert [c["scan_id"] for c in summary["cases"]] == ["lits-0", "lits-3"]
    assert summary["aggregate"]["healthy_cases"] == 1 and summary["aggregate"]["tumor_cases"] == 1
    for name in ("cases.csv", "report.md", "report.html", "detection_by_size.png", "case_dice.png",
                 "example_0.png"):
        assert (out / name).stat().st_size > 0
    pred = nib.load(out / "predictions" / "lits-0.nii.gz")
    src = nib.load(cases[0]["image"])
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert "empty" in (out / "report.md").read_text()
