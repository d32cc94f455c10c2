"""Whole-scan inference and evaluation on tiny hand-made LiTS scans: the full evaluate path with a
segmenter whose answer is known, a checkpoint run the way its preprocessing record says, and the
command's refusals."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import tiny_scan

from tumorforge.evaluation.evaluate import evaluate
from tumorforge.evaluation.infer import postprocess, segment
from tumorforge.manifests.conventions import ORGAN, TUMOR
from tumorforge.manifests.organs import ORGANS
from tumorforge.trainer.preprocessing import Preprocessing
from conftest import user_error

LABEL_NAMES = ORGANS["liver"].classes

PREP = Preprocessing(spacing_mm=(1.0, 1.0, 1.0), crop_size=(32, 32, 32),
                     window_hu=ORGANS["liver"].training_window_hu, class_names=LABEL_NAMES,
                     dataset_ids=("ds-test",))


class Threshold(torch.nn.Module):
    """A stand-in model: liver where the windowed CT is bright, tumor where it is brighter still.
    Records the shape of every window it is given and the range of its input values."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.windows, self.values = set(), []

    def forward(self, x):
        self.windows.add(tuple(x.shape[2:]))
        self.values.append((float(x.min()), float(x.max())))
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        out[:, 0] = 0.5
        out[:, ORGAN] = (x[:, 0] > 0.5).float()
        out[:, TUMOR] = 2.0 * (x[:, 0] > 0.95).float()
        return out


def _checkpoint(folder, prep: Preprocessing | None, model="unet") -> str:
    """A trainer checkpoint of an untrained model, written by the trainer's own writer."""
    from tumorforge.trainer import checkpoint as ckpt
    from tumorforge.trainer.models import build_model
    torch.manual_seed(0)
    state = {"model": build_model(model, 3).state_dict(), "config": json.dumps({"model": model})}
    if prep is not None:
        state["preprocessing"] = json.dumps(prep.to_json())
    return ckpt.save(str(folder), 0, state, keep=1)


def test_segment_maps_back_to_the_file_grid_in_any_orientation():
    image = np.full((60, 50, 20), -1000, np.int16)
    image[10:50, 10:40, 4:16] = 150            # "liver"
    image[20:26, 20:26, 8:11] = 300            # "tumor"
    image[2:5, 2:5, 1:3] = 150                 # a stray bright speck: not the largest component
    for affine in (np.diag([-0.8, -0.8, 2.5, 1.0]), np.diag([0.8, 0.8, -2.5, 1.0])):
        out = segment(Threshold(), image, affine, PREP, overlap=0.5)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert (out[12:48, 12:38, 5:15] >= ORGAN).mean() > 0.95
        assert (out[21:25, 21:25, 9] == TUMOR).all()
        assert (out[2:5, 2:5, 1:3] == 0).all()    # post-processing kept the largest liver only


def test_segment_runs_the_model_as_its_preprocessing_says():
    image = np.full((40, 40, 16), -1000, np.int16)
    image[5:35, 5:35, 2:14] = 150
    prep = Preprocessing(spacing_mm=(2.0, 2.0, 2.0), crop_size=(16, 32, 48),
                         window_hu=(100.0, 200.0), class_names=LABEL_NAMES, dataset_ids=("a",))
    model = Threshold()
    out = segment(model, image, np.diag([0.8, 0.8, 2.5, 1.0]), prep, overlap=0.0)
    assert model.windows == {(48, 32, 16)}          # prep.roi: the crop size in (Z, Y, X)
    # 150 HU is the middle of the [100, 200] window; air clips to 0.
    assert max(hi for _, hi in model.values) == pytest.approx(0.5, abs=0.01)
    assert min(lo for lo, _ in model.values) == 0.0
    assert out.shape == image.shape and not out.any()   # 0.5 is not above the liver threshold
    out = segment(Threshold(), image, np.diag([0.8, 0.8, 2.5, 1.0]), prep, roi=(16, 16, 16),
                  overlap=0.0)
    assert out.shape == image.shape


def test_postprocess_drops_tumor_far_from_the_liver_and_specks():
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[5:20, 5:20, 5:20] = ORGAN
    lab[8:12, 8:12, 8:12] = TUMOR            # 64 mm^3: kept
    lab[15:17, 15:17, 15:17] = TUMOR         # 8 mm^3, under a 2 mm sphere (34 mm^3): a speck
    lab[35:38, 35:38, 35:38] = TUMOR         # a separate blob: not the liver, too far
    out = postprocess(lab, dilate_mm=5.0)
    assert (out[8:12, 8:12, 8:12] == TUMOR).all() and not out[35:38, 35:38, 35:38].any()
    assert (out[15:17, 15:17, 15:17] == ORGAN).all()
    assert (postprocess(lab, dilate_mm=5.0, min_tumor_radius_mm=0)[15:17, 15:17, 15:17]
            == TUMOR).all()


def test_postprocess_drops_tumor_mostly_bordered_by_other_tissue():
    """A predicted lesion inside the liver is kept; a blob stuck to the liver's surface but mostly
    outside it (an extrahepatic false positive: its border is mostly not liver) goes to background,
    unless the rule is off."""
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[5:25, 5:25, 5:25] = ORGAN
    lab[10:14, 10:14, 10:14] = TUMOR         # enclosed by liver
    lab[22:32, 10:16, 10:16] = TUMOR         # 3 of its 10 slabs in the liver
    out = postprocess(lab, dilate_mm=10.0)
    assert (out[10:14, 10:14, 10:14] == TUMOR).all()
    assert not out[22:32, 10:16, 10:16].any()
    assert (postprocess(lab, dilate_mm=10.0, min_liver_contact=0)[22:32, 10:16, 10:16]
            == TUMOR).all()


@pytest.fixture
def lits_manifest(tiny_lits, tmp_path):
    """The tiny LiTS scans (0 and 1 with a lesion, 2 healthy) and their manifest."""
    from tumorforge.manifests.build import build_manifest
    manifest = tmp_path / "lits.jsonl"
    build_manifest("lits", str(tiny_lits), str(manifest))
    return manifest


def _strict(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))


def test_evaluate_scores_a_known_answer(lits_manifest, tmp_path):
    # What conftest wrote, by image: the answer is the truth, except that scan 1's lesion is
    # called liver (a missed lesion).
    written = {n: tiny_scan(tumor=n != 2, seed=n) for n in range(3)}
    answer = {}
    for n, (image, label) in written.items():
        answer[image.tobytes()] = np.where(label == TUMOR, ORGAN, label) if n == 1 else label

    def oracle(image, affine):
        assert np.allclose(affine, np.diag([0.8, 0.8, 2.5, 1.0]))
        return answer[np.asarray(image, np.int16).tobytes()]

    out = tmp_path / "eval"
    summary = evaluate(None, str(lits_manifest), str(out), segmenter=oracle, log=lambda _: None)
    assert summary == _strict(out / "summary.json")
    assert summary["model"] == "oracle" and summary["step"] is None
    assert summary["inference"] == {"segmenter": "supplied by the caller"}
    cases = {c["scan_id"]: c for c in summary["cases"]}
    assert sorted(cases) == ["lits-0", "lits-1", "lits-2"]
    tumor_voxels = {n: int((written[n][1] == TUMOR).sum()) for n in range(3)}
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000
    hit, missed, healthy = cases["lits-0"], cases["lits-1"], cases["lits-2"]
    assert (hit["tumor_dice"], hit["tumor_nsd"], hit["liver_dice"]) == (1.0, 1.0, 1.0)
    assert [l["detected"] for l in hit["lesions"]] == [True]
    assert (missed["tumor_dice"], missed["tumor_nsd"], missed["liver_dice"]) == (0.0, 0.0, 1.0)
    assert [l["detected"] for l in missed["lesions"]] == [False]
    assert missed["tumor_volume_error_ml"] == pytest.approx(-tumor_voxels[1] * voxel_ml, abs=1e-4)
    assert healthy["tumor_dice"] is None and healthy["lesions"] == []
    agg = summary["aggregate"]
    assert agg["tumor_dice"]["mean"] == 0.5 and agg["tumor_dice"]["n"] == 2
    assert agg["global_tumor_dice"] == pytest.approx(
        2 * tumor_voxels[0] / (2 * tumor_voxels[0] + tumor_voxels[1]))
    assert (agg["detection"]["all"]["detected"], agg["detection"]["all"]["lesions"]) == (1, 2)
    # One healthy scan: no interval (n/a), not a collapsed [1.0, 1.0].
    assert agg["specificity"] == {"healthy_scans": 1, "true_negatives": 1, "value": 1.0,
                                  "ci95": None}
    assert agg["false_positive_lesions_per_scan_ci95"] == [0.0, 0.0]
    assert agg["false_positive_lesions_per_scan"] == 0.0
    # Predictions: the segmenter's labels on each scan's own grid.
    for n in range(3):
        pred = nib.load(out / "predictions" / f"lits-{n}.nii.gz")
        src = nib.load(str(tmp_path / "lits" / f"volume-{n}.nii"))
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
        assert np.array_equal(np.asarray(pred.dataobj), answer[written[n][0].tobytes()])
    with open(out / "cases.csv", newline="") as f:
        rows = {r["scan_id"]: r for r in csv.DictReader(f)}
    assert (rows["lits-1"]["lesions"], rows["lits-1"]["lesions_detected"]) == ("1", "0")
    assert rows["lits-2"]["tumor_dice"] == ""
    for name in ("report.md", "report.html", "detection_by_size.png", "case_dice.png",
                 "example_0.png", "example_1.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "# Evaluation of oracle\n" in report and "empty" in report
    # The headline comes first: DSC with its interval, lesions found, false positives per scan.
    first = report.split("\n\n")[1]
    assert first.startswith("**Tumor DSC ") and "**1 of 2 lesions found**" in first
    assert "false-positive lesions per scan**" in first
    assert "False-positive lesions over all scans: " in report        # said once, not per row
    assert "Detection rule: dice >= 0.2" in report and "## Per lesion" in report
    assert summary["detection_rule"].startswith("dice >= 0.2")
    # The HTML report stands alone: moved elsewhere, its figures are still there.
    moved = tmp_path / "elsewhere.html"
    (out / "report.html").rename(moved)
    html = moved.read_text()
    assert html.count("data:image/png;base64,") == 4 and 'src="detection' not in html


def test_evaluate_runs_a_checkpoint_with_its_preprocessing(lits_manifest, tmp_path, capsys):
    prep = Preprocessing(spacing_mm=(2.0, 2.0, 2.0), crop_size=(32, 32, 32),
                         window_hu=(-50.0, 250.0), class_names=LABEL_NAMES,
                         dataset_ids=("ds-a", "ds-b"))
    path = _checkpoint(tmp_path / "run" / "checkpoints", prep)
    out = tmp_path / "eval"
    summary = evaluate(str(tmp_path / "run"), str(lits_manifest), str(out), overlap=0.0,
                       device="cpu", limit=1, progress=True, log=lambda _: None)
    assert (summary["checkpoint"], summary["model"], summary["step"]) == (path, "unet", 0)
    # Lineage: the checkpoint's and the manifest's sha256, the scan's, the training sources.
    import hashlib
    assert summary["checkpoint_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert summary["manifest_sha256"] == hashlib.sha256(lits_manifest.read_bytes()).hexdigest()
    assert set(summary["cases"][0]["scan_sha256"]) == {"image", "label"}
    assert "100%" in capsys.readouterr().err            # the sliding-window progress bar
    inference = _strict(out / "summary.json")["inference"]
    assert inference["spacing_mm"] == [2.0, 2.0, 2.0] and inference["window_hu"] == [-50.0, 250.0]
    assert inference["roi_zyx"] == [32, 32, 32] and inference["dataset_ids"] == ["ds-a", "ds-b"]
    pred = nib.load(out / "predictions" / "lits-0.nii.gz")
    assert pred.shape == nib.load(str(tmp_path / "lits" / "volume-0.nii")).shape


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("old", "predates preprocessing records and must be retrained or re-saved"),
    ("roi", "--roi 40: expected a multiple of 16"),
    ("fold", "no scans to evaluate (fold 7)"),
    ("contact", "min_liver_contact 1.5: expected a fraction in [0, 1]"),
])
def test_evaluate_command_refuses_bad_input_with_one_line(lits_manifest, tmp_path, case, message,
                                                          capsys):
    checkpoint = str(tmp_path / "missing.pt")
    extra = {"roi": ["--roi", "40"], "fold": ["--fold", "7"],
             "contact": ["--min-liver-contact", "1.5"]}.get(case, [])
    if case in ("old", "fold"):
        # A checkpoint from before preprocessing records; no model is built to refuse it.
        checkpoint = str(tmp_path / "step-000000000.pt")
        torch.save({"model": {}, "config": json.dumps({"model": "unet"}), "step": 0}, checkpoint)
    text = user_error(capsys, ["evaluate", "--checkpoint", checkpoint, "--manifest",
                               str(lits_manifest), "--out", str(tmp_path / "eval"), "--device",
                               "cpu", *extra])
    assert text.startswith("evaluate: ") and message in text
    if case == "old":
        assert checkpoint in text


def test_evaluate_scores_a_folder_of_predictions(lits_manifest, tmp_path, capsys):
    """``evaluate --predictions DIR``: label maps on the scans' grids (here the truth, with scan
    1's lesion called liver, as nnU-Net would write its output) scored with the model's rules and
    report; a missing file or another grid is one line naming the scan."""
    from tumorforge.cluster.front_door import main
    from tumorforge.manifests.schema import read_manifest
    preds = tmp_path / "preds"
    preds.mkdir()
    for e in read_manifest(str(lits_manifest)):
        img = nib.load(e.label)
        label = np.asarray(img.dataobj).astype(np.uint8)
        if e.scan_id.endswith("1"):
            label = np.where(label == TUMOR, ORGAN, label).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, img.affine), str(preds / f"{e.scan_id}.nii.gz"))
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(preds), "--manifest", str(lits_manifest),
                 "--out", str(out), "--no-progress"]) == 0
    summary = _strict(out / "summary.json")
    det = summary["aggregate"]["detection"]["all"]
    assert (det["detected"], det["lesions"]) == (1, 2)
    assert summary["aggregate"]["tumor_dice"]["mean"] == pytest.approx(0.5)
    assert summary["model"] == f"predictions in {preds}"
    assert (out / "report.html").exists()
    first = sorted(preds.iterdir())[0]
    first.unlink()
    message = user_error(capsys, ["evaluate", "--predictions", str(preds), "--manifest",
                                  str(lits_manifest), "--out", str(tmp_path / "e2")])
    assert "no prediction in" in message and first.name in message
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(first))
    message = user_error(capsys, ["evaluate", "--predictions", str(preds), "--manifest",
                                  str(lits_manifest), "--out", str(tmp_path / "e3")])
    assert first.name in message and "does not match image shape" in message
