"""The fidelity report's output: the table ``tumorforge stats`` prints, ``stats.json`` (every
row, lesion and tumor, with the definitions of the measures and the versions and machine that made
it) and one PNG histogram per measure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time

import numpy as np
import scipy

from tumorforge.generator.api import GENERATOR_VERSION
from tumorforge.manifests.bench_report import machine
from tumorforge.manifests.records import json_safe

from .aggregate import (KS_MEASURES, REFERENCE_MEASURES, compare_to_real, compare_to_reference,
                        group_order, summarize_groups, summarize_post)
from .inputs import Measured
from .lesion_table import TABLE_NAME, write_table
from .lesions import RING_VOXELS
from .prepared import ScanCache

HISTOGRAMS = (("radius_mm", "equivalent radius (mm)"), ("contrast_hu", "contrast vs liver ring (HU)"),
              ("hu_drop_hu", "HU drop (tumor-free - synthetic, HU)"),
              ("depth_mm", "depth of the center below the liver surface (mm)"))
DEFINITIONS = {
    "lesion": "26-connected component of label == tumor",
    "radius_mm": "equivalent-sphere radius (3V/4pi)^(1/3), V in mm^3 from the physical voxel "
                 "volume; components cut by a crop face are left out",
    "contrast_hu": f"mean HU of the lesion minus mean HU of the liver voxels within {RING_VOXELS} "
                   "voxels of it (not tumor)",
    "hu_drop_hu": "mean over the lesion of tumor-free HU minus synthetic HU (synthetic only)",
    "depth_mm": "distance of the lesion's center to the nearest voxel outside the organ (liver or "
                "tumor), Euclidean distance transform in mm; dataset crops: the tumor record's "
                "center in the whole prepared scan; whole scans: the lesion voxel nearest the "
                "component's centroid",
    "reference_depth_mm": "median depth of all liver voxels of the lesion's scan",
    "depth_ratio": "depth_mm / reference_depth_mm",
    "texture_sd_hu": "sd of HU in the lesion eroded by one voxel (the whole lesion when erosion "
                     "leaves nothing)",
    "parenchyma_sd_hu": "sd of parenchyma HU (liver without tumor and vessels): the record's "
                        "parenchyma_sd_hu for synthetic lesions",
    "texture_ratio": "texture_sd_hu / parenchyma_sd_hu",
    "grain_mm": "correlation length of HU in the lesion eroded by one voxel: the mean over axes "
                "of s / sqrt(-2 ln rho), rho the correlation of neighbouring voxels along the axis, "
                "each about the mean of its 20 mm block (0 for uncorrelated noise; n/a under 64 "
                "neighbour pairs)",
    "parenchyma_grain_mm": "the same over the image's parenchyma (liver without tumor and "
                           "vessels, two voxels off their edges)",
    "grain_ratio": "grain_mm / parenchyma_grain_mm: tumor grain as coarse as the parenchyma's "
                   "is 1 (target 0.8-1.25); below, the tumor is finer-grained than the organ "
                   "around it",
    "inside_fraction": "share of the tumor's drawn shape inside the liver at its center (tumor "
                       "records; from the drawn shape on the prepared scan where a record lacks it)",
    "vessel_voxels": "vessel voxels inside the drawn shape (tumor records, idem)",
    "inside_90_share": "share of tumor records with inside_fraction >= 0.9 (the location rule's "
                       "default target)",
    "shell_r": "satellites: distance of the satellite's center to the large lesion's center, in "
               "units of the large lesion's nominal r; in_shell_share: the share within the "
               "input's satellite_shell (1.2-2.5 r by default)",
    "fallback": "share of tumor records with location_fallback, in total and by location_reason",
    "satellites": "satellites placed and dropped (SampleParams notes 'satellite dropped')",
    "mass_effect": "paired synthesis of the tumor alone with mass_effect on and off (capsule off): "
                   "distance (mm) from each organ-surface voxel of one to the organ surface of the "
                   "other, over surface voxels within gamma_max of the center; max_theory_mm = "
                   "4/27 gamma_max I/100, the largest radial shift eq. 5 can cause; max_mm, median_mm (all "
                   "those voxels), median_moved_mm (those that moved), moved_share. Labels are "
                   "warped nearest-neighbour, so shifts come in whole voxels",
    "capsule": "paired synthesis with capsule on and off (mass effect as recorded): HU added, "
               "profiled by signed distance to the tumor label's edge (mean per bin of half a "
               "voxel, negative inside); peak_hu = the profile's peak; width_mm = its full width "
               "at half the peak (linear interpolation between bins); band_mean_hu = mean added "
               "HU over the voxels of that band; max_hu = the largest added HU of any voxel; "
               "offset_mm = the peak's distance from the edge",
    "real_size_bins_mm": "real lesions are typed by radius, cut at the geometric means of the "
                         "Table 6 radii",
    "versus_real": "two-sample Kolmogorov-Smirnov test (scipy ks_2samp, two-sided) of each "
                   "synthetic size type against the real lesions of the same type, every --real "
                   "input pooled (mix and satellite against all real lesions): n, n_real, D, p; "
                   "measures radius_mm, contrast_hu, depth_ratio, texture_ratio; once with "
                   "tumors as the unit (tests) and once with volumes as the unit (volume_tests: "
                   "the mean of each dataset sample or case, since tumors of one volume share "
                   "its draws)",
    "versus_reference": "the same test of each synthetic size type against the lesions of the "
                        "same type in a reference generator's lesion table (--reference; e.g. "
                        "another generator's tumors in the same healthy scans): n, n_reference, "
                        "D, p for radius_mm and hu_drop_hu, with tumors and with volumes (the "
                        "table's sample column) as the unit",
    "lesions.csv": "every lesion of this report, one row each (source, origin, group, scan_id, "
                   "sample and the measures): the lesion table --reference reads back",
}


def _cell(d: dict, digits: int = 1) -> str:
    if not d or d["n"] == 0:
        return "n/a"
    return f"{d['median']:.{digits}f} [{d['q1']:.{digits}f}, {d['q3']:.{digits}f}]"


def _share(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def format_table(rows: list[dict], post_rows: list[dict], versus_real: list[dict] = (),
                 versus_reference: list[dict] = ()) -> str:
    """The report as text: one line per (input, origin, size type); medians [quartiles]."""
    head = ("source", "origin", "type", "lesions", "radius mm", "contrast HU", "HU drop",
            "depth mm", "depth/ref", "tex sd ratio", "grain ratio", "tumors", "inside", ">=90% in", "vessel hit",
            "fallback")
    lines = []
    for r in rows:
        m = r["measures"]
        fb = r["fallback"]
        fallback = "n/a" if fb is None else _share(fb["share"]) + (
            " (" + ", ".join(f"{k} {_share(v)}" for k, v in fb["by_reason"].items()) + ")"
            if fb["by_reason"] else "")
        inside = m["inside_fraction"]
        lines.append((r["source"], r["origin"], r["type"],
                      f"{r['lesions']}" + (f" ({r['cut_by_crop']} cut)" if r["cut_by_crop"] else ""),
                      _cell(m["radius_mm"]), _cell(m["contrast_hu"]), _cell(m["hu_drop_hu"]),
                      _cell(m["depth_mm"]), _cell(m["depth_ratio"], 2), _cell(m["texture_ratio"], 2),
                      _cell(m["grain_ratio"], 2), str(r["tumors"]) if r["tumors"] else "-",
                      "n/a" if inside["n"] == 0 else f"{inside['median']:.2f}",
                      _share(r["inside_90_share"]), _share(r["vessel_hit_share"]), fallback))
    text = [_columns(head, lines)]
    sat = [r for r in rows if r.get("in_shell_share") is not None and r["type"] != "all"]
    if sat:
        text.append("satellites (distance to the large lesion's center, in its r):\n" + _columns(
            ("source", "type", "satellites", "in shell", "distance r"),
            [(r["source"], r["type"], str(r["measures"]["shell_r"]["n"]),
              _share(r["in_shell_share"]), _cell(r["measures"]["shell_r"], 2)) for r in sat]))
    if post_rows:
        phead = ("source", "type", "tumors", "mass effect max mm", "moved share", "eq.5 max mm",
                 "capsule peak HU", "band mean HU", "band width mm", "rim offset mm")
        plines = [(p["source"], p["type"], str(p["tumors"]), _cell(p["mass_effect"]["max_mm"], 2),
                   _cell(p["mass_effect"]["moved_share"], 2),
                   _cell(p["mass_effect"]["max_theory_mm"], 2), _cell(p["capsule"]["peak_hu"]),
                   _cell(p["capsule"]["band_mean_hu"]), _cell(p["capsule"]["width_mm"]),
                   _cell(p["capsule"]["offset_mm"])) for p in post_rows]
        text.append("post-processing (paired synthesis, paper profile):\n" + _columns(phead, plines))
    if versus_real:
        def ks(t):
            return "n/a" if t["p"] is None else f"D {t['d']:.2f} p {t['p']:.2g}"
        text.append("synthetic vs real lesions of the same type (two-sample KS; p < 0.05: the "
                    "distributions differ):\n" + _columns(
                        ("source", "type", "vs real", *KS_MEASURES),
                        [(v["source"], v["type"], v["real_type"],
                          *(ks(v["tests"][k]) for k in KS_MEASURES)) for v in versus_real]))
        text.append("the same with volumes as the unit (each sample's or case's mean; tumors of "
                    "one volume share its draws):\n" + _columns(
                        ("source", "type", "vs real", *KS_MEASURES),
                        [(v["source"], v["type"], v["real_type"],
                          *(ks(v["volume_tests"][k]) for k in KS_MEASURES))
                         for v in versus_real]))
    if versus_reference:
        def ks_ref(t):
            return "n/a" if t["p"] is None else f"D {t['d']:.2f} p {t['p']:.2g}"
        head = ("source", "type", "reference", *(f"{k} ({unit})" for k in REFERENCE_MEASURES
                                                 for unit in ("tumors", "volumes")))
        text.append("synthetic vs a reference generator's lesions of the same type (two-sample "
                    "KS; p < 0.05: the distributions differ):\n" + _columns(head, [
                        (v["source"], v["type"], v["reference"],
                         *(ks_ref(v[tests][k]) for k in REFERENCE_MEASURES
                           for tests in ("tests", "volume_tests")))
                        for v in versus_reference]))
    return "\n\n".join(text)


def _columns(head, lines) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def plot_histograms(inputs: list[Measured], out_dir: str) -> list[str]:
    """One PNG per measure (radius, contrast, HU drop, depth): a panel per size type (and one of
    all lesions), every (input, origin) overlaid on shared bins, as densities. Returns the file
    names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = {}
    for m in inputs:
        for les in m.lesions:
            series.setdefault((m.name, les.origin), []).append(les)
    groups = sorted({les.group for ls in series.values() for les in ls}, key=group_order)
    groups += ["all"] if len(groups) > 1 else []
    written = []
    for measure, title in HISTOGRAMS:
        per = {(key, g): [getattr(les, measure) for les in ls if g in ("all", les.group)
                          and getattr(les, measure) is not None]
               for key, ls in series.items() for g in groups}
        if not any(per.values()):
            continue
        cols = min(3, len(groups))
        rows = int(math.ceil(len(groups) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, g in zip(axes.ravel(), groups):
            values = [v for (key, gg), vs in per.items() if gg == g for v in vs]
            if values:
                edges = np.histogram_bin_edges(values, bins=min(30, max(5, len(values) // 3)))
                for n, key in enumerate(series):
                    vs = per[(key, g)]
                    if vs:
                        ax.hist(vs, bins=edges, histtype="step", linewidth=1.5, density=True,
                                label=f"{key[0]} ({key[1]}, n={len(vs)})", color=f"C{n % 10}",
                                linestyle={"real": "--", "reference": ":"}.get(key[1], "-"))
                ax.legend(fontsize=7)
            ax.set_title(g)
            ax.set_xlabel(title, fontsize=8)
        for ax in axes.ravel()[len(groups):]:
            ax.axis("off")
        fig.tight_layout()
        name = f"{measure}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def versions() -> dict:
    import matplotlib
    return {"tumorforge_generator": GENERATOR_VERSION, "numpy": np.__version__,
            "scipy": scipy.__version__, "matplotlib": matplotlib.__version__,
            "python": platform.python_version()}


def report(inputs: list[Measured], command: str, seconds: float, cache: ScanCache, bins,
           out_dir: str | None) -> dict:
    """The whole report as a JSON-ready dict; with ``out_dir``, also ``stats.json`` and the PNGs."""
    result = {
        "tool": "tumorforge stats", "command": command, "date": time.strftime("%Y-%m-%d"),
        "machine": machine(), "versions": versions(), "seconds": round(seconds, 2),
        "scans_prepared": cache.prepared, "prepare_seconds": round(cache.seconds, 2),
        "definitions": DEFINITIONS,
        "real_size_bins_mm": {name: [lo, None if math.isinf(hi) else hi] for name, lo, hi in bins},
        "inputs": [{"name": m.name, "kind": m.kind, "path": m.path, **m.info,
                    "lesions": len(m.lesions), "tumors": len(m.tumors),
                    "satellites": {"placed": m.satellites_placed, "dropped": m.satellites_dropped,
                                   "dropped_share": (m.satellites_dropped /
                                                     (m.satellites_placed + m.satellites_dropped)
                                                     if m.satellites_placed + m.satellites_dropped
                                                     else None)},
                    "post_effects_measured": len(m.post)} for m in inputs],
        "groups": summarize_groups(inputs), "post_effects": summarize_post(inputs),
        "versus_real": compare_to_real(inputs, bins),
        "versus_reference": compare_to_reference(inputs),
        "lesions": [dataclasses.asdict(les) for m in inputs for les in m.lesions],
        "tumors": [dataclasses.asdict(t) for m in inputs for t in m.tumors],
        "post_effect_tumors": [dataclasses.asdict(p) for m in inputs for p in m.post],
        "figures": [],
    }
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        result["figures"] = plot_histograms(inputs, out_dir)
        write_table(os.path.join(out_dir, TABLE_NAME), [les for m in inputs for les in m.lesions])
        result = json_safe(result)
        with open(os.path.join(out_dir, "stats.json"), "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
    return json_safe(result)

