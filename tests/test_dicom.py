"""DICOM as a manifest source (issue 15): CHAOS as it is distributed (a DICOM series and PNG liver
masks per case) and DICOM series in general (Pancreas-CT style, image only). The DICOM files are
phantoms these tests write themselves from a CHAOS-layout NIfTI phantom (simulated CT), so the
geometry and HU read back can be compared with what was written."""

from __future__ import annotations

import glob
import json

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from tumorforge.cluster.front_door import main  # noqa: E402
from tumorforge.manifests.conventions import to_ras  # noqa: E402
from tumorforge.manifests.readers import read_volume  # noqa: E402
from tumorforge.manifests.schema import default_roots, read_images, read_manifest  # noqa: E402


def write_series(folder, data, affine, reverse_names=True, skip=None):
    """``data`` (X, Y, Z) HU with its RAS affine as a CT series, one file per slice; file names
    run against the slice positions when ``reverse_names`` (readers must sort by position)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    zooms = np.sqrt((lps[:3, :3] ** 2).sum(0))
    row_dir, col_dir = lps[:3, 0] / zooms[0], lps[:3, 1] / zooms[1]
    series = generate_uid()
    n = data.shape[2]
    names = []
    for k in range(n):
        if skip is not None and k == skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series, "CT"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.PixelSpacing = [float(zooms[1]), float(zooms[0])]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray((data[:, :, k].T + 1024).astype(np.uint16)).tobytes()
        name = f"i{(n - 1 - k) if reverse_names else k:04d},0000b.dcm"
        ds.save_as(str(folder / name), enforce_file_format=True)
        names.append((name, k))
    return names


def write_ground(folder, mask, names):
    """CHAOS ``Ground``: the k-th PNG (name order) is the mask of the k-th DICOM (name order)."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for n, (_, k) in enumerate(sorted(names)):
        Image.fromarray((mask[:, :, k].T * 255).astype(np.uint8)).save(
            folder / f"liver_GT_{n:03d}.png")


@pytest.fixture(scope="module")
def chaos_dicom(phantom_root, tmp_path_factory):
    root, _ = phantom_root
    image_path = sorted(glob.glob(str(root / "chaos" / "**" / "image.nii*"), recursive=True))[0]
    nii = nib.load(image_path)
    data = np.rint(np.asarray(nii.dataobj, np.float32)).clip(-1024, 3000)
    mask = np.asarray(nib.load(image_path.replace("image.nii", "liver_mask.nii")).dataobj) > 0
    out = tmp_path_factory.mktemp("chaos-dicom")
    case = out / "CT" / "21"
    names = write_series(case / "DICOM_anon", data, nii.affine)
    write_ground(case / "Ground", mask, names)
    return out, data, mask, nii.affine


@pytest.mark.slow
def test_a_chaos_case_as_distributed_enters_a_manifest(chaos_dicom, tmp_path):
    out, data, mask, affine = chaos_dicom
    manifest = tmp_path / "chaos.jsonl"
    assert main(["manifest", "build", "--layout", "chaos", str(out), "-o", str(manifest)]) == 0
    [entry] = read_manifest(str(manifest), default_roots(str(manifest), [str(out)]))
    assert entry.scan_id == "chaos-21" and entry.label_map.organ == (255,)
    assert entry.image.endswith("DICOM_anon") and entry.label.endswith("Ground")
    voxel_ml = float(np.prod(np.sqrt((affine[:3, :3] ** 2).sum(0)))) / 1000
    assert abs(entry.organ_volume_ml - mask.sum() * voxel_ml) < 0.01
    image = read_volume(entry.image)
    label = read_volume(entry.label, like=image)
    # Geometry from the tags: the same voxels at the same world positions as the NIfTI.
    got, _ = to_ras(image.data, image.info.affine)
    want, want_affine = to_ras(data.astype(np.float32), affine)
    assert np.array_equal(got, want)
    assert np.allclose(to_ras(image.data, image.info.affine)[1], want_affine, atol=1e-4)
    assert np.array_equal(to_ras(label.data, label.info.affine)[0] == 255,
                          to_ras(mask, affine)[0])
    # Generation reads it like any scan.
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.scans import load_prepared
    scan = load_prepared(entry, GeneratorConfig(crop_size=(32, 32, 32),
                                                target_spacing_mm=(4.0, 4.0, 4.0)))
    assert scan.organ.sum() > 100


def test_bad_series_are_rejected_with_the_file_and_reason(chaos_dicom, tmp_path):
    out, data, mask, affine = chaos_dicom
    gap = tmp_path / "gap" / "CT" / "5"
    names = write_series(gap / "DICOM_anon", data, affine, skip=3)
    write_ground(gap / "Ground", mask, [(n, k) for n, k in names])
    few = tmp_path / "gap" / "CT" / "6"
    names = write_series(few / "DICOM_anon", data, affine)
    write_ground(few / "Ground", mask, names[:-2])
    manifest = tmp_path / "bad.jsonl"
    assert main(["manifest", "build", "--layout", "chaos", str(tmp_path / "gap"), "-o",
                 str(manifest)]) == 1
    rejected = {json.loads(x)["scan_id"]: json.loads(x)["problem"]
                for x in (tmp_path / "bad.rejected.jsonl").read_text().splitlines()}
    assert "not evenly spaced" in rejected["chaos-5"]
    assert "PNG masks for a series of" in rejected["chaos-6"]


def test_dicom_series_in_general_make_an_image_list(chaos_dicom, tmp_path):
    """Pancreas-CT style: <patient>/<study>/<series>/*.dcm, no liver label: an image list."""
    out, data, mask, affine = chaos_dicom
    root = tmp_path / "pct"
    write_series(root / "PANCREAS_0001" / "study" / "series", data, affine)
    write_series(root / "PANCREAS_0002" / "study" / "series", data[:, :, ::-1], affine)
    images = tmp_path / "pct.jsonl"
    assert main(["manifest", "build", "--layout", "dicom", str(root), "-o", str(images)]) == 0
    entries = read_images(str(images), default_roots(str(images), [str(root)]))
    assert [e.scan_id for e in entries] == ["dicom-PANCREAS_0001-study-series",
                                            "dicom-PANCREAS_0002-study-series"]
    assert entries[0].shape == data.shape and entries[0].sha256 != entries[1].sha256
