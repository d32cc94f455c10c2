"""Generator configuration: every probability and range of the method, with the paper's defaults.

Profiles:
- ``paper-train``: the paper's training recipe. Figure 3's caption
  says four steps are used only for the Visual Turing Test, not for training; the authors' FAQ names
  them: vessel segmentation, collision detection, mass effect and capsule. So: Table 1 texture and
  shape, a random liver location (no vessel test), no mass effect, no capsule.
- ``paper``: Section 3.1 in full (vessel-avoiding location by eq. 1, Gaussian texture, deformed
  ellipsoid, placement by eq. 4, mass effect by eq. 5, capsule by eqs. 6-8): what the Visual Turing
  Test saw. Whether those steps help training is an open question the experiment answers.
- ``released`` (the default of every command, :data:`DEFAULT_PROFILE`): a twin of the authors'
  released training code (slice-based location, one union mask, one blur, one texture and one
  darkening delta per sample, binary label, positive:negative crops 1:1). Chosen by evidence (issue
  28): it is the twin of the code that trained the paper's published models, and its models found
  more lesions with fewer false positives than ``paper-train``'s on both phantom families and than
  every other synthetic arm of the evidence experiment (docs/explanation/tumor-models.md, "The default profile").
- ``real``: no synthesis: crops of scans with annotated (real) tumors.
Sizes come from Table 6, the LI-RADS-style scenarios from Section 3.2.

Every length is in mm (its name says so) and converted to voxels of the prepared scan with its
spacing; the prepared grid is isotropic (``target_spacing_mm``, 1 mm by default). ``crop_size`` is
a shape in voxels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tumorforge.manifests.organs import DEFAULT_ORGAN, ORGANS, SizePreset, get_organ
from tumorforge.manifests.records import from_fields, typed_fields, typed_value

from . import tumor_models
from .looks import GRAIN_FACTOR, LOBULATED, LOOK_NAMES
from .tumor_models import tumor_model

# The built-in profiles (tumor_models.TUMOR_MODELS, as shipped): command-line choices and docs.
PROFILES = tumor_models.names()
PAPER_PROFILES = tumor_models.names(family="paper")     # tumors are PaperTumor records
SYNTHETIC_PROFILES = tumor_models.names(synthetic=True)
DEFAULT_PROFILE = "released"
SIZE_TYPES = ("tiny", "small", "medium", "large", "mix")
SCENARIOS = ("single", "multifocal", "satellite")
CROP_POLICIES = ("tumor-centred", "pos-neg")


_LIVER = ORGANS[DEFAULT_ORGAN]
PAPER_SIZES = dict(_LIVER.sizes)       # Table 6: the liver organ's size presets


@dataclass(frozen=True)
class PaperParams:
    """Table 1 of the paper (lengths in mm: the paper works at 1 mm, where voxels and mm coincide).
    ``mu_t`` is drawn from U(mu_t_low, mu_p - mu_t_below_parenchyma)."""

    vessel_b_hu: float = _LIVER.vessel_b_hu   # b of eq. 2: threshold T = mean liver HU + b
    sigma_a_base_mm: float = 0.5              # sigma_a = base + slope * sigma_p (eq. 1 smoothing)
    sigma_a_slope_mm: float = 0.025           # mm per HU of sigma_p
    mu_t_low_hu: float = _LIVER.tumor_prior.low_hu
    mu_t_below_parenchyma_hu: float = _LIVER.tumor_prior.below_parenchyma_hu
    eta: tuple[float, float] = (1.1, 1.5)     # texture upscaling factor: noise grid spacing eta mm
    # Scan-matched texture (texture "scan-grain-grid"): the tumor's correlation length along each
    # axis is the parenchyma's times a factor ~ U(grain_scale), eta chosen per axis to make it.
    grain_scale: tuple[float, float] = (0.8, 1.25)
    sigma_b_mm: float = 0.6                   # texture blur
    sigma_c_mm: tuple[float, float] = (0.6, 1.2)   # shape (mask) blur
    axis_scale: tuple[float, float] = (0.75, 1.25)   # half-axes ~ U(0.75 r, 1.25 r)
    gamma_max_factor: float = 1.3             # mass effect radius = 1.3 r (eq. 5)
    mass_effect_intensity: float = 30.0       # I of eq. 5
    capsule_band: tuple[float, float] = (0.4, 0.7)   # (lb, ub) of eq. 6
    sigma_d_mm: float = 0.8                   # capsule edge blur (eq. 7)
    capsule_hu: float = 120.0                 # d of eq. 8
    max_location_tries: int = 50              # location redraws before the fallback
    inside_share: float = _LIVER.inside_share  # share of the drawn shape that must lie in the liver
    candidate_depth: float = 0.5              # centers drawn from liver voxels >= this x r deep
    vessel_margin_sd: float = 0.5             # the vessel rule's region: half-axes + this x sigma_e


@dataclass(frozen=True)
class ReleasedParams:
    """The authors' released training recipe (no vessels, no mass effect, no capsule)."""

    counts: dict = field(default_factory=lambda: {"tiny": (3, 10), "small": (3, 10),
                                                  "medium": (2, 5), "large": (1, 3)})
    small_count_in_mix: tuple[int, int] = (5, 10)
    integer_sigma_e: tuple[str, ...] = ("small", "medium", "large")   # drawn as integers (randint)
    slice_range: tuple[float, float] = (0.3, 0.7)   # axial slice at 30-70 % of the liver's height
    erosion_mm: float = _LIVER.erosion_mm           # 5x5 in-plane erosion of that slice
    texture_sigmas_mm: tuple[float, ...] = (3.0, 6.0, 9.0, 12.0, 15.0)
    texture_prob: tuple[float, float] = (0.05, 0.26)  # salt-noise probability range
    texture_blur_mm: tuple[float, ...] = (4.0, 7.0)
    texture_mean: tuple[float, float] = (0.5, 0.55)
    mask_blur_mm: tuple[float, float] = (1.0, 2.0)
    delta_hu: tuple[float, float] = (65.0, 145.0)
    negative_threshold_hu: float = -21.0            # negative crop centers: background above this


@dataclass(frozen=True)
class LooksParams:
    """The ``diverse`` model's knobs (``looks``), one per factor an ablation changes. Defaults are
    the model as designed; each alternative turns one factor back to the paper's."""

    families: dict = field(default_factory=lambda: {name: 1.0 for name in LOOK_NAMES})
    contrast: str = "wide"          # wide: mu_p - 90 to mu_p - 5 HU; paper: U(30, mu_p - 10)
    texture_grid: str = "scan"      # scan: the scan's grain x grain_factor; paper: eta ~ U(paper.eta)
    grain_factor: tuple[float, float] = GRAIN_FACTOR
    margins: str = "family"         # family: each family's mask blur; paper: paper.sigma_c_mm
    lobulated: float = LOBULATED    # share of tumors >= 6 mm with extra lobes

    def __post_init__(self):
        unknown = set(self.families) - set(LOOK_NAMES)
        if unknown or not self.families:
            raise ValueError(f"looks.families names {sorted(unknown) or 'nothing'}; expected "
                             f"some of {LOOK_NAMES}")
        if any(w < 0 for w in self.families.values()) or sum(self.families.values()) <= 0:
            raise ValueError(f"looks.families weights must be >= 0 with a positive sum: "
                             f"{self.families}")
        for name, value, choices in (("contrast", self.contrast, ("wide", "paper")),
                                     ("texture_grid", self.texture_grid, ("scan", "paper")),
                                     ("margins", self.margins, ("family", "paper"))):
            if value not in choices:
                raise ValueError(f"looks.{name} {value!r}: expected one of {choices}")
        if not 0 <= self.lobulated <= 1:
            raise ValueError(f"looks.lobulated {self.lobulated} is not in [0, 1]")


@dataclass(frozen=True)
class GeneratorConfig:
    """What a generation job asks of the generator. Serializable to JSON (``to_json``)."""

    profile: str = DEFAULT_PROFILE
    organ: str = DEFAULT_ORGAN            # an entry of manifests.organs.ORGANS
    crop_size: tuple[int, int, int] = (96, 96, 96)
    target_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size_mix: dict = field(default_factory=lambda: {t: 0.2 for t in SIZE_TYPES})
    scenario_mix: dict = field(default_factory=dict)   # e.g. {"satellite": 0.1}: Section 3.2
    negative_fraction: float = 0.1        # liver-only crops without any tumor
    crop_policy: str = ""                 # tumor-centred / pos-neg; "" = the profile's own
    crop_jitter_mm: float = 16.0          # how far a tumor-centred crop's center may move off it
    post_min_radius_mm: float = 20.0      # mass effect and capsule for tumors this large (paper)
    mass_effect_prob: float = 1.0
    capsule_prob: float = 1.0
    multifocal_counts: dict = field(default_factory=lambda: {"tiny": (2, 5), "small": (3, 6)})
    satellite_count: tuple[int, int] = (3, 8)        # small lesions around one large lesion
    satellite_shell: tuple[float, float] = (1.2, 2.5)  # their distance, in large-lesion radii
    paper: PaperParams = field(default_factory=PaperParams)
    released: ReleasedParams = field(default_factory=ReleasedParams)
    looks: LooksParams = field(default_factory=LooksParams)
    sizes: dict = field(default_factory=lambda: dict(PAPER_SIZES))

    def __post_init__(self):
        # Plain ValueErrors: the record reader names the file and field they come from.
        if self.organ not in ORGANS:
            raise ValueError(f"organ {self.organ!r}: expected one of {tuple(ORGANS)}")
        try:
            tumor_model(self.profile)
        except tumor_models.TumorModelError:
            raise ValueError(f"profile {self.profile!r}: expected one of "
                             f"{tuple(tumor_models.TUMOR_MODELS)}") from None
        weights = {**self.size_mix, **self.scenario_mix}
        unknown = set(weights) - set(SIZE_TYPES) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"size mix names {sorted(unknown)}; expected {SIZE_TYPES + SCENARIOS}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"size/scenario weights must be >= 0 with a positive sum: {weights}")
        if not 0 <= self.negative_fraction <= 1:
            raise ValueError(f"negative_fraction {self.negative_fraction} is not in [0, 1]")
        if any(c < 16 for c in self.crop_size):
            raise ValueError(f"crop_size {self.crop_size}: each side must be at least 16 voxels")
        if self.crop_policy not in ("",) + CROP_POLICIES:
            raise ValueError(f"crop_policy {self.crop_policy!r}: expected one of {CROP_POLICIES}")
        spacing = tuple(float(s) for s in self.target_spacing_mm)
        if len(spacing) != 3 or min(spacing) <= 0 or max(spacing) - min(spacing) > 1e-6:
            raise ValueError(f"target_spacing_mm {self.target_spacing_mm}: the generator works on "
                             f"an isotropic grid; expected three equal positive numbers, e.g. 1,1,1")
        if not 0 < self.paper.inside_share <= 1:
            raise ValueError(f"paper.inside_share {self.paper.inside_share} is not in (0, 1]")

    @property
    def effective_crop_policy(self) -> str:
        """``crop_policy``, or the tumor model's own (the authors' pos-neg 1:1 for ``released``)."""
        return self.crop_policy or tumor_model(self.profile).crop_policy

    @classmethod
    def for_organ(cls, name: str, **overrides) -> "GeneratorConfig":
        """The configuration for tumors in organ ``name``: its size presets, tumor intensity prior,
        vessel threshold, erosion and inside share from the organ's record (and, for ``released``,
        the presets' counts and the window's low end as the background threshold of negative
        crops), then ``overrides``. The liver's record gives the defaults exactly.
        ``released``'s darkening (U(65, 145) HU times a texture of mean ~0.5) is every organ's:
        a drop of about 30-70 HU, what pancreatic and renal masses show against their parenchyma in
        a portal venous phase."""
        organ = get_organ(name)
        paper = dataclasses.replace(
            overrides.pop("paper", PaperParams()), vessel_b_hu=organ.vessel_b_hu,
            mu_t_low_hu=organ.tumor_prior.low_hu, inside_share=organ.inside_share,
            mu_t_below_parenchyma_hu=organ.tumor_prior.below_parenchyma_hu)
        base = overrides.pop("released", ReleasedParams())
        counts = {**base.counts, **{k: organ.sizes[k].count for k in base.counts
                                    if k in organ.sizes}}
        released = dataclasses.replace(base, erosion_mm=organ.erosion_mm, counts=counts,
                                       negative_threshold_hu=organ.training_window_hu[0])
        return cls(organ=name, paper=paper, released=released,
                   sizes=overrides.pop("sizes", dict(organ.sizes)), **overrides)

    def warnings(self) -> list[str]:
        """What this configuration does that its user may not expect, one line each: a Gaussian
        texture grid (eta) finer than the voxel paints per-voxel noise, a checkerboard much
        finer-grained than any parenchyma (``stats`` reports it as the grain ratio)."""
        spacing = float(self.target_spacing_mm[0])
        lo, hi = self.paper.eta
        if tumor_model(self.profile).texture == "gaussian-grid" and lo < spacing:
            return [f"profile {self.profile}: the texture grid (eta {lo}-{hi} mm) is finer than "
                    f"the {spacing:g} mm voxel, so the tumor texture is per-voxel noise, finer "
                    "than the parenchyma's grain"]
        return []

    def to_json(self) -> dict:
        """The configuration as JSON. Fields added after dataset ids were first published
        (:data:`ADDED_FIELDS`: ``organ``, ``paper.grain_scale``, ``looks``) are written only when they differ
        from their defaults, so the records (and dataset ids) of jobs that do not use them are
        what they were before those fields existed; a reader takes the default when one is
        absent."""
        out = _jsonable(dataclasses.asdict(self))
        for path in ADDED_FIELDS:
            *parents, name = path
            where, default = out, _DEFAULT_JSON
            for key in parents:
                where, default = where[key], default[key]
            if where[name] == default[name]:
                del where[name]
        return out

    @classmethod
    def from_json(cls, obj: dict, where: str = "generator configuration") -> "GeneratorConfig":
        """Read through the strict-record checker: an unknown, missing or mistyped field (at any
        depth: ``paper``, ``released``, each size preset and count range) or a value the
        configuration refuses is a :class:`RecordError` naming ``where`` and the field."""
        organ = obj.get("organ", DEFAULT_ORGAN) if isinstance(obj, dict) else DEFAULT_ORGAN
        if organ != DEFAULT_ORGAN and organ in ORGANS:
            # Fields the record does not name take the organ's defaults (for_organ), not the
            # liver's: `--organ kidney` alone configures kidney tumors.
            base = cls.for_organ(organ).to_json()
            obj = {**base, **obj, **{k: {**base[k], **obj[k]} for k in ("paper", "released")
                                     if isinstance(obj.get(k), dict)}}
        data = typed_fields(cls, obj, where)          # reads paper and released too
        if "released" in data:
            released = data["released"]
            data["released"] = dataclasses.replace(released, counts=_count_table(
                released.counts, f"{where}: released: counts"))
        if "sizes" in data:
            data["sizes"] = {str(k): from_fields(SizePreset, v, f"{where}: sizes: {k}")
                             for k, v in data["sizes"].items()}
        if "multifocal_counts" in data:
            data["multifocal_counts"] = _count_table(data["multifocal_counts"],
                                                     f"{where}: multifocal_counts")
        return from_fields(cls, data, where)


# Fields added to the configuration since 0.7.0, as paths into its JSON: left out of ``to_json``
# at their defaults (see GeneratorConfig.to_json).
ADDED_FIELDS = (("organ",), ("paper", "grain_scale"), ("looks",))
_DEFAULT_JSON: dict = {}     # the default configuration's JSON (set below)


def _count_table(table: dict, where: str) -> dict:
    """A size type -> (lo, hi) count table with each pair checked."""
    return {str(k): typed_value(v, tuple[int, int], f"{where}: {k}") for k, v in table.items()}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


_DEFAULT_JSON = _jsonable(dataclasses.asdict(GeneratorConfig()))
