"""Drawing a sample's parameters: every random choice happens here, on the host, with NumPy.

``sample_params(rng, scan, config)`` returns a :class:`SampleParams` record; the per-sample ``rng`` is
``numpy.random.default_rng(SeedSequence(root_seed, spawn_key=(index,)))``. Nothing here depends on the
array backend, so parameters are identical whichever backend later synthesizes them. Where each
tumor goes is drawn by ``location``; this module draws the size type, the counts and the rest of
each tumor's record.
"""

from __future__ import annotations

import math

import numpy as np

from .config import SIZE_TYPES, GeneratorConfig, SizePreset
from .location import liver_voxel, paper_location, released_location
from .params import PaperTumor, ReleasedTumor, SampleParams
from .prepare import PreparedScan

PRESETS = ("tiny", "small", "medium", "large")


def sample_seed(root_seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(root_seed, spawn_key=(index,))


def sample_params(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig
                  ) -> SampleParams:
    crop = np.asarray(config.crop_size)
    if config.profile == "real":
        return _real_params(rng, scan, config)
    if rng.random() < config.negative_fraction:
        kind, tumors = "negative", ()
        center = liver_voxel(rng, scan)
    else:
        weights = {**config.size_mix, **config.scenario_mix}
        names = sorted(k for k, w in weights.items() if w > 0)
        probs = np.array([weights[k] for k in names], float)
        kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        tumors = tuple(_draw_tumors(rng, scan, config, kind))
        anchor = tumors[int(rng.integers(len(tumors)))]
        jitter = rng.integers(-config.crop_jitter, config.crop_jitter + 1, 3)
        center = np.asarray(anchor.center) - np.asarray(scan.origin_vox) + jitter
    origin = center - crop // 2 + np.asarray(scan.origin_vox)
    return SampleParams(scan_id=scan.scan_id, profile=config.profile, kind=kind,
                        crop_origin=tuple(int(v) for v in origin),
                        crop_size=tuple(int(v) for v in crop), tumors=tumors,
                        parenchyma_mean_hu=round(scan.parenchyma_mean_hu, 4),
                        parenchyma_sd_hu=round(scan.parenchyma_sd_hu, 4))


def _real_params(rng, scan, config) -> SampleParams:
    """A crop of the scan as it is: centered on one of its own tumor voxels, or on a liver voxel
    for the negative fraction (and for scans without tumor)."""
    tumor_voxels = np.flatnonzero(scan.tumor)
    if rng.random() < config.negative_fraction or tumor_voxels.size == 0:
        kind, center = "negative", liver_voxel(rng, scan)
    else:
        kind = "real"
        center = np.array(np.unravel_index(tumor_voxels[int(rng.integers(tumor_voxels.size))],
                                           scan.shape))
        center = center + rng.integers(-config.crop_jitter, config.crop_jitter + 1, 3)
    origin = center - np.asarray(config.crop_size) // 2 + np.asarray(scan.origin_vox)
    return SampleParams(scan_id=scan.scan_id, profile="real", kind=kind,
                        crop_origin=tuple(int(v) for v in origin),
                        crop_size=tuple(int(v) for v in config.crop_size), tumors=(),
                        parenchyma_mean_hu=round(scan.parenchyma_mean_hu, 4),
                        parenchyma_sd_hu=round(scan.parenchyma_sd_hu, 4))


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


def _draw_tumors(rng, scan, config, kind):
    tumors = []
    for preset_name, n in _counts(rng, config, kind):
        preset = config.sizes[preset_name]
        for _ in range(n):
            near = None
            if kind == "satellite" and preset_name == "small":
                near = tumors[0]          # the large lesion drawn first
            if config.profile == "paper":
                tumors.append(_paper_tumor(rng, scan, config, preset_name, preset, near))
            else:
                tumors.append(_released_tumor(rng, scan, config, preset_name, preset))
    return tumors


def _paper_tumor(rng, scan, config, kind, preset: SizePreset, near) -> PaperTumor:
    p = config.paper
    r = preset.radius_mm / float(np.mean(scan.spacing_mm))
    half_axes = tuple(round(float(a), 4) for a in rng.uniform(p.axis_scale[0] * r,
                                                              p.axis_scale[1] * r, 3))
    center, tries, fallback, vessels = paper_location(rng, scan, config, r, near)
    big = preset.radius_mm >= config.post_min_radius_mm
    mu_hi = max(p.mu_t_low_hu, scan.parenchyma_mean_hu - p.mu_t_below_parenchyma_hu)
    seeds = rng.integers(0, 2 ** 63, 2)
    return PaperTumor(
        kind="satellite" if near is not None else kind,
        center=tuple(int(v) for v in center + np.asarray(scan.origin_vox)),
        radius=round(r, 4), half_axes=half_axes,
        sigma_e=round(float(rng.uniform(*preset.sigma_e)), 4), deform_seed=int(seeds[0]),
        sigma_c=round(float(rng.uniform(*p.sigma_c)), 4),
        mu_t=round(float(rng.uniform(p.mu_t_low_hu, mu_hi)), 4),
        sigma_p=round(scan.parenchyma_sd_hu, 4),
        eta=round(float(rng.uniform(*p.eta)), 4), sigma_b=p.sigma_b, texture_seed=int(seeds[1]),
        location_tries=tries, location_fallback=fallback, vessel_voxels_near=vessels,
        mass_effect=bool(big and rng.random() < config.mass_effect_prob),
        gamma_max=round(p.gamma_max_factor * r, 4), intensity=p.mass_effect_intensity,
        capsule=bool(big and rng.random() < config.capsule_prob),
        capsule_band=tuple(p.capsule_band), sigma_d=p.sigma_d, capsule_hu=p.capsule_hu)


def _released_tumor(rng, scan, config, kind, preset: SizePreset) -> ReleasedTumor:
    rel = config.released
    r = preset.radius_mm / float(np.mean(scan.spacing_mm))
    lo, hi = int(math.ceil(0.75 * r)), int(math.floor(1.25 * r))
    half_axes = tuple(float(a) for a in rng.integers(lo, hi + 1, 3))
    center = released_location(rng, scan, config)
    seeds = rng.integers(0, 2 ** 63, 2)
    return ReleasedTumor(
        kind=kind, center=tuple(int(v) for v in center + np.asarray(scan.origin_vox)),
        radius=round(r, 4), half_axes=half_axes,
        sigma_e=round(float(rng.uniform(*preset.sigma_e)), 4), deform_seed=int(seeds[0]),
        mask_blur=round(float(rng.uniform(*rel.mask_blur)), 4),
        texture_sigma=float(rel.texture_sigmas[int(rng.integers(len(rel.texture_sigmas)))]),
        texture_prob=tuple(rel.texture_prob),
        texture_blur=float(rel.texture_blur[int(rng.integers(len(rel.texture_blur)))]),
        texture_mean=round(float(rng.uniform(*rel.texture_mean)), 4), texture_seed=int(seeds[1]),
        delta_hu=round(float(rng.uniform(*rel.delta_hu)), 4))
