"""Visual Turing Test (Section 5.1 and Table 2 of the paper): can a radiologist tell real liver
tumors from synthetic ones?

``make_packet`` builds a blinded packet of whole-liver CT volumes: scans with real (annotated)
tumors and healthy scans with synthetic tumors, every one resampled to the same 1 mm isotropic RAS
grid, written under random case IDs with headers that carry nothing but the voxel grid. The truth
goes to a separate key whose sha256 is published when the packet is made, so the key cannot be
edited after the readers have answered without it showing.

``score_answers`` scores one reader's answer sheet exactly as Table 2 does: synthetic is the
positive class, real the negative class, and "unsure" answers are left out of the three rates
(with the rates that count them as wrong alongside).

Packet layout::

    OUT/cases/<case_id>.nii.gz      int16 HU, (X, Y, Z) = (R, A, S) voxels of 1 mm, origin (0, 0, 0)
    OUT/answer_sheet.csv            case_id,answer,confidence,comment (answer blank)
    OUT/README.txt                  instructions for the reader
    OUT/key_sha256.txt              sha256 of key/answer_key.json
    OUT/key/answer_key.json         {case_id: {truth, source_scan, seed, index, params}}
    OUT/key/packet.json             how the packet was made (manifests, seed, generator config)
    OUT/key/labels/<case_id>.label.nii.gz   uint8 0/1/2 (never in the reader's part of the packet)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os

import numpy as np

from tumorforge.generator.api import (DEFAULT_PROFILE, GENERATOR_VERSION, SYNTHETIC_PROFILES,
                                      GeneratorConfig,
                                      get_backend, load_prepared, parse_mix, sample_params,
                                      sample_seed, synthesize)
from tumorforge.manifests.conventions import DISPLAY_WINDOW_HU, TUMOR, zyx_to_ras
from tumorforge.manifests.errors import UserError
from tumorforge.manifests.nifti import GZIP_OS_UNIX, nifti_bytes
from tumorforge.manifests.schema import default_roots, read_manifest

from .metrics import wilson

ANSWERS = ("real", "synthetic", "unsure")
TRUTHS = ("real", "synthetic")
SHEET_COLUMNS = ("case_id", "answer", "confidence", "comment")
MAX_DRAWS_PER_CASE = 20           # synthetic draws tried before a healthy scan is given up
DEFAULT_MARGIN_MM = 40            # CT kept around the liver's box, on every side
README = """\
Visual Turing Test: real or synthetic liver tumors?

Each file in cases/ is one abdominal CT volume (NIfTI, Hounsfield units, 1 mm voxels) around the
liver. Some contain real liver tumors, the others synthetic tumors painted into healthy livers.
Open each volume in a 3D viewer (for example ITK-SNAP or 3D Slicer) and scroll through all slices:
some tell-tale signs (vessels running through a tumor, its edges) show only across slices.

Fill in answer_sheet.csv, one row per case:
  answer      one of: real, synthetic, unsure
  confidence  optional, for your own notes (for example 1 = guess ... 5 = certain)
  comment     optional free text

Do not open or change the key/ folder; it holds the answers. key_sha256.txt records its checksum
from when the packet was made, so any later change to the key can be detected.
"""


class VTTError(UserError, ValueError):
    """Bad input to the Visual Turing Test: names the file, row or case, expected and found."""


# ---------------------------------------------------------------------------------------------
# Making the packet


def _packet_nifti(data_zyx, dtype) -> bytes:
    """Gzipped NIfTI-1 bytes of a (Z, Y, X) array on a 1 mm RAS grid whose first voxel is at
    world (0, 0, 0). Nothing else is in the header: no description, names, intent or extensions,
    and the gzip stream has neither file name nor time stamp."""
    # Identity: 1 mm RAS, no translation. The scanner origin and any obliquity of the source
    # affine would say which dataset (hospital, scanner) a case came from.
    return nifti_bytes(zyx_to_ras(np.asarray(data_zyx)), np.eye(4), dtype=dtype,
                       gzip_os=GZIP_OS_UNIX)


def _write_bytes(path: str, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _case_ids(rng, n: int) -> list[str]:
    """``n`` distinct IDs ``case-xxxxxx`` (6 hex digits) from ``rng``; nothing of the scan in them."""
    ids: list[str] = []
    while len(ids) < n:
        cid = f"case-{int(rng.integers(0, 16 ** 6)):06x}"
        if cid not in ids:
            ids.append(cid)
    return ids


def _whole_volume(scan, params):
    """``params`` widened to the whole prepared volume (the liver's box plus the margin), so the
    synthesized "crop" is that volume with every drawn tumor at its drawn position."""
    return dataclasses.replace(params, crop_origin=tuple(scan.origin_vox), crop_size=tuple(scan.shape))


def _overview_png(rows, png: str) -> None:
    """For the organizer only (it shows the truth): the axial slice with the most tumor of each
    case, tumor contour in red, to check the packet before readers see it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(5, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (case_id, truth, image, label) in zip(axes.ravel(), rows):
        # (Y, X) with Y anterior, X toward the patient's right: anterior up, right on the left.
        ax.imshow(image[::-1, ::-1], cmap="gray", vmin=DISPLAY_WINDOW_HU[0],
                  vmax=DISPLAY_WINDOW_HU[1])
        if (label == TUMOR).any():
            ax.contour((label == TUMOR)[::-1, ::-1], levels=[0.5], colors="red", linewidths=0.7)
        ax.set_title(f"{case_id}: {truth}", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def make_packet(real_manifest: str, healthy_manifest: str, out_dir: str, n_real: int,
                n_synthetic: int, seed: int, profile: str = DEFAULT_PROFILE,
                size_mix: str = "mix", allow_roots=(), margin_mm: int = DEFAULT_MARGIN_MM, reuse_healthy: bool = False,
                log=print) -> dict:
    """Write a blinded Visual Turing Test packet to ``out_dir`` (see the module docstring).

    Real cases are scans of ``real_manifest`` with role "tumor", one case per scan, unchanged but
    for resampling. Synthetic cases are scans of ``healthy_manifest`` with role "healthy" into
    which the generator (``profile``, ``size_mix``) paints tumors over the whole liver; a draw that
    leaves no tumor voxel in the volume is replaced by the next draw index. Every case is resampled
    to 1 mm isotropic RAS (which also hides each dataset's native spacing) and keeps ``margin_mm``
    of CT around the liver's box. Each healthy scan is used once unless ``reuse_healthy`` (a reader
    who recognizes the same anatomy twice learns both are synthetic).

    Deterministic: the same inputs and ``seed`` give byte-identical files and the same case IDs.
    Returns a summary: case count, key path and its sha256.
    """
    if n_real < 0 or n_synthetic < 0 or n_real + n_synthetic == 0:
        raise VTTError(f"need at least one case: n_real={n_real}, n_synthetic={n_synthetic}")
    if profile not in SYNTHETIC_PROFILES:
        raise VTTError(f"profile {profile!r}: expected one of {SYNTHETIC_PROFILES} for synthetic "
                       f"tumors")
    if margin_mm < 16:
        raise VTTError(f"margin {margin_mm} mm: expected at least 16 mm of CT around the liver")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        # Old cases left beside new ones would have no key entry, or the wrong one.
        raise VTTError(f"{out_dir}: exists and is not empty; expected a new or empty folder")
    try:
        sizes, scenarios = parse_mix(size_mix)
    except argparse.ArgumentTypeError as exc:
        raise VTTError(f"--size-mix {size_mix!r}: {exc}") from None

    real_pool = [e for e in read_manifest(real_manifest, default_roots(real_manifest, allow_roots))
                 if e.role == "tumor"]
    healthy_pool = [e for e in read_manifest(healthy_manifest,
                                             default_roots(healthy_manifest, allow_roots))
                    if e.role == "healthy"]
    real_pool, healthy_pool, sources = comparable_pools(real_pool, healthy_pool, n_real,
                                                        n_synthetic, reuse_healthy)
    if sources["warning"]:
        log(f"warning: {sources['warning']}")
    if n_real > len(real_pool):
        raise VTTError(f"{real_manifest}: {n_real} real cases asked for, but only "
                       f"{len(real_pool)} scan(s) with role 'tumor'")
    if not reuse_healthy and n_synthetic > len(healthy_pool):
        raise VTTError(f"{healthy_manifest}: {n_synthetic} synthetic cases asked for, but only "
                       f"{len(healthy_pool)} scan(s) with role 'healthy' (pass reuse_healthy / "
                       f"--reuse-healthy to put several cases in one scan)")
    if n_synthetic and not healthy_pool:
        raise VTTError(f"{healthy_manifest}: no scan with role 'healthy'")

    # The margin the generator keeps around the liver is half a crop plus 8 voxels (prepare.py).
    side = 2 * (margin_mm - 8)
    config = GeneratorConfig(profile=profile, size_mix=sizes, scenario_mix=scenarios,
                             negative_fraction=0.0, crop_size=(side, side, side))
    real_config = GeneratorConfig(profile="real", negative_fraction=0.0, crop_size=(side,) * 3)
    backend = get_backend("numpy")

    # The packet's own stream is the root of the per-draw streams (sample_seed spawns children
    # of it), so shuffling and IDs never share random numbers with tumor draws.
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    truths = list(rng.permutation(["real"] * n_real + ["synthetic"] * n_synthetic))
    ids = _case_ids(rng, len(truths))
    real_order = [real_pool[i] for i in rng.permutation(len(real_pool))]
    healthy_order = [healthy_pool[i] for i in rng.permutation(len(healthy_pool))]

    cases_dir = os.path.join(out_dir, "cases")
    labels_dir = os.path.join(out_dir, "key", "labels")
    os.makedirs(cases_dir, exist_ok=True)
    os.makedirs(labels_dir, exist_ok=True)

    key: dict[str, dict] = {}
    overview: list = []          # (case_id, truth, axial image, axial label) for the organizer
    index = 0                    # draw index: sample_seed(seed, index) feeds sample_params
    used_healthy = 0
    # Written in case-ID order, so file times on disk follow the (random) IDs, not the truth.
    for case_id, truth in sorted(zip(ids, truths)):
        while True:
            if truth == "real":
                if not real_order:
                    raise VTTError(f"{real_manifest}: ran out of scans with real tumors; the "
                                   f"remaining ones lost their tumor voxels at 1 mm")
                entry, case_config, draws = real_order.pop(0), real_config, 1
            else:
                entry = healthy_order[used_healthy % len(healthy_order)]
                used_healthy += 1
                case_config, draws = config, MAX_DRAWS_PER_CASE
            scan = load_prepared(entry, case_config)
            crop = params = None
            for _ in range(draws):
                params = _whole_volume(scan, sample_params(
                    np.random.default_rng(sample_seed(seed, index)), scan, case_config))
                index += 1
                crop = synthesize(scan, params, backend)
                if (crop.label == TUMOR).any():
                    break
                crop = None
            if crop is not None:
                break
            if truth == "synthetic":
                raise VTTError(f"scan {entry.scan_id} ({entry.image}): no tumor voxel inside the "
                               f"liver volume after {draws} draws; expected at least one")
            log(f"note: real scan {entry.scan_id} has no tumor voxel at 1 mm; taking the next one")
        _write_bytes(os.path.join(cases_dir, f"{case_id}.nii.gz"),
                     _packet_nifti(crop.image, np.int16))
        _write_bytes(os.path.join(labels_dir, f"{case_id}.label.nii.gz"),
                     _packet_nifti(crop.label, np.uint8))
        key[case_id] = {"truth": truth, "source_scan": entry.scan_id, "seed": seed,
                        "index": index - 1, "params": params.to_json()}
        z = int(np.argmax((crop.label == TUMOR).sum(axis=(1, 2))))
        overview.append((case_id, truth, crop.image[z], crop.label[z]))

    with open(os.path.join(out_dir, "answer_sheet.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SHEET_COLUMNS)
        for case_id in sorted(key):
            writer.writerow([case_id, "", "", ""])
    with open(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write(README)
    with open(os.path.join(out_dir, "key", "packet.json"), "w") as f:
        json.dump({"seed": seed, "n_real": n_real, "n_synthetic": n_synthetic,
                   "real_manifest": real_manifest, "healthy_manifest": healthy_manifest,
                   "margin_mm": margin_mm, "reuse_healthy": reuse_healthy,
                   "sources": {**sources,
                               "real_cases": _count(v["source_scan"] for v in key.values()
                                                    if v["truth"] == "real"),
                               "synthetic_cases": _count(v["source_scan"] for v in key.values()
                                                         if v["truth"] == "synthetic")},
                   "generator_version": GENERATOR_VERSION, "config": config.to_json()},
                  f, indent=1, sort_keys=True)
    _overview_png(overview, os.path.join(out_dir, "key", "overview.png"))
    key_path = os.path.join(out_dir, "key", "answer_key.json")
    with open(key_path, "w") as f:
        json.dump(key, f, indent=1, sort_keys=True)
        f.write("\n")
    digest = sha256_file(key_path)
    with open(os.path.join(out_dir, "key_sha256.txt"), "w") as f:
        f.write(digest + "\n")
    return {"cases": len(key), "n_real": n_real, "n_synthetic": n_synthetic, "out": out_dir,
            "key": key_path, "key_sha256": digest, "case_ids": sorted(key),
            "sources_warning": sources["warning"]}


def _count(scan_ids) -> dict:
    """Cases per dataset (the scan id's source prefix, ``lits-3`` -> ``lits``)."""
    out: dict[str, int] = {}
    for scan_id in scan_ids:
        source = scan_id.split("-", 1)[0]
        out[source] = out.get(source, 0) + 1
    return dict(sorted(out.items()))


def comparable_pools(real_pool: list, healthy_pool: list, n_real: int, n_synthetic: int,
                     reuse_healthy: bool) -> tuple[list, list, dict]:
    """Real and healthy scans from the same datasets where the manifests allow it: a reader must
    not tell real from synthetic by the scanner, contrast phase or field of view of the dataset a
    case comes from. When the datasets both pools share hold enough scans, both pools are cut to
    them; otherwise they stay as they are and the returned record carries a warning."""
    real_sources = sorted({e.source for e in real_pool})
    healthy_sources = sorted({e.source for e in healthy_pool})
    shared = sorted(set(real_sources) & set(healthy_sources))
    record = {"real_datasets": real_sources, "healthy_datasets": healthy_sources,
              "shared_datasets": shared, "comparable": False, "warning": None}
    real_shared = [e for e in real_pool if e.source in shared]
    healthy_shared = [e for e in healthy_pool if e.source in shared]
    if shared and len(real_shared) >= n_real and (
            len(healthy_shared) >= n_synthetic or (reuse_healthy and healthy_shared)):
        record["comparable"] = True
        return real_shared, healthy_shared, record
    why = (f"the real cases can only come from {', '.join(real_sources) or 'nothing'} and the "
           f"synthetic ones from {', '.join(healthy_sources) or 'nothing'}"
           if not shared else
           f"the datasets both manifests hold ({', '.join(shared)}) have {len(real_shared)} "
           f"tumor and {len(healthy_shared)} healthy scan(s), fewer than the {n_real} real and "
           f"{n_synthetic} synthetic cases asked for")
    record["warning"] = (f"real and synthetic cases are not drawn from comparable sources: "
                         f"{why}; a reader may tell them apart by the dataset (scanner, contrast "
                         f"phase, field of view) rather than by the tumor")
    return real_pool, healthy_pool, record


# ---------------------------------------------------------------------------------------------
# Scoring


def _rate(k: int, n: int) -> dict:
    return {"k": k, "n": n, "value": k / n if n else None, "ci95": wilson(k, n)}


def load_key(path: str, expect_sha256: str | None = None) -> dict:
    """Read an answer key; with ``expect_sha256``, refuse a key whose sha256 differs."""
    if not os.path.isfile(path):
        raise VTTError(f"{path}: answer key not found")
    digest = sha256_file(path)
    if expect_sha256 is not None and digest != expect_sha256.strip().lower():
        raise VTTError(f"{path}: sha256 {digest} differs from the expected {expect_sha256.strip()}; "
                       f"the key was changed after the packet was made (or is another packet's)")
    try:
        with open(path) as f:
            key = json.load(f)
    except (OSError, ValueError) as exc:
        raise VTTError(f"{path}: not a readable JSON answer key ({exc})") from None
    if not isinstance(key, dict) or not key:
        raise VTTError(f"{path}: expected a non-empty object {{case_id: {{truth, ...}}}}")
    for case_id, rec in key.items():
        if not isinstance(rec, dict) or rec.get("truth") not in TRUTHS:
            found = rec.get("truth") if isinstance(rec, dict) else rec
            raise VTTError(f"{path}: case {case_id}: truth must be one of {TRUTHS}; found {found!r}")
    return key


def read_answers(path: str) -> list[dict]:
    """Rows of an answer sheet (CSV with at least ``case_id`` and ``answer`` columns)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VTTError(f"{path}: cannot read the answer sheet ({exc})") from None
    missing = [c for c in ("case_id", "answer") if c not in [n.strip() for n in columns]]
    if missing:
        raise VTTError(f"{path}: header {columns} lacks column(s) {missing}; expected "
                       f"{','.join(SHEET_COLUMNS)}")
    return [{(k or "").strip(): v for k, v in row.items()} for row in rows]


def score_answers(answers_rows: list[dict], key: dict, source: str = "answers") -> dict:
    """Score one reader as Table 2 of the paper.

    Synthetic is the positive class and real the negative class. Over definite answers only
    (unsure excluded, their count reported): accuracy = correct / definite, sensitivity =
    synthetic answered synthetic / synthetic answered definitely, specificity = real answered
    real / real answered definitely. ``*_unsure_wrong`` repeats the three with unsure answers
    counted as wrong (denominators: all cases of that truth). Each proportion has a Wilson 95 %
    interval; ``p_value_vs_chance`` is a two-sided exact binomial test of accuracy against 0.5.

    Refuses (naming the row of ``source``: data rows count from 1, the header is line 1) unknown
    case IDs, duplicate rows, answers other than real / synthetic / unsure (case and surrounding
    whitespace ignored), and key cases without an answer (all of them listed).
    """
    from scipy.stats import binomtest

    answers: dict[str, str] = {}
    for n, row in enumerate(answers_rows, start=1):
        where = f"{source} row {n} (line {n + 1})"
        case_id = (row.get("case_id") or "").strip()
        answer = (row.get("answer") or "").strip().lower()
        if not case_id:
            raise VTTError(f"{where}: empty case_id")
        if case_id not in key:
            raise VTTError(f"{where}: case {case_id!r} is not in the answer key")
        if case_id in answers:
            raise VTTError(f"{where}: case {case_id} is answered a second time")
        if not answer:
            continue          # reported below with every other unanswered case
        if answer not in ANSWERS:
            raise VTTError(f"{where}: case {case_id}: answer {row.get('answer')!r}; expected one "
                           f"of {', '.join(ANSWERS)}")
        answers[case_id] = answer
    unanswered = sorted(set(key) - set(answers))
    if unanswered:
        raise VTTError(f"{source}: {len(unanswered)} case(s) of the key have no answer: "
                       f"{', '.join(unanswered)}")

    table = {t: {a: 0 for a in ANSWERS} for t in TRUTHS}
    for case_id, answer in answers.items():
        table[key[case_id]["truth"]][answer] += 1
    rr, rs, ru = (table["real"][a] for a in ANSWERS)
    sr, ss, su = (table["synthetic"][a] for a in ANSWERS)
    correct, definite = rr + ss, rr + rs + sr + ss
    return {
        "confusion": table,           # truth -> answer -> count
        "cases": len(key), "definite": definite, "unsure": ru + su,
        "accuracy": _rate(correct, definite),
        "sensitivity": _rate(ss, sr + ss),
        "specificity": _rate(rr, rr + rs),
        "accuracy_unsure_wrong": _rate(correct, len(key)),
        "sensitivity_unsure_wrong": _rate(ss, sr + ss + su),
        "specificity_unsure_wrong": _rate(rr, rr + rs + ru),
        "p_value_vs_chance": binomtest(correct, definite, 0.5).pvalue if definite else None,
    }


def fleiss_kappa(sheets: list[dict[str, str]], categories=ANSWERS) -> dict:
    """Agreement of several readers on the same cases (Fleiss' kappa over the answers real,
    synthetic and unsure): 1 when every reader answers every case alike, 0 at the agreement the
    answers' overall frequencies give by chance, below 0 under it. ``sheets``: one
    {case_id: answer} per reader, over the same cases."""
    cases = sorted(sheets[0])
    raters = len(sheets)
    if raters < 2:
        raise VTTError("agreement needs at least two readers")
    counts = [[sum(sheet[c] == a for sheet in sheets) for a in categories] for c in cases]
    per_case = [(sum(n * n for n in row) - raters) / (raters * (raters - 1)) for row in counts]
    observed = sum(per_case) / len(cases)
    shares = [sum(row[j] for row in counts) / (len(cases) * raters)
              for j in range(len(categories))]
    chance = sum(p * p for p in shares)
    kappa = 1.0 if chance == 1.0 else (observed - chance) / (1.0 - chance)
    return {"readers": raters, "cases": len(cases), "observed_agreement": observed,
            "chance_agreement": chance, "fleiss_kappa": kappa}


def answers_of(rows: list[dict]) -> dict[str, str]:
    """{case_id: answer} of rows that :func:`score_answers` accepted."""
    return {(r.get("case_id") or "").strip(): (r.get("answer") or "").strip().lower()
            for r in rows}


def format_report(result: dict) -> str:
    """The confusion table laid out like Table 2, then the rates with their 95 % intervals."""
    t = result["confusion"]
    lines = ["                      answered",
             f"truth        {'real':>10} {'synthetic':>10} {'unsure':>10}"]
    for truth in TRUTHS:
        lines.append(f"{truth:<12} " + " ".join(f"{t[truth][a]:>10}" for a in ANSWERS))
    lines.append(f"positive class: synthetic; {result['unsure']} unsure of {result['cases']} "
                 f"cases excluded from the first three rates")

    def fmt(name, r):
        if r["value"] is None:
            return f"{name:<34} n/a (0 cases)"
        lo, hi = r["ci95"]
        return (f"{name:<34} {100 * r['value']:5.1f}%  ({r['k']}/{r['n']})  "
                f"95% CI {100 * lo:.1f}-{100 * hi:.1f}%")

    for name in ("accuracy", "sensitivity", "specificity"):
        lines.append(fmt(name, result[name]))
    for name in ("accuracy", "sensitivity", "specificity"):
        lines.append(fmt(f"{name} (unsure counted wrong)", result[f"{name}_unsure_wrong"]))
    p = result["p_value_vs_chance"]
    lines.append("accuracy vs chance (exact binomial, two-sided): "
                 + ("n/a" if p is None else f"p = {p:.4g}"))
    return "\n".join(lines)
