"""``tumorforge synthesize``: whole scans with synthetic tumors as NIfTI (prepared and native grid)
and as an nnU-Net v2 raw dataset, and ``tumorforge stats`` on its output. The scans are small
hand-made ellipsoid livers (simulated CT, stored LPS at 1 x 1 x 2 mm)."""

from __future__ import annotations

import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from tumorforge.manifests.conventions import ORGAN, TUMOR
from conftest import user_error

FAST = ["--crop-size", "48,48,48", "--size-mix", "small"]


def synthesize(argv, capsys=None):
    from tumorforge.cluster.front_door import main
    return main(["synthesize", *argv, *FAST])


def files_sha(folder) -> dict:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from cluster_fixtures import healthy_manifest
    root = tmp_path_factory.mktemp("whole")
    manifest = healthy_manifest(root, 2)
    out = root / "prepared"
    assert synthesize(["--manifest", str(manifest), "--scan", "toy-case0", "--count", "2",
                       "--seed", "5", "--out", str(out)]) == 0
    return root, manifest, out


def test_prepared_grid_is_the_resampled_scan_with_tumors_and_reruns_byte_identical(scans):
    from tumorforge.generator.whole_scan import read_run
    root, manifest, out = scans
    run = read_run(str(out))
    assert [c.case for c in run.cases] == ["toy-case0_s00000", "toy-case0_s00001"]
    assert run.grid == "prepared" and run.generator_config["profile"] == "released"   # the default
    for case in run.cases:
        image, affine = load(out / case.image)
        label, label_affine = load(out / case.label)
        # The whole 90 x 80 x 40 scan at 1 x 1 x 2 mm, on RAS axes at 1 mm: 90 x 80 x 79.
        assert image.shape == label.shape == (90, 80, 79) and image.dtype == np.int16
        assert np.allclose(affine[:3, :3], np.eye(3)) and np.allclose(affine, label_affine)
        assert set(np.unique(label)) == {0, ORGAN, TUMOR}
        params = json.loads((out / "params" / f"{case.case}.json").read_text())
        assert params == case.to_json() and len(case.params["tumors"]) >= 1
        assert case.sha256["image"] == hashlib.sha256((out / case.image).read_bytes()).hexdigest()
        tumor = label == TUMOR
        assert ndi.binary_dilation(label >= ORGAN, iterations=2)[tumor].all()   # in the liver
    a, b = (load(out / c.label)[0] == TUMOR for c in run.cases)
    assert (a != b).any()                                   # another index, other tumors
    again = root / "again"
    assert synthesize(["--manifest", str(manifest), "--scan", "toy-case0", "--count", "2",
                       "--seed", "5", "--out", str(again)]) == 0
    first, second = files_sha(out), files_sha(again)
    assert set(first) == set(second)
    assert {k: v for k, v in first.items() if k != "synthesize.json"} == \
        {k: v for k, v in second.items() if k != "synthesize.json"}


def test_native_grid_changes_only_voxels_near_the_tumors(scans):
    from tumorforge.generator.whole_scan import read_run
    root, manifest, prepared_out = scans
    out = root / "native"
    assert synthesize(["--manifest", str(manifest), "--scan", "toy-case0", "--count", "2",
                       "--seed", "5", "--grid", "native", "--out", str(out)]) == 0
    run, prepared_run = read_run(str(out)), read_run(str(prepared_out))
    original, original_affine = load(root / "ct" / "case0.nii.gz")
    original_label, _ = load(root / "seg" / "case0.nii.gz")
    for case, twin in zip(run.cases, prepared_run.cases):
        assert case.params == twin.params                  # same seed and index, same draw
        image, affine = load(out / case.image)
        label, _ = load(out / case.label)
        assert image.shape == original.shape and np.allclose(affine, original_affine)  # LPS kept
        tumor = label == TUMOR
        changed = image != original
        # The blurred mask (sigma_c <= 1.2 mm, 3 sigma) and linear interpolation onto 2 mm slices
        # reach a few mm past the label; nothing else moves.
        far = ndi.distance_transform_edt(~tumor, sampling=(1.0, 1.0, 2.0)) > 5.0
        assert changed.any() and not (changed & far).any()
        assert (original[tumor].astype(float) - image[tumor]).mean() > 20   # darker, as drawn
        assert np.array_equal(label >= ORGAN, (original_label > 0) | tumor)
        # The same tumors on two grids: volume within 15 %.
        native_ml = tumor.sum() * 2.0 / 1000
        prepared_ml = (load(prepared_out / twin.label)[0] == TUMOR).sum() / 1000
        assert native_ml == pytest.approx(prepared_ml, rel=0.15)


def test_nnunet_raw_dataset_layout(scans, tmp_path):
    root, manifest, _ = scans
    assert synthesize(["--manifest", str(manifest), "--format", "nnunet", "--dataset-id", "7",
                       "--dataset-name", "Toy", "--count", "2", "--out", str(tmp_path)]) == 0
    ds = tmp_path / "Dataset007_Toy"
    from tumorforge.generator.whole_scan import read_run
    run = read_run(str(ds))
    assert run.grid == "native"          # nnU-Net resamples itself: the scans' own grid
    # The folds keep every case of one healthy scan together (two scans: two folds).
    splits = json.loads((ds / "splits_final.json").read_text())
    scan_of = {c.case: c.scan_id for c in run.cases}
    assert len(splits) == 2
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(scan_of)
        assert not {scan_of[c] for c in fold["train"]} & {scan_of[c] for c in fold["val"]}
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    labels = sorted(p.name for p in (ds / "labelsTr").iterdir())
    images = sorted(p.name for p in (ds / "imagesTr").iterdir())
    assert meta["numTraining"] == len(labels) == 4             # two cases per healthy scan
    assert images == [n.replace(".nii.gz", "_0000.nii.gz") for n in labels]
    for name in labels:
        label, _ = load(ds / "labelsTr" / name)
        assert set(np.unique(label)) <= {0, 1, 2} and (label == TUMOR).any()


def test_bad_scan_is_skipped_with_its_reason_and_reruns_are_refused(tmp_path, capsys):
    from cluster_fixtures import healthy_manifest
    from tumorforge.generator.whole_scan import read_run
    manifest = healthy_manifest(tmp_path, 2)
    broken = tmp_path / "ct" / "case1.nii.gz"
    broken.write_bytes(broken.read_bytes()[:-100])             # changed since the manifest
    out = tmp_path / "out"
    assert synthesize(["--manifest", str(manifest), "--out", str(out)]) == 0
    run = read_run(str(out))
    assert [c.scan_id for c in run.cases] == ["toy-case0"]
    (rejected,) = run.rejected
    assert rejected["scan_id"] == "toy-case1" and "case1.nii.gz" in rejected["reason"]
    assert "skipped scan toy-case1" in capsys.readouterr().err
    for argv, words in ((["--out", str(out)], "already holds a synthesize run"),
                        (["--out", str(tmp_path / "n"), "--format", "nnunet", "--dataset-id",
                          "1000"], "--dataset-id 1000"),
                        (["--out", str(tmp_path / "c"), "--count", "0"], "--count 0"),
                        (["--out", str(tmp_path / "s"), "--scan", "nope"], "nope")):
        message = user_error(capsys, ["synthesize", "--manifest", str(manifest), *argv, *FAST])
        assert message.startswith("synthesize: ") and words in message


def test_stats_measures_whole_scans_and_flags_a_changed_case(scans, tmp_path, capsys):
    import shutil
    from tumorforge.cluster.front_door import main
    from tumorforge.generator.whole_scan import read_run
    root, manifest, out = scans
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    run = read_run(str(copy))
    label_file = copy / run.cases[1].label
    label, affine = load(label_file)
    nib.save(nib.Nifti1Image(np.where(label == TUMOR, ORGAN, label).astype(np.uint8), affine),
             str(label_file))
    assert main(["stats", str(copy), "--out", str(tmp_path / "report")]) == 0
    result = json.loads((tmp_path / "report" / "stats.json").read_text())
    (info,) = result["inputs"]
    assert info["kind"] == "synthesize" and info["corrupt_samples"] == [run.cases[1].case]
    small = next(g for g in result["groups"] if g["type"] == "small")
    m = small["measures"]
    assert small["lesions"] >= 1 and small["tumors"] == len(run.cases[0].params["tumors"])
    assert 4 < m["radius_mm"]["median"] < 14                  # r = 8 mm, axes 0.75-1.25 r
    assert m["hu_drop_hu"]["median"] > 10 and m["contrast_hu"]["median"] < 0
    assert m["depth_mm"]["median"] > 0 and m["inside_fraction"]["median"] >= 0.9
    assert 0.5 < m["texture_ratio"]["median"] < 1.5


def test_nnunet_splits_put_each_scan_in_one_validation_fold():
    from types import SimpleNamespace
    from tumorforge.generator.whole_scan import nnunet_splits
    cases = [SimpleNamespace(case=f"s{s}_{n}", scan_id=f"s{s}", scan_sha256={"image": f"h{s}"})
             for s in range(7) for n in range(3)]
    splits = nnunet_splits(cases, root_seed=0)
    assert len(splits) == 5
    vals = [c for f in splits for c in f["val"]]
    assert sorted(vals) == sorted(c.case for c in cases)          # each case validated once
    for f in splits:
        assert {c.split("_")[0] for c in f["val"]}.isdisjoint(c.split("_")[0] for c in f["train"])
    assert nnunet_splits(cases, 0) == splits and nnunet_splits(cases, 1) != splits
