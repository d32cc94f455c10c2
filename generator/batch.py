"""Packed sample records: the parameters of many crops as flat NumPy tables, what synthesis reads.

``pack(params, scans)`` turns :class:`SampleParams` records into two structured tables:

- ``crops``, one row per crop: its scan (index into the batch's scans), crop origin (voxel of the
  full resampled scan) and ``crop_size``, its rows in the tumor table (``first_tumor``, ``tumors``), and
  the ``released`` profile's per-sample draws (one blur, one texture, one delta);
- ``tumors``, one row per tumor: its crop, ``paper`` flag (``PaperTumor`` or ``ReleasedTumor``),
  center, half-axes, deformation sd and seed, mask blur, texture mean / sd / grid (per axis: a
  record's one eta fills all three) / blur / seed,
  mass effect and capsule flags with their parameters, and the ``diverse`` model's look.

Rows are NumPy records (``numpy.recarray``), so a row reads like its record (``row.sigma_e_mm``).
Every float is the record's float64 and every seed its integer, so a packed batch synthesizes to
the bytes its records do; ``synthesize.synthesize`` is ``synthesize_batch`` on a batch of one.
The layout is also what array kernels consume: every box a tumor is computed in follows from its
row alone (``shape.shape_halves``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .looks import LOOK_NAMES
from .params import PaperTumor, ReleasedTumor, SampleParams
from .tumor_models import tumor_model

CROP_DTYPE = np.dtype([
    ("scan", np.int64), ("origin", np.int64, 3), ("crop_size", np.int64, 3),
    ("first_tumor", np.int64), ("tumors", np.int64),
    ("mask_blur_mm", np.float64), ("texture_sigma_mm", np.float64),
    ("texture_prob", np.float64, 2), ("texture_blur_mm", np.float64),
    ("texture_mean", np.float64), ("texture_seed", np.uint64), ("delta_hu", np.float64),
])

TUMOR_DTYPE = np.dtype([
    ("crop", np.int64), ("paper", np.bool_), ("center", np.int64, 3),
    ("half_axes_mm", np.float64, 3), ("sigma_e_mm", np.float64), ("deform_seed", np.uint64),
    ("sigma_c_mm", np.float64), ("mu_t", np.float64), ("sigma_p", np.float64),
    ("eta", np.float64, 3), ("sigma_b_mm", np.float64), ("texture_seed", np.uint64),
    ("mass_effect", np.bool_), ("gamma_max_mm", np.float64), ("intensity", np.float64),
    ("capsule", np.bool_), ("capsule_band", np.float64, 2), ("sigma_d_mm", np.float64),
    ("capsule_hu", np.float64),
    # the diverse model's look (``looks``): 0 = none, else 1 + its index in looks.LOOK_NAMES
    ("look", np.int64), ("core_fraction", np.float64), ("core_hu", np.float64),
    ("rim_hu", np.float64), ("rim_width_mm", np.float64), ("nodules", np.int64),
    ("nodule_hu_sd", np.float64),
])
_LOOK_FIELDS = ["core_fraction", "core_hu", "rim_hu", "rim_width_mm", "nodules", "nodule_hu_sd"]

# Fields a PaperTumor / ReleasedTumor record and a tumor row share by name.
_PAPER_FIELDS = [n for n in TUMOR_DTYPE.names
                 if n not in ("crop", "paper", "look", *_LOOK_FIELDS)]
_RELEASED_FIELDS = ["center", "half_axes_mm", "sigma_e_mm", "deform_seed"]
_RELEASED_SAMPLE = ["mask_blur_mm", "texture_sigma_mm", "texture_prob", "texture_blur_mm",
                    "texture_mean", "texture_seed", "delta_hu"]


@dataclass(frozen=True)
class Packed:
    """A batch of crops: ``crops`` (``CROP_DTYPE`` rows), ``tumors`` (``TUMOR_DTYPE`` rows) and
    each crop's tumor model (``tumor_models.TumorModel``, from the profile its record names)."""

    crops: np.recarray
    tumors: np.recarray
    models: tuple = ()

    def __len__(self) -> int:
        return len(self.crops)

    def tumors_of(self, b: int) -> np.recarray:
        """The tumor rows of crop ``b``."""
        first = int(self.crops.first_tumor[b])
        return self.tumors[first:first + int(self.crops.tumors[b])]


def tumor_rows(tumors: Sequence, crop: int = 0) -> np.recarray:
    """``PaperTumor`` / ``ReleasedTumor`` records as tumor rows (fields a record lacks are 0)."""
    rows = np.rec.array(np.zeros(len(tumors), TUMOR_DTYPE))
    for i, t in enumerate(tumors):
        paper = isinstance(t, PaperTumor)
        if not paper and not isinstance(t, ReleasedTumor):
            raise TypeError(f"tumor {i}: expected a PaperTumor or ReleasedTumor record, "
                            f"found {type(t).__name__}")
        rows.crop[i], rows.paper[i] = crop, paper
        for name in (_PAPER_FIELDS if paper else _RELEASED_FIELDS):
            rows[name][i] = getattr(t, name)
        look = getattr(t, "look", None)
        if look is not None:
            rows.look[i] = LOOK_NAMES.index(look.name) + 1
            for name in _LOOK_FIELDS:
                rows[name][i] = getattr(look, name)
    return rows


def pack(params: Sequence[SampleParams], scan_ids: Sequence[str]) -> Packed:
    """The crops of ``params`` as a :class:`Packed` batch; ``scan_ids`` are the batch's scans in
    the order ``synthesize_batch`` gets them (each record must name one of them)."""
    where = {sid: n for n, sid in enumerate(scan_ids)}
    crops = np.rec.array(np.zeros(len(params), CROP_DTYPE))
    parts, first, models = [], 0, []
    for b, p in enumerate(params):
        if p.scan_id not in where:
            raise ValueError(f"params are for scan {p.scan_id}, not "
                             f"{' or '.join(scan_ids) or 'any scan of the batch'}")
        crops.scan[b], crops.origin[b] = where[p.scan_id], p.crop_origin
        crops.crop_size[b] = p.crop_size
        crops.first_tumor[b], crops.tumors[b] = first, len(p.tumors)
        models.append(tumor_model(p.profile, f"params of scan {p.scan_id}"))
        if models[-1].family == "released":
            if p.released is not None:
                for name in _RELEASED_SAMPLE:
                    crops[name][b] = getattr(p.released, name)
            else:
                crops.tumors[b] = 0               # a negative sample: nothing to paint
        parts.append(tumor_rows(p.tumors if crops.tumors[b] else (), crop=b))
        first += int(crops.tumors[b])
    tumors = np.rec.array(np.concatenate(parts) if parts else np.zeros(0, TUMOR_DTYPE))
    return Packed(crops, tumors, tuple(models))
