"""The record of every random choice behind one sample: draw first (``sample_params``), then apply
(``synthesize``). Records are plain dataclasses that round-trip through JSON exactly, so provenance
can regenerate a sample and the robustness benchmark can edit one dimension at a time.

Coordinates are voxel indices of the full resampled scan (RAS axes at the target spacing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PaperTumor:
    """One tumor of the ``paper`` profile (Section 3.1, Table 1)."""

    kind: str                                  # tiny / small / medium / large / satellite / ...
    center: tuple[int, int, int]               # voxel of the full resampled scan
    radius: float                              # nominal r (voxels = mm at 1 mm spacing)
    half_axes: tuple[float, float, float]      # ~ U(0.75 r, 1.25 r) along i, j, k
    sigma_e: float                             # elastic deformation: control-point sd (voxels)
    deform_seed: int                           # Philox key of the 3x3x3 control displacements
    sigma_c: float                             # mask blur
    mu_t: float                                # texture mean HU ~ U(30, mu_p - 10)
    sigma_p: float                             # texture sd HU = parenchyma sd
    eta: float                                 # texture upscaling factor
    sigma_b: float                             # texture blur
    texture_seed: int                          # Philox key of the Gaussian texture
    location_tries: int                        # draws until no vessel within r (eq. 1 rule)
    location_fallback: bool                    # True: no free spot in max tries; fewest vessels used
    vessel_voxels_near: int                    # vessel voxels in the [c - r, c + r] cube chosen
    mass_effect: bool
    gamma_max: float                           # eq. 5 radius (1.3 r)
    intensity: float                           # eq. 5 I
    capsule: bool
    capsule_band: tuple[float, float]          # (lb, ub) of eq. 6
    sigma_d: float                             # eq. 7 blur
    capsule_hu: float                          # d of eq. 8


@dataclass(frozen=True)
class ReleasedTumor:
    """One tumor of the ``released`` profile (the authors' reduced training recipe)."""

    kind: str
    center: tuple[int, int, int]
    radius: float
    half_axes: tuple[float, float, float]      # integers in [0.75 r, 1.25 r]
    sigma_e: float                             # per 2-D pass over axis pairs (0,1), (1,2), (0,2)
    deform_seed: int
    mask_blur: float                           # ~ U(1, 2)
    texture_sigma: float                       # blur of the uniform noise, one of 3..15
    texture_prob: tuple[float, float]          # salt-noise probability rescaled into this range
    texture_blur: float                        # 4 or 7
    texture_mean: float                        # ~ U(0.5, 0.55)
    texture_seed: int
    delta_hu: float                            # darkening ~ U(65, 145) HU


@dataclass(frozen=True)
class SampleParams:
    """Everything ``synthesize`` needs besides the prepared scan."""

    scan_id: str
    profile: str
    kind: str                                  # size type or scenario; "negative" for liver-only
    crop_origin: tuple[int, int, int]          # full resampled scan voxel of the crop's corner
    crop_size: tuple[int, int, int]
    tumors: tuple                              # PaperTumor or ReleasedTumor records
    parenchyma_mean_hu: float                  # mu_p used for mu_t (recorded for audit)
    parenchyma_sd_hu: float

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["tumors"] = [dataclasses.asdict(t) for t in self.tumors]
        return _lists(out)

    @classmethod
    def from_json(cls, obj: dict) -> "SampleParams":
        tumor_cls = {"paper": PaperTumor, "released": ReleasedTumor, "real": PaperTumor}[obj["profile"]]
        tumors = tuple(tumor_cls(**_tuples(t, tumor_cls)) for t in obj["tumors"])
        data = _tuples({k: v for k, v in obj.items() if k != "tumors"}, cls)
        return cls(tumors=tumors, **data)


def _lists(x):
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


def _tuples(obj: dict, cls) -> dict:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(obj) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}
