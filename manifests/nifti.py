"""Reading NIfTI-1 scans defensively, from local disk or object storage, and writing them.

The header is parsed and checked before any voxel buffer is allocated, so a corrupt or hostile file
with absurd dimensions or voxel bytes (``MAX_VOXEL_BYTES``) is refused instead of exhausting memory,
and a ``.nii.gz`` is decompressed, chunk by chunk, straight into the one voxel array, only up to
the size its (checked) header promises. A ``.nii.gz`` is then read to its end, so its CRC
is checked and a flipped bit is caught. Every failure raises :class:`ScanError` naming the file, what
was expected and what was found.

One writer, :func:`nifti_bytes` (:func:`write_nifti` for a file), serves every NIfTI file
tumorforge writes (phantoms, synthesized scans, liver masks, predictions, previews, the Visual
Turing Test packet): a header holding the affine, mm units and nothing the caller did not ask for,
and a gzip stream without time stamp or name, so equal inputs give equal bytes on every machine
(phantom bytes feed the demo's dataset id).

This module handles NIfTI only; :func:`readers.read_volume` is the entry point that also reads DICOM
series and PNG mask folders (:mod:`dicom`, a sibling of this module, never imported here).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib

import nibabel as nib
import numpy as np

from . import storage
# The volume record, its error and the shared limits live in volume.py (both readers use them);
# they stay importable from here.
from .volume import MAX_AXIS, MAX_VOXELS, ScanError, Volume, VolumeInfo

__all__ = ["GZIP_OS_UNIX", "GZIP_OS_UNKNOWN", "MAX_AXIS", "MAX_VOXELS", "MAX_VOXEL_BYTES",
           "SUFFIXES", "ScanError", "Volume", "VolumeInfo", "nifti_bytes", "owns", "read_nifti",
           "write_nifti"]

SUFFIXES = (".nii", ".nii.gz", ".gz")   # what a uri read as a NIfTI file ends with
HEADER_BYTES = 348
# Voxel bytes one read may hold: the stored array and the returned one (float32 when scl_slope /
# scl_inter apply) must each fit. 1 GiB holds the largest LiTS volume twice over as int16 (0.48
# GiB) and its float32 scaled form (0.96 GiB); a compressed file that declares more (a 1 MB
# .nii.gz can declare 512^3 float64 zeros) is refused from its header, before any allocation.
MAX_VOXEL_BYTES = 1 << 30
FLOAT32_MAX = float(np.finfo(np.float32).max)
READ_CHUNK = 4 << 20             # voxel bytes decompressed (and scaled) per step into the array
MAX_EXTENSION_BYTES = 16 << 20   # header extensions before the voxels (vox_offset - 348)
MAX_TRAILING_BYTES = 1 << 20     # bytes after the voxel data that a file may carry
# Writing: level 1 (nibabel's default), as noisy int16 CT barely compresses better at higher
# levels, which cost about 6x the time.
GZIP_LEVEL = 1
# The OS byte of a written gzip header, set rather than left to zlib (whose value depends on the
# platform it was built for), so the bytes are the same everywhere. Both values are in published
# outputs and stay as they are: 255 ("unknown", as Python's GzipFile and nibabel write it) in
# phantoms, predictions and previews; 3 ("Unix", as zlib writes it on Linux) in synthesized scans,
# liver masks and the Visual Turing Test packet.
GZIP_OS_UNKNOWN = 255
GZIP_OS_UNIX = 3


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


def _scaling(uri: str, header: nib.Nifti1Header, dtype: np.dtype) -> tuple[float, float] | None:
    """``(slope, inter)`` when the header's scl_slope / scl_inter change the voxel values, else None
    (slope 0 or NaN means unscaled, as nibabel writes it). Refused, in one line and before any
    arithmetic can warn: an infinite slope, a non-finite intercept, or a scaling that takes the
    stored type's range (the stored values, for float types, are checked as they are scaled)
    beyond float32, the type the scaled volume is returned in."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if np.isnan(slope) or slope == 0:
        return None
    if not np.isfinite(slope):
        raise ScanError(uri, f"scl_slope {slope}: expected a finite scale factor (or 0 / NaN for "
                             "none)")
    if not np.isfinite(inter):
        raise ScanError(uri, f"scl_inter {inter} with scl_slope {slope:g}: expected a finite "
                             "intercept")
    if slope == 1 and inter == 0:
        return None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        reach = abs(slope) * max(abs(float(info.min)), float(info.max)) + abs(inter)
        if not reach <= FLOAT32_MAX:
            raise ScanError(uri, f"scl_slope {slope:g} and scl_inter {inter:g} take {dtype} values "
                                 f"up to {reach:.3g}, beyond float32 (max {FLOAT32_MAX:.3g}); "
                                 "expected a scaling that fits")
    elif abs(inter) > FLOAT32_MAX:
        raise ScanError(uri, f"scl_inter {inter:g} is beyond float32 (max {FLOAT32_MAX:.3g})")
    return slope, inter


def _checked_info(uri: str, header: nib.Nifti1Header, max_voxels: int,
                  max_bytes: int = MAX_VOXEL_BYTES) -> VolumeInfo:
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
    out_itemsize = 4 if _scaling(uri, header, dtype) is not None else dtype.itemsize
    nbytes = voxels * max(dtype.itemsize, out_itemsize)
    if nbytes > max_bytes:
        raise ScanError(uri, f"header dimensions {tuple(shape)} of {dtype}"
                             f"{' scaled to float32' if out_itemsize != dtype.itemsize else ''}: "
                             f"{nbytes} bytes of voxels exceed the limit of {max_bytes}; "
                             "refusing to allocate")
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ScanError(uri, f"expected positive voxel spacing, header says {zooms}")
    affine = header.get_best_affine()
    with np.errstate(all="ignore"):
        det = float(np.linalg.det(affine[:3, :3])) if np.all(np.isfinite(affine)) else np.nan
    if not np.isfinite(det) or abs(det) < 1e-9:
        rows = "; ".join(" ".join(f"{v:.6g}" for v in row) for row in affine[:3])
        raise ScanError(uri, f"the header's affine is singular or not finite (rows {rows})")
    return VolumeInfo(shape=tuple(shape), spacing_mm=zooms, affine=affine,
                      orientation="".join(nib.aff2axcodes(affine)), dtype=dtype)


def _read_exactly(uri: str, stream, n: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer at its end); ``n`` is small (a header)."""
    buf = bytearray(n)
    return bytes(buf[:_fill(uri, stream, memoryview(buf))])


def _skip(uri: str, stream, n: int) -> int:
    """Read and drop up to ``n`` bytes of ``stream`` through one small buffer (skipping costs no
    memory); how many there were."""
    scratch = memoryview(bytearray(min(n, READ_CHUNK)))
    seen = 0
    while seen < n:
        want = min(len(scratch), n - seen)
        got = _fill(uri, stream, scratch[:want], before=seen, total=n)
        seen += got
        if got < want:
            break
    return seen


def _fill(uri: str, stream, into: memoryview, before: int = 0, total: int | None = None) -> int:
    """Read ``stream`` into ``into`` (to its end or the stream's); how many bytes came. Gzip
    errors, CRC failures included, become :class:`ScanError` (``before`` bytes of ``total``
    came earlier, for the message)."""
    seen, n = 0, len(into)
    try:
        while seen < n:
            got = stream.readinto(into[seen:min(n, seen + READ_CHUNK)])
            if not got:
                break
            seen += got
    except EOFError as exc:
        raise ScanError(uri, f"truncated .nii.gz: the compressed stream ends after "
                             f"{before + seen} of {total or n} expected bytes") from exc
    except (zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise ScanError(uri, f"corrupt gzip stream: {exc}") from exc
    return seen


def _read_voxels(uri: str, stream, info: VolumeInfo, scale: tuple[float, float] | None,
                 kind: str) -> np.ndarray:
    """The voxels in file order, decoded straight into the one array that is returned: the
    stored type, or float32 scaled chunk by chunk (``READ_CHUNK`` stored bytes at a time)."""
    dtype = info.dtype
    voxels = int(np.prod(info.shape, dtype=np.int64))
    nbytes = voxels * dtype.itemsize
    if scale is None:
        out = np.empty(voxels, dtype)
        got = _fill(uri, stream, memoryview(out.view(np.uint8)))
    else:
        out = np.empty(voxels, np.float32)
        step = max(1, READ_CHUNK // dtype.itemsize)
        part = np.empty(min(step, voxels), dtype)
        slope, inter = np.float32(scale[0]), np.float32(scale[1])
        got = 0
        for start in range(0, voxels, step):
            n = min(step, voxels - start)
            came = _fill(uri, stream, memoryview(part.view(np.uint8))[:n * dtype.itemsize])
            got += came
            if came < n * dtype.itemsize:
                break
            seg = out[start:start + n]
            try:
                with np.errstate(over="raise", invalid="raise"):
                    seg[...] = part[:n]          # as astype(float32) * slope + inter, in place
                    seg *= slope
                    seg += inter
            except FloatingPointError:
                raise ScanError(uri, f"scl_slope {scale[0]:g} and scl_inter {scale[1]:g} take the "
                                     f"stored {dtype} values beyond float32; expected a scaling "
                                     "that fits") from None
    if got < nbytes:
        raise ScanError(uri, f"truncated {kind}: expected {nbytes} bytes of voxel data for shape "
                             f"{info.shape} {dtype}, found {got}")
    return out


def owns(uri: str) -> bool:
    """Whether ``uri`` names a NIfTI file by its suffix (``.nii``, ``.nii.gz``, ``.gz``), so no
    other reader is asked about it."""
    return uri.lower().endswith(SUFFIXES)


def read_nifti(uri: str, *, max_voxels: int = MAX_VOXELS, with_data: bool = True,
               max_bytes: int = MAX_VOXEL_BYTES) -> Volume:
    """Read, hash and check one NIfTI-1 file (``.nii`` or ``.nii.gz``), local or ``s3://``.
    ``with_data=False`` reads and checks the header only (the returned data is empty)."""
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
    info = _checked_info(uri, header, max_voxels, max_bytes)
    if not with_data:
        return Volume(info=info, data=np.empty((0,)), sha256=digest)
    offset = float(header["vox_offset"])
    if not np.isfinite(offset) or offset != int(offset) or offset < HEADER_BYTES:
        raise ScanError(uri, f"vox_offset {offset} points inside the header or is not an integer")
    offset = int(offset)
    if offset - HEADER_BYTES > MAX_EXTENSION_BYTES:
        raise ScanError(uri, f"vox_offset {offset}: expected at most {MAX_EXTENSION_BYTES} bytes of "
                             f"header extensions before the voxels; refusing to read them")
    voxels = int(np.prod(info.shape, dtype=np.int64))
    nbytes = voxels * info.dtype.itemsize
    kind = ".nii.gz" if compressed else ".nii"
    if not compressed and offset + nbytes > len(raw):
        raise ScanError(uri, f"truncated .nii: vox_offset {offset} + {nbytes} bytes of voxel data "
                             f"for shape {info.shape} {info.dtype} exceed the file's {len(raw)} bytes")
    scale = _scaling(uri, header, info.dtype)
    _skip(uri, stream, offset - HEADER_BYTES)                 # header extensions, unused
    if not compressed and scale is None:        # the file is in memory already: a view of it
        flat = np.frombuffer(raw, dtype=info.dtype, count=voxels, offset=offset)
        stream.seek(offset + nbytes)
    else:
        flat = _read_voxels(uri, stream, info, scale, kind)
    # Read to the end: gzip checks its CRC there; bounded, so a bomb is refused, not inflated.
    extra = _skip(uri, stream, MAX_TRAILING_BYTES + 1)
    if extra > MAX_TRAILING_BYTES:
        raise ScanError(uri, f"more than {MAX_TRAILING_BYTES} bytes after the voxel data of shape "
                             f"{info.shape} {info.dtype}; expected the file to end there")
    if scale is None:
        flat.flags.writeable = False           # as a view of the file's bytes is (as before)
    data = flat.reshape(info.shape, order="F")
    return Volume(info=info, data=data, sha256=digest)


def nifti_bytes(array: np.ndarray, affine: np.ndarray, *, dtype=None, qform_code: int = 1,
                sform_code: int = 1, description: str = "", gzip_os: int | None = None) -> bytes:
    """One single-file NIfTI-1 image, header and voxels, as bytes.

    ``array``: the voxels, its axes the file's (i, j, k); stored as ``dtype`` (cast to it) or, by
    default, as its own type. ``affine``: voxel (i, j, k) -> world RAS+ mm, written to the qform
    and the sform with ``qform_code`` / ``sform_code`` (1 scanner, 2 aligned, 0 unset); spatial
    units mm. ``description`` goes to ``descrip``; nothing else is set (no intent, names or
    extensions). ``gzip_os`` None: a plain ``.nii``; else a ``.nii.gz`` stream (level
    ``GZIP_LEVEL``, time stamp 0, no file name) whose header's OS byte is ``gzip_os``.
    """
    data = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_xyzt_units("mm")
    if description:
        header["descrip"] = description.encode()
    header.set_qform(affine, code=qform_code)
    header.set_sform(affine, code=sform_code)
    raw = img.to_bytes()
    if gzip_os is None:
        return raw
    stream = zlib.compress(raw, GZIP_LEVEL, wbits=31)     # gzip framing, time stamp 0, no name
    return stream[:9] + bytes([gzip_os]) + stream[10:]


def write_nifti(uri: str, array: np.ndarray, affine: np.ndarray, *,
                gzip_os: int = GZIP_OS_UNKNOWN, **header) -> None:
    """Write :func:`nifti_bytes` of ``array`` at ``uri`` (local or ``s3://``) in one go, so a
    reader never sees half a file: gzip-compressed (OS byte ``gzip_os``) when ``uri`` ends in
    ``.gz``, plain otherwise. ``header``: the header keywords of :func:`nifti_bytes`."""
    compressed = str(uri).lower().endswith(".gz")
    storage.write_atomic(str(uri), nifti_bytes(array, affine, gzip_os=gzip_os if compressed
                                               else None, **header))
