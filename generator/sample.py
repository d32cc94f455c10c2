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

import numpy as np

from .config import PAPER_PROFILES, SIZE_TYPES, GeneratorConfig, SizePreset
from .location import liver_voxel, paper_location, released_location
from .params import PaperTumor, ReleasedSample, ReleasedTumor, SampleParams
from .prepare import PreparedScan
from .shape import drawn_offsets

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
    if config.profile == "real":
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
        if config.profile == "released":
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
            return liver_voxel(rng, scan), "organ"
        anchor = tumors[int(rng.integers(len(tumors)))]
        j = int(round(config.crop_jitter_mm / float(scan.spacing_mm[0])))
        return (np.asarray(anchor.center) - np.asarray(scan.origin_vox)
                + rng.integers(-j, j + 1, 3)), "tumor"
    if rng.random() < 0.5:
        center, anchor = liver_voxel(rng, scan), "organ"
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
        if not scan.liver[tuple(c)] and scan.image[tuple(c)] > threshold_hu:
            return c
    return liver_voxel(rng, scan)


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
        center, anchor = liver_voxel(rng, scan), "organ"
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
    if kind in PRESETS:
        if config.profile == "released":
            lo, hi = config.released.counts[kind]
        else:
            lo, hi = config.sizes[kind].count
        return [(kind, int(rng.integers(lo, hi + 1)))]
    if kind == "mix":
        out = []
        for preset in PRESETS:
            if config.profile == "released":
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
    """The sample's tumors, and notes on any that could not be placed (satellites)."""
    tumors, notes = [], []
    for preset_name, n in _counts(rng, config, kind):
        preset = config.sizes[preset_name]
        for _ in range(n):
            near = None
            if kind == "satellite" and preset_name == "small":
                near = tumors[0]          # the large lesion drawn first
            if config.profile in PAPER_PROFILES:
                t = _paper_tumor(rng, scan, config, preset_name, preset, near)
                if t is None:
                    notes.append(f"satellite dropped: no spot in its {config.satellite_shell[0]}-"
                                 f"{config.satellite_shell[1]} r shell with "
                                 f"{config.paper.inside_share:.0%} of it inside the liver in "
                                 f"{config.paper.max_location_tries} draws")
                    continue
                tumors.append(t)
            else:
                tumors.append(_released_tumor(rng, scan, config, preset_name, preset))
    return tuple(tumors), tuple(notes)


def _paper_tumor(rng, scan, config, kind, preset: SizePreset, near) -> PaperTumor | None:
    p = config.paper
    s = float(scan.spacing_mm[0])
    r = preset.radius_mm
    half_axes = tuple(round(float(a), 4) for a in rng.uniform(p.axis_scale[0] * r,
                                                              p.axis_scale[1] * r, 3))
    sigma_e = round(float(rng.uniform(*preset.sigma_e_mm)), 4)
    sigma_c = round(float(rng.uniform(*p.sigma_c_mm)), 4)
    mu_hi = max(p.mu_t_low_hu, scan.parenchyma_mean_hu - p.mu_t_below_parenchyma_hu)
    mu_t = round(float(rng.uniform(p.mu_t_low_hu, mu_hi)), 4)
    eta = round(float(rng.uniform(*p.eta)), 4)
    seeds = rng.integers(0, 2 ** 63, 2)
    full = config.profile == "paper"       # the Turing-test steps: vessels, mass effect, capsule
    tumor = PaperTumor(
        kind="satellite" if near is not None else kind, center=(0, 0, 0), radius_mm=r,
        half_axes_mm=half_axes, sigma_e_mm=sigma_e, deform_seed=int(seeds[0]), sigma_c_mm=sigma_c,
        mu_t=mu_t, sigma_p=round(scan.parenchyma_sd_hu, 4), eta=eta, sigma_b_mm=p.sigma_b_mm,
        texture_seed=int(seeds[1]), location_tries=0, location_fallback=False, location_reason="",
        inside_fraction=0.0, vessel_voxels=0, mass_effect=False,
        gamma_max_mm=round(p.gamma_max_factor * r, 4), intensity=p.mass_effect_intensity,
        capsule=False, capsule_band=tuple(p.capsule_band), sigma_d_mm=p.sigma_d_mm,
        capsule_hu=p.capsule_hu)
    spot = paper_location(rng, scan, config, r, drawn_offsets(tumor, s), avoid_vessels=full,
                          near=near)
    if spot is None:
        return None
    big = full and preset.radius_mm >= config.post_min_radius_mm
    return dataclasses.replace(
        tumor, center=tuple(int(v) for v in spot.center + np.asarray(scan.origin_vox)),
        location_tries=spot.tries, location_fallback=spot.fallback, location_reason=spot.reason,
        inside_fraction=spot.inside_fraction, vessel_voxels=spot.vessel_voxels,
        mass_effect=bool(big and rng.random() < config.mass_effect_prob),
        capsule=bool(big and rng.random() < config.capsule_prob))


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
