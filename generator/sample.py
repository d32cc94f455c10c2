"""Drawing a sample's parameters: every random choice happens here, on the host, with NumPy.

``sample_params(rng, scan, config)`` returns a :class:`SampleParams` record; the per-sample ``rng`` is
``numpy.random.default_rng(SeedSequence(root_seed, spawn_key=(index,)))``. Nothing here depends on the
array backend, so parameters are identical whichever backend later synthesizes them. Where each
tumor goes is drawn by ``location``; this module draws the size type, the counts and the rest of
each tumor's record.
"""

from __future__ import annotations

import dataclasses
import math

from dataclasses import dataclass

import numpy as np

from .config import SIZE_TYPES, GeneratorConfig, SizePreset
from .location import organ_voxel, paper_locations, released_location
from .params import Look, PaperTumor, ReleasedSample, ReleasedTumor, SampleParams
from .prepare import PreparedScan
from .grain import grid_for_scan
from .looks import CONTRAST_BELOW_HU, CONTRAST_FLOOR_HU, LOOKS, lobe_center, lobes
from .tumor_models import LOOKS_TEXTURE, SCAN_GRAIN, tumor_model

PRESETS = ("tiny", "small", "medium", "large")


def sample_seed(root_seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(root_seed, spawn_key=(index,))


def draws_negative(root_seed: int, index: int, config: GeneratorConfig) -> bool:
    """Whether sample ``index`` is drawn negative: the first draw of its rng, as
    :func:`sample_params` makes it, below ``negative_fraction`` (the plan routes negative samples
    of the real profile to healthy scans too)."""
    return bool(np.random.default_rng(sample_seed(root_seed, index)).random()
                < config.negative_fraction)


def sample_params(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig
                  ) -> SampleParams:
    model = tumor_model(config.profile)
    if model.family == "none":
        return _real_params(rng, scan, config)
    tumors, notes, released = (), (), None
    if rng.random() < config.negative_fraction:
        kind = "negative"
    else:
        weights = {**config.size_mix, **config.scenario_mix}
        names = sorted(k for k, w in weights.items() if w > 0)
        probs = np.array([weights[k] for k in names], float)
        kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        tumors, notes = _draw_tumors(rng, scan, config, kind)
        if model.family == "released":
            released = _released_sample(rng, config)
    center, anchor = _crop_center(rng, scan, config, tumors)
    return SampleParams(scan_id=scan.scan_id, profile=config.profile, kind=kind,
                        crop_origin=tuple(int(v) for v in center - np.asarray(config.crop_size) // 2
                                          + np.asarray(scan.origin_vox)),
                        crop_size=tuple(int(v) for v in config.crop_size), tumors=tumors,
                        parenchyma_mean_hu=round(scan.parenchyma_mean_hu, 4),
                        parenchyma_sd_hu=round(scan.parenchyma_sd_hu, 4),
                        crop_anchor=anchor, released=released, notes=notes)


def _crop_center(rng, scan: PreparedScan, config: GeneratorConfig, tumors) -> tuple[np.ndarray, str]:
    """The crop's center voxel (prepared arrays) and what it is centred on.

    ``tumor-centred``: a random tumor of the sample, moved by up to ``crop_jitter_mm`` per axis (a
    random liver voxel when the sample has none). ``pos-neg``, the authors' 1:1 policy (MONAI's
    RandCropByPosNegLabeld with pos = neg = 1 on the liver-and-tumor label): half the crops are
    centred on an organ voxel, half on a background voxel above ``negative_threshold_hu`` inside the
    prepared region (the liver's box plus half a crop); the crop is then shifted to lie inside it.
    """
    crop = np.asarray(config.crop_size)
    if config.effective_crop_policy == "tumor-centred":
        if not tumors:
            return organ_voxel(rng, scan), "organ"
        anchor = tumors[int(rng.integers(len(tumors)))]
        j = int(round(config.crop_jitter_mm / float(scan.spacing_mm[0])))
        return (np.asarray(anchor.center) - np.asarray(scan.origin_vox)
                + rng.integers(-j, j + 1, 3)), "tumor"
    if rng.random() < 0.5:
        center, anchor = organ_voxel(rng, scan), "organ"
    else:
        center, anchor = _background_voxel(rng, scan, config.released.negative_threshold_hu), \
            "background"
    shape = np.asarray(scan.shape)
    lo = np.clip(center - crop // 2, 0, np.maximum(shape - crop, 0))
    return lo + crop // 2, anchor


def _background_voxel(rng, scan: PreparedScan, threshold_hu: float, tries: int = 200) -> np.ndarray:
    """A voxel outside the liver whose HU is above ``threshold_hu`` (rejection sampling over the
    prepared region; a liver voxel if none is found)."""
    shape = np.asarray(scan.shape)
    for _ in range(tries):
        c = rng.integers(0, shape)
        if not scan.organ[tuple(c)] and scan.image[tuple(c)] > threshold_hu:
            return c
    return organ_voxel(rng, scan)


def _real_params(rng, scan, config) -> SampleParams:
    """A crop of the scan as it is, placed by the crop policy the synthetic profiles use.

    ``tumor-centred``: a negative sample (``negative_fraction``; every sample of a scan without
    tumor, such as a healthy scan) is centred on a liver voxel, any other on one of the scan's own
    tumor voxels moved by up to ``crop_jitter_mm``. ``pos-neg``: centred on an organ or a
    background voxel, 1:1, whatever the draw. ``kind`` is ``real`` for a crop placed on a scan
    with tumor and not drawn negative, ``negative`` otherwise.
    """
    negative = rng.random() < config.negative_fraction
    tumor_voxels = np.flatnonzero(scan.tumor)
    kind = "negative" if negative or tumor_voxels.size == 0 else "real"
    if config.effective_crop_policy == "pos-neg":
        center, anchor = _crop_center(rng, scan, config, ())
    elif kind == "negative":
        center, anchor = organ_voxel(rng, scan), "organ"
    else:
        anchor = "tumor"
        center = np.array(np.unravel_index(tumor_voxels[int(rng.integers(tumor_voxels.size))],
                                           scan.shape))
        j = int(round(config.crop_jitter_mm / float(scan.spacing_mm[0])))
        center = center + rng.integers(-j, j + 1, 3)
    origin = center - np.asarray(config.crop_size) // 2 + np.asarray(scan.origin_vox)
    return SampleParams(scan_id=scan.scan_id, profile="real", kind=kind,
                        crop_origin=tuple(int(v) for v in origin),
                        crop_size=tuple(int(v) for v in config.crop_size), tumors=(),
                        parenchyma_mean_hu=round(scan.parenchyma_mean_hu, 4),
                        parenchyma_sd_hu=round(scan.parenchyma_sd_hu, 4), crop_anchor=anchor)


def _counts(rng, config: GeneratorConfig, kind: str) -> list[tuple[str, int]]:
    """(preset, how many) for a size type or a scenario."""
    released = tumor_model(config.profile).family == "released"
    if kind in PRESETS:
        if released:
            lo, hi = config.released.counts[kind]
        else:
            lo, hi = config.sizes[kind].count
        return [(kind, int(rng.integers(lo, hi + 1)))]
    if kind == "mix":
        out = []
        for preset in PRESETS:
            if released:
                lo, hi = (config.released.small_count_in_mix if preset == "small"
                          else config.released.counts[preset])
            else:
                lo, hi = config.sizes[preset].count
            out.append((preset, int(rng.integers(lo, hi + 1))))
        return out
    if kind == "single":
        return [("small", 1)]
    if kind == "multifocal":
        return [(p, int(rng.integers(lo, hi + 1))) for p, (lo, hi) in
                sorted(config.multifocal_counts.items())]
    if kind == "satellite":
        lo, hi = config.satellite_count
        return [("large", 1), ("small", int(rng.integers(lo, hi + 1)))]
    raise ValueError(f"unknown size type or scenario {kind!r}; expected {SIZE_TYPES} or scenarios")


def _draw_tumors(rng, scan, config, kind) -> tuple[tuple, tuple[str, ...]]:
    """The sample's tumors, and notes on any that could not be placed (satellites). ``paper``
    profiles draw every tumor of the sample together, in array operations; satellites after the
    large lesion they surround."""
    counts = [(name, n) for name, n in _counts(rng, config, kind) if n > 0]
    if tumor_model(config.profile).family != "paper":
        return tuple(_released_tumor(rng, scan, config, name, config.sizes[name])
                     for name, n in counts for _ in range(n)), ()
    if kind != "satellite":
        return tuple(_paper_tumors(rng, scan, config, counts, None)), ()
    large = _paper_tumors(rng, scan, config, counts[:1], None)
    group = _paper_tumors(rng, scan, config, counts[1:], large[0]) if len(counts) > 1 else []
    placed = [t for t in group if t is not None]
    notes = [f"satellite dropped: no spot in its {config.satellite_shell[0]}-"
             f"{config.satellite_shell[1]} r shell with {config.paper.inside_share:.0%} of it "
             f"inside the liver in {config.paper.max_location_tries} draws"] * (len(group) - len(placed))
    return tuple(large + placed), tuple(notes)


def _rounded(values) -> list:
    """Floats rounded to 4 decimals as the records hold them (Python's correctly rounded round)."""
    return [round(float(v), 4) for v in np.asarray(values).ravel().tolist()]


def _paper_tumors(rng, scan, config, counts: list[tuple[str, int]], near
                  ) -> list[PaperTumor | None]:
    """The tumors of ``counts`` ((size class, how many) pairs): every draw of all of them in one
    array operation each, then their locations together (``location.paper_locations``); None for
    a satellite (``near``: the large lesion) with no room."""
    p = config.paper
    names = [name for name, n in counts for _ in range(n)]
    n = len(names)
    r = np.array([config.sizes[name].radius_mm for name in names], float)
    e_lo, e_hi = np.array([config.sizes[name].sigma_e_mm for name in names], float).reshape(n, 2).T
    half_axes = np.array(_rounded(rng.uniform(p.axis_scale[0] * r[:, None],
                                              p.axis_scale[1] * r[:, None], (n, 3)))
                         ).reshape(n, 3)
    sigma_e = _rounded(rng.uniform(e_lo, e_hi))
    sigma_c = _rounded(rng.uniform(*p.sigma_c_mm, n))
    mu_hi = max(p.mu_t_low_hu, scan.parenchyma_mean_hu - p.mu_t_below_parenchyma_hu)
    mu_t = _rounded(rng.uniform(p.mu_t_low_hu, mu_hi, n))
    model = tumor_model(config.profile)     # its texture, location rule and post-processing
    looks, factors = None, None
    if model.texture == LOOKS_TEXTURE:      # a look per tumor; its draws replace the paper's
        families = list(config.looks.families)                   # one family per group
        weights = np.array([config.looks.families[k] for k in families], float)
        family = families[int(rng.choice(len(families), p=weights / weights.sum()))]
        looks = [draw_look(rng, family, float(r[i]), scan, config,
                           {"mu_t": mu_t[i], "sigma_c_mm": sigma_c[i]}) for i in range(n)]
        if config.looks.texture_grid == "scan":
            factors = [lk.grain_factor for lk in looks]
        sigma_e = [round(v * lk.sigma_e_scale, 4) for v, lk in zip(sigma_e, looks)]
        sigma_c = [lk.sigma_c_mm for lk in looks]
        mu_t = [lk.mu_t for lk in looks]
    elif model.texture == SCAN_GRAIN:
        factors = rng.uniform(*p.grain_scale, n).tolist()
    if factors is not None:                 # per axis, from the scan's parenchyma grain
        fallback = (p.eta[0] + p.eta[1]) / 2
        eta = [grid_for_scan(scan.parenchyma_grain_mm, f, scan.spacing_mm[0], p.sigma_b_mm,
                             fallback) for f in factors]
    else:
        eta = _rounded(rng.uniform(*p.eta, n))
    seeds = rng.integers(0, 2 ** 63, (n, 2)).tolist()
    spots = paper_locations(rng, scan, config, r, half_axes, avoid_vessels=model.avoids_vessels,
                            near=near, sigma_e_mm=np.asarray(sigma_e))
    big = r >= config.post_min_radius_mm
    mass, caps = (big & ("mass-effect" in model.effects), big & ("capsule" in model.effects))
    mass = mass & (rng.random(n) < config.mass_effect_prob) if mass.any() else mass
    caps = caps & (rng.random(n) < config.capsule_prob) if caps.any() else caps
    centers = (spots.center + np.asarray(scan.origin_vox)).tolist()
    inside = _rounded(spots.inside_fraction)
    sigma_p = round(scan.parenchyma_sd_hu, 4)
    out = []
    for i in range(n):
        if not spots.placed[i]:
            out.append(None)
            continue
        out.append(PaperTumor(
            kind="satellite" if near is not None else names[i], center=tuple(centers[i]),
            radius_mm=float(r[i]), half_axes_mm=tuple(half_axes[i].tolist()),
            sigma_e_mm=sigma_e[i], deform_seed=seeds[i][0], sigma_c_mm=sigma_c[i], mu_t=mu_t[i],
            sigma_p=looks[i].sigma_p if looks else sigma_p, eta=eta[i], sigma_b_mm=p.sigma_b_mm,
            texture_seed=seeds[i][1],
            location_tries=int(spots.tries[i]), location_fallback=bool(spots.fallback[i]),
            location_reason=spots.reason[i], inside_fraction=inside[i],
            vessel_voxels=int(spots.vessel_voxels[i]), mass_effect=bool(mass[i]),
            gamma_max_mm=round(p.gamma_max_factor * float(r[i]), 4),
            intensity=p.mass_effect_intensity, capsule=bool(caps[i]),
            capsule_band=tuple(p.capsule_band), sigma_d_mm=p.sigma_d_mm, capsule_hu=p.capsule_hu,
            look=looks[i].look if looks else None))
        if looks and near is None:
            out.extend(_lobes(rng, out[-1], scan.spacing_mm[0], config.looks.lobulated))
    return out


def _lobes(rng, body: PaperTumor, s: float, share: float) -> list[PaperTumor]:
    """The extra lobes of a lobulated ``diverse`` tumor (``looks.lobes``): ellipsoids of its look,
    half-axes scaled with the lobe's radius, centred off its center, each with its own shape seed
    and after it in the record (``Look.lobe``)."""
    out = []
    for radius, offset in lobes(rng, body.radius_mm, share):
        scale = radius / body.radius_mm
        out.append(dataclasses.replace(
            body, center=lobe_center(body.center, offset, s), radius_mm=radius,
            half_axes_mm=tuple(round(a * scale, 4) for a in body.half_axes_mm),
            deform_seed=int(rng.integers(0, 2 ** 63)), location_tries=0,
            look=dataclasses.replace(body.look, lobe=True)))
    return out


@dataclass(frozen=True)
class LookDraw:
    """One tumor's draws besides its look: what replaces the paper's own for that tumor."""

    look: Look
    mu_t: float
    sigma_p: float           # texture sd (HU)
    sigma_c_mm: float
    sigma_e_scale: float
    grain_factor: float | None     # None: the paper's fixed grid (looks.texture_grid "paper")


def draw_look(rng: np.random.Generator, name: str, radius_mm: float, scan: PreparedScan,
              config: GeneratorConfig, base: dict) -> LookDraw:
    """One tumor's look of family ``name`` (``looks.LOOKS``) and the draws it changes, from
    ``rng``: its mean, texture sd, margin, deformation and grain, each as ``config.looks`` says
    (a factor set to ``paper`` keeps the paper's draw of it, given in ``base``: mu_t, sigma_c_mm,
    eta). The tumors of one sample (one size group, or a large lesion and its satellites each)
    share a family, as the lesions of one liver mostly look alike; each draws its own values."""
    settings = config.looks
    family = LOOKS[name]
    if radius_mm < family.min_radius_mm:
        name, family = "homogeneous", LOOKS["homogeneous"]
    u = lambda lo_hi: round(float(rng.uniform(*lo_hi)), 4)
    mu_p = scan.parenchyma_mean_hu
    if settings.contrast == "paper":
        mu_t = base["mu_t"]
    elif family.mean_hu is not None:
        mu_t = u(family.mean_hu)
    else:
        lo = max(mu_p - CONTRAST_BELOW_HU[0], CONTRAST_FLOOR_HU)
        mu_t = u((lo, max(mu_p - CONTRAST_BELOW_HU[1], lo)))
    rim = 0.0
    if family.rim_hu:
        rim = u(family.rim_hu[int(rng.integers(len(family.rim_hu)))])
    look = Look(name=name, core_fraction=u(family.core_fraction), core_hu=u(family.core_hu),
                rim_hu=rim, rim_width_mm=u(family.rim_width_mm),
                nodules=int(rng.integers(family.nodules[0], family.nodules[1] + 1)),
                nodule_hu_sd=u(family.nodule_hu_sd))
    sd = round(u(family.heterogeneity) * float(scan.parenchyma_local_sd_hu), 4)
    # Drawn whatever the settings say, so an ablation changes one factor and not the draws after it.
    margin = u(family.margin_mm)
    factor = u(settings.grain_factor)
    return LookDraw(look=look, mu_t=mu_t, sigma_p=sd,
                    sigma_c_mm=base["sigma_c_mm"] if settings.margins == "paper" else margin,
                    sigma_e_scale=family.deform_scale,
                    grain_factor=None if settings.texture_grid == "paper" else factor)


def _released_tumor(rng, scan, config, kind, preset: SizePreset) -> ReleasedTumor:
    rel = config.released
    r = preset.radius_mm
    lo, hi = int(math.ceil(0.75 * r)), int(math.floor(1.25 * r))
    half_axes = tuple(float(a) for a in rng.integers(lo, hi + 1, 3))
    e_lo, e_hi = preset.sigma_e_mm
    if kind in rel.integer_sigma_e:      # the authors' random.randint(lo, hi)
        sigma_e = float(rng.integers(int(math.ceil(e_lo)), int(math.floor(e_hi)) + 1))
    else:
        sigma_e = round(float(rng.uniform(e_lo, e_hi)), 4)
    center = released_location(rng, scan, config)
    return ReleasedTumor(kind=kind, center=tuple(int(v) for v in center + np.asarray(scan.origin_vox)),
                         radius_mm=r, half_axes_mm=half_axes, sigma_e_mm=sigma_e,
                         deform_seed=int(rng.integers(0, 2 ** 63)))


def _released_sample(rng, config) -> ReleasedSample:
    rel = config.released
    return ReleasedSample(
        mask_blur_mm=round(float(rng.uniform(*rel.mask_blur_mm)), 4),
        texture_sigma_mm=float(rel.texture_sigmas_mm[int(rng.integers(len(rel.texture_sigmas_mm)))]),
        texture_prob=tuple(rel.texture_prob),
        texture_blur_mm=float(rel.texture_blur_mm[int(rng.integers(len(rel.texture_blur_mm)))]),
        texture_mean=round(float(rng.uniform(*rel.texture_mean)), 4),
        texture_seed=int(rng.integers(0, 2 ** 63)),
        delta_hu=round(float(rng.uniform(*rel.delta_hu)), 4))
