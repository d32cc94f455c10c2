"""Finding image/label pairs in the real datasets' folder layouts.

Each finder walks a root (local folder or ``s3://`` prefix) and returns :class:`Candidate` pairs; it
opens no scan (``build`` does that). Pairs that cannot be formed (an image without its label) come back
as problems so the build can report them with the good scans.

Layouts, as the datasets ship them:
- ``lits``: ``volume-N.nii`` + ``segmentation-N.nii`` anywhere below the root (the two training
  batches sit in separate folders); labels 0 background, 1 liver, 2 tumor.
- ``msd``: Medical Segmentation Decathlon Task03_Liver: ``dataset.json`` lists ``imagesTr``/``labelsTr``
  pairs; label roles come from its ``labels`` names (liver, cancer/tumor/lesion, vessel).
- ``msd-pancreas``: MSD Task07_Pancreas, read the same way with the pancreas as the organ
  (0 background, 1 pancreas, 2 cancer). Each of the two reads only the ``dataset.json`` files that
  name its organ, so both work on a folder holding every MSD task.
- ``kits``: KiTS19 and KiTS23, ``case_NNNNN/imaging.nii.gz`` + ``case_NNNNN/segmentation.nii.gz``;
  1 kidney (both kidneys, one organ), 2 tumor, and in KiTS23 3 cyst. A cyst is not a tumor: it is
  counted as kidney (``label_map.organ`` [1, 3]), as KiTS23's own "kidney and masses" region
  counts it, so a scan whose only lesions are cysts is a healthy scan and its cysts are never
  tumor or background. The release is told by its files: ``kits23.json`` or ``instances/`` case
  folders mean KiTS23 (source ``kits23``), ``kits.json`` alone KiTS19 (source ``kits19``, values
  0-2 only); with neither (a copy of the case folders only) the source is ``kits`` and 3 is
  accepted as cyst.
- ``btcv``: ``img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz``; 13 organs, liver = 6.
- ``chaos``: CHAOS CT as it ships, one folder per case with ``DICOM_anon/*.dcm`` (the series)
  and ``Ground/*.png`` (liver masks, 0/255), or converted to NIfTI: ``<id>/image.nii.gz`` + a
  liver mask ``liver_mask``, ``liver``, ``mask`` or ``segmentation`` ``.nii(.gz)`` (0/1 or 0/255).
- ``dicom`` (image only): every folder holding ``.dcm`` files is one series (Pancreas-CT:
  ``<patient>/<study>/<series>/*.dcm``); ``build`` writes an image list for ``label-liver``.
- ``generic``: two patterns relative to the root with one ``{id}`` placeholder each, e.g.
  ``--image-pattern 'ct/{id}.nii.gz' --label-pattern 'seg/{id}_liver.nii.gz'`` and a label map.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import partial

from . import storage
from .organs import DEFAULT_ORGAN
from .schema import LabelMap

LAYOUTS = ("lits", "msd", "btcv", "chaos", "msd-pancreas", "kits", "generic", "dicom")
NIFTI = r"\.nii(?:\.gz)?"


@dataclass(frozen=True)
class Candidate:
    scan_id: str
    image: str
    label: str
    label_map: LabelMap
    source: str
    allowed_values: tuple[int, ...] | None = None   # label values the dataset defines, if known
    organ: str = DEFAULT_ORGAN                       # the organ ``label_map.organ`` labels


@dataclass
class Discovery:
    candidates: list[Candidate]
    problems: list[tuple[str, str, str]]   # (scan_id, file, problem)


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _dedupe(candidates: list[Candidate], problems: list) -> list[Candidate]:
    """Keep the first of each scan_id (in path order) and report the others as duplicates."""
    kept: dict[str, Candidate] = {}
    for c in sorted(candidates, key=lambda c: _natural_key(c.image)):
        if c.scan_id in kept:
            problems.append((c.scan_id, c.image, f"duplicate scan_id {c.scan_id}: already "
                             f"taken by {kept[c.scan_id].image}"))
        else:
            kept[c.scan_id] = c
    return sorted(kept.values(), key=lambda c: _natural_key(c.scan_id))


def _find_pairs(named, image_re, label_re, source, label_map, allowed, missing, key=str,
                organ: str = DEFAULT_ORGAN) -> Discovery:
    """Pair images and labels whose patterns capture the same case key.

    ``named`` holds (text to match, uri) pairs; a file matching the label pattern is a label even if
    the image pattern matches it too (``{id}.nii.gz`` vs ``{id}_seg.nii.gz``). ``missing`` is the
    problem text for an image without a label, formatted with ``{id}``.
    """
    images: dict = {}
    labels: dict = {}
    for text, uri in named:
        if m := label_re.search(text):
            labels.setdefault(key(m.group(1)), []).append(uri)
        elif m := image_re.search(text):
            images.setdefault(key(m.group(1)), []).append(uri)
    out, problems = [], []
    for k, uris in images.items():
        for uri in uris:
            if k not in labels:
                problems.append((f"{source}-{k}", uri, missing.format(id=k)))
                continue
            out.append(Candidate(f"{source}-{k}", uri, labels[k][0], label_map, source, allowed,
                                 organ))
    for k, uris in labels.items():
        if k not in images:
            problems.append((f"{source}-{k}", uris[0], "label without a matching image"))
    return Discovery(_dedupe(out, problems), problems)


def find_lits(root: str, files: list[str]) -> Discovery:
    return _find_pairs([(f, f) for f in files], re.compile(rf"(?:^|/)volume-(\d+){NIFTI}$"),
                       re.compile(rf"(?:^|/)segmentation-(\d+){NIFTI}$"), "lits",
                       LabelMap(organ=(1,), tumor=(2,)), (0, 1, 2),
                       f"no segmentation-{{id}}.nii(.gz) found below {root}", key=int)


def _msd_label_map(labels: dict, organ: str) -> tuple[LabelMap, tuple[int, ...]] | None:
    """The label map of an MSD ``labels`` table for ``organ``; None when no class names it (the
    ``dataset.json`` of another task)."""
    roles = {"organ": [], "tumor": [], "vessel": []}
    for value, name in labels.items():
        lowered = str(name).lower()
        if organ in lowered:
            roles["organ"].append(int(value))
        elif any(w in lowered for w in ("cancer", "tumor", "tumour", "lesion")):
            roles["tumor"].append(int(value))
        elif "vessel" in lowered:
            roles["vessel"].append(int(value))
    if not roles["organ"]:
        return None
    return LabelMap(**{k: tuple(v) for k, v in roles.items()}), tuple(int(v) for v in labels)


# The MSD task of each organ, as messages name it.
MSD_TASKS = {"liver": "Task03_Liver", "pancreas": "Task07_Pancreas"}


def find_msd(root: str, files: list[str], organ: str = DEFAULT_ORGAN) -> Discovery:
    """The training pairs of every ``dataset.json`` below ``root`` whose ``labels`` name
    ``organ``; the others (other MSD tasks) are passed over."""
    problems: list = []
    descriptors = [f for f in files if f.rsplit("/", 1)[-1] == "dataset.json"]
    if not descriptors:
        raise FileNotFoundError(f"{root}: no dataset.json found; an MSD task folder (for example "
                                f"{MSD_TASKS[organ]}) holds one beside imagesTr/ and labelsTr/")
    out = []
    for desc in descriptors:
        folder = storage.parent(desc)
        try:
            with storage.open_binary(desc) as f:
                meta = json.loads(f.read())
            found = _msd_label_map(meta["labels"], organ)
            training = meta["training"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(("?", desc, f"unreadable MSD dataset.json: {exc}"))
            continue
        if found is None:
            continue
        label_map, allowed = found
        task = folder.rstrip("/").rsplit("/", 1)[-1]
        for item in training:
            try:
                image = storage.join(folder, str(item["image"]).removeprefix("./"))
                label = storage.join(folder, str(item["label"]).removeprefix("./"))
            except (KeyError, TypeError):
                problems.append(("?", desc, f"training entry {item!r} lacks image/label"))
                continue
            stem = re.sub(NIFTI + "$", "", image.rsplit("/", 1)[-1])
            out.append(Candidate(f"msd-{task}-{stem}".replace("/", "_"), image, label, label_map,
                                 "msd", allowed, organ))
    return Discovery(_dedupe(out, problems), problems)


def find_btcv(root: str, files: list[str]) -> Discovery:
    return _find_pairs([(f, f) for f in files], re.compile(rf"(?:^|/)img/img(\d+){NIFTI}$"),
                       re.compile(rf"(?:^|/)label/label(\d+){NIFTI}$"), "btcv",
                       LabelMap(organ=(6,)), tuple(range(14)),
                       f"no label/label{{id}}.nii.gz found below {root}")


def kits_release(files: list[str]) -> str:
    """``kits23``, ``kits19`` or ``kits`` (not told): the KiTS release of these files."""
    names = {f.rsplit("/", 1)[-1] for f in files}
    if "kits23.json" in names or any(re.search(r"(?:^|/)case_\d+/instances/", f) for f in files):
        return "kits23"
    return "kits19" if "kits.json" in names else "kits"


def find_kits(root: str, files: list[str]) -> Discovery:
    """KiTS19/KiTS23 case folders; cysts (3) count as kidney, never as tumor (module docstring)."""
    source = kits_release(files)
    label_map, allowed = ((LabelMap(organ=(1,), tumor=(2,)), (0, 1, 2)) if source == "kits19"
                          else (LabelMap(organ=(1, 3), tumor=(2,)), (0, 1, 2, 3)))
    return _find_pairs([(f, f) for f in files],
                       re.compile(rf"(?:^|/)(case_\d+)/imaging{NIFTI}$"),
                       re.compile(rf"(?:^|/)(case_\d+)/segmentation{NIFTI}$"), source, label_map,
                       allowed, "no segmentation.nii.gz beside it (KiTS test cases have none)",
                       organ="kidney")


CHAOS_MASK_NAMES = ("liver_mask", "liver", "mask", "segmentation")


def find_chaos(root: str, files: list[str]) -> Discovery:
    """CHAOS CT as distributed (``<id>/DICOM_anon/*.dcm`` + ``<id>/Ground/*.png``) or converted to
    NIfTI (``<id>/image.nii.gz`` + a mask named ``liver_mask``, ``liver``, ``mask`` or
    ``segmentation``). The liver value (1, or 255 in masks straight from the PNGs) is read by
    the builder."""
    named = [(f, f) for f in files]
    masks = "|".join(CHAOS_MASK_NAMES)
    nifti = _find_pairs(named, re.compile(rf"(?:^|/)([^/]+)/image{NIFTI}$"),
                        re.compile(rf"(?:^|/)([^/]+)/(?:{masks}){NIFTI}$"), "chaos",
                        LabelMap(organ=(1,)), (0, 1),
                        "no liver mask (liver_mask, liver, mask or segmentation .nii(.gz)) beside it")
    # DICOM: one candidate per case folder holding DICOM_anon/ (the series) and Ground/ (PNGs).
    series = sorted({f.rsplit("/", 2)[0] for f in files
                     if re.search(r"/DICOM_anon/[^/]+\.dcm$", f, re.IGNORECASE)})
    grounds = {f.rsplit("/", 2)[0] for f in files if re.search(r"/Ground/[^/]+\.png$", f,
                                                                 re.IGNORECASE)}
    out, problems = list(nifti.candidates), list(nifti.problems)
    for case in series:
        scan_id = f"chaos-{case.rsplit('/', 1)[-1]}"
        if case not in grounds:
            problems.append((scan_id, f"{case}/DICOM_anon", "no Ground/ PNG masks beside it"))
            continue
        out.append(Candidate(scan_id, f"{case}/DICOM_anon", f"{case}/Ground",
                             LabelMap(organ=(1,)), "chaos", (0, 1)))
    return Discovery(_dedupe(out, problems), problems)


def _placeholder_regex(pattern: str) -> re.Pattern:
    if pattern.count("{id}") != 1:
        raise ValueError(f"pattern {pattern!r} must contain exactly one '{{id}}' placeholder")
    before, after = pattern.strip("/").split("{id}")
    return re.compile("^" + re.escape(before) + r"([^/]+?)" + re.escape(after) + "$")


def find_generic(root: str, files: list[str], image_pattern: str, label_pattern: str,
                 label_map: LabelMap, source: str = "generic") -> Discovery:
    """Pair files by the ``{id}`` part of two patterns matched against paths relative to ``root``."""
    return _find_pairs([(storage.relative_to(root, f), f) for f in files],
                       _placeholder_regex(image_pattern), _placeholder_regex(label_pattern),
                       source, label_map, None, f"no label matching {label_pattern!r}")


def find_series(root: str, files: list[str], source: str = "dicom") -> list[tuple[str, str]]:
    """(scan_id, folder) of every folder below ``root`` holding ``.dcm`` files; the scan id is
    the folder's path below the root with '/' turned into '-'."""
    folders = sorted({f.rsplit("/", 1)[0] for f in files if f.lower().endswith(".dcm")})
    out = []
    for folder in folders:
        rel = storage.relative_to(root, folder).strip("/") or "series"
        out.append((f"{source}-{re.sub(r'[^A-Za-z0-9._-]', '-', rel.replace('/', '-'))}",
                    folder))
    return out


def find_images(root: str, files: list[str], image_pattern: str, source: str = "generic"
                ) -> list[tuple[str, str]]:
    """(scan_id, uri) of every file matching ``image_pattern`` (one ``{id}``) below ``root``:
    image-only datasets, before their livers are labelled."""
    pattern = _placeholder_regex(image_pattern)
    found = []
    for f in files:
        m = pattern.search(storage.relative_to(root, f))
        if m:
            found.append((f"{source}-{m.group(1)}", f))
    return sorted(found)


# What each layout's finder looks for, as an empty build says it.
LOOKS_FOR = {
    "lits": "volume-N.nii[.gz] beside segmentation-N.nii[.gz]",
    "msd": "a Task03_Liver dataset.json (labels naming the liver) listing imagesTr/labelsTr pairs",
    "msd-pancreas": "a Task07_Pancreas dataset.json (labels naming the pancreas) listing "
                    "imagesTr/labelsTr pairs",
    "kits": "case_NNNNN/imaging.nii.gz beside case_NNNNN/segmentation.nii.gz",
    "btcv": "img/imgNNNN.nii.gz beside label/labelNNNN.nii.gz",
    "chaos": "<case>/DICOM_anon/*.dcm with <case>/Ground/*.png, or <case>/image.nii.gz with a "
             "liver mask",
    "dicom": "folders of .dcm files",
}
FINDERS = {"lits": find_lits, "msd": find_msd, "btcv": find_btcv, "chaos": find_chaos,
           "msd-pancreas": partial(find_msd, organ="pancreas"), "kits": find_kits}


def discover(layout: str, root: str, **generic) -> Discovery:
    """All candidate pairs of ``layout`` below ``root``. Nothing found is an error that says what
    the layout looks for and names a layout that finds scans there, if one does."""
    root = storage.normalize(root)
    files = storage.list_files(root)
    if layout == "generic":
        found = find_generic(root, files, **generic)
        wanted = f"{generic.get('image_pattern')} beside {generic.get('label_pattern')}"
    elif layout in FINDERS:
        try:
            found = FINDERS[layout](root, files)
        except FileNotFoundError as exc:            # msd without its dataset.json
            raise FileNotFoundError(f"{exc}; {suggest_layout(root, files, layout)}") from None
        wanted = LOOKS_FOR[layout]
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not found.candidates and not found.problems:
        raise ValueError(f"{root}: no scans of the {layout} layout ({len(files)} file(s) there; "
                         f"it looks for {wanted}); {suggest_layout(root, files, layout)}")
    return found


def suggest_layout(root: str, files: list[str], tried: str) -> str:
    """The layouts that find image/label pairs in ``files``, as advice for a failed build."""
    hits = []
    for name, finder in FINDERS.items():
        if name != tried:
            try:
                n = len(finder(root, files).candidates)
            except (ValueError, OSError):
                n = 0
            if n:
                hits.append(f"--layout {name} finds {n} scan(s) there")
    if hits:
        return "; ".join(hits)
    return ("no other layout finds image/label pairs there either: for your own folder use "
            "--layout generic with --image-pattern and --label-pattern (one {id} each)")
