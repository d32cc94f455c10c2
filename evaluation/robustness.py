"""Controllable robustness benchmark (Section 5.5 and Figure 6 of Hu et al., CVPR 2023).

Synthetic tumors are painted into healthy scans while ONE property of the tumor is moved away from
the training distribution, to mu + k sigma for k = -K..K (K = 3 by default: 7 levels), and a model is
scored on each level. Everything else about a case stays as drawn, so a change in Dice across the
levels of a row is caused by that row's property alone.

Choices (where the paper says only "tuning hyperparameters of the generator"):

- **Dimensions -> generator parameters** (fields of :class:`generator.params.PaperTumor`):
  ``size`` = nominal radius ``radius_mm``; the half-axes are scaled by new r / drawn r, so their
  drawn ratios to r are kept, and ``gamma_max_mm`` (defined as 1.3 r) is scaled with them. The mass-effect and capsule flags stay as drawn (off for the
  single small lesion): size is the only thing that changes. ``shape`` = elastic deformation
  ``sigma_e_mm``. ``texture`` = texture grain ``eta`` (upscaling factor; the paper's Fig. 10
  controls texture with mu_t and eta, and mu_t is already the intensity row). ``intensity`` = mean
  tumor HU ``mu_t``. ``location`` = depth of the tumor center inside the liver: its Euclidean distance
  (mm) to the nearest voxel outside the liver mask of the prepared scan.
- **Profile.** A ``paper``-family profile (their tumors have those fields); ``paper-train`` when
  the options name none (the commands' default, ``released``, draws other fields).
- **Training distribution.** mu and sigma of each dimension are estimated by Monte Carlo from the
  generator configuration the model was trained with (``prior_samples`` draws of ``sample_params`` on
  the first scan by scan_id; every drawn tumor contributes one value; for location the depth of each
  drawn center). They are recorded in ``summary.json``.
- **Cases.** Case j (j = 0..N-1) of every (dimension, level) starts from the same base draw: sample
  ``j`` of root ``seed`` from the configuration with the ``single`` scenario only (one small lesion)
  and no negatives, on scan ``j mod (number of scans)``; its one tumor is kept, the crop is centered
  on it, and only the dimension's field(s) are overridden. Mask-blur, deformation and texture seeds
  stay as drawn. The comparison is paired: level k and level k' of a row differ in that property only.
- **Clipping.** Shifted values are clipped to r >= 1.5 mm, sigma_e >= 0, eta >= 1, mu_t in
  [-100, 300] HU, depth within the liver's [min, max]; the value actually used is recorded beside the
  target mu + k sigma.
- **Location.** The new center is the liver voxel whose depth is closest to the target; among ties one
  is chosen with a generator seeded by (seed, index, level), so it is reproducible. For the ``paper``
  profile (whose eq. 1 rule avoids vessels), voxels whose cube [c - r, c + r] holds no vessel are
  preferred, unless the nearest such depth is more than ``VESSEL_FREE_SLACK_MM`` further from the
  target than the nearest depth overall; then the vessel-dense spot is used and recorded as
  ``location_fallback`` (reason ``vessels``). ``paper-train`` has no vessel rule. The record's
  ``inside_fraction`` and ``vessel_voxels`` are counted in the tumor's location region (as the
  generator's location rules count them) at the new center,
  and ``location_tries`` is 0 (placed by depth, not drawn). The value used is the depth of the chosen
  voxel; a deep target keeps the tumor inside the liver, a shallow one lets it stick out (that is
  the point of the row).
- **Scores per case.** Tumor Dice (label 2; None when truth and prediction are both empty), detected
  (some predicted tumor voxel overlaps the true tumor; None when the crop has no true tumor), and the
  number of predicted tumor voxels outside the true tumor. Per (dimension, level): mean Dice over
  cases with a defined Dice, detection rate over cases with a true tumor, and n.

The core (:func:`plan_cases`, :func:`run_sweep`, :func:`summarize_dimensions`,
:func:`write_report`) takes any ``predict(image_hu_zyx) -> labels_zyx`` callable, so it runs without
a trained model; :func:`benchmark` (``tumorforge robustness``) plugs in a trainer checkpoint, whose
preprocessing record gives the crops' spacing and default size and the HU window the model sees.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tumorforge.generator.api import (PAPER_PROFILES, GeneratorConfig, PaperTumor, PreparedScan,
                                      SampleParams, get_backend, load_prepared, region_counts,
                                      sample_params, sample_seed, synthesize)
from tumorforge.manifests.conventions import TUMOR, dice
from tumorforge.manifests.records import json_safe
from tumorforge.trainer.preprocessing import Preprocessing

DIMENSIONS = ("shape", "size", "texture", "intensity", "location")
# PaperTumor field each dimension moves, its unit, and the valid range shifted values are clipped to
# (None: open side; location's range is the scan's own liver depth range).
PARAMETER = {"shape": "sigma_e_mm", "size": "radius_mm", "texture": "eta", "intensity": "mu_t",
             "location": "depth"}
UNIT = {"shape": "mm", "size": "mm",
        "texture": "upscaling factor (noise grid spacing, mm; the mean over axes for per-axis grids)",
        "intensity": "HU", "location": "mm"}
CLIP = {"shape": (0.0, None), "size": (1.5, None), "texture": (1.0, None),
        "intensity": (-100.0, 300.0)}
VESSEL_FREE_SLACK_MM = 1.0
EMPTY_MASK_RULES = ("Dice: truth and prediction both empty -> undefined (null), left out of means. "
                    "Detected: undefined (null) when the crop holds no true tumor voxel, left out of "
                    "detection rates.")

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prior:
    """The training distribution of one dimension, estimated by Monte Carlo."""

    mu: float
    sigma: float
    n: int          # tumors (or centers) the estimate is taken over

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Case:
    """One benchmark case: a base draw with one dimension moved to level k."""

    dimension: str
    k: int
    target: float          # mu + k sigma, before clipping
    value: float           # the value used (clipped; for location the chosen voxel's depth)
    seed: int
    index: int
    params: SampleParams

    def to_json(self) -> dict:
        return {"dimension": self.dimension, "k": self.k, "target": self.target, "value": self.value,
                "seed": self.seed, "index": self.index, "scan_id": self.params.scan_id,
                "params": self.params.to_json()}


class LiverDepth:
    """Depth of every voxel inside a prepared scan's liver: Euclidean distance (mm) to the nearest
    voxel outside the liver, arrays indexed (i, j, k) like the scan's own."""

    def __init__(self, scan: PreparedScan):
        import scipy.ndimage as ndi
        self.scan = scan
        self.depth = ndi.distance_transform_edt(scan.organ, sampling=scan.spacing_mm).astype(np.float32)
        self.liver_depths = self.depth.ravel()[scan.organ_voxels]
        self.range = (float(self.liver_depths.min()), float(self.liver_depths.max()))
        self._vessel_free: dict[int, np.ndarray] = {}

    def at(self, center_full_vox) -> float:
        """Depth (mm) of a voxel given in full resampled-scan coordinates (as records hold them)."""
        c = np.asarray(center_full_vox) - np.asarray(self.scan.origin_vox)
        return float(self.depth[tuple(int(v) for v in c)])

    def _free(self, half: int) -> np.ndarray:
        """For each liver voxel (order of ``scan.organ_voxels``): no vessel in the cube [c-h, c+h]."""
        if half not in self._vessel_free:
            import scipy.ndimage as ndi
            near = ndi.maximum_filter(self.scan.vessel, size=2 * half + 1, mode="constant", cval=0)
            self._vessel_free[half] = ~near.ravel()[self.scan.organ_voxels]
        return self._vessel_free[half]

    def pick(self, target_mm: float, radius_mm: float, rng: np.random.Generator,
             avoid_vessels: bool) -> tuple[tuple[int, int, int], float, bool]:
        """The liver voxel whose depth is closest to ``target_mm``; with ``avoid_vessels``,
        preferring vessel-free cubes of half-width ceil(r) voxels. Returns (center in full-scan
        voxels, its depth mm, fallback: no vessel-free spot was near enough)."""
        gap = np.abs(self.liver_depths - np.float32(target_mm))
        best = float(gap.min())
        candidates = np.ones(gap.shape, bool)
        fallback = False
        if avoid_vessels:
            free = self._free(int(math.ceil(radius_mm / self.scan.spacing_mm[0])))
            if free.any() and float(gap[free].min()) <= best + VESSEL_FREE_SLACK_MM:
                candidates = free
                best = float(gap[free].min())
            else:
                fallback = True
        ties = np.flatnonzero(candidates & (gap <= best + 1e-4))
        flat = self.scan.organ_voxels[ties[int(rng.integers(len(ties)))]]
        c = np.array(np.unravel_index(flat, self.scan.shape))
        center = tuple(int(v) for v in c + np.asarray(self.scan.origin_vox))
        return center, float(self.depth[tuple(c)]), fallback


def _require_paper(config: GeneratorConfig) -> None:
    if config.profile not in PAPER_PROFILES:
        raise ValueError(f"robustness needs a profile of {PAPER_PROFILES} (its tumors have "
                         f"sigma_e, eta, mu_t); got profile {config.profile!r}")


def single_lesion_config(config: GeneratorConfig) -> GeneratorConfig:
    """The configuration base cases are drawn from: one small lesion per sample, no negatives."""
    _require_paper(config)
    return dataclasses.replace(config, size_mix={}, scenario_mix={"single": 1.0},
                               negative_fraction=0.0)


def _dimension_values(t: PaperTumor, depth: LiverDepth) -> dict[str, float]:
    return {"shape": t.sigma_e_mm, "size": t.radius_mm, "texture": float(np.mean(t.eta)),
            "intensity": t.mu_t,
            "location": depth.at(t.center)}


def estimate_prior(scan: PreparedScan, config: GeneratorConfig, samples: int = 400, seed: int = 0,
                   depth: LiverDepth | None = None) -> dict[str, Prior]:
    """mu and sigma (population sd) of every dimension over the tumors that ``config`` draws on
    ``scan``: ``samples`` draws of ``sample_params`` with seeds (seed, 0..samples-1)."""
    _require_paper(config)
    depth = depth or LiverDepth(scan)
    values: dict[str, list[float]] = {d: [] for d in DIMENSIONS}
    for i in range(samples):
        for t in sample_params(np.random.default_rng(sample_seed(seed, i)), scan, config).tumors:
            for d, v in _dimension_values(t, depth).items():
                values[d].append(v)
    if not values["size"]:
        raise ValueError(f"scan {scan.scan_id}: {samples} draws of the configuration gave no tumor "
                         "to estimate the training distribution from")
    return {d: Prior(mu=round(float(np.mean(v)), 4), sigma=round(float(np.std(v)), 4), n=len(v))
            for d, v in values.items()}


def _clip(dimension: str, value: float, depth: LiverDepth) -> float:
    lo, hi = depth.range if dimension == "location" else CLIP[dimension]
    if lo is not None:
        value = max(lo, value)
    if hi is not None:
        value = min(hi, value)
    return value


def base_params(scan: PreparedScan, config: GeneratorConfig, seed: int, index: int) -> SampleParams:
    """Sample ``index`` of root ``seed`` from the single-lesion configuration, reduced to its first
    tumor with the crop centered on it: the unshifted case every level starts from."""
    params = sample_params(np.random.default_rng(sample_seed(seed, index)), scan,
                           single_lesion_config(config))
    return _centered(params, params.tumors[0])


def _centered(params: SampleParams, tumor: PaperTumor) -> SampleParams:
    origin = np.asarray(tumor.center) - np.asarray(params.crop_size) // 2
    return dataclasses.replace(params, tumors=(tumor,), crop_origin=tuple(int(v) for v in origin))


def shift(base: SampleParams, dimension: str, target: float, depth: LiverDepth,
          rng: np.random.Generator) -> tuple[SampleParams, float]:
    """``base`` with its tumor's ``dimension`` set to ``target`` (clipped to the valid range).
    Returns the new record and the value used. ``rng`` breaks ties of the location pick only."""
    t = base.tumors[0]
    value = round(_clip(dimension, target, depth), 4)
    if dimension == "size":
        scale = value / t.radius_mm
        t = dataclasses.replace(t, radius_mm=value, gamma_max_mm=round(t.gamma_max_mm * scale, 4),
                                half_axes_mm=tuple(round(a * scale, 4) for a in t.half_axes_mm))
    elif dimension == "location":
        center, value, fallback = depth.pick(value, t.radius_mm, rng,
                                             avoid_vessels=base.profile == "paper")
        value = round(value, 4)
        t = dataclasses.replace(t, center=center)
        s = float(depth.scan.spacing_mm[0])
        inside, vessels = region_counts(depth.scan, np.asarray(center) - depth.scan.origin_vox,
                                        np.asarray(t.half_axes_mm) / s)
        t = dataclasses.replace(t, location_tries=0, location_fallback=fallback,
                                location_reason="vessels" if fallback else "",
                                inside_fraction=round(float(inside), 4),
                                vessel_voxels=int(vessels))
    else:
        t = dataclasses.replace(t, **{PARAMETER[dimension]: _scaled_like(
            getattr(t, PARAMETER[dimension]), value)})
    return _centered(base, t), value


def _scaled_like(old, value: float):
    """``value`` in the shape of the field it replaces: a per-axis grid (``paper-grain``'s eta) is
    scaled so that its mean is ``value`` and its anisotropy stays."""
    if isinstance(old, tuple):
        mean = float(np.mean(old))
        return tuple(round(float(v) * value / mean, 4) for v in old) if mean > 0 else (value,) * 3
    return value


def _tie_rng(seed: int, index: int, k: int) -> np.random.Generator:
    # A stream of its own per (seed, index, level), apart from the sample's (seed, index) stream.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1, abs(k), int(k < 0))))


def case_params(scan: PreparedScan, config: GeneratorConfig, prior: dict[str, Prior],
                dimension: str, k: int, seed: int, index: int, depth: LiverDepth | None = None
                ) -> Case:
    """One case, regenerated from its seed, index, dimension and level alone."""
    depth = depth or LiverDepth(scan)
    p = prior[dimension]
    target = round(p.mu + k * p.sigma, 4)
    params, value = shift(base_params(scan, config, seed, index), dimension, target, depth,
                          _tie_rng(seed, index, k))
    return Case(dimension, k, target, value, seed, index, params)


def check_dimensions(dimensions: Sequence[str]) -> list[str]:
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown or not dimensions:
        raise ValueError(f"dimensions {list(dimensions)}: expected one or more of "
                         f"{', '.join(DIMENSIONS)}")
    return list(dimensions)


def _depth(scan: PreparedScan, depths: dict) -> LiverDepth:
    """The scan's LiverDepth from the caller's cache (by scan_id), computed and stored if missing."""
    if scan.scan_id not in depths:
        depths[scan.scan_id] = LiverDepth(scan)
    return depths[scan.scan_id]


def plan_cases(scans: Sequence[PreparedScan], config: GeneratorConfig, prior: dict[str, Prior],
               dimensions: Sequence[str] = DIMENSIONS, sigmas: int = 3, cases_per_level: int = 4,
               seed: int = 0, depths: dict | None = None) -> list[Case]:
    """Every case of the sweep, dimension by dimension, level -sigmas..sigmas, index 0..N-1 (case j
    on scan j mod len(scans)). ``depths``: optional cache of LiverDepth by scan_id, filled as
    needed (a depth map takes about a second per scan)."""
    dimensions = check_dimensions(dimensions)
    if not scans:
        raise ValueError("no healthy scan to put tumors in")
    depths = {} if depths is None else depths
    return [case_params(scans[j % len(scans)], config, prior, d, k, seed, j,
                        _depth(scans[j % len(scans)], depths))
            for d in dimensions for k in range(-sigmas, sigmas + 1) for j in range(cases_per_level)]


def score(pred_labels: np.ndarray, truth_labels: np.ndarray) -> dict:
    """Tumor scores of one crop: dice, detected, voxel counts (see the module docstring)."""
    pred, truth = pred_labels == TUMOR, truth_labels == TUMOR
    true_voxels = int(truth.sum())
    return {"dice": dice(pred, truth),
            "detected": bool((pred & truth).any()) if true_voxels else None,
            "true_voxels": true_voxels, "pred_voxels": int(pred.sum()),
            "fp_voxels": int((pred & ~truth).sum())}


def run_sweep(scans: Sequence[PreparedScan], predict: Predictor, config: GeneratorConfig,
              dimensions: Sequence[str] = DIMENSIONS, sigmas: int = 3, cases_per_level: int = 4,
              seed: int = 0, prior: dict[str, Prior] | None = None, prior_samples: int = 400,
              backend=None, depths: dict | None = None,
              progress: Callable[[str], None] | None = None,
              examples: dict | None = None) -> list[dict]:
    """Synthesize every planned case (crops ``(Z, Y, X)``, HU), run ``predict`` on its image and score
    it against its label. ``config`` is the training configuration; ``prior`` is estimated from it
    on ``scans[0]`` when not given. Returns one dict per case: Case fields plus the scores.
    ``examples``: a dict filled with the first case of each (dimension, level) as (axial image
    slice, true tumor, predicted tumor) through the tumor's center, for the report's picture."""
    backend = backend or get_backend("numpy")
    depths = {} if depths is None else depths
    if not scans:
        raise ValueError("no healthy scan to put tumors in")
    prior = prior or estimate_prior(scans[0], config, prior_samples, seed, _depth(scans[0], depths))
    by_id = {s.scan_id: s for s in scans}
    out = []
    cases = plan_cases(scans, config, prior, dimensions, sigmas, cases_per_level, seed, depths)
    for n, case in enumerate(cases, 1):
        crop = synthesize(by_id[case.params.scan_id], case.params, backend)
        labels = np.asarray(predict(crop.image))
        if labels.shape != crop.label.shape:
            raise ValueError(f"predictor returned shape {labels.shape} for case {case.dimension} "
                             f"{case.k:+d} (scan {case.params.scan_id}, index {case.index}); "
                             f"expected the crop's {crop.label.shape}")
        out.append({**case.to_json(), **score(labels, crop.label)})
        if examples is not None and (case.dimension, case.k) not in examples:
            tumor = np.argwhere(crop.label == TUMOR)
            z = int(np.rint(tumor[:, 0].mean())) if len(tumor) else crop.label.shape[0] // 2
            examples[case.dimension, case.k] = (crop.image[z], crop.label[z] == TUMOR,
                                                labels[z] == TUMOR)
        if progress:
            progress(f"case {n}/{len(cases)}: {case.dimension} {case.k:+d} sigma "
                     f"value {case.value:g} dice {out[-1]['dice']}")
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize_dimensions(cases: Sequence[dict], prior: dict[str, Prior],
                         dimensions: Sequence[str], sigmas: int) -> list[dict]:
    """One row per (dimension, level k): mean Dice, detection rate, n, mean value used, mean
    predicted tumor voxels outside the true tumor."""
    rows = []
    for d in dimensions:
        for k in range(-sigmas, sigmas + 1):
            group = [c for c in cases if c["dimension"] == d and c["k"] == k]
            rows.append({
                "dimension": d, "k": k, "target": round(prior[d].mu + k * prior[d].sigma, 4),
                "mean_value": _mean(c["value"] for c in group),
                "mean_dice": _mean(c["dice"] for c in group),
                "detection_rate": _mean(None if c["detected"] is None else float(c["detected"])
                                        for c in group),
                "mean_fp_voxels": _mean(c["fp_voxels"] for c in group),
                "n": len(group), "n_dice": sum(c["dice"] is not None for c in group)})
    return rows


CSV_FIELDS = ("dimension", "k", "value", "target", "seed", "index", "scan_id", "dice", "detected",
              "true_voxels", "pred_voxels", "fp_voxels")


def _percent(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def plot_heatmap(rows: Sequence[dict], dimensions: Sequence[str], sigmas: int, path: str,
                 title: str = "") -> str:
    """Rows = dimensions, columns = -sigmas..+sigmas, color = mean tumor Dice; each cell shows the
    Dice (grey n/a where no case had a defined Dice), the number of cases and the parameter's
    mean value there."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(range(-sigmas, sigmas + 1))
    grid = np.full((len(dimensions), len(levels)), np.nan)
    for r in rows:
        if r["mean_dice"] is not None:
            grid[list(dimensions).index(r["dimension"]), levels.index(r["k"])] = 100 * r["mean_dice"]
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    fig, ax = plt.subplots(figsize=(1.4 * len(levels) + 2.2, 1.0 * len(dimensions) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
    cell = {(r["dimension"], r["k"]): r for r in rows}
    for i, d in enumerate(dimensions):
        for j, k in enumerate(levels):
            v, r = grid[i, j], cell.get((d, k), {})
            value = r.get("mean_value")
            text = ("n/a" if np.isnan(v) else f"{v:.1f}") + f"\nn {r.get('n', 0)}"
            if value is not None:
                text += f"\n{PARAMETER[d]} {value:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(levels)), [r"$\mu$" if k == 0 else rf"$\mu {k:+d}\sigma$" for k in levels])
    ax.set_yticks(range(len(dimensions)), list(dimensions))
    ax.set_xlabel("level (mu + k sigma of the training distribution)")
    fig.colorbar(im, ax=ax, label="mean tumor Dice (%)")
    ax.set_title(title or "Robustness: tumor Dice (%) per dimension and level", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_examples(examples: dict, dimensions: Sequence[str], sigmas: int, path: str) -> str:
    """One example case per (dimension, level): the axial slice through its tumor, true tumor
    contour red, predicted tumor contour cyan; the same grid as the heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tumorforge.manifests.conventions import DISPLAY_WINDOW_HU
    levels = list(range(-sigmas, sigmas + 1))
    fig, axes = plt.subplots(len(dimensions), len(levels), squeeze=False,
                             figsize=(1.6 * len(levels) + 0.6, 1.7 * len(dimensions) + 0.6))
    for i, d in enumerate(dimensions):
        for j, k in enumerate(levels):
            ax = axes[i][j]
            ax.axis("off")
            if (d, k) not in examples:
                continue
            image, truth, pred = examples[d, k]
            ax.imshow(image[::-1, ::-1], cmap="gray", vmin=DISPLAY_WINDOW_HU[0],
                      vmax=DISPLAY_WINDOW_HU[1], interpolation="nearest")
            for mask, color in ((truth, "red"), (pred, "cyan")):
                if mask.any():
                    ax.contour(mask[::-1, ::-1], levels=[0.5], colors=color, linewidths=0.8)
            ax.set_title(f"{d} {'mu' if k == 0 else f'{k:+d} sigma'}", fontsize=7)
    fig.suptitle("one case per level (axial, radiological): true tumor red, prediction cyan",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: str, cases: Sequence[dict], prior: dict[str, Prior],
                 dimensions: Sequence[str], sigmas: int, meta: dict | None = None,
                 examples: dict | None = None) -> dict[str, str]:
    """Write cases.csv, cases.jsonl, summary.json (strict JSON), heatmap.png, examples.png (with
    ``examples`` from :func:`run_sweep`) and report.md into ``out_dir``; returns their paths by
    name."""
    os.makedirs(out_dir, exist_ok=True)
    rows = summarize_dimensions(cases, prior, dimensions, sigmas)
    paths = {name: os.path.join(out_dir, name) for name in
             ("cases.csv", "cases.jsonl", "summary.json", "heatmap.png", "report.md")}
    if examples:
        paths["examples.png"] = plot_examples(examples, dimensions, sigmas,
                                              os.path.join(out_dir, "examples.png"))
    with open(paths["cases.csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for c in cases:
            w.writerow(["" if c[k] is None else c[k] for k in CSV_FIELDS])
    with open(paths["cases.jsonl"], "w") as f:
        for c in cases:
            f.write(json.dumps(json_safe(c), allow_nan=False, sort_keys=True) + "\n")
    summary = {"dimensions": list(dimensions), "sigmas": sigmas, **(meta or {}),
               "prior": {d: {**prior[d].to_json(), "parameter": PARAMETER[d], "unit": UNIT[d]}
                         for d in dimensions},
               "empty_mask_rules": EMPTY_MASK_RULES, "table": rows}
    with open(paths["summary.json"], "w") as f:
        f.write(json.dumps(json_safe(summary), allow_nan=False, indent=1) + "\n")
    plot_heatmap(rows, dimensions, sigmas, paths["heatmap.png"])
    with open(paths["report.md"], "w") as f:
        f.write(_markdown(rows, prior, dimensions, sigmas, meta or {}, bool(examples)))
    return paths


def _markdown(rows, prior, dimensions, sigmas, meta, examples: bool = False) -> str:
    levels = list(range(-sigmas, sigmas + 1))
    head = "| dimension | " + " | ".join("mu" if k == 0 else f"mu {k:+d} sigma" for k in levels) + " |"
    rule = "|---" * (len(levels) + 1) + "|"
    cell = {(r["dimension"], r["k"]): r for r in rows}

    def table(fmt):
        return "\n".join(f"| {d} | " + " | ".join(fmt(cell[d, k]) for k in levels) + " |"
                         for d in dimensions)

    lines = [
        "# Robustness benchmark", "",
        "Synthetic tumors painted into healthy scans with one property moved to mu + k sigma of the "
        "training distribution at a time (Section 5.5, Figure 6 of Hu et al., CVPR 2023). Each "
        "level's cases share their base draws, so a row changes only in its own dimension.", "",
        *(f"- {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
          for k, v in meta.items() if not isinstance(v, dict)), "",
        "## Training distribution (Monte Carlo over the generator configuration)", "",
        "| dimension | parameter | unit | mu | sigma | tumors |", "|---|---|---|---|---|---|",
        *(f"| {d} | {PARAMETER[d]} | {UNIT[d]} | {prior[d].mu:g} | {prior[d].sigma:g} | {prior[d].n} |"
          for d in dimensions), "",
        "## Mean tumor Dice", "", "![heatmap](heatmap.png)", "",
        *(["One case per level:", "", "![examples](examples.png)", ""] if examples else []),
        "Mean tumor Dice % (detection rate %), n cases:", "", head, rule,
        table(lambda r: f"{_percent(r['mean_dice'])} ({_percent(r['detection_rate'])}), {r['n']}"),
        "",
        "Value used (mean over the level's cases; target mu + k sigma clipped to the valid range):",
        "", head, rule,
        table(lambda r: "n/a" if r["mean_value"] is None else f"{r['mean_value']:.4g}"), "",
        f"Rules for empty masks: {EMPTY_MASK_RULES}", "",
        "Per-case scores: `cases.csv`; every case's full generator record (regenerates it exactly): "
        "`cases.jsonl`; this table as JSON: `summary.json`.", ""]
    return "\n".join(lines)


# The profile when the user names none: the benchmark moves PaperTumor fields (sigma_e, eta, mu_t),
# which the commands' default (``released``) does not draw, so it takes the paper's training recipe.
DEFAULT_ROBUSTNESS_PROFILE = "paper-train"


def _checked_config(fields: dict) -> GeneratorConfig:
    try:
        config = GeneratorConfig.from_json({"profile": DEFAULT_ROBUSTNESS_PROFILE, **fields})
    except TypeError as exc:
        raise ValueError(f"generator configuration: {exc}") from None
    _require_paper(config)
    if any(c % 16 for c in config.crop_size):
        raise ValueError(f"crop_size {list(config.crop_size)}: every side must be a multiple of 16 "
                         "for the models")
    return config


def training_config(generator: dict, prep: Preprocessing) -> GeneratorConfig:
    """The generator configuration of the model's training distribution: ``generator`` (fields of
    GeneratorConfig, as a config file holds them) over the crop size and spacing of the checkpoint's
    preprocessing record. A spacing other than the model's is refused: the model would see every
    tumor at the wrong scale."""
    config = _checked_config({"crop_size": list(prep.crop_size),
                              "target_spacing_mm": list(prep.spacing_mm), **generator})
    if tuple(config.target_spacing_mm) != tuple(prep.spacing_mm):
        raise ValueError(f"target_spacing_mm {list(config.target_spacing_mm)}: the model was "
                         f"trained on crops at {list(prep.spacing_mm)} mm")
    return config


def benchmark(checkpoint: str, manifest: str, out: str, generator: dict | None = None, *,
              dimensions: Sequence[str] = DIMENSIONS, sigmas: int = 3, cases_per_level: int = 4,
              seed: int = 0, prior_samples: int = 400, device: str = "auto",
              backend: str = "numpy", allow_roots=(), log=print) -> dict[str, str]:
    """The benchmark of a trainer checkpoint on the healthy scans of ``manifest``, written to
    ``out`` by :func:`write_report`; returns the paths written, by name.

    ``generator``: GeneratorConfig fields of the training distribution (see
    :func:`training_config`). Crops are windowed with the checkpoint's HU window. Inputs are
    checked (configuration, checkpoint file, manifest) before any scan is prepared.
    """
    from tumorforge.manifests.schema import default_roots, read_manifest
    from .model import checkpoint_path, load_model, predict_crop

    generator = dict(generator or {})
    dimensions = check_dimensions(dimensions)
    _checked_config(generator)
    checkpoint_path(checkpoint)
    entries = read_manifest(manifest, default_roots(manifest, allow_roots))
    synthesis = get_backend(backend)
    healthy = sorted((e for e in entries if e.role == "healthy"), key=lambda e: e.scan_id)
    if not healthy:
        raise ValueError(f"{manifest} has no healthy scan to put tumors in")
    trained = load_model(checkpoint, device)
    prep = trained.preprocessing
    config = training_config(generator, prep)
    started = time.perf_counter()
    # Only the scans the cases use are prepared: case j takes scan j mod len(healthy).
    scans = [load_prepared(e, config) for e in healthy[:cases_per_level]]
    log(f"robustness: {len(scans)} scan(s) prepared in {time.perf_counter() - started:.1f} s; "
        f"estimating the training distribution from {prior_samples} draws")
    depths: dict = {}
    prior = estimate_prior(scans[0], config, prior_samples, seed, _depth(scans[0], depths))
    for d in dimensions:
        log(f"  {d:<9} {PARAMETER[d]:<8} mu {prior[d].mu:g} sigma {prior[d].sigma:g} {UNIT[d]}")
    examples: dict = {}
    cases = run_sweep(scans, lambda image: predict_crop(trained.model, image, prep.window_hu),
                      config, dimensions, sigmas, cases_per_level, seed, prior=prior,
                      backend=synthesis, depths=depths, progress=log, examples=examples)
    meta = {"checkpoint": trained.checkpoint, "model": trained.name, "step": trained.step,
            "manifest": manifest, "seed": seed, "cases_per_level": cases_per_level,
            "prior_samples": prior_samples, "prior_scan": scans[0].scan_id,
            "scans": [s.scan_id for s in scans], "backend": synthesis.name,
            "seconds": round(time.perf_counter() - started, 1),
            "inference": {"spacing_mm": list(prep.spacing_mm), "window_hu": list(prep.window_hu),
                          "crop_size": list(config.crop_size),
                          "dataset_ids": list(prep.dataset_ids)},
            "generator_config": config.to_json()}
    return write_report(out, cases, prior, dimensions, sigmas, meta, examples)
