"""DICOM series and PNG mask stacks read as volumes, so DICOM datasets are manifest sources as they
are distributed: CHAOS (``CT/<id>/DICOM_anon/*.dcm`` with ``CT/<id>/Ground/*.png`` liver masks)
and DICOM series in general (Pancreas-CT style, image only).

A series is a folder (local or ``s3://``) of one CT series' ``.dcm`` files. Geometry comes from the
tags, never from file names: slices are ordered along the normal of ``ImageOrientationPatient`` by
``ImagePositionPatient``; in-plane spacing is ``PixelSpacing``, slice spacing the (checked uniform)
distance between positions; voxel i runs along the row direction, j along the column direction, k
along the normal; the affine is converted from DICOM's LPS to RAS. HU = stored value x
``RescaleSlope`` + ``RescaleIntercept``. The series' sha256 is that of its files' names and
sha256s, in name order. Nothing is unpickled; files are parsed by pydicom from bytes already read.

A PNG mask stack (CHAOS ``Ground``) has no geometry: it takes its series'. The k-th PNG in name
order is the mask of the k-th DICOM file in name order (CHAOS names both from 0 in the same
order), its rows and columns those of the DICOM pixel array; a count or size mismatch is an error.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np

from . import storage
from .volume import MAX_AXIS, MAX_VOXELS, ScanError, Volume, VolumeInfo

SLICE_SPACING_RTOL = 0.01        # gaps between slice positions may differ by 1 %


def read_folder(uri: str, like: Volume | None = None, max_voxels: int = MAX_VOXELS
                ) -> Volume | None:
    """The volume a folder holds: a DICOM series (``.dcm`` files) or, with ``like`` (its series),
    a PNG mask stack; None when ``uri`` is not a folder of either (listed once)."""
    try:
        found = storage.list_files(uri)
    except (FileNotFoundError, NotADirectoryError):
        return None
    series = [f for f in found if f.lower().endswith(".dcm")]
    if series:
        return read_series(uri, series, max_voxels)
    pngs = [f for f in found if f.lower().endswith(".png")]
    if pngs:
        if like is None:
            raise ScanError(uri, "a folder of PNG masks needs its DICOM series as the image")
        return read_png_stack(uri, pngs, like)
    return None


def _read(uri: str) -> bytes:
    try:
        with storage.open_binary(uri) as f:
            return f.read()
    except OSError as exc:
        raise ScanError(uri, f"cannot read the file ({type(exc).__name__}: {exc})") from None


def _series_hash(items: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, raw in items:
        digest.update(f"{name}\0{hashlib.sha256(raw).hexdigest()}\n".encode())
    return digest.hexdigest()


def read_series(uri: str, names: list[str], max_voxels: int = MAX_VOXELS) -> Volume:
    """A CT series (folder ``uri`` of the ``.dcm`` files ``names``) as a volume; ScanError names
    the file and problem."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    if not names:
        raise ScanError(uri, "no .dcm files: expected a DICOM series folder")
    if len(names) > MAX_AXIS:
        raise ScanError(uri, f"{len(names)} slices; expected at most {MAX_AXIS}")
    raws = [(n, _read(n)) for n in names]
    slices = []
    for name, raw in raws:
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), force=False)
            rows, cols = int(ds.Rows), int(ds.Columns)
            if rows > MAX_AXIS or cols > MAX_AXIS:
                raise ScanError(name, f"{rows} x {cols} pixels; expected at most {MAX_AXIS}")
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], float)
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], float)
            spacing = [float(v) for v in ds.PixelSpacing]
            slope = float(getattr(ds, "RescaleSlope", 1.0))
            intercept = float(getattr(ds, "RescaleIntercept", 0.0))
            pixels = ds.pixel_array
        except ScanError:
            raise
        except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError) as exc:
            raise ScanError(name, f"not a readable CT DICOM slice ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if iop.shape != (6,) or ipp.shape != (3,) or len(spacing) != 2 or min(spacing) <= 0:
            raise ScanError(name, "ImageOrientationPatient, ImagePositionPatient or PixelSpacing "
                                  "missing or malformed")
        if pixels.shape != (rows, cols):
            raise ScanError(name, f"pixel array {pixels.shape}; expected one {rows} x {cols} frame")
        slices.append((name, iop, ipp, spacing, slope, intercept, pixels))
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s[1], first[1], atol=1e-4) or s[6].shape != first[6].shape or \
                not np.allclose(s[3], first[3], rtol=1e-4):
            raise ScanError(s[0], f"orientation, size or pixel spacing differs from "
                                  f"{first[0]}: not one series")
    row_dir, col_dir = first[1][:3], first[1][3:]
    normal = np.cross(row_dir, col_dir)
    order = sorted(range(len(slices)), key=lambda i: float(slices[i][2] @ normal))
    positions = np.array([slices[i][2] @ normal for i in order])
    gaps = np.diff(positions)
    if len(gaps) and (gaps.min() <= 0 or np.abs(gaps - np.median(gaps)).max()
                      > SLICE_SPACING_RTOL * np.median(gaps)):
        raise ScanError(uri, f"slice positions are not evenly spaced (gaps {gaps.min():.3f}-"
                             f"{gaps.max():.3f} mm): duplicate or missing slices")
    dz = float(np.median(gaps)) if len(gaps) else 1.0
    rows, cols = first[6].shape
    if rows * cols * len(slices) > max_voxels:
        raise ScanError(uri, f"{cols} x {rows} x {len(slices)} voxels; expected at most "
                             f"{max_voxels}")
    data = np.empty((cols, rows, len(slices)), np.float32)
    for k, i in enumerate(order):
        _, _, _, _, slope, intercept, pixels = slices[i]
        data[:, :, k] = pixels.T.astype(np.float32) * slope + intercept
    row_mm, col_mm = first[3]           # PixelSpacing: between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm       # voxel i: along a row (next column)
    lps[:3, 1] = col_dir * row_mm       # voxel j: along a column (next row)
    lps[:3, 2] = normal * dz
    lps[:3, 3] = slices[order[0]][2]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps           # LPS -> RAS
    import nibabel as nib
    info = VolumeInfo(shape=data.shape, spacing_mm=(float(col_mm), float(row_mm), dz),
                      affine=affine, orientation="".join(nib.aff2axcodes(affine)),
                      dtype=np.dtype(np.float32))
    return Volume(info=info, data=data, sha256=_series_hash(raws),
                  slice_files=tuple(os.path.basename(slices[i][0]) for i in order))


def read_png_stack(uri: str, names: list[str], like: Volume) -> Volume:
    """The PNG masks ``names`` of folder ``uri`` on the grid of the series ``like`` (see the
    module's pairing rule)."""
    from PIL import Image
    names = sorted(names)
    order = like.slice_files
    if not order:
        raise ScanError(uri, "a PNG mask stack needs the DICOM series it belongs to as its image")
    if len(names) != len(order):
        raise ScanError(uri, f"{len(names)} PNG masks for a series of {len(order)} slices")
    by_name = sorted(order)                       # DICOM files in name order
    position = {name: k for k, name in enumerate(order)}
    cols, rows, _ = like.info.shape
    data = np.zeros(like.info.shape, np.uint8)
    raws = []
    for name, dicom_name in zip(names, by_name):
        raw = _read(name)
        raws.append((name, raw))
        try:
            with Image.open(io.BytesIO(raw)) as img:
                mask = np.asarray(img.convert("L"))
        except Exception as exc:         # PIL raises many kinds for a bad file
            raise ScanError(name, f"not a readable PNG ({type(exc).__name__})") from None
        if mask.shape != (rows, cols):
            raise ScanError(name, f"{mask.shape[1]} x {mask.shape[0]} pixels; its slice "
                                  f"{dicom_name} has {cols} x {rows}")
        data[:, :, position[dicom_name]] = mask.T
    return Volume(info=VolumeInfo(like.info.shape, like.info.spacing_mm, like.info.affine,
                                  like.info.orientation, np.dtype(np.uint8)),
                  data=data, sha256=_series_hash(raws))
