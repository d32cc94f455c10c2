"""Bad scans are rejected with the file and the reason, and never stop the good ones."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from conftest import tiny_scan, write_nifti
from tumorforge.manifests.build import build_manifest, validate_manifest
from tumorforge.manifests.readers import ScanError, read_volume


def _good_case(root, n=0):
    image, label = tiny_scan(seed=n)
    write_nifti(root / f"volume-{n}.nii", image)
    write_nifti(root / f"segmentation-{n}.nii", label)


def _pair(root, n, image=None, label=None, image_affine=None, label_affine=None, gz=False):
    img, lab = tiny_scan(seed=n)
    ext = ".nii.gz" if gz else ".nii"
    write_nifti(root / f"volume-{n}{ext}", img if image is None else image, image_affine)
    write_nifti(root / f"segmentation-{n}{ext}", lab if label is None else label, label_affine)


def truncated_gz(root):
    _pair(root, 1, gz=True)
    path = root / "volume-1.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "volume-1.nii.gz", "truncated .nii.gz"


def truncated_nii(root):
    _pair(root, 1)
    path = root / "volume-1.nii"
    path.write_bytes(path.read_bytes()[:-500])
    return "volume-1.nii", "truncated .nii"


def not_nifti(root):
    _pair(root, 1)
    (root / "volume-1.nii").write_text("this is a text file, not a scan\n" * 20)
    return "volume-1.nii", "not a NIfTI-1 file"


def corrupt_gzip(root):
    _pair(root, 1, gz=True)
    path = root / "volume-1.nii.gz"
    data = bytearray(path.read_bytes())
    data[30:60] = b"\xff" * 30
    path.write_bytes(bytes(data))
    return "volume-1.nii.gz", "gzip"


def missing_label(root):
    _pair(root, 1)
    os.remove(root / "segmentation-1.nii")
    return "volume-1.nii", "no segmentation-1"


def shape_mismatch(root):
    _pair(root, 1, label=np.zeros((24, 20, 9), np.uint8) + 1)
    return "segmentation-1.nii", "does not match image shape"


def affine_mismatch(root):
    shifted = np.diag([0.8, 0.8, 2.5, 1.0])
    shifted[0, 3] = 5.0
    _pair(root, 1, label_affine=shifted)
    return "segmentation-1.nii", "affine does not match"


def label_without_liver(root):
    _pair(root, 1, label=np.zeros((24, 20, 10), np.uint8))
    return "segmentation-1.nii", "no liver voxel"


def nan_image(root):
    img = tiny_scan(seed=1)[0].astype(np.float32)
    img[3, 4, 5] = np.nan
    _pair(root, 1, image=img)
    return "volume-1.nii", "NaN"


def constant_image(root):
    _pair(root, 1, image=np.full((24, 20, 10), -1000, np.int16))
    return "volume-1.nii", "constant"


def unexpected_label_value(root):
    lab = tiny_scan(seed=1)[1]
    lab[0, 0, 0] = 7
    _pair(root, 1, label=lab)
    return "segmentation-1.nii", "unexpected label value(s) [7]"


def absurd_dims(root):
    _pair(root, 1)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    # A header promising 27e12 voxels followed by a few bytes: must be refused before allocating.
    (root / "volume-1.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\1" * 64)
    return "volume-1.nii", "absurd header dimensions"


def duplicate_ids(root):
    batch = root / "batch2"
    _pair(batch, 0)
    return "batch2/volume-0.nii", "duplicate scan_id lits-0"


def symlink_escape(root):
    outside = root.parent / "elsewhere"
    _pair(outside, 1)
    os.symlink(outside / "volume-1.nii", root / "volume-1.nii")
    os.symlink(outside / "segmentation-1.nii", root / "segmentation-1.nii")
    return "volume-1.nii", "outside the allowed roots"


BAD = [truncated_gz, truncated_nii, not_nifti, corrupt_gzip, missing_label, shape_mismatch,
       affine_mismatch, label_without_liver, nan_image, constant_image, unexpected_label_value,
       absurd_dims, duplicate_ids, symlink_escape]


@pytest.mark.parametrize("make_bad", BAD, ids=[f.__name__ for f in BAD])
def test_bad_scan_is_rejected_with_reason_and_good_scan_kept(tmp_path, make_bad):
    root = tmp_path / "lits"
    _good_case(root, 0)
    bad_file, reason = make_bad(root)
    out = tmp_path / "m.jsonl"
    result = build_manifest("lits", str(root), str(out))

    assert [e.scan_id for e in result.entries] == ["lits-0"]
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["scan_id"] for x in lines] == ["lits-0"]
    rejected = [json.loads(x) for x in (tmp_path / "m.rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1, rejected
    assert reason in rejected[0]["problem"]
    assert bad_file.split("/")[-1] in rejected[0]["problem"] + rejected[0]["image"]


def test_absurd_dims_never_allocates(tmp_path, monkeypatch):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((32000, 32000, 32000))
    path = tmp_path / "huge.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4)

    def no_alloc(*a, **k):
        raise AssertionError("voxel buffer allocated for an absurd header")
    monkeypatch.setattr(np, "frombuffer", no_alloc)
    with pytest.raises(ScanError, match="refusing to allocate") as info:
        read_volume(str(path))
    assert str(path) in str(info.value)


def test_unreadable_and_missing_files_reported_by_validate(tmp_path, tiny_lits):
    out = tmp_path / "lits" / "m.jsonl"
    build_manifest("lits", str(tiny_lits), str(out))
    os.remove(tiny_lits / "volume-0.nii")
    os.remove(tiny_lits / "segmentation-1.nii")
    os.mkdir(tiny_lits / "segmentation-1.nii")        # a folder where a file should be
    entries, problems = validate_manifest(str(out))
    by_scan = {sid: (f, p) for sid, f, p in problems}
    assert set(by_scan) == {"lits-0", "lits-1"}
    assert by_scan["lits-0"][1] == "file not found" and by_scan["lits-0"][0].endswith("volume-0.nii")
    assert "cannot read" in by_scan["lits-1"][1]


def test_manifest_path_escaping_root_is_refused(tmp_path, tiny_lits):
    out = tmp_path / "lits" / "m.jsonl"
    build_manifest("lits", str(tiny_lits), str(out))
    lines = out.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["image"] = "../../../etc/passwd"
    lines[0] = json.dumps(entry)
    out.write_text("\n".join(lines) + "\n")
    entries, problems = validate_manifest(str(out))
    assert [sid for sid, _, _ in problems] == ["lits-0"]
    assert "outside the allowed roots" in problems[0][2] and "/etc/passwd" in problems[0][2]
    assert {e.scan_id for e in entries} == {"lits-1", "lits-2"}


def test_duplicate_scan_ids_in_manifest_are_reported(tmp_path, tiny_lits):
    out = tmp_path / "lits" / "m.jsonl"
    build_manifest("lits", str(tiny_lits), str(out))
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines + [lines[1]]) + "\n")
    _, problems = validate_manifest(str(out))
    assert problems == [("lits-1", str(out), "line 4: duplicate scan_id, first used on line 2")]
