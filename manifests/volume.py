"""What every image reader returns: a :class:`Volume` (voxels, header geometry, content hash), the
:class:`ScanError` it raises for a file it cannot use, and the size limits all readers share.

It sits below the readers (:mod:`nifti`, :mod:`dicom`) so they are siblings that depend on it and
never on each other; :mod:`readers` picks the reader for a uri.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError

MAX_AXIS = 4096            # voxels along one axis; real CT stays below ~2000 slices
MAX_VOXELS = 1 << 30       # 1 Gi voxels; LiTS tops out near 0.26 Gi (512 x 512 x 987)


class ScanError(UserError, ValueError):
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
    """One scan or label as read: its header's geometry, its voxels and the hash of its bytes."""

    info: VolumeInfo
    data: np.ndarray        # voxel values after scl_slope/scl_inter, axes as in the file
    sha256: str             # of the file bytes as stored (compressed if .gz); series: see dicom.py
    slice_files: tuple[str, ...] = ()   # a DICOM series' file names in slice order (dicom.py)
