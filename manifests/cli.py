"""``tumorforge manifest ...`` and ``tumorforge phantoms``."""

from __future__ import annotations

import argparse
import os

from .errors import UserError


def format_table(headers: list[str], rows: list[tuple], max_width: int = 100) -> str:
    """A plain-text table; long cells are wrapped at ``max_width`` characters."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [min(max_width, max([len(h)] + [len(r[i]) for r in cells])) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), line]
    for row in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(out)


# ``--layout generic`` without ``--label-map``: a mask of the liver alone, as most tools write it.
GENERIC_LABEL_MAP = "liver=1"


def _cmd_build(args) -> int:
    from .build import build_manifest
    from .schema import LabelMap
    generic = {}
    if args.layout == "generic" and args.image_pattern and not args.label_pattern:
        return _build_images(args)
    if args.layout == "dicom":
        args.image_pattern = None
        args.source = args.source if args.source != "generic" else "dicom"
        return _build_images(args)
    if args.layout == "generic":
        if not (args.image_pattern and args.label_pattern):
            raise UserError("--layout generic needs --image-pattern, and --label-pattern "
                            "(or no label pattern for an image-only list)")
        if not args.label_map:
            args.label_map = GENERIC_LABEL_MAP
            print(f"label map: {GENERIC_LABEL_MAP} (the default: masks of the liver alone; "
                  f"--label-map 'liver=1,tumor=2' for masks with tumors)")
        generic = dict(image_pattern=args.image_pattern, label_pattern=args.label_pattern,
                       label_map=LabelMap.parse(args.label_map), source=args.source)
    try:
        result = build_manifest(args.layout, args.root, args.output, workers=args.workers,
                                allowed_roots=args.allow_root, progress=True, **generic)
    except (FileNotFoundError, ValueError) as exc:     # a missing root, an unknown layout
        raise UserError(str(exc)) from None
    healthy = sum(e.role == "healthy" for e in result.entries)
    return _report_build(result, f"{len(result.entries)} scan(s) ({healthy} healthy, "
                                 f"{len(result.entries) - healthy} with tumor)")


def _report_build(result, what: str) -> int:
    """What a build wrote and rejected; exit 1 when nothing was kept."""
    print(f"{result.manifest}: {what}")
    if result.outside and result.entries:
        print(f"note: the scans lie outside the manifest's folder, so it names them by absolute "
              f"path and later commands read them only with --allow-root {result.outside} (or "
              f"TUMORFORGE_ALLOWED_ROOTS); a manifest written inside {result.outside} names them "
              f"relative to itself and needs neither")
    if result.rejections:
        print(f"{result.rejected}: {len(result.rejections)} rejected")
        print(format_table(["scan", "file", "problem"],
                           [(r.scan_id, r.image, r.problem) for r in result.rejections]))
    return 0 if result.entries else 1


def _build_images(args) -> int:
    """``build --layout generic`` without labels: an image list for ``manifest label-organ``."""
    from .build import build_images
    try:
        result = build_images(args.root, args.output, args.image_pattern, args.source,
                              workers=args.workers, allowed_roots=args.allow_root, progress=True)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return _report_build(result, f"{len(result.entries)} image(s) without labels (an image "
                                 f"list: `tumorforge manifest label-organ {result.manifest} ...` "
                                 f"makes it a manifest)")


def _cmd_validate(args) -> int:
    from .build import validate_manifest
    entries, problems = validate_manifest(args.manifest, allowed_roots=args.allow_root,
                                          workers=args.workers, progress=True)
    if problems:
        print(format_table(["scan", "file", "problem"], problems))
        print(f"{args.manifest}: {len(problems)} problem(s) in {len(entries)} scan(s)")
        return 1
    print(f"{args.manifest}: {len(entries)} scan(s), all files present, hashed and consistent")
    return 0


def _cmd_split(args) -> int:
    from .schema import default_roots, read_manifest, write_jsonl
    from .split import assign_folds
    entries = read_manifest(args.manifest, default_roots(args.manifest, args.allow_root))
    try:
        assigned = assign_folds(entries, args.folds, args.seed)
    except ValueError as exc:                         # more folds than scans
        raise UserError(str(exc)) from None
    out = args.manifest if args.in_place else args.output
    write_jsonl(out, assigned)
    sizes = [sum(e.fold == k for e in assigned) for k in range(args.folds)]
    print(f"{out}: {len(assigned)} scan(s) in {args.folds} folds of sizes {sizes} (seed {args.seed})")
    return 0


def _cmd_merge(args) -> int:
    from .schema import ManifestError, default_roots, read_manifest, write_jsonl
    merged, seen = [], {}
    for path in args.manifests:
        for e in read_manifest(path, default_roots(path, args.allow_root)):
            if args.role and e.role != args.role:
                continue
            if e.scan_id in seen:
                raise ManifestError(f"scan_id {e.scan_id} is in both {seen[e.scan_id]} and {path}")
            seen[e.scan_id] = path
            merged.append(e)
    if not merged:
        raise UserError(f"no scans{' with role ' + args.role if args.role else ''} in "
                        f"{', '.join(args.manifests)}")
    write_jsonl(args.output, merged)
    print(f"{args.output}: {len(merged)} scan(s) from {len(args.manifests)} manifest(s)")
    return 0


def _cmd_phantoms(args) -> int:
    from .phantoms import LABEL_VALUES, LAYOUTS, save_preview, write_layout
    layouts = [s.strip() for s in args.layout.split(",") if s.strip()]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        raise UserError(f"unknown layout(s) {unknown}; expected some of {list(LAYOUTS)}")
    for layout in layouts:
        folder = os.path.join(args.out, layout)
        cases = write_layout(layout, folder, args.cases, seed=args.seed, scale=args.scale)
        tumors = sum(c["has_tumor"] for c in cases)
        print(f"{folder}: {len(cases)} {layout} case(s), {tumors} with tumors")
        if args.preview and cases:
            shown = next((c for c in cases if c["has_tumor"]), cases[0])
            png = os.path.join(args.out, "previews", f"{layout}-{shown['case']}.png")
            os.makedirs(os.path.dirname(png), exist_ok=True)
            save_preview(shown["image"], shown["label"], png, *LABEL_VALUES[layout])
            print(f"  preview: {png}")
    return 0


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``manifest ...`` and ``phantoms``; returns the ``manifest`` subcommands group, where
    later stages add theirs (``manifest label-organ`` runs a model: the evaluation stage's)."""
    from .flags import add_allow_root
    from .layouts import LAYOUTS

    workers = dict(type=int, default=None, help="parallel readers (default: min(4, CPUs))")

    m = sub.add_parser("manifest", help="build, validate and split scan manifests",
                       description="Scan manifests: JSON Lines, one scan per line.")
    msub = m.add_subparsers(dest="manifest_cmd", required=True,
                            metavar="{build,validate,split,merge,label-organ}")

    b = msub.add_parser("build", help="find image/label pairs of a dataset layout and record them",
                        description="Find every image/label pair of LAYOUT below ROOT (a folder or "
                                    "s3:// prefix), check and hash it, and write the manifest. "
                                    "Rejected scans go to <output>.rejected.jsonl with the reason.")
    b.add_argument("--layout", required=True, choices=LAYOUTS,
                   help="lits, msd (Task03_Liver), btcv, chaos: liver scans; msd-pancreas "
                        "(Task07_Pancreas): pancreas; kits (KiTS19/KiTS23, cysts counted as "
                        "kidney): kidney; generic: your own patterns; dicom: image-only series")
    b.add_argument("root", help="dataset root: local folder or s3://bucket/prefix")
    b.add_argument("--out", "-o", "--output", dest="output", required=True,
                   help="manifest to write (.jsonl)")
    b.add_argument("--image-pattern", help="generic layout: image path below ROOT with one {id}")
    b.add_argument("--label-pattern", help="generic layout: label path below ROOT with one {id} "
                                           "(none: an image-only list for label-organ)")
    b.add_argument("--label-map", help="generic layout: label values, e.g. 'liver=1,tumor=2' "
                                        "(default: liver=1)")
    b.add_argument("--source", default="generic", help="generic layout: dataset name for scan IDs")
    add_allow_root(b)
    b.add_argument("--workers", **workers)
    b.set_defaults(func=_cmd_build)

    v = msub.add_parser("validate", help="re-check every entry of a manifest against its files",
                        description="Re-open every scan of the manifest and print a table of "
                                    "problems; exits 1 if there are any.")
    v.add_argument("manifest")
    add_allow_root(v)
    v.add_argument("--workers", **workers)
    v.set_defaults(func=_cmd_validate)

    s = msub.add_parser("split", help="deterministic k-fold assignment (stratified by role)",
                        description="Assign each scan a fold 0..K-1; the same scans and seed give "
                                    "the same folds whatever the line order.")
    s.add_argument("manifest")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", "-o", "--output", dest="output", help="manifest to write")
    where.add_argument("--in-place", action="store_true", help="rewrite MANIFEST itself")
    add_allow_root(s)
    s.set_defaults(func=_cmd_split)

    g = msub.add_parser("merge", help="concatenate manifests, optionally keeping one role",
                        description="Join manifests into one (for example the paper's pool of "
                                    "healthy scans from several datasets); scan IDs must be unique.")
    g.add_argument("manifests", nargs="+")
    g.add_argument("--out", "-o", "--output", dest="output", required=True,
                   help="manifest to write")
    g.add_argument("--role", choices=("healthy", "tumor"), help="keep only scans of this role")
    add_allow_root(g)
    g.set_defaults(func=_cmd_merge)

    p = sub.add_parser("phantoms", help="write realistic abdominal CT phantoms in real dataset layouts",
                       description="Synthetic abdominal CT (phantoms, not patient data) written in "
                                   "the LiTS, MSD Task03_Liver, BTCV and CHAOS layouts (liver "
                                   "lesions), MSD Task07_Pancreas (msd-pancreas: pancreatic masses) "
                                   "and KiTS (kits: renal masses and cysts), for demos and tests. "
                                   "Deterministic by seed.")
    p.add_argument("--out", required=True, help="output folder; each layout goes to OUT/<layout>/")
    p.add_argument("--layout", default="lits,msd,btcv,chaos",
                   help="comma-separated layouts of lits, msd, btcv, chaos, msd-pancreas, kits "
                        "(default: the four liver layouts)")
    p.add_argument("--cases", type=int, default=4, help="cases per layout (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0,
                   help="in-plane matrix 512*scale; 0.2-0.3 makes small fast volumes (default 1)")
    p.add_argument("--preview", action="store_true", help="also write a PNG of one case per layout")
    p.set_defaults(func=_cmd_phantoms)
    return msub
