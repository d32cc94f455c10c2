"""The one NIfTI writer (manifests.nifti.nifti_bytes / write_nifti): the bytes each output had
before it existed, headers that say what they should, files a reader reads back."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import nibabel as nib
import numpy as np
import pytest

from tumorforge.manifests.conventions import zyx_to_ras
from tumorforge.manifests.nifti import (GZIP_OS_UNIX, GZIP_OS_UNKNOWN, nifti_bytes, read_nifti,
                                        write_nifti)

AFFINE = np.array([[-0.8, 0.0, 0.0, 120.5], [0.0, -0.8, 0.0, 99.25], [0.0, 0.0, 2.5, -310.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(27)
    image = rng.integers(-1024, 2000, size=(7, 6, 5)).astype(np.int16)
    label = rng.integers(0, 3, size=(7, 6, 5)).astype(np.uint8)
    return image, label


PHANTOM = {"description": "tumorforge phantom", "gzip_os": GZIP_OS_UNKNOWN}
# Each output's header choices, and the SHA-256 of the bytes its own writer produced for these
# arrays before the one writer replaced it (nibabel 5.4, Python 3.11's zlib): a change here
# changes published bytes (phantom files feed the demo's dataset id).
SITES = {
    "phantom .nii int16 (from float)":
        (lambda im, lb: (im.astype(np.float32), AFFINE), {**PHANTOM, "dtype": np.int16, "gzip_os": None},
         "f1356de7c692f9637787745220811f2c292f930493ad83f8d34c3fb06b7d03d3"),
    "phantom .nii uint8": (lambda im, lb: (lb, AFFINE), {**PHANTOM, "dtype": np.uint8, "gzip_os": None},
                           "37a3231ded134ffe73fb423e16291abf6c4e94855107a8ae46467e50ac6de025"),
    "phantom .nii.gz int16": (lambda im, lb: (im, AFFINE), {**PHANTOM, "dtype": np.int16},
                              "c6073c41c03994468ccca01c1fe3537db3752356b4b0ec43fea25ea1b34af101"),
    "phantom .nii.gz uint8": (lambda im, lb: (lb, AFFINE), {**PHANTOM, "dtype": np.uint8},
                              "7eaaaf2a47f14a7166a676a064e871073c269f26f01af6beae7c49b68927950d"),
    "synthesize / label-liver image": (lambda im, lb: (im, AFFINE), {"gzip_os": GZIP_OS_UNIX},
                                       "c641b6e423ef1f3ec32def1a8a8aaa4064631fd85bff2aea5e48b1b7a205c634"),
    "synthesize / label-liver label": (lambda im, lb: (lb, AFFINE), {"gzip_os": GZIP_OS_UNIX},
                                       "2970e7bfc39ef4fc3c83cd07f82a24c02feac0ab880e42cdef540c07f9fa7001"),
    "visual turing test case": (lambda im, lb: (zyx_to_ras(im), np.eye(4)),
                                {"dtype": np.int16, "gzip_os": GZIP_OS_UNIX},
                                "49525f847bff24d45d1bfd04c214cee1ca9b4ecb393c17ea90e95bd974b72e49"),
    "visual turing test label": (lambda im, lb: (zyx_to_ras(lb), np.eye(4)),
                                 {"dtype": np.uint8, "gzip_os": GZIP_OS_UNIX},
                                 "ff1d550a4fdc01ab68780a1a0e1d8931d951e0f14486718504dd035c225ba215"),
    "evaluate prediction": (lambda im, lb: (lb, AFFINE),
                            {"qform_code": 0, "sform_code": 2, "gzip_os": GZIP_OS_UNKNOWN},
                            "078b43e82fdd2473adc4b7da60f9215085cf496ef156667c794d9dd1c2a2c107"),
    "crop preview image": (lambda im, lb: (zyx_to_ras(im), AFFINE), {"gzip_os": GZIP_OS_UNKNOWN},
                           "173e53d59a921e169164d17cb46fffcb515f18bd277cc98156975f561234457d"),
    "crop preview label": (lambda im, lb: (zyx_to_ras(lb), AFFINE), {"gzip_os": GZIP_OS_UNKNOWN},
                           "a4893e4bd7a524f383754c0409235180f581201817567a0cf83cf226936f354f"),
}


@pytest.mark.parametrize("site", sorted(SITES))
def test_each_output_keeps_its_bytes(site):
    arrays, options, sha256 = SITES[site]
    array, affine = arrays(*_volumes())
    assert hashlib.sha256(nifti_bytes(array, affine, **options)).hexdigest() == sha256


def test_header_says_what_was_asked_and_nothing_else():
    image, _ = _volumes()
    raw = nifti_bytes(image.astype(np.float64), AFFINE, dtype=np.int16, description="a phantom")
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    assert header.get_data_dtype() == np.int16
    assert int(header["qform_code"]) == int(header["sform_code"]) == 1
    assert np.allclose(header.get_sform(), AFFINE) and np.allclose(header.get_qform(), AFFINE)
    assert header.get_xyzt_units()[0] == "mm"
    assert bytes(header["descrip"]).rstrip(b"\0") == b"a phantom"
    assert int(header["intent_code"]) == 0 and bytes(header["aux_file"]).rstrip(b"\0") == b""
    assert not header.extensions


def test_gzip_stream_is_the_same_everywhere():
    """No time stamp, no file name, the OS byte asked for: equal inputs, equal bytes."""
    _, label = _volumes()
    plain = nifti_bytes(label, AFFINE)
    for os_byte in (GZIP_OS_UNKNOWN, GZIP_OS_UNIX):
        packed = nifti_bytes(label, AFFINE, gzip_os=os_byte)
        assert packed[:4] == b"\x1f\x8b\x08\x00"                 # deflate, no name or comment
        assert packed[4:8] == b"\0\0\0\0" and packed[9] == os_byte
        assert gzip.decompress(packed) == plain


def test_write_nifti_reads_back(tmp_path):
    image, label = _volumes()
    for name, array in (("scan.nii", image), ("mask.nii.gz", label)):
        path = str(tmp_path / "out" / name)
        write_nifti(path, array, AFFINE)
        volume = read_nifti(path)
        assert np.array_equal(volume.data, array) and volume.data.dtype == array.dtype
        assert np.allclose(volume.info.affine, AFFINE) and volume.info.orientation == "LPS"
        first = (b"\x1f\x8b" if name.endswith(".gz") else (348).to_bytes(2, "little"))  # gzip | sizeof_hdr
        assert open(path, "rb").read(2) == first
    assert sorted(os.listdir(tmp_path / "out")) == ["mask.nii.gz", "scan.nii"]   # no temporaries
