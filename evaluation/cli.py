"""The evaluation stage's commands: ``evaluate``, ``compare``, ``robustness``, ``vtt make|score``
and ``stats``.

Parsers only here, and thin handlers that call the library (``evaluate.py``, ``robustness.py``,
``vtt.py``, ``fidelity/``) and turn its errors into one-line messages; torch and the heavy work are
imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tumorforge.generator.api import (BACKENDS, DEFAULT_BACKEND, DEFAULT_PROFILE,
                                      add_generator_options, generator_overrides, parse_mix)
from tumorforge.manifests.errors import UserError, one_line
from tumorforge.manifests.flags import add_allow_root
from tumorforge.trainer.config import DEVICES

from .metrics import MIN_LIVER_CONTACT


def register(sub: argparse._SubParsersAction) -> None:
    """Add every evaluation command to the ``tumorforge`` subcommands."""
    _register_evaluate(sub)
    _register_compare(sub)
    _register_robustness(sub)
    _register_vtt(sub)
    _register_stats(sub)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


# -- evaluate --------------------------------------------------------------------------------


def _register_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="score a checkpoint on annotated scans (DSC, NSD, detection)",
                       description="Whole-scan sliding-window inference run as the model was "
                                   "trained (RAS, the checkpoint's spacing, HU window and crop "
                                   "size; overlap 0.75, Gaussian), post-processing, predictions "
                                   "saved as NIfTI on each scan's grid, metrics in physical "
                                   "spacing, and a report.")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="step-*.pt, or a training output folder (its "
                                             "newest checkpoint)")
    source.add_argument("--predictions", metavar="DIR",
                        help="score label maps instead of a model: DIR/<scan id>.nii.gz (or the "
                             "image's file name, nnU-Net's output naming) per scan, on the scan's "
                             "grid, labels 0 background / 1 liver / 2 tumor")
    e.add_argument("--manifest", required=True, help="annotated scans (tumor and healthy)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--fold", type=int, help="only scans of this fold (default: all)")
    e.add_argument("--limit", type=int, help="only the first N scans (default: all)")
    e.add_argument("--overlap", type=float, default=0.75,
                   help="sliding-window overlap (default %(default)s)")
    e.add_argument("--sw-batch", type=int, default=2,
                   help="windows per forward pass (default %(default)s)")
    e.add_argument("--roi", type=int, help="sliding-window side in voxels (default: the "
                                           "checkpoint's training crop size)")
    e.add_argument("--tolerance", type=float, default=2.0,
                   help="NSD tolerance in mm (default %(default)s)")
    e.add_argument("--detection", choices=("dice", "any-voxel"), default="dice",
                   help="when a true lesion counts as detected: dice (one predicted component "
                        "matches it with Dice >= --detection-min-dice; the default) or any-voxel "
                        "(any predicted tumor voxel overlaps it)")
    e.add_argument("--detection-min-dice", type=float, default=0.2,
                   help="match Dice of the dice rule (default %(default)s)")
    e.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs (default %(default)s: cuda when available)")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bar over each scan's sliding windows")
    e.add_argument("--flips", action="store_true",
                   help="test-time augmentation: average the softmax over the 8 mirrorings of "
                        "the three axes (8x the inference time)")
    e.add_argument("--min-liver-contact", type=float, default=None, metavar="FRACTION",
                   help="post-processing: drop predicted tumor components whose outer border is "
                        "less than this fraction liver (extrahepatic false positives; default "
                        f"{MIN_LIVER_CONTACT:g}, 0 keeps them)")
    add_allow_root(e)
    e.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from .evaluate import evaluate
    if args.roi is not None and (args.roi < 16 or args.roi % 16):
        raise UserError(f"--roi {args.roi}: expected a multiple of 16 voxels")
    try:
        segmenter = None
        if args.predictions:
            from .evaluate import predictions_segmenter
            segmenter = predictions_segmenter(args.predictions)
        summary = evaluate(args.checkpoint, args.manifest, args.out, allow_roots=args.allow_root,
                           segmenter=segmenter,
                           fold=args.fold, limit=args.limit, overlap=args.overlap,
                           sw_batch=args.sw_batch, roi=args.roi, tolerance_mm=args.tolerance,
                           device=args.device, detection=args.detection,
                           min_dice=args.detection_min_dice, progress=not args.no_progress,
                           flips=args.flips, min_liver_contact=args.min_liver_contact)
    except (ValueError, OSError) as exc:
        raise UserError(one_line(exc)) from None
    agg = summary["aggregate"]
    ci = agg["tumor_dice"]["ci95"]
    det = agg["detection"]["all"]
    rule = f"dice >= {args.detection_min_dice:g}" if args.detection == "dice" else "any-voxel"
    print(f"tumor DSC {_fmt(agg['tumor_dice']['mean'])} (95% CI "
          f"{f'{_fmt(ci[0])}-{_fmt(ci[1])}' if ci else 'n/a'}), "
          f"NSD {_fmt(agg['tumor_nsd']['mean'])}, global DSC {_fmt(agg['global_tumor_dice'])}, "
          f"liver DSC {_fmt(agg['liver_dice']['mean'])}")
    print(f"lesion sensitivity {_fmt(det['sensitivity'])} ({det['detected']}/{det['lesions']}, "
          f"rule {rule}), {det['false_positive_lesions']} false-positive lesion(s), "
          f"specificity {_fmt(agg['specificity']['value'])}")
    print(f"report: {os.path.join(args.out, 'report.html')} (and report.md, summary.json, cases.csv)")
    return 0


# -- compare ---------------------------------------------------------------------------------


def _register_compare(sub) -> None:
    c = sub.add_parser("compare", help="paired comparison of two evaluations (e.g. synthetic vs real)",
                       description="Wilcoxon signed-rank on per-case tumor DSC and exact McNemar "
                                   "on lesion detection, over the cases both summaries share.")
    c.add_argument("a", help="summary.json of model A")
    c.add_argument("b", help="summary.json of model B")
    c.add_argument("--json", help="write the result here")
    c.set_defaults(func=_compare)


def _compare(args) -> int:
    from .evaluate import compare
    try:
        result = compare(args.a, args.b)
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(one_line(exc)) from None
    w, m = result["wilcoxon_tumor_dice"], result["mcnemar_lesions"]
    print(f"{result['shared_cases']} shared case(s), matched by {result['matched_by']}; mean "
          f"tumor DSC A {_fmt(result['tumor_dice_mean']['a'])} vs B "
          f"{_fmt(result['tumor_dice_mean']['b'])}")
    print(f"Wilcoxon signed-rank on tumor DSC: n={w['n']}, p={_fmt(w['p_value'])}")
    print(f"McNemar on lesions: detected only by A {m['a_only']}, only by B {m['b_only']}, "
          f"both {m['both']}, neither {m['neither']}, exact p={_fmt(m['p_value'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, allow_nan=False)
    return 0


# -- robustness ------------------------------------------------------------------------------


def _register_robustness(sub) -> None:
    from .robustness import DIMENSIONS
    p = sub.add_parser(
        "robustness", help="score a model on synthetic tumors shifted one dimension at a time",
        description="Controllable robustness benchmark (Section 5.5, Figure 6 of the paper): paint "
                    "one synthetic tumor per case into healthy scans of the manifest, moving one "
                    "dimension (shape, size, texture, intensity, location) to mu + k sigma of the "
                    "training distribution for k = -S..S while everything else stays as drawn; "
                    "score the checkpoint's tumor Dice and detection per level; write cases.csv, "
                    "cases.jsonl (every case's generator record), summary.json, heatmap.png and "
                    "report.md. The generator options describe the training distribution (profile "
                    "paper-train unless --profile names another paper-family profile); crop "
                    "size and spacing default to the checkpoint's preprocessing record.")
    p.add_argument("--checkpoint", required=True,
                   help="trainer checkpoint (step-*.pt) or run folder (its newest checkpoint)")
    p.add_argument("--manifest", required=True, help="manifest whose healthy scans receive tumors")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cases-per-level", type=int, default=4,
                   help="cases per (dimension, level) (default %(default)s); case j uses healthy "
                        "scan j mod n")
    p.add_argument("--seed", type=int, default=0, help="root seed of the base draws (default 0)")
    p.add_argument("--sigmas", type=int, default=3,
                   help="levels -S..S standard deviations (default %(default)s: seven levels)")
    p.add_argument("--dimensions", default=",".join(DIMENSIONS),
                   help=f"comma-separated subset of {','.join(DIMENSIONS)} (default all)")
    p.add_argument("--prior-samples", type=int, default=400,
                   help="draws for the Monte Carlo estimate of mu and sigma (default %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs (default %(default)s: cuda when available)")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="synthesis backend (default %(default)s)")
    add_allow_root(p)
    add_generator_options(p)
    p.set_defaults(func=_robustness)


def _robustness(args) -> int:
    from .robustness import benchmark, check_dimensions
    try:
        dimensions = check_dimensions([d.strip() for d in args.dimensions.split(",") if d.strip()])
    except ValueError as exc:
        raise UserError(f"--dimensions {one_line(exc)}") from None
    if args.cases_per_level < 1:
        raise UserError(f"--cases-per-level must be >= 1, got {args.cases_per_level}")
    if not 0 <= args.sigmas <= 10:
        raise UserError(f"--sigmas must be in 0..10, got {args.sigmas}")
    if args.prior_samples < 1:
        raise UserError(f"--prior-samples must be >= 1, got {args.prior_samples}")
    try:
        paths = benchmark(args.checkpoint, args.manifest, args.out, generator_overrides(args),
                          dimensions=dimensions, sigmas=args.sigmas,
                          cases_per_level=args.cases_per_level, seed=args.seed,
                          prior_samples=args.prior_samples, device=args.device,
                          backend=args.backend, allow_roots=args.allow_root)
    except (UserError, ValueError, OSError) as exc:
        raise UserError(one_line(exc)) from None
    print("\n".join(paths.values()))
    return 0


# -- vtt -------------------------------------------------------------------------------------


def _size_mix(text: str) -> str:
    """argparse check of --size-mix; the text itself is passed on to make_packet."""
    parse_mix(text)
    return text


def _register_vtt(sub) -> None:
    from .vtt import DEFAULT_MARGIN_MM
    p = sub.add_parser("vtt", help="Visual Turing Test: blinded real/synthetic packet and scoring",
                       description="Visual Turing Test (Section 5.1 of the paper): make a blinded "
                                   "packet of CT volumes with real or synthetic liver tumors, and "
                                   "score a reader's answers as Table 2.")
    vsub = p.add_subparsers(dest="vtt_command", required=True, metavar="SUBCOMMAND")

    m = vsub.add_parser("make", help="write a blinded packet and its answer key",
                        description="Mix N_REAL scans with real tumors (role 'tumor' of --real) and "
                                    "N_SYNTHETIC healthy scans (role 'healthy' of --healthy) with "
                                    "synthetic tumors, all resampled to 1 mm RAS around the liver, "
                                    "under random case IDs with stripped headers. Writes cases/, "
                                    "answer_sheet.csv, README.txt, key_sha256.txt and key/ (answers "
                                    "and labels; keep it from the readers). Prints the key's sha256.")
    m.add_argument("--real", required=True, metavar="MANIFEST", help="manifest with real tumors")
    m.add_argument("--healthy", required=True, metavar="MANIFEST", help="manifest of healthy scans")
    m.add_argument("--out", required=True, metavar="DIR", help="new or empty output folder")
    m.add_argument("--n-real", type=int, required=True, help="cases with real tumors")
    m.add_argument("--n-synthetic", type=int, required=True, help="cases with synthetic tumors")
    m.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    m.add_argument("--profile", choices=("paper", "paper-train", "released"),
                   default=DEFAULT_PROFILE,
                   help=f"synthesis recipe (default {DEFAULT_PROFILE}, every command's; paper: "
                        "Section 3.1 in full, what the paper's Visual Turing Test showed)")
    m.add_argument("--size-mix", type=_size_mix, default="mix", metavar="MIX",
                   help="size type, scenario or weights: 'mix' (default), 'large', 'satellite', "
                        "'medium=1,satellite=1'")
    m.add_argument("--margin", type=int, default=DEFAULT_MARGIN_MM, metavar="MM",
                   help=f"CT kept around the liver's box, mm (default {DEFAULT_MARGIN_MM})")
    m.add_argument("--reuse-healthy", action="store_true",
                   help="allow several synthetic cases per healthy scan (a reader may recognize "
                        "the repeated anatomy)")
    add_allow_root(m)
    m.set_defaults(func=_vtt_make)

    s = vsub.add_parser("score", help="score readers' answer sheets as Table 2, and their agreement",
                        description="Score ANSWERS.csv (case_id,answer,... with answers real, "
                                    "synthetic or unsure) against the key: confusion table, "
                                    "accuracy, sensitivity (synthetic = positive) and specificity "
                                    "over definite answers and with unsure counted wrong, Wilson "
                                    "95% intervals, exact binomial test against chance.")
    s.add_argument("answers", metavar="ANSWERS.csv", nargs="+",
                   help="one answer sheet per reader; with several, each is scored and their "
                        "agreement reported (Fleiss' kappa)")
    s.add_argument("--key", required=True, metavar="ANSWER_KEY.json")
    s.add_argument("--expect-sha256", metavar="HEX",
                   help="refuse unless the key has this sha256 (from key_sha256.txt)")
    s.add_argument("--json", metavar="OUT.json", help="also write the result as JSON")
    s.set_defaults(func=_vtt_score)


def _vtt_make(args) -> int:
    from .vtt import make_packet
    summary = make_packet(args.real, args.healthy, args.out, args.n_real, args.n_synthetic,
                          args.seed, profile=args.profile, size_mix=args.size_mix,
                          allow_roots=args.allow_root, margin_mm=args.margin,
                          reuse_healthy=args.reuse_healthy)
    print(f"packet: {summary['out']} ({summary['cases']} cases: {summary['n_real']} real, "
          f"{summary['n_synthetic']} synthetic)")
    print(f"give readers: {os.path.join(summary['out'], 'cases')}, answer_sheet.csv, README.txt, "
          f"key_sha256.txt (keep key/ away from them)")
    print(f"answer key: {summary['key']}")
    print(f"answer key sha256: {summary['key_sha256']}")
    return 0


def _vtt_score(args) -> int:
    from .vtt import (answers_of, fleiss_kappa, format_report, load_key, read_answers,
                      score_answers, sha256_file)
    key = load_key(args.key, args.expect_sha256)
    sheets = {path: read_answers(path) for path in args.answers}
    results = {path: score_answers(rows, key, source=path) for path, rows in sheets.items()}
    agreement = fleiss_kappa([answers_of(rows) for rows in sheets.values()]) \
        if len(sheets) > 1 else None
    if args.expect_sha256 is None:
        print(f"key {args.key}: sha256 {sha256_file(args.key)} (not checked; pass --expect-sha256)")
    else:
        print(f"key {args.key}: sha256 matches")
    for path, result in results.items():
        if len(results) > 1:
            print(f"\nreader {path}:")
        print(format_report(result))
    if agreement:
        print(f"\nagreement of {agreement['readers']} readers over {agreement['cases']} cases: "
              f"Fleiss' kappa {agreement['fleiss_kappa']:.3f} (observed "
              f"{agreement['observed_agreement']:.3f}, chance {agreement['chance_agreement']:.3f})")
    if args.json:
        single = args.answers[0] if len(args.answers) == 1 else None
        payload = ({"answers": single, **results[single]} if single else
                   {"answers": args.answers, "readers": results, "agreement": agreement})
        with open(args.json, "w") as f:
            json.dump({**payload, "key": args.key, "key_sha256": sha256_file(args.key)}, f,
                      indent=1)
        print(f"wrote {args.json}")
    return 0


# -- stats -----------------------------------------------------------------------------------


def _register_stats(sub) -> None:
    from .fidelity import DEFAULT_POST_EFFECTS
    p = sub.add_parser(
        "stats", help="generator fidelity report: synthetic lesions measured against real ones",
        description="Measure every lesion (26-connected tumor component) of generated datasets "
                    "and synthesize output folders, and of the real lesions of annotated scans "
                    "(--real): equivalent radius, HU contrast against a 3-voxel liver ring, HU "
                    "drop against the tumor-free scan, depth below the liver surface (and the "
                    "median liver depth as reference), texture sd over parenchyma sd; from the "
                    "tumor records the share inside the liver, vessel overlap and location "
                    "fallbacks; for the paper profile's mass effect and capsule, paired "
                    "synthesis with the step on and off. Prints one row per input and size type; "
                    "--out writes stats.json, lesions.csv (one row per lesion) and histograms.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="generated dataset (folder or s3:// URL) or tumorforge synthesize output")
    p.add_argument("--real", action="append", default=[], metavar="MANIFEST",
                   help="manifest of annotated scans whose role-tumor scans give real lesions "
                        "(repeatable)")
    p.add_argument("--reference", action="append", default=[], metavar="[NAME=]TABLE",
                   help="lesion table (CSV: group, sample, radius_mm, hu_drop_hu, ...; the "
                        "lesions.csv that --out writes has that form) of a reference generator: "
                        "each synthetic size type is tested against the table's lesions of that "
                        "type (repeatable)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="read at most N samples (cases, real scans) of each input, evenly spaced "
                        "(default: all)")
    p.add_argument("--manifest", help="manifest of the datasets' scans (default: the one each "
                                      "dataset's index names)")
    p.add_argument("--post-effects", type=int, default=DEFAULT_POST_EFFECTS, metavar="N",
                   help="tumors with mass effect or capsule measured by paired synthesis, per "
                        "input (default %(default)s; 0: none)")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="synthesis backend of the paired synthesis (default %(default)s)")
    p.add_argument("--out", metavar="DIR", help="write stats.json and PNG histograms here")
    add_allow_root(p)
    p.set_defaults(func=_stats)


def _stats(args) -> int:
    import shlex
    from .fidelity import format_table, run
    command = ["tumorforge", "stats", *args.inputs]
    for flag, value in (("--samples", args.samples), ("--manifest", args.manifest),
                        ("--post-effects", args.post_effects), ("--backend", args.backend),
                        ("--out", args.out)):
        if value is not None:
            command += [flag, str(value)]
    for flag, values in (("--real", args.real), ("--reference", args.reference),
                         ("--allow-root", args.allow_root)):
        for value in values:
            command += [flag, value]
    result = run(args.inputs, args.real, samples=args.samples, manifest=args.manifest,
                 allow_roots=args.allow_root, backend=args.backend,
                 post_effects_max=args.post_effects, out_dir=args.out,
                 command=shlex.join(command), reference=args.reference,
                 log=lambda msg: print(msg, file=sys.stderr))
    print(format_table(result["groups"], result["post_effects"], result["versus_real"],
                       result["versus_reference"]))
    if args.out:
        print(f"wrote {os.path.join(args.out, 'stats.json')}, "
              f"{os.path.join(args.out, 'lesions.csv')} and "
              f"{', '.join(result['figures']) or 'no figures'}")
    return 0


def register_manifest(msub: argparse._SubParsersAction) -> None:
    """``manifest label-organ`` (alias ``label-liver``, its first name): added to the manifest
    commands by the front door (it runs a model, which the manifests stage cannot import). It
    labels the liver only; other organs need their own volume bounds and mask names."""
    from .label_liver import (MAX_LIVER_ML, MIN_CONFIDENCE, MIN_LARGEST_FRACTION, MIN_LIVER_ML)
    ll = msub.add_parser(
        "label-organ", aliases=["label-liver"],
        help="liver masks for scans without labels, then a manifest of them",
        description="Label the organ (today the liver; `label-liver` is the same command) of "
                    "scans without labels. For each scan of IMAGES (an image list from "
                    "`manifest build --layout generic` without --label-pattern, or a manifest, "
                    "its labels ignored) find the liver "
                    "with a tumorforge-trained model (--checkpoint; whole-scan inference as "
                    "evaluate runs it, largest component) or take it from a folder of masks "
                    "(--masks: DIR/<case>/liver.nii.gz as TotalSegmentator writes, or "
                    "DIR/<case>.nii.gz), reject masks that fail the quality checks with the "
                    "reason, write the kept masks beside OUT and OUT as a manifest of healthy "
                    "scans.")
    ll.add_argument("images", help="image list or manifest (.jsonl)")
    ll.add_argument("--out", "-o", "--output", dest="output", required=True,
                    help="manifest to write (.jsonl); masks go to its folder's liver-masks/")
    ll.add_argument("--checkpoint", help="tumorforge checkpoint (step-*.pt or a training folder)")
    ll.add_argument("--masks", help="folder of liver masks made by another tool")
    ll.add_argument("--device", choices=DEVICES, default="auto")
    ll.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    ll.add_argument("--min-ml", type=float, default=MIN_LIVER_ML,
                    help="smallest plausible liver, mL (default %(default)s)")
    ll.add_argument("--max-ml", type=float, default=MAX_LIVER_ML,
                    help="largest plausible liver, mL (default %(default)s)")
    ll.add_argument("--min-largest-fraction", type=float, default=MIN_LARGEST_FRACTION,
                    help="share of the model's liver voxels in its largest component "
                         "(default %(default)s)")
    ll.add_argument("--min-confidence", type=float, default=MIN_CONFIDENCE,
                    help="mean liver probability over the mask (default %(default)s)")
    ll.add_argument("--truth", help="a manifest of the same scans with real liver labels: also "
                                    "print each mask's liver Dice against it (checking the "
                                    "method, e.g. on phantoms)")
    add_allow_root(ll)
    ll.set_defaults(func=_label_liver)


def _label_liver(args) -> int:
    from .label_liver import label_liver
    try:
        result = label_liver(args.images, args.output, checkpoint=args.checkpoint,
                             masks=args.masks, allow_roots=args.allow_root, device=args.device,
                             overlap=args.overlap, min_ml=args.min_ml, max_ml=args.max_ml,
                             min_largest_fraction=args.min_largest_fraction,
                             min_confidence=args.min_confidence, truth=args.truth)
    except (UserError, ValueError, OSError) as exc:
        raise UserError(one_line(exc)) from None
    print(f"{result.manifest}: {len(result.entries)} scan(s) with liver masks")
    scored = {k: v["liver_dice_vs_truth"] for k, v in result.checks.items()
              if "liver_dice_vs_truth" in v}
    if scored:
        values = list(scored.values())
        print(f"liver Dice against --truth: mean {sum(values) / len(values):.3f} "
              f"({min(values):.3f}-{max(values):.3f}) over {len(values)} scan(s): " +
              ", ".join(f"{k} {v:.3f}" for k, v in sorted(scored.items())))
    if result.rejections:
        print(f"{result.rejected}: {len(result.rejections)} rejected")
        for r in result.rejections:
            print(f"  {r.scan_id}: {r.problem}")
    return 0 if result.entries else 1
