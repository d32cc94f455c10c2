"""Reading NIfTI-1 scans defensively, from local disk or object storage.

The header is parsed and checked before any voxel buffer is allocated, so a corrupt or hostile file
with absurd dimensions is refused instead of exhausting memory, and a ``.nii.gz`` is decompressed
only up to the size its (checked) header promises. A ``.nii.gz`` is then read to its end, so its CRC
is checked and a flipped bit is caught. Every failure raises :class:`ScanError` naming the file, what
was expected and what was found.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from . import storage

HEADER_BYTES = 348
MAX_AXIS = 4096            # voxels along one axis; real CT stays below ~2000 slices
MAX_VOXELS = 1 << 30       # 1 Gi voxels (2-4 GiB as int16/float32); LiTS tops out near 0.26 Gi
MAX_EXTENSION_BYTES = 16 << 20   # header extensions before the voxels (vox_offset - 348)
MAX_TRAILING_BYTES = 1 << 20     # bytes after the voxel data that a file may carry


class ScanError(ValueError):
    """A scan file that cannot be used, with the file and the reason."""

    def __init__(self, uri: str, problem: str):
        super().__init__(f"{uri}: {problem}")
        self.uri = uri
        self.problem = problem


@dataclass(frozen=True)
class VolumeInfo:
    """What a header says. ``shape``/``spacing_mm`` follow the file's voxel axes; ``affine`` maps
    voxel indices to RAS+ world mm; ``orientation`` is the axis codes of those voxel axes."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    orientation: str
    dtype: np.dtype


@dataclass(frozen=True)
class Volume:
    info: VolumeInfo
    data: np.ndarray        # voxel values after scl_slope/scl_inter, axes as in the file
    sha256: str             # of the file bytes as stored (compressed if .gz); series: see dicom.py
    slice_files: tuple[str, ...] = ()   # a DICOM series' file names in slice order (dicom.py)


def _parse_header(uri: str, block: bytes) -> nib.Nifti1Header:
    if len(block) < HEADER_BYTES:
        raise ScanError(uri, f"not a NIfTI-1 file: expected a {HEADER_BYTES}-byte header, "
                             f"found only {len(block)} bytes")
    sizeof_le = int.from_bytes(block[:4], "little")
    sizeof_be = int.from_bytes(block[:4], "big")
    magic = block[344:348]
    if HEADER_BYTES not in (sizeof_le, sizeof_be) or magic not in (b"n+1\x00", b"ni1\x00"):
        raise ScanError(uri, f"not a NIfTI-1 file: expected sizeof_hdr 348 and magic 'n+1', "
                             f"found sizeof_hdr {sizeof_le} and magic {magic!r}")
    if magic == b"ni1\x00":
        raise ScanError(uri, "a two-file NIfTI (.hdr/.img pair) is not supported; "
                             "expected a single-file .nii or .nii.gz")
    try:
        raw = nib.Nifti1Header(binaryblock=block[:HEADER_BYTES], check=False)
        # nibabel's check silently turns a zero pixdim into 1 mm: look before it fixes anything.
        pixdim = tuple(float(v) for v in raw["pixdim"][1:4])
        if not all(np.isfinite(v) and v != 0 for v in pixdim):
            raise ScanError(uri, f"voxel spacing pixdim[1:4] = {pixdim}: expected finite, "
                                 f"non-zero values")
        return nib.Nifti1Header(binaryblock=block[:HEADER_BYTES], check=True)
    except ScanError:
        raise
    except Exception as exc:  # nibabel raises a variety of HeaderDataError subclasses
        raise ScanError(uri, f"invalid NIfTI-1 header: {exc}") from exc


def _checked_info(uri: str, header: nib.Nifti1Header, max_voxels: int) -> VolumeInfo:
    dim = [int(d) for d in header["dim"]]
    ndim = dim[0]
    if not 3 <= ndim <= 7:
        raise ScanError(uri, f"expected a 3-D volume, header says {ndim} dimension(s)")
    shape = dim[1:ndim + 1]
    if any(n != 1 for n in shape[3:]):
        raise ScanError(uri, f"expected a 3-D volume, found shape {tuple(shape)}")
    shape = shape[:3]
    if any(n < 1 or n > MAX_AXIS for n in shape):
        raise ScanError(uri, f"absurd header dimensions {tuple(shape)}: each axis must be "
                             f"1..{MAX_AXIS} voxels; refusing to allocate")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise ScanError(uri, f"absurd header dimensions {tuple(shape)}: {voxels} voxels exceeds "
                             f"the limit of {max_voxels}; refusing to allocate")
    try:
        dtype = header.get_data_dtype()
    except Exception as exc:
        raise ScanError(uri, f"unsupported voxel datatype code {int(header['datatype'])}") from exc
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise ScanError(uri, f"expected an integer or float voxel type, found {dtype}")
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ScanError(uri, f"expected positive voxel spacing, header says {zooms}")
    affine = header.get_best_affine()
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ScanError(uri, f"the header's affine is singular or not finite:\n{affine}")
    return VolumeInfo(shape=tuple(shape), spacing_mm=zooms, affine=affine,
                      orientation="".join(nib.aff2axcodes(affine)), dtype=dtype)


def _pull(uri: str, stream, n: int, keep: bool) -> tuple[bytes, int]:
    """Up to ``n`` bytes of ``stream`` (fewer at its end) and how many were read; ``keep=False``
    drops them as it goes, so skipping costs no memory. Gzip errors, CRC failures included,
    become :class:`ScanError`."""
    buf, seen = bytearray(), 0
    try:
        while seen < n:
            chunk = stream.read(min(n - seen, 16 << 20))
            if not chunk:
                break
            seen += len(chunk)
            if keep:
                buf += chunk
    except EOFError as exc:
        raise ScanError(uri, f"truncated .nii.gz: the compressed stream ends after {seen} of "
                             f"{n} expected bytes") from exc
    except (zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise ScanError(uri, f"corrupt gzip stream: {exc}") from exc
    return bytes(buf), seen


def _read_exactly(uri: str, stream, n: int) -> bytes:
    return _pull(uri, stream, n, keep=True)[0]


def read_volume(uri: str, *, max_voxels: int = MAX_VOXELS, with_data: bool = True,
                like: Volume | None = None) -> Volume:
    """Read, hash and check one scan or label, local or ``s3://``: a NIfTI-1 file (``.nii`` or
    ``.nii.gz``), a DICOM series folder, or a folder of PNG masks on the grid of ``like`` (its
    DICOM series; see :mod:`dicom`)."""
    if not uri.lower().endswith((".nii", ".nii.gz", ".gz")):
        from . import dicom
        folder = dicom.read_folder(uri, like, max_voxels)
        if folder is not None:
            return folder
    try:
        with storage.open_binary(uri) as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise ScanError(uri, "file not found") from exc
    except (PermissionError, IsADirectoryError, OSError) as exc:
        raise ScanError(uri, f"cannot read the file ({type(exc).__name__}: {exc})") from exc
    digest = hashlib.sha256(raw).hexdigest()
    compressed = raw[:2] == b"\x1f\x8b"
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw)) if compressed else io.BytesIO(raw)
    header = _parse_header(uri, _read_exactly(uri, stream, HEADER_BYTES))
    info = _checked_info(uri, header, max_voxels)
    if not with_data:
        return Volume(info=info, data=np.empty((0,)), sha256=digest)
    offset = float(header["vox_offset"])
    if not np.isfinite(offset) or offset != int(offset) or offset < HEADER_BYTES:
        raise ScanError(uri, f"vox_offset {offset} points inside the header or is not an integer")
    offset = int(offset)
    if offset - HEADER_BYTES > MAX_EXTENSION_BYTES:
        raise ScanError(uri, f"vox_offset {offset}: expected at most {MAX_EXTENSION_BYTES} bytes of "
                             f"header extensions before the voxels; refusing to read them")
    nbytes = int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
    kind = ".nii.gz" if compressed else ".nii"
    if not compressed and offset + nbytes > len(raw):
        raise ScanError(uri, f"truncated .nii: vox_offset {offset} + {nbytes} bytes of voxel data "
                             f"for shape {info.shape} {info.dtype} exceed the file's {len(raw)} bytes")
    _pull(uri, stream, offset - HEADER_BYTES, keep=False)   # header extensions, unused
    body = _read_exactly(uri, stream, nbytes)
    if len(body) < nbytes:
        raise ScanError(uri, f"truncated {kind}: expected {nbytes} bytes of voxel data for shape "
                             f"{info.shape} {info.dtype}, found {len(body)}")
    # Read to the end: gzip checks its CRC there; bounded, so a bomb is refused, not inflated.
    _, extra = _pull(uri, stream, MAX_TRAILING_BYTES + 1, keep=False)
    if extra > MAX_TRAILING_BYTES:
        raise ScanError(uri, f"more than {MAX_TRAILING_BYTES} bytes after the voxel data of shape "
                             f"{info.shape} {info.dtype}; expected the file to end there")
    data = np.frombuffer(body, dtype=info.dtype).reshape(info.shape, order="F")
    slope, inter = header.get_slope_inter()
    if slope is not None and (slope != 1 or (inter or 0) != 0):
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter or 0)
    return Volume(info=info, data=data, sha256=digest)
