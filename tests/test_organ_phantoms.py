"""Phantoms of the pancreas and kidney datasets (issue 30, item 3): MSD Task07_Pancreas and KiTS
file layouts, label conventions, lesions of their own (ill-defined pancreatic masses with a
dilated duct, exophytic renal masses, simple renal cysts that are not tumors), tumor-free cases
and phantom_truth.json. Simulated CT, small scale."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from tumorforge.manifests.phantoms import write_layout
from tumorforge.manifests.phantoms.layouts import LAYOUTS


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("organ-phantoms")
    return root, {layout: write_layout(layout, root / layout, 4, seed=0, scale=0.2)
                  for layout in ("msd-pancreas", "kits")}


def _canonical(path):
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj), img


def test_liver_layouts_keep_their_seed_streams():
    """New layouts come after the liver ones: a liver case's seed is keyed by its layout's index."""
    assert LAYOUTS[:4] == ("lits", "msd", "btcv", "chaos")


def test_msd_pancreas_layout_labels_and_truth(written):
    root, cases = written[0], written[1]["msd-pancreas"]
    base = root / "msd-pancreas"
    task = base / "Task07_Pancreas"
    meta = json.loads((task / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert [t["image"] for t in meta["training"]] == [f"./imagesTr/pancreas_00{i}.nii.gz"
                                                       for i in range(1, 5)]
    assert (task / "imagesTs" / "pancreas_005.nii.gz").exists()
    truth = json.loads((base / "phantom_truth.json").read_text())
    assert [c["has_tumor"] for c in truth["cases"]] == [True, True, True, False]
    for case, rec in zip(cases, truth["cases"]):
        label, img = _canonical(case["label"])
        assert set(np.unique(label)) <= {0, 1, 2} and (label == 1).sum() > 0
        assert nib.aff2axcodes(nib.load(case["image"]).affine) == ("R", "A", "S")
        assert rec["organ"] == "pancreas" and rec["organ_volume_ml"] > 0
        assert ((label == 2).sum() > 0) == rec["has_tumor"]
        for les in rec["lesions"]:
            assert les["organ"] == "pancreas" and les["kind"] == "tumor"
            assert les["contrast_hu"] < 0                      # hypoattenuating masses
            assert les["exophytic_share"] == 0.0               # inside the gland


def test_kits_layout_exophytic_masses_and_cysts_that_are_not_tumors(written):
    root, cases = written[0], written[1]["kits"]
    base = root / "kits"
    truth = json.loads((base / "phantom_truth.json").read_text())
    assert [c["case"] for c in truth["cases"]] == [f"case_0000{i}" for i in range(4)]
    assert [c["has_tumor"] for c in truth["cases"]] == [True, True, True, False]
    exophytic, cysts = [], 0
    for case, rec in zip(cases, truth["cases"]):
        assert case["image"].endswith("imaging.nii.gz")
        assert case["label"].endswith("segmentation.nii.gz")
        stored = nib.load(case["image"])
        assert nib.aff2axcodes(stored.affine) == ("S", "P", "L")      # slices first, as KiTS
        label, _ = _canonical(case["label"])
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        tumors = [les for les in rec["lesions"] if les["kind"] == "tumor"]
        assert ((label == 2).sum() > 0) == bool(tumors) == rec["has_tumor"]
        cysts += sum(les["kind"] == "cyst" for les in rec["lesions"])
        exophytic += [les["exophytic_share"] for les in tumors]
        if any(les["kind"] == "cyst" for les in rec["lesions"]):
            assert (label == 3).sum() > 0                      # KiTS23: cyst, not tumor
        for les in rec["lesions"]:
            if les["kind"] == "cyst":                          # water density, sharp, round
                assert les["contrast_hu"] < -100
    assert cysts > 0 and exophytic and max(exophytic) > 0.3    # masses grow out of the kidney


def test_organ_layouts_are_deterministic(written, tmp_path):
    root, _ = written
    again = write_layout("kits", tmp_path / "kits", 1, seed=0, scale=0.2)[0]
    first = root / "kits" / "case_00000"
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        assert hashlib.sha256((first / name).read_bytes()).digest() == \
            hashlib.sha256(open(again["image" if name.startswith("imaging") else "label"],
                                "rb").read()).digest()
