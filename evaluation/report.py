"""The evaluation report: Markdown and HTML with plots a person would rather look at than read.

Its metrics table has a row for every figure of the metrics table (``metric_table.METRICS``)."""

from __future__ import annotations

import base64
import functools
import html
import os

import numpy as np

from tumorforge.manifests.conventions import DISPLAY_WINDOW_HU, TUMOR, to_ras

from .metric_table import METRICS, with_interval
from .metrics import INTERVALS, SIZE_BINS_MM


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_detection(agg: dict, png: str) -> str:
    """Detection rate by tumor size (equivalent-sphere radius), as the paper's Figure 5."""
    plt = _plt()
    names = [n for n, _, _ in SIZE_BINS_MM] + ["all"]
    det = agg["detection"]
    vals = [det[n]["sensitivity"] or 0.0 for n in names]
    err = [[max(0.0, (det[n]["sensitivity"] or 0) - det[n]["ci95"][0]) if det[n]["ci95"] else 0
            for n in names],
           [max(0.0, det[n]["ci95"][1] - (det[n]["sensitivity"] or 0)) if det[n]["ci95"] else 0
            for n in names]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(names, vals, yerr=err, capsize=4, color=["#8ab", "#69a", "#478", "#333"])
    for i, n in enumerate(names):
        ax.text(i, 0.02, f"{det[n]['detected']}/{det[n]['lesions']}", ha="center", color="white",
                fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("tumor radius (mm, equivalent sphere)")
    ax.set_ylabel("detection rate (sensitivity)")
    ax.set_title("Lesion detection by size (95% CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_froc(curves: dict[str, list[dict]], png: str) -> str:
    """FROC-style curves: lesion sensitivity against false-positive lesions per scan as the tumor
    probability threshold moves (``curves``: name -> a summary's ``froc`` points)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, points in curves.items():
        pts = [p for p in points if p["sensitivity"] is not None]
        if not pts:
            continue
        x = [p["false_positive_lesions_per_scan"] for p in pts]
        y = [p["sensitivity"] for p in pts]
        line, = ax.plot(x, y, marker="o", ms=3, label=name)
        for p in pts:
            if p["threshold"] in (0.1, 0.5, 0.9):
                ax.annotate(f"{p['threshold']:g}", (p["false_positive_lesions_per_scan"],
                                                    p["sensitivity"]),
                            fontsize=6, color=line.get_color(), xytext=(2, 2),
                            textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("false-positive lesions per scan")
    ax.set_ylabel("lesion sensitivity (all sizes)")
    ax.set_title("FROC over the tumor probability threshold (labels: threshold)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def froc_rows(points: list[dict]) -> list[list[str]]:
    """Table rows of a FROC curve: threshold, sensitivity (all, > 10 mm), FP lesions per scan."""
    return [[f"{p['threshold']:g}", f"{p['detected']}/{p['lesions']}", _f(p["sensitivity"], True),
             _f(p["sensitivity_over_10mm"], True),
             f"{p['false_positive_lesions_per_scan']:.1f}"] for p in points]


FROC_HEADER = ["tumor probability >=", "detected", "sensitivity", "sensitivity > 10 mm",
               "FP lesions / scan"]


def plot_case_dice(cases: list[dict], png: str) -> str:
    plt = _plt()
    rows = [(c["scan_id"], c["tumor_dice"], c["tumor_nsd"]) for c in cases
            if c["tumor_dice"] is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(rows) + 1.5), 3.2))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r[1] for r in rows], 0.4, label="tumor DSC", color="#469")
    ax.bar(x + 0.2, [r[2] or 0 for r in rows], 0.4, label="tumor NSD (2 mm)", color="#9bd")
    ax.set_xticks(x, [r[0] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Per-case tumor DSC and NSD", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


# The zoomed panel of an example: at least this many mm across, and this many times the tumor's
# largest extent in the slice.
EXAMPLE_ZOOM_MIN_MM, EXAMPLE_ZOOM_FACTOR = 40.0, 3.0


def plot_example(scan_id, image, affine, truth, pred, png: str) -> str:
    """Axial slice through the largest ground-truth tumor, radiological view (patient's right on
    the left, anterior up): the whole slice with the zoomed region boxed, then the zoom around the
    tumor (at least ``EXAMPLE_ZOOM_MIN_MM`` across) with truth green and prediction red;
    orientation letters, a 10 mm scale bar and a legend. Arrays are in the file's voxel order,
    ``affine`` the file's."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from tumorforge.generator.api import decorate_panel
    plt = _plt()
    (img, ras_affine), (t, _), (p, _) = (to_ras(a, affine) for a in (image, truth, pred))
    spacing = np.sqrt((np.asarray(ras_affine)[:3, :3] ** 2).sum(0))   # mm along R, A, S
    k = int(np.argmax((t == TUMOR).sum(axis=(0, 1))))
    show = lambda a: np.rot90(a[:, :, k])[:, ::-1]       # rows: anterior up; columns: right left
    sl_img, sl_t, sl_p = show(img), show(t) == TUMOR, show(p) == TUMOR
    rows, cols = np.nonzero(sl_t)
    mm_row, mm_col = spacing[1], spacing[0]
    extent_mm = max((np.ptp(rows) + 1) * mm_row, (np.ptp(cols) + 1) * mm_col)
    half_mm = max(EXAMPLE_ZOOM_MIN_MM, EXAMPLE_ZOOM_FACTOR * extent_mm) / 2
    r0, c0 = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    hr, hc = int(np.ceil(half_mm / mm_row)), int(np.ceil(half_mm / mm_col))
    top, left = max(0, int(r0) - hr), max(0, int(c0) - hc)
    box = (slice(top, min(sl_img.shape[0], int(r0) + hr + 1)),
           slice(left, min(sl_img.shape[1], int(c0) + hc + 1)))
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(7, 3.8))
    window = dict(cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1],
                  interpolation="nearest")
    whole.imshow(sl_img, **window)
    whole.add_patch(Rectangle((box[1].start - 0.5, box[0].start - 0.5),
                              box[1].stop - box[1].start, box[0].stop - box[0].start,
                              fill=False, edgecolor="yellow", lw=1))
    decorate_panel(whole, "RLAP", sl_img.shape, mm_col)
    whole.set_title(f"{scan_id}, axial slice {k}", fontsize=8)
    zoom.imshow(sl_img[box], **window)
    for mask, color in ((sl_t[box], "lime"), (sl_p[box], "red")):
        if mask.any() and not mask.all():
            zoom.contour(mask, levels=[0.5], colors=color, linewidths=1.0)
    decorate_panel(zoom, "RLAP", sl_img[box].shape, mm_col)
    zoom.set_title(f"zoomed, {2 * half_mm:.0f} mm across", fontsize=8)
    for ax in (whole, zoom):
        ax.axis("off")
    fig.legend(handles=[Line2D([], [], color="lime", lw=1.5, label="truth (tumor)"),
                        Line2D([], [], color="red", lw=1.5, label="prediction (tumor)")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _table(rows: list[list], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _f(v, pct=False):
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def headline(agg: dict) -> str:
    """The report's first sentence: what a reader asks first, with its intervals."""
    dice, det = agg["tumor_dice"], agg["detection"]
    ci = f" [{_f(dice['ci95'][0])}, {_f(dice['ci95'][1])}]" if dice.get("ci95") else ""
    big = det.get(">10", {})
    fp = agg.get("false_positive_lesions_per_scan")
    return (f"**Tumor DSC {_f(dice['mean'])}{ci}** over {agg['tumor_cases']} scan(s) with tumors; "
            f"**{det['all']['detected']} of {det['all']['lesions']} lesions found** "
            f"({big.get('detected', 0)} of {big.get('lesions', 0)} over 10 mm); "
            f"**{'n/a' if fp is None else f'{fp:.1f}'} false-positive lesions per scan**; "
            f"liver DSC {_f(agg['liver_dice']['mean'])}.")


def write_report(out: str, summary: dict, examples: list) -> dict:
    """``report.md`` and ``report.html`` with the figures, from a summary and example cases."""
    agg = summary["aggregate"]
    figs = {"detection": plot_detection(agg, os.path.join(out, "detection_by_size.png")),
            "dice": plot_case_dice(summary["cases"], os.path.join(out, "case_dice.png"))}
    for i, ex in enumerate(examples):
        figs[f"example{i}"] = plot_example(*ex, os.path.join(out, f"example_{i}.png"))
    froc = agg.get("froc")
    if froc:
        figs["froc"] = plot_froc({"model": froc}, os.path.join(out, "froc.png"))

    metrics = [[f.label.format_map(summary),
                with_interval(f.value, f.ci95, functools.partial(_f, pct=m.percent)), f.n]
               for m in METRICS.values() if m.report_row for f in m.figures(agg)]
    det = [[n, f"{d['detected']}/{d['lesions']}", _f(d["sensitivity"], True),
            f"[{_f(d['ci95'][0], True)}, {_f(d['ci95'][1], True)}]" if d["ci95"] else "n/a"]
           for n, d in agg["detection"].items()]
    per_lesion = [[c["scan_id"], les["id"], _f(les["radius_mm"]), les["size_bin"],
                   " ".join(str(v) for v in les.get("center_vox", [])),
                   _f(les.get("best_dice")), "yes" if les["detected"] else "no"]
                  for c in summary["cases"] for les in c["lesions"]]
    rule = summary.get("detection_rule") or agg.get("detection_rule", "")
    cases = [[c["scan_id"], c["role"], _f(c["tumor_dice"]), _f(c["tumor_nsd"]), _f(c["liver_dice"]),
              f"{sum(l['detected'] for l in c['lesions'])}/{len(c['lesions'])}",
              c["false_positive_lesions"]] for c in summary["cases"]]
    step = "" if summary["step"] is None else f" (step {summary['step']})"
    md = [f"# Evaluation of {summary['model']}{step}", "", headline(agg), "",
          f"Checkpoint `{summary['checkpoint']}`, scans `{summary['manifest']}`.", "",
          "Inference: " + ", ".join(f"{k} {v}" for k, v in summary["inference"].items()) + ".", "",
          "## Metrics", "", f"{INTERVALS}.", "",
          _table(metrics, ["metric", "value", "n"]), "",
          "## Detection by tumor size", "",
          f"Detection rule: {rule}. Lesions are 26-connected components; size is the "
          "equivalent-sphere radius. False-positive lesions over all scans: "
          f"{agg['detection']['all'].get('false_positive_lesions', 'n/a')}.", "",
          _table(det, ["radius (mm)", "detected", "sensitivity", "95% CI"]), "",
          "![detection by size](detection_by_size.png)", "",
          *(["## FROC over the tumor probability threshold", "",
              "The operating point above is the argmax answer. Here the predicted tumor is every "
              "voxel of the post-processed liver whose tumor probability reaches the threshold "
              "(specks dropped as above), scored with the same detection rule.", "",
              _table(froc_rows(froc), FROC_HEADER), "", "![FROC](froc.png)", ""] if froc else []),
          "## Per lesion", "",
          _table(per_lesion, ["scan", "lesion", "radius (mm)", "size", "center (voxel)",
                              "best match Dice", "detected"]) if per_lesion else
          "No ground-truth lesion.", "",
          "## Per case", "", "![per-case DSC](case_dice.png)", "",
          _table(cases, ["scan", "role", "tumor DSC", "tumor NSD", "liver DSC", "lesions",
                         "FP lesions"]), ""]
    if examples:
        md += ["## Examples", ""] + [f"![example {i}](example_{i}.png)" for i in range(len(examples))]
        md.append("")
    md += ["## Empty masks", "", summary["empty_mask_rule"], ""]
    text = "\n".join(md)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(html_page(text, out))
    return figs


def _embedded(src: str, folder: str) -> str:
    """An image of ``folder`` as a data URI, so the HTML report stands alone when moved."""
    with open(os.path.join(folder, src), "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def html_page(markdown: str, folder: str) -> str:
    """A small Markdown-to-HTML rendering (headings, tables, images embedded, paragraphs)."""
    body, table = [], []

    def flush():
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r) <= set("|-")]
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
                        + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>"
                                                             for c in r) + "</tr>" for r in rest)
                        + "</table>")
            table.clear()
    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<p><img src="{_embedded(src[:-1], folder)}" '
                        f'alt="{html.escape(alt)}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "\n".join(body) + "</body></html>"
