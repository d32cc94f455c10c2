"""CT phantoms: plausible HU anatomy, the real datasets' layouts and affines, determinism."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from tumorforge.manifests.build import build_manifest, validate_manifest
from tumorforge.manifests.phantoms import make_phantom, save_preview, write_layout
from tumorforge.manifests.schema import default_roots, read_manifest

EXPECTED_FILES = {
    "lits": ("volume-0.nii", "segmentation-0.nii"),
    "msd": ("Task03_Liver/imagesTr/liver_0.nii.gz", "Task03_Liver/labelsTr/liver_0.nii.gz"),
    "btcv": ("RawData/Training/img/img0001.nii.gz", "RawData/Training/label/label0001.nii.gz"),
}


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(np.random.default_rng(11), scale=0.2, tumors=True)


def test_hu_values_are_plausible_ct(phantom):
    img, organs = phantom.image.astype(float), phantom.organs
    liver = organs == 6
    assert img.dtype == float and phantom.image.dtype == np.int16
    assert np.median(img[0, 0, :]) < -900                     # air in the corner
    assert 60 < np.median(img[liver & ~phantom.tumor]) < 160   # enhanced parenchyma
    assert np.median(img[organs == 8]) > np.median(img[liver])  # aorta brighter than liver
    assert np.median(img[organs == 4]) < 40                    # gallbladder: fluid
    assert img.max() > 300                                     # bone
    assert (img < -50).mean() > 0.05                           # fat and air are present
    for code in (1, 2, 3, 4, 6, 7, 8, 9, 11):                  # the organs the issue names
        assert (organs == code).sum() > 0, f"organ {code} missing"


def test_liver_is_large_right_sided_and_lesions_inside(phantom):
    assert 1200 <= phantom.liver_volume_ml <= 2000
    liver = np.argwhere(phantom.organs == 6)
    spleen = np.argwhere(phantom.organs == 1)
    world = lambda ijk: nib.affines.apply_affine(phantom.affine, ijk)
    assert world(liver).mean(0)[0] > 0 > world(spleen).mean(0)[0]   # RAS: +x is patient right
    assert phantom.lesions and phantom.tumor.any()
    assert np.all(phantom.organs[phantom.tumor] == 6)


def test_slices_thicker_than_in_plane(tmp_path):
    cases = write_layout("lits", tmp_path, 3, seed=5, scale=0.15)
    for c in cases:
        sx, sy, sz = c["spacing_mm"]
        assert sz > max(sx, sy)
    assert len({tuple(c["spacing_mm"]) for c in cases}) == 3    # spacing varies per case


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["lits", "msd", "btcv", "chaos"])
def test_layout_is_deterministic(tmp_path, layout):
    a = write_layout(layout, tmp_path / "a", 2, seed=3, scale=0.12)
    b = write_layout(layout, tmp_path / "b", 2, seed=3, scale=0.12)
    c = write_layout(layout, tmp_path / "c", 2, seed=4, scale=0.12)
    for x, y, z in zip(a, b, c):
        assert _sha(x["image"]) == _sha(y["image"]) and _sha(x["label"]) == _sha(y["label"])
        assert _sha(x["image"]) != _sha(z["image"])


def test_layouts_files_labels_and_orientation(phantom_root):
    root, written = phantom_root
    for layout, (image, label) in EXPECTED_FILES.items():
        assert (root / layout / image).is_file() and (root / layout / label).is_file()
    lits = written["lits"]
    assert [c["has_tumor"] for c in lits] == [True, True, True, False]
    codes = {"".join(nib.aff2axcodes(nib.load(c["image"]).affine)) for c in lits}
    assert codes == {"LPS", "LPI"}
    seg = np.asarray(nib.load(lits[0]["label"]).dataobj)
    assert set(np.unique(seg)) == {0, 1, 2}
    assert set(np.unique(np.asarray(nib.load(lits[3]["label"]).dataobj))) == {0, 1}
    meta = json.loads((root / "msd" / "Task03_Liver" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "cancer"}
    assert meta["numTraining"] == 2 and len(meta["training"]) == 2 and len(meta["test"]) == 1
    assert nib.aff2axcodes(nib.load(written["msd"][0]["image"]).affine) == ("R", "A", "S")
    btcv = np.asarray(nib.load(written["btcv"][0]["label"]).dataobj)
    assert 6 in btcv and btcv.max() <= 13 and len(np.unique(btcv)) >= 8
    chaos = np.asarray(nib.load(written["chaos"][0]["label"]).dataobj)
    assert set(np.unique(chaos)) == {0, 1}
    truth = json.loads((root / "lits" / "phantom_truth.json").read_text())
    assert sum(len(c["lesions"]) for c in truth["cases"]) >= 3


@pytest.mark.parametrize("layout, n, healthy", [("lits", 4, 1), ("msd", 2, 0), ("btcv", 2, 2),
                                                ("chaos", 2, 2)])
def test_each_layout_builds_and_validates(phantom_root, tmp_path, layout, n, healthy):
    root, written = phantom_root
    out = tmp_path / f"{layout}.jsonl"
    result = build_manifest(layout, str(root / layout), str(out))
    assert result.rejections == []
    entries = read_manifest(str(out), default_roots(str(out), [str(root / layout)]))
    assert len(entries) == n and sum(e.role == "healthy" for e in entries) == healthy
    assert all(1200 <= e.organ_volume_ml <= 2000 for e in entries)
    assert all(e.spacing_mm[2] > e.spacing_mm[0] for e in entries)
    by_image = {c["image"]: c for c in written[layout]}
    for e in entries:
        assert (e.role == "tumor") == by_image[e.image]["has_tumor"]
    assert validate_manifest(str(out), allowed_roots=[str(root / layout)])[1] == []


def test_preview_png(phantom_root, tmp_path):
    root, written = phantom_root
    case = written["lits"][0]
    png = tmp_path / "p.png"
    save_preview(case["image"], case["label"], str(png), liver_values=(1, 2), tumor_values=(2,))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
