"""Building and validating scan manifests.

One inspection routine, :func:`inspect_pair`, opens an image/label pair, checks it and measures what
the manifest records. ``build`` runs it over a layout's candidates; ``validate`` runs it again over a
manifest's entries and compares. A bad scan never stops the others: it becomes a rejection (build) or
a problem row (validate) naming the file and the reason.
"""

from __future__ import annotations

import dataclasses

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import storage
from .progress import progress as bar
from .errors import one_line
from .layouts import Candidate, Discovery, discover
from .readers import ScanError, Volume, read_volume
from .schema import (ImageEntry, LabelMap, Rejection, ScanEntry, default_roots, parse_manifest,
                     rejected_path, write_jsonl)

AFFINE_ATOL_MM = 1e-3      # image and label grids must agree to a micrometre
AFFINE_RTOL = 1e-4         # relative slack for float32 headers with origins hundreds of mm out


def _check_image(uri: str, vol: Volume) -> None:
    data = vol.data
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ScanError(uri, f"image holds {bad} NaN/inf voxel(s); expected finite HU values")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise ScanError(uri, f"image is constant ({float(lo)} everywhere); expected a CT scan")


def _label_values(uri: str, vol: Volume) -> np.ndarray:
    data = vol.data
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise ScanError(uri, "label holds non-integer values; expected integer class labels")
        data = data.astype(np.int64)
    if data.min() < 0:
        raise ScanError(uri, f"label holds negative value {int(data.min())}")
    return data


def label_counts(values: np.ndarray) -> dict[int, int]:
    """Voxels per label value. bincount (fast) only while the largest value is small: its memory
    follows the largest value, so one voxel of 4e9 in a uint32 label would ask it for 30 GiB;
    above that, sorting (memory follows the volume)."""
    if values.size and int(values.max()) < 1 << 16:
        counts = np.bincount(values.ravel())
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    found, n = np.unique(values, return_counts=True)
    return {int(v): int(k) for v, k in zip(found, n)}


def check_pair(image_uri: str, label_uri: str, image: Volume, label: Volume) -> np.ndarray:
    """The content checks of a scan, made by ``build`` and again whenever a scan is prepared for
    synthesis (a hash proves the file is the one recorded, not that it is a CT scan): finite,
    non-constant image; label on the same grid, integer and non-negative. Returns the label values
    as integers. Raises ScanError naming the bad file."""
    _check_image(image_uri, image)
    if label.info.shape != image.info.shape:
        raise ScanError(label_uri, f"label shape {label.info.shape} does not match image shape "
                                   f"{image.info.shape} of {image_uri}")
    if not np.allclose(label.info.affine, image.info.affine, atol=AFFINE_ATOL_MM, rtol=AFFINE_RTOL):
        raise ScanError(label_uri, "label affine does not match the image affine of "
                                   f"{image_uri}: image {image.info.affine.tolist()}, label "
                                   f"{label.info.affine.tolist()}")
    return _label_values(label_uri, label)


def inspect_pair(c: Candidate) -> ScanEntry:
    """Open, check and measure one image/label pair. Raises ScanError naming the bad file."""
    image = read_volume(c.image)
    return entry_of(c, image, read_volume(c.label, like=image))


def entry_of(c: Candidate, image: Volume, label: Volume) -> ScanEntry:
    """The manifest entry of a pair already read: checked and measured (ScanError if bad)."""
    values = check_pair(c.image, c.label, image, label)
    counts = label_counts(values)
    present = tuple(sorted(counts))
    label_map = c.label_map
    if c.source == "chaos" and set(present) <= {0, 255}:
        label_map = LabelMap(organ=(255,))      # CHAOS PNG masks use 255 for liver
    elif c.allowed_values is not None and not set(present) <= set(c.allowed_values):
        unexpected = sorted(set(present) - set(c.allowed_values))
        raise ScanError(c.label, f"unexpected label value(s) {unexpected}; {c.source} defines "
                                 f"{list(c.allowed_values)}")

    def voxels(vals):
        return sum(counts.get(v, 0) for v in vals)

    organ_voxels = voxels(label_map.organ_values())
    if organ_voxels == 0:
        raise ScanError(c.label, f"label has no {c.organ} voxel ({c.organ} values "
                                 f"{list(label_map.organ)}, values present {list(present)})")
    tumor_voxels = voxels(label_map.tumor)
    voxel_ml = float(np.prod(image.info.spacing_mm)) / 1000.0
    return ScanEntry(
        scan_id=c.scan_id, image=c.image, label=c.label, label_map=label_map,
        role="tumor" if tumor_voxels else "healthy", source=c.source,
        sha256={"image": image.sha256, "label": label.sha256},
        shape=image.info.shape, spacing_mm=tuple(round(s, 6) for s in image.info.spacing_mm),
        orientation=image.info.orientation,
        organ_volume_ml=round(organ_voxels * voxel_ml, 3), organ=c.organ,
        tumor_volume_ml=round(tumor_voxels * voxel_ml, 3),
    )


def inspect_image(scan_id: str, uri: str, source: str) -> ImageEntry:
    """Open, check and measure one image without a label. Raises ScanError naming the file."""
    image = read_volume(uri)
    _check_image(uri, image)
    return ImageEntry(scan_id=scan_id, image=uri, source=source, sha256=image.sha256,
                      shape=image.info.shape,
                      spacing_mm=tuple(round(s, 6) for s in image.info.spacing_mm),
                      orientation=image.info.orientation)


def build_images(root: str, out: str, image_pattern: str | None, source: str = "generic", *,
                 workers: int | None = None, allowed_roots=(),
                 progress: bool = False) -> BuildResult:
    """An image list (no labels) of every file below ``root`` matching ``image_pattern`` (None:
    every DICOM series folder): the input of ``manifest label-liver``. Unreadable images go to
    ``<out>.rejected.jsonl``."""
    from .layouts import find_images, find_series
    files = storage.list_files(storage.normalize(root))
    found = find_series(storage.normalize(root), files, source) if image_pattern is None else \
        find_images(storage.normalize(root), files, image_pattern, source)
    roots = storage.AllowedRoots.of([root, *allowed_roots])
    rejections, todo = [], []
    for scan_id, uri in found:
        try:
            todo.append((scan_id, roots.check(uri, "image")))
        except storage.PathEscapeError as exc:
            rejections.append(Rejection(scan_id, uri, "", str(exc)))

    def one(item):
        try:
            return inspect_image(item[0], item[1], source)
        except ScanError as exc:
            return exc
        except Exception as exc:
            return ScanError(item[1], f"could not be inspected ({type(exc).__name__})")
    with ThreadPoolExecutor(max_workers=max(1, workers or default_workers())) as pool:
        results = list(bar(pool.map(one, todo), "build", "scan", len(todo), progress))
    entries = [r for r in results if isinstance(r, ImageEntry)]
    rejections += [Rejection(sid, uri, "", r.problem) for (sid, uri), r in zip(todo, results)
                   if isinstance(r, ScanError)]
    written = [relative_to_manifest(e, out) for e in entries]
    write_jsonl(out, written)
    write_jsonl(rejected_path(out), sorted(rejections, key=lambda r: (r.scan_id, r.image)))
    outside = storage.normalize(root) if any(w is e for w, e in zip(written, entries)) else None
    return BuildResult(out, rejected_path(out), entries, rejections, outside)


def relative_to_manifest(entry, manifest: str):
    """``entry`` (a :class:`ScanEntry` or an :class:`ImageEntry`) with its files relative to the
    manifest's folder when they all lie below it; the entry itself otherwise."""
    base = storage.parent(manifest)
    folder = storage.AllowedRoots.of([base])
    files = {k: getattr(entry, k) for k in ("image", "label") if hasattr(entry, k)}
    try:
        for what, uri in files.items():
            folder.check(uri, what)
    except storage.PathEscapeError:
        return entry
    return dataclasses.replace(entry, **{k: storage.relative_to(base, v) for k, v in files.items()})


def _inspect_all(candidates, workers: int, progress: bool = False, desc: str = "build"):
    def one(c):
        try:
            return inspect_pair(c)
        except ScanError as exc:
            return exc
        except Exception as exc:       # MemoryError included: one scan never stops the others
            return ScanError(c.image, f"could not be inspected ({type(exc).__name__}: "
                                      f"{one_line(exc)})")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(bar(pool.map(one, candidates), desc, "scan", len(candidates), progress))


@dataclass
class BuildResult:
    manifest: str
    rejected: str
    entries: list[ScanEntry]
    rejections: list[Rejection]
    outside: str | None = None       # the root of scans outside the manifest's folder, if any


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def build_manifest(layout: str, root: str, out: str, *, workers: int | None = None,
                   allowed_roots=(), progress: bool = False, **generic) -> BuildResult:
    """Find, check and record every scan of ``layout`` below ``root``.

    Good scans go to ``out`` (JSON Lines, sorted by scan_id); the others go to
    ``<out>.rejected.jsonl`` with the reason. A scan below the manifest's folder is written
    relative to it (the manifest then works from any working directory and moves with its data);
    others as absolute URIs, which later commands read only with their root allowed
    (:attr:`BuildResult.outside` says which root). Every path must lie inside ``root`` or
    ``allowed_roots`` (a symlink out of the dataset is rejected).
    """
    discovery: Discovery = discover(layout, root, **generic)
    roots = storage.AllowedRoots.of([root, *allowed_roots])
    rejections = [Rejection(sid, f, "", p) for sid, f, p in discovery.problems]
    candidates = []
    for c in discovery.candidates:
        try:
            roots.check(c.image, "image")
            roots.check(c.label, "label")
        except storage.PathEscapeError as exc:
            rejections.append(Rejection(c.scan_id, c.image, c.label, str(exc)))
            continue
        candidates.append(c)
    entries = []
    for c, result in zip(candidates, _inspect_all(candidates, workers or default_workers(),
                                                  progress, "build")):
        if isinstance(result, ScanEntry):
            entries.append(result)
        else:
            rejections.append(Rejection(c.scan_id, c.image, c.label, str(result)))
    written = [relative_to_manifest(e, out) for e in entries]
    write_jsonl(out, written)
    write_jsonl(rejected_path(out), sorted(rejections, key=lambda r: (r.scan_id, r.image)))
    outside = storage.normalize(root) if any(w is e for w, e in zip(written, entries)) else None
    return BuildResult(out, rejected_path(out), entries, rejections, outside)


def validate_manifest(uri: str, *, allowed_roots=(), workers: int | None = None,
                      progress: bool = False):
    """Re-check every entry against its files. Returns (entries checked, problem rows).

    A problem row is (scan_id, file, problem). Checks: the contract itself, duplicate IDs, paths
    inside the allowed roots, files present and readable, sha256, image/label grids, liver present,
    and that shape, spacing, orientation, role and volumes still match what the manifest recorded.
    """
    parsed = parse_manifest(uri, default_roots(uri, allowed_roots))
    problems = list(parsed.problems)
    if not parsed.entries and not problems:
        problems.append(("?", uri, "the manifest holds no scans; expected at least one"))
    candidates = [Candidate(e.scan_id, e.image, e.label, e.label_map, e.source, organ=e.organ)
                  for e in parsed.entries]
    checked = _inspect_all(candidates, workers or default_workers(), progress, "validate")
    for entry, result in zip(parsed.entries, checked):
        if isinstance(result, ScanError):
            problems.append((entry.scan_id, result.uri, result.problem))
            continue
        for kind in ("image", "label"):
            if result.sha256[kind] != entry.sha256[kind]:
                problems.append((entry.scan_id, getattr(entry, kind),
                                 f"sha256 mismatch: manifest has {entry.sha256[kind][:12]}..., "
                                 f"file has {result.sha256[kind][:12]}..."))
        for name in ("shape", "spacing_mm", "orientation", "role", "organ_volume_ml",
                     "tumor_volume_ml"):
            recorded, found = getattr(entry, name), getattr(result, name)
            if recorded != found:
                # Shape, spacing and orientation come from the image; role and volumes from the label.
                source = entry.image if name in ("shape", "spacing_mm", "orientation") else entry.label
                problems.append((entry.scan_id, source,
                                 f"{name}: manifest has {recorded}, file gives {found}"))
    return parsed.entries, problems
