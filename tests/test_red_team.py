"""Hostile and broken inputs, built here by the tests themselves: each must give a clear one-line
error naming the file, cost bounded memory, and never cost the good scans of a batch.

Memory is measured with tracemalloc (Python and NumPy allocations), against the size a naive
reader would allocate.
"""

from __future__ import annotations

import gzip
import io
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from tumorforge.manifests.nifti import ScanError, read_volume


def nifti_bytes(data, affine=None, **header) -> bytes:
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.66, 1.0]) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    return img.to_bytes()


def peak_mib(fn) -> tuple[object, float]:
    """(what ``fn`` raised or returned, peak traced allocation in MiB)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as exc:          # the test inspects it
            out = exc
        return out, tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


@pytest.fixture
def volume():
    return np.arange(8 * 8 * 6, dtype=np.int16).reshape(8, 8, 6)


def test_gzip_crc_is_checked(tmp_path, volume):
    """A bit flipped in a .nii.gz is caught by the CRC at the end of the stream (reading only the
    size the header promises used to let it through)."""
    raw = bytearray(gzip.compress(nifti_bytes(volume), mtime=0))
    raw[-8] ^= 0x01                                   # CRC32 field of the gzip trailer
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ScanError) as exc:
        read_volume(str(path))
    assert str(path) in str(exc.value) and "CRC" in str(exc.value)
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(nifti_bytes(volume), mtime=0))
    assert np.array_equal(read_volume(str(good)).data, volume)


def test_zero_or_nan_pixdim_is_refused(tmp_path, volume):
    """nibabel would turn a zero pixdim into 1 mm silently: 3.66 mm slices read as 1 mm and a
    liver of 1295 mL measured as 354 mL."""
    for bad in (0.0, float("nan")):
        pixdim = [1.0, 0.8, 0.8, bad, 1, 1, 1, 1]
        path = tmp_path / f"pixdim-{bad}.nii"
        path.write_bytes(nifti_bytes(volume, pixdim=pixdim))
        with pytest.raises(ScanError) as exc:
            read_volume(str(path))
        assert str(path) in str(exc.value) and "pixdim" in str(exc.value)


def test_huge_vox_offset_costs_no_memory(tmp_path, volume):
    """A 1 KB .nii.gz declaring vox_offset 1.5e9: refused before reading, a few MiB at most (it
    cost 3 GB before)."""
    path = tmp_path / "offset.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes(volume, vox_offset=1.5e9)[:352], mtime=0))
    out, peak = peak_mib(lambda: read_volume(str(path)))
    assert isinstance(out, ScanError) and "vox_offset" in str(out) and str(path) in str(out)
    assert peak < 8


def test_gzip_bomb_after_the_voxels_is_refused_with_bounded_memory(tmp_path, volume):
    """A valid volume followed by 200 MB of zeros (200 KB compressed): refused, without inflating
    the bomb into memory."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(nifti_bytes(volume))
        zeros = bytes(1 << 20)
        for _ in range(200):
            f.write(zeros)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(buf.getvalue())
    out, peak = peak_mib(lambda: read_volume(str(path)))
    assert isinstance(out, ScanError) and "after the voxel data" in str(out)
    assert peak < 64


def test_truncated_uncompressed_file_is_refused_before_allocating(tmp_path):
    """A header declaring 512 x 512 x 400 int16 (200 MiB) on a 2 KB file."""
    data = np.zeros((4, 4, 4), np.int16)
    raw = bytearray(nifti_bytes(data))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    header.set_data_shape((512, 512, 400))
    path = tmp_path / "short.nii"
    path.write_bytes(header.binaryblock + bytes(4) + bytes(raw[352:]))
    out, peak = peak_mib(lambda: read_volume(str(path)))
    assert isinstance(out, ScanError) and "truncated" in str(out) and str(path) in str(out)
    assert peak < 8
