"""The record of every random choice behind one sample: draw first (``sample_params``), then apply
(``synthesize``). Records are plain dataclasses that round-trip through JSON exactly, so provenance
can regenerate a sample and the robustness benchmark can edit one dimension at a time.

Centers and crop origins are voxel indices of the full resampled scan (RAS axes on the isotropic
prepared grid); every length is in mm (``_mm``) and converted with the prepared spacing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tumorforge.manifests.records import RecordError, from_fields, typed_fields

from .tumor_models import TumorModelError, tumor_model


@dataclass(frozen=True)
class Look:
    """How a ``diverse`` tumor looks beyond the Gaussian texture (``looks.LOOKS`` names the
    families and the ranges each field is drawn from). Radii are fractions of the tumor's own
    normalized ellipsoid radius q (0 at the center, 1 on the drawn ellipsoid)."""

    name: str                 # a key of looks.LOOKS
    core_fraction: float      # necrotic / cystic core out to this q (0: none)
    core_hu: float            # the core's mean HU
    rim_hu: float             # HU added on a band at q ~ 0.85 (+ enhancing rim, - halo; 0: none)
    rim_width_mm: float       # the band's sd
    nodules: int              # mosaic: cells of their own mean inside the tumor (0: none)
    nodule_hu_sd: float       # sd of the cells' mean offsets
    lobe: bool = False        # an extra lobe of a lobulated tumor (the record before it is its body)


@dataclass(frozen=True)
class PaperTumor:
    """One tumor of the ``paper`` and ``paper-train`` profiles (Section 3.1, Table 1)."""

    kind: str                                  # tiny / small / medium / large / satellite / ...
    center: tuple[int, int, int]               # voxel of the full resampled scan
    radius_mm: float                           # nominal r
    half_axes_mm: tuple[float, float, float]   # ~ U(0.75 r, 1.25 r) along i, j, k
    sigma_e_mm: float                          # elastic deformation: control-point sd
    deform_seed: int                           # Philox key of the 3x3x3 control displacements
    sigma_c_mm: float                          # mask blur
    mu_t: float                                # texture mean HU ~ U(30, mu_p - 10)
    sigma_p: float                             # texture sd HU = parenchyma sd
    eta: float | tuple[float, float, float]    # texture noise grid spacing (mm): one, or per
                                               # axis (scan-matched grain)
    sigma_b_mm: float                          # texture blur
    texture_seed: int                          # Philox key of the Gaussian texture
    location_tries: int                        # candidate centers drawn
    location_fallback: bool                    # True: no candidate met every rule; best one used
    location_reason: str                       # "" / "vessels" (none vessel-free) / "volume"
    inside_fraction: float                     # share of the drawn shape inside the liver there
    vessel_voxels: int                         # vessel voxels inside the drawn shape there
    mass_effect: bool
    gamma_max_mm: float                        # eq. 5 radius (1.3 r)
    intensity: float                           # eq. 5 I
    capsule: bool
    capsule_band: tuple[float, float]          # (lb, ub) of eq. 6
    sigma_d_mm: float                          # eq. 7 blur
    capsule_hu: float                          # d of eq. 8
    look: Look | None = None                   # the diverse model's look (None: the paper's)

    def __post_init__(self):
        eta = self.eta
        if isinstance(eta, (list, tuple)):
            if len(eta) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for v in eta):
                raise RecordError(f"eta: expected a number or three numbers, found {eta!r}")
            object.__setattr__(self, "eta", tuple(float(v) for v in eta))
        elif not isinstance(eta, (int, float)) or isinstance(eta, bool):
            raise RecordError(f"eta: expected a number or three numbers, found {eta!r}")


@dataclass(frozen=True)
class ReleasedTumor:
    """One tumor of the ``released`` profile: its shape and place. How it is blurred, textured and
    darkened is drawn once per sample (:class:`ReleasedSample`), as the authors' code does."""

    kind: str
    center: tuple[int, int, int]
    radius_mm: float
    half_axes_mm: tuple[float, float, float]   # integers in [0.75 r, 1.25 r]
    sigma_e_mm: float                          # per 2-D pass over axis pairs (0,1), (1,2), (0,2)
    deform_seed: int


@dataclass(frozen=True)
class ReleasedSample:
    """The ``released`` profile's per-sample draws: one union mask of every tumor (within the
    liver), one blur, one texture over the sample's field and one darkening delta."""

    mask_blur_mm: float                        # ~ U(1, 2)
    texture_sigma_mm: float                    # blur of the uniform noise, one of 3..15
    texture_prob: tuple[float, float]          # salt-noise probability rescaled into this range
    texture_blur_mm: float                     # 4 or 7
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
    crop_anchor: str = ""                      # what the crop is centred on: tumor/organ/background
    released: ReleasedSample | None = None     # the released profile's per-sample draws
    notes: tuple[str, ...] = ()                # e.g. a satellite that could not be placed

    def to_json(self) -> dict:
        """Plain JSON values (tuples as lists), built field by field: records hold only numbers,
        strings, tuples and flat sub-records, so no ``dataclasses.asdict`` deep copy is needed."""
        out = _shallow(self)
        out["tumors"] = [_shallow(t) for t in self.tumors]
        if self.released is not None:
            out["released"] = _shallow(self.released)
        return out

    @classmethod
    def from_json(cls, obj: dict, where: str = "sample params") -> "SampleParams":
        """Read through the strict-record checker: an unknown, missing or mistyped field of the
        sample, a tumor or the released draws is a :class:`RecordError` naming ``where``."""
        if not isinstance(obj, dict) or not isinstance(obj.get("profile"), str):
            raise RecordError(f"{where}: expected an object with a 'profile'")
        try:
            family = tumor_model(obj["profile"], f"{where}: profile").family
        except TumorModelError as exc:
            raise RecordError(str(exc)) from None
        tumor_cls = PaperTumor if family == "paper" else ReleasedTumor
        tumors = obj.get("tumors", [])
        if not isinstance(tumors, list):
            raise RecordError(f"{where}: tumors: expected a list, found {type(tumors).__name__}")
        fields = typed_fields(cls, {**obj, "tumors": ()}, where)   # released read as its record
        fields["tumors"] = tuple(from_fields(tumor_cls, t, f"{where}: tumors[{n}]")
                                 for n, t in enumerate(tumors))
        return cls(**fields)


def _shallow(record) -> dict:
    """A record's fields as JSON values. ``PaperTumor.look`` is left out when None, so the records
    of the paper's models are what they were before looks existed."""
    return {f.name: _lists(_shallow(v) if dataclasses.is_dataclass(v) else v)
            for f in dataclasses.fields(record)
            if not (f.name in _OMITTED_WHEN_NONE and getattr(record, f.name) is None)
            for v in (getattr(record, f.name),)}


_OMITTED_WHEN_NONE = ("look",)


def _lists(x):
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x

