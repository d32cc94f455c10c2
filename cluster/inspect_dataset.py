"""``tumorforge inspect DATASET``: what a generated dataset holds, read from its index and the
provenance of its samples.

Prints samples, shards, bytes per format, how it was made (profile, configuration, versions), the
scans its samples come from and how often, and the distributions the provenance records: tumors per
sample and tumor radius per size type. With ``--out`` it also writes ``inspect.json`` (every
figure), ``histograms.png`` and ``montage.png`` (a few samples, the axial slice through each one's
largest tumor, tumor and liver contours). Large datasets are read on evenly spaced shards up to
``--max-samples`` provenance records (the output says how many it read).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import numpy as np

from tumorforge.manifests.dataset.formats import owner
from tumorforge.manifests.dataset.reader import Dataset

RADIUS_BINS_MM = (0, 2, 4, 6, 8, 10, 15, 20, 25, 30, 40, 60)


def _shards_to_read(ds: Dataset, max_samples: int) -> list:
    """Evenly spaced shards holding at most ``max_samples`` samples (all when they fit)."""
    shards = ds.shards
    if len(ds) <= max_samples:
        return list(shards)
    n = max(1, max_samples // max(1, ds.samples_per_shard))
    picks = np.unique(np.linspace(0, len(shards) - 1, n).round().astype(int))
    return [shards[k] for k in picks]


def _radius(tumor: dict) -> float:
    """A tumor's size as drawn: the geometric mean of its half-axes (mm), the radius of the sphere
    of the same volume before deformation; the nominal r when no half-axes are recorded."""
    axes = tumor.get("half_axes_mm")
    if axes:
        return float(np.prod(np.asarray(axes, float)) ** (1.0 / 3.0))
    return float(tumor.get("radius_mm", 0.0))


def describe_dataset(ds: Dataset, max_samples: int = 20_000) -> dict:
    """Every figure ``inspect`` prints, as a JSON-able dict: what the index says, bytes per
    storage format, and the distributions read from the provenance of up to ``max_samples``
    samples."""
    index = ds.index
    spec = index.spec
    gen = spec.get("generator", {})
    by_format: Counter = Counter()
    for shard in ds.shards:
        for key, record in shard.files.items():
            by_format[owner(key) or "other"] += record.bytes
    for key, record in index.metadata.items():
        by_format[owner(key) or "other"] += record.bytes
    read = _shards_to_read(ds, max_samples)
    scans: Counter = Counter()
    kinds: Counter = Counter()
    tumors_per_sample: dict[str, Counter] = defaultdict(Counter)
    radii: dict[str, list[float]] = defaultdict(list)
    anchors: Counter = Counter()
    notes = 0
    for shard in read:
        for p in ds.shard_provenance(shard):
            params = p.get("params", {})
            scans[p.get("scan_id")] += 1
            kind = params.get("kind", "?")
            kinds[kind] += 1
            anchors[params.get("crop_anchor") or "?"] += 1
            notes += bool(params.get("notes"))
            tumors = params.get("tumors") or []
            tumors_per_sample[kind][len(tumors)] += 1
            for t in tumors:
                radii[t.get("kind", "?")].append(_radius(t))
    n_read = sum(s.count for s in read)
    return {
        "url": ds.url, "dataset_id": ds.dataset_id, "format": index.format,
        "samples": len(ds), "shards": len(ds.shards), "samples_per_shard": ds.samples_per_shard,
        "formats": list(ds.formats), "bytes": dict(by_format), "crop_shape": list(ds.crop_shape),
        "manifest": spec.get("manifest"), "root_seed": spec.get("root_seed"),
        "backend": spec.get("backend"), "versions": index.versions,
        "generator": {k: gen.get(k) for k in ("profile", "crop_size", "target_spacing_mm",
                                              "size_mix", "scenario_mix", "negative_fraction",
                                              "crop_policy") if k in gen},
        "provenance_read": {"samples": n_read, "shards": len(read),
                            "all": n_read == len(ds)},
        "scans": dict(scans.most_common()), "kinds": dict(kinds.most_common()),
        "crop_anchors": dict(anchors.most_common()), "samples_with_notes": notes,
        "tumors_per_sample": {k: dict(sorted(v.items())) for k, v in sorted(tumors_per_sample.items())},
        "radius_mm": {k: {"n": len(v), "median": float(np.median(v)), "min": float(min(v)),
                          "max": float(max(v)),
                          "histogram": np.histogram(v, bins=RADIUS_BINS_MM)[0].tolist()}
                      for k, v in sorted(radii.items())},
        "radius_bins_mm": list(RADIUS_BINS_MM),
        "warnings": _config_warnings(gen),
    }


def _config_warnings(gen: dict) -> list[str]:
    """What the generator configuration's own warnings say about this dataset (a texture grid
    finer than the voxel), or why the configuration could not be read back."""
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.manifests.errors import UserError
    try:
        return GeneratorConfig.from_json(gen, "index.json generator").warnings()
    except (UserError, ValueError) as exc:
        return [f"the generator configuration could not be read back: {exc}"]


def lines(s: dict) -> list[str]:
    """The summary as a person reads it."""
    gen = s["generator"]
    pr = s["provenance_read"]
    out = [f"dataset {s['dataset_id']} at {s['url']} ({s['format']})",
           f"  samples {s['samples']} in {s['shards']} shard(s) of {s['samples_per_shard']}, crops "
           f"{'x'.join(map(str, s['crop_shape']))}; formats "
           + ", ".join(f"{f} {b / 1e6:.1f} MB" for f, b in s["bytes"].items()),
           f"  made by profile {gen.get('profile')} ({', '.join(f'{k} {v}' for k, v in gen.items() if k != 'profile')}); "
           f"seed {s['root_seed']}; backend {s['backend']}; manifest {s['manifest']}",
           f"  provenance read: {pr['samples']} sample(s) of {pr['shards']} shard(s)"
           + ("" if pr["all"] else " (evenly spaced; --max-samples reads more)"),
           f"  scans: {len(s['scans'])}; samples per scan "
           + ", ".join(f"{k} {v}" for k, v in list(s["scans"].items())[:8])
           + (" ..." if len(s["scans"]) > 8 else ""),
           "  kinds: " + ", ".join(f"{k} {v}" for k, v in s["kinds"].items())
           + "; crops centred on " + ", ".join(f"{k} {v}" for k, v in s["crop_anchors"].items())]
    out.append("  tumors per sample, by kind:")
    for kind, hist in s["tumors_per_sample"].items():
        out.append(f"    {kind:<11} " + "  ".join(f"{n}: {c}" for n, c in hist.items()))
    out.append("  tumor radius (mm; geometric mean of the drawn half-axes), by size type: n, "
               "median [min, max], histogram over "
               + ",".join(map(str, s["radius_bins_mm"])))
    for kind, r in s["radius_mm"].items():
        out.append(f"    {kind:<11} {r['n']:>6}  {r['median']:6.1f} [{r['min']:.1f}, "
                   f"{r['max']:.1f}]  {_bar(r['histogram'])}")
    if s["samples_with_notes"]:
        out.append(f"  {s['samples_with_notes']} sample(s) carry generator notes (see audit)")
    out += [f"  warning: {w}" for w in s.get("warnings", [])]
    return out


def _bar(counts: list[int]) -> str:
    """A histogram as one line of block characters."""
    blocks = " ▁▂▃▄▅▆▇█"
    top = max(counts) or 1
    return "".join(blocks[int(round(8 * c / top))] for c in counts)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_histograms(s: dict, png: str) -> str:
    """Tumors per sample by kind, and tumor radius by size type."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    kinds = list(s["tumors_per_sample"].items())
    width = 0.8 / max(1, len(kinds))
    for j, (kind, hist) in enumerate(kinds):        # counts: bars side by side, one per kind
        xs = np.array([int(n) for n in hist], float) + (j - (len(kinds) - 1) / 2) * width
        a.bar(xs, list(hist.values()), width=width, label=kind)
    a.xaxis.get_major_locator().set_params(integer=True)
    a.set_xlabel("tumors per sample")
    a.set_ylabel("samples")
    a.legend(fontsize=7)
    edges = np.asarray(s["radius_bins_mm"], float)
    for kind, r in s["radius_mm"].items():
        b.stairs(r["histogram"], edges, label=f"{kind} (n {r['n']})")
    b.set_xlabel("tumor radius r (mm)")
    b.set_ylabel("tumors")
    b.legend(fontsize=7)
    fig.suptitle(f"dataset {s['dataset_id']}: provenance of {s['provenance_read']['samples']} "
                 f"sample(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_montage(ds: Dataset, png: str, n: int = 8) -> str:
    """``n`` samples with tumors (evenly spaced over the dataset): the axial slice through each
    one's largest tumor, radiological view (patient's right on the left, anterior up), tumor red
    and liver green contours; orientation letters and a 10 mm scale bar on every panel, and a
    legend of the contours."""
    import scipy.ndimage as ndi
    from matplotlib.lines import Line2D
    from tumorforge.generator.preview import decorate_panel
    from tumorforge.manifests.conventions import DISPLAY_WINDOW_HU, ORGAN, TUMOR
    plt = _plt()
    chosen = []
    for i in np.linspace(0, len(ds) - 1, min(len(ds), 8 * n)).round().astype(int):
        if len(chosen) == n:
            break
        image, label, prov = ds.sample(int(i))
        if (label == TUMOR).any():
            chosen.append((int(i), image, label, prov))
    if not chosen:                      # a dataset of negatives: show what there is
        chosen = [(i, *ds.sample(i)) for i in range(min(n, len(ds)))]
    cols = min(4, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, image, label, prov) in zip(axes.ravel(), chosen):
        tumor = label == TUMOR
        if tumor.any():
            comps, _ = ndi.label(tumor, structure=np.ones((3, 3, 3), bool))
            largest = np.argmax(np.bincount(comps.ravel())[1:]) + 1
            z = int(round(ndi.center_of_mass(comps == largest)[0]))
        else:
            z = image.shape[0] // 2
        show = lambda a: a[z][::-1, ::-1]          # (Z, Y, X) = (S, A, R): anterior up, right left
        ax.imshow(show(image), cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1])
        for mask, color in ((show(label) >= ORGAN, "lime"), (show(label) == TUMOR, "red")):
            if mask.any() and not mask.all():
                ax.contour(mask, levels=[0.5], colors=color, linewidths=0.7)
        # The generator's grid is isotropic: its spacing is every axis's mm per pixel.
        mm = float((prov.generator_config.get("target_spacing_mm") or [1.0])[0])
        decorate_panel(ax, "RLAP", image.shape[1:], mm)
        ax.set_title(f"#{i} {prov.params.get('kind')} ({prov.scan_id}) z {z}", fontsize=7)
    fig.legend(handles=[Line2D([], [], color="lime", lw=1.5, label="liver contour"),
                        Line2D([], [], color="red", lw=1.5, label="tumor contour")],
               loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def inspect(url: str, out: str | None = None, max_samples: int = 20_000, montage: int = 8
            ) -> dict:
    """Describe the dataset at ``url`` (:func:`describe_dataset`); with ``out``, also write
    inspect.json and the PNGs."""
    ds = Dataset(url)
    s = describe_dataset(ds, max_samples)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "inspect.json"), "w") as f:
            json.dump(s, f, indent=1)
        s["files"] = [plot_histograms(s, os.path.join(out, "histograms.png"))]
        if montage > 0:
            s["files"].append(plot_montage(ds, os.path.join(out, "montage.png"), montage))
    return s
