"""One entry point for reading a scan or label, whatever it is stored as: :func:`read_volume`
hands a uri to the reader that owns it, a NIfTI-1 file (:mod:`nifti`) or a folder of a DICOM
series or PNG masks (:mod:`dicom`).

The readers are siblings behind this one interface (each returns a :class:`~.volume.Volume` and
raises :class:`~.volume.ScanError`), so neither imports the other and a new image format is one
reader module plus one branch here.
"""

from __future__ import annotations

from . import dicom, nifti
from .nifti import MAX_VOXEL_BYTES
from .volume import MAX_VOXELS, ScanError, Volume

__all__ = ["ScanError", "Volume", "read_volume"]


def read_volume(uri: str, *, max_voxels: int = MAX_VOXELS, with_data: bool = True,
                like: Volume | None = None, max_bytes: int = MAX_VOXEL_BYTES) -> Volume:
    """Read, hash and check one scan or label, local or ``s3://``: a NIfTI-1 file (``.nii`` or
    ``.nii.gz``), a DICOM series folder, or a folder of PNG masks on the grid of ``like`` (its
    DICOM series; see :mod:`dicom`). A uri without a NIfTI suffix that is not a folder of either
    is read as NIfTI, so its error names what a NIfTI file lacks. ``with_data`` and ``max_bytes``
    apply to NIfTI files."""
    if not nifti.owns(uri):
        folder = dicom.read_folder(uri, like, max_voxels)
        if folder is not None:
            return folder
    return nifti.read_nifti(uri, max_voxels=max_voxels, with_data=with_data, max_bytes=max_bytes)
