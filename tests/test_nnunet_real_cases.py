"""``tumorforge synthesize --real MANIFEST``: real annotated scans written beside the synthetic
cases (the paper's "real + synthetic" arm), in an nnU-Net raw dataset or NIfTI folders. The real
scans are tiny LiTS-layout volumes (liver 1, tumor 2, 0.8 x 0.8 x 2.5 mm); the healthy scans are
the toy ellipsoid livers of cluster_fixtures (simulated CT)."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from tumorforge.manifests.conventions import ORGAN, TUMOR
from conftest import tiny_scan, user_error, write_nifti

FAST = ["--crop-size", "48,48,48", "--size-mix", "small"]


def synthesize(argv) -> int:
    from tumorforge.cluster.front_door import main
    return main(["synthesize", *argv, *FAST])


def load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def make_scans(root):
    """``root/healthy.jsonl`` (toy-case0, toy-case1) and ``root/lits.jsonl`` (lits-0 and lits-1
    with a tumor, lits-2 without), both with paths relative to ``root``."""
    from cluster_fixtures import healthy_manifest
    from tumorforge.manifests.build import build_manifest
    healthy = healthy_manifest(root, 2)
    for n in range(3):
        image, label = tiny_scan(tumor=n != 2, seed=n)
        write_nifti(root / "lits" / f"volume-{n}.nii", image)
        write_nifti(root / "lits" / f"segmentation-{n}.nii", label)
    lits = root / "lits.jsonl"
    build_manifest("lits", str(root / "lits"), str(lits))
    return healthy, lits


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """An nnU-Net dataset on the native grid: one synthetic case of toy-case0, and as real cases
    the three LiTS scans and both toy scans (so toy-case0 is both real and synthetic)."""
    from tumorforge.cluster.front_door import main
    root = tmp_path_factory.mktemp("real")
    healthy, lits = make_scans(root)
    real = root / "real.jsonl"        # a manifest is JSON lines: the two, one after the other
    real.write_text(lits.read_text() + healthy.read_text())
    out = root / "nnunet"
    assert main(["synthesize", "--manifest", str(healthy), "--scan", "toy-case0",
                 "--real", str(real), "--format", "nnunet", "--dataset-id", "9",
                 "--dataset-name", "Mixed", "--out", str(out), *FAST]) == 0
    return root, out / "Dataset009_Mixed"


def test_real_cases_are_the_annotated_scans_as_they_are(mixed, capsys):
    from tumorforge.generator.whole_scan import read_run
    root, ds = mixed
    run = read_run(str(ds))
    assert [c.case for c in run.cases] == ["toy-case0_s00000"]
    assert [(c.case, c.role) for c in run.real_cases] == [
        ("lits-0_real", "tumor"), ("lits-1_real", "tumor"), ("lits-2_real", "healthy"),
        ("toy-case0_real", "healthy"), ("toy-case1_real", "healthy")]
    assert "--real" in run.command and run.real_manifest == str(root / "real.jsonl")
    for case in run.real_cases[:3]:
        n = case.scan_id.removeprefix("lits-")
        image, affine = load(ds / case.image)
        label, label_affine = load(ds / case.label)
        source, source_affine = load(root / "lits" / f"volume-{n}.nii")
        source_label, _ = load(root / "lits" / f"segmentation-{n}.nii")
        # Native grid: the scan's own voxels and affine, liver 1 and tumor 2 as LiTS has them.
        assert case.image == f"imagesTr/{case.case}_0000.nii.gz"
        assert image.dtype == np.int16 and np.array_equal(image, source)
        assert np.allclose(affine, source_affine) and np.allclose(label_affine, source_affine)
        assert np.array_equal(label, source_label)
        assert set(np.unique(label)) == ({0, ORGAN, TUMOR} if case.role == "tumor" else {0, ORGAN})
        assert case.spacing_mm == pytest.approx((0.8, 0.8, 2.5))
        for key in ("image", "label"):
            written = (ds / getattr(case, key)).read_bytes()
            assert case.sha256[key] == hashlib.sha256(written).hexdigest()


def test_nnunet_counts_every_case_and_keeps_a_scan_in_one_fold(mixed):
    from tumorforge.generator.whole_scan import read_run
    _, ds = mixed
    run = read_run(str(ds))
    meta = json.loads((ds / "dataset.json").read_text())
    labels = sorted(p.name for p in (ds / "labelsTr").iterdir())
    assert meta["numTraining"] == len(labels) == 6
    assert "5 real annotated cases" in meta["description"]
    # Five source scans, five folds; toy-case0 is real and synthetic: both in one fold.
    splits = json.loads((ds / "splits_final.json").read_text())
    scan_of = {c.case: c.scan_id for c in (*run.cases, *run.real_cases)}
    assert len(splits) == 5
    assert sorted(c for fold in splits for c in fold["val"]) == sorted(scan_of)
    (fold,) = [f for f in splits if "toy-case0_real" in f["val"]]
    assert "toy-case0_s00000" in fold["val"]
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(scan_of)
        assert not {scan_of[c] for c in fold["train"]} & {scan_of[c] for c in fold["val"]}


def test_a_version_1_run_record_still_reads(mixed, tmp_path):
    from tumorforge.generator.whole_scan import SynthesizeError, read_run
    from tumorforge.manifests.records import RecordError
    _, ds = mixed
    record = json.loads((ds / "synthesize.json").read_text())
    v1 = {k: v for k, v in record.items() if k not in ("real_manifest", "real_cases")}
    v1["version"] = 1
    (tmp_path / "synthesize.json").write_text(json.dumps(v1))
    run = read_run(str(tmp_path))
    assert run.version == 1 and run.real_cases == () and run.real_manifest == ""
    assert [c.case for c in run.cases] == ["toy-case0_s00000"]
    # A real case's files stay inside the run's folder, as a synthetic case's do.
    record["real_cases"][0]["label"] = "../elsewhere.nii.gz"
    (tmp_path / "synthesize.json").write_text(json.dumps(record))
    with pytest.raises((RecordError, SynthesizeError), match="not a path inside the run's folder"):
        read_run(str(tmp_path))


def test_prepared_nifti_run_skips_an_unreadable_real_scan_and_writes_the_rest(tmp_path, capsys):
    from tumorforge.generator.whole_scan import read_run
    healthy, lits = make_scans(tmp_path)
    broken = tmp_path / "lits" / "volume-1.nii"
    broken.write_bytes(broken.read_bytes()[:-100])             # changed since the manifest
    out = tmp_path / "out"
    capsys.readouterr()
    assert synthesize(["--manifest", str(healthy), "--scan", "toy-case0", "--real", str(lits),
                       "--grid", "prepared", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 synthetic and 2 real case(s)" in captured.out
    assert "skipped real scan lits-1" in captured.err
    run = read_run(str(out))
    (rejected,) = run.rejected
    assert rejected["scan_id"] == "lits-1" and rejected["real"]
    assert "volume-1.nii" in rejected["reason"]
    assert [c.case for c in run.real_cases] == ["lits-0_real", "lits-2_real"]
    image, affine = load(out / "images" / "lits-0_real.nii.gz")
    label, _ = load(out / "labels" / "lits-0_real.nii.gz")
    source_label = tiny_scan(seed=0)[1]
    # The generator's grid: RAS at 1 mm over the scan's extent (first to last voxel centre:
    # 18.4 x 15.2 x 22.5 mm); the liver and tumor keep their volumes within the resampling's.
    assert np.allclose(affine[:3, :3], np.eye(3)) and image.dtype == np.int16
    assert np.allclose(np.array(image.shape) - 1, [18.4, 15.2, 22.5], atol=1.0)
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000
    for value in (ORGAN, TUMOR):
        assert (label == value).sum() / 1000 == \
            pytest.approx((source_label == value).sum() * voxel_ml, rel=0.2)
    assert abs(np.median(image[label == ORGAN]) - 100) < 15    # the phantom's liver, ~100 HU


def test_a_bad_real_manifest_is_one_line(tmp_path, capsys):
    healthy, lits = make_scans(tmp_path)
    argv = ["synthesize", "--manifest", str(healthy), "--out", str(tmp_path / "out"), *FAST]
    message = user_error(capsys, [*argv, "--real", str(tmp_path / "missing.jsonl")])
    assert message.startswith("synthesize: ") and "missing.jsonl" in message
    # Two scan ids that would be written as one case name.
    clash = tmp_path / "clash.jsonl"
    clash.write_text(lits.read_text().replace('"lits-1"', '"lits_0"'))
    message = user_error(capsys, [*argv, "--real", str(clash)])
    assert "lits-0 and lits_0" in message and "lits-0_real" in message
    assert not (tmp_path / "out").exists()


def test_a_scan_under_two_ids_is_one_source_scan_for_the_folds():
    from types import SimpleNamespace
    from tumorforge.generator.whole_scan import nnunet_splits
    cases = [SimpleNamespace(case=f"{s}_{n}", scan_id=s, scan_sha256={"image": h})
             for s, h in (("a", "x"), ("a-copy", "x"), ("b", "y"), ("c", "z")) for n in range(2)]
    splits = nnunet_splits(cases, root_seed=0)
    assert len(splits) == 3                                  # three image files
    (fold,) = [f for f in splits if "a_0" in f["val"]]
    assert {"a_0", "a_1", "a-copy_0", "a-copy_1"} <= set(fold["val"])
