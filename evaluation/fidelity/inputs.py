"""Reading the fidelity report's inputs: generated datasets (crops with provenance),
``tumorforge synthesize`` output folders (whole scans as NIfTI) and manifests of annotated scans
(real lesions), each turned into the lesions, tumor records and post-processing it contributes.

From the tumor records (all tumors of the samples read, also those outside the crop: they describe
the generator's draws) come the share of the drawn shape inside the liver and the vessel voxels
inside it (``inside_fraction``, ``vessel_voxels``: always measured on the drawn shape placed on the
prepared scan; a ``paper`` record's own values count the location region its rules tested),
location fallbacks by reason, and satellites dropped (``SampleParams.notes``). Every sample is
checked against its stored hashes (a corrupt one is listed, not measured) and its scan against the
manifest's sha256 before it is measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from tumorforge.generator.api import (PAPER_PROFILES, GeneratorConfig, SampleParams,
                                      SynthesizeError, drawn_shape_counts, output_grid, read_run,
                                      read_scan, spacing_of, synthesize)
from tumorforge.manifests import storage
from tumorforge.manifests.conventions import ORGAN, to_ras, zyx_to_ras
from tumorforge.manifests.dataset.reader import Dataset
from tumorforge.manifests.errors import UserError, one_line
from tumorforge.manifests.readers import read_volume
from tumorforge.manifests.progress import progress
from tumorforge.manifests.schema import default_roots, read_manifest

from .lesions import (TumorRecord, component_measures, group_of, lesion_of, match_records,
                      measure_scan, organ_depth, real_group)
from .post_effects import PostEffect, post_effects
from .prepared import Prepared, ScanCache


class FidelityError(UserError, ValueError):
    """Bad input to the fidelity report; the message names the input."""


@dataclass
class Measured:
    """What one input contributed."""

    name: str
    kind: str                     # dataset / synthesize / real
    path: str
    info: dict = field(default_factory=dict)
    lesions: list = field(default_factory=list)
    tumors: list = field(default_factory=list)
    post: list = field(default_factory=list)
    satellites_dropped: int = 0
    satellites_placed: int = 0



def chosen(total: int, n: int | None) -> list[int]:
    """Which of ``total`` items to read when at most ``n`` are asked for: evenly spaced, always
    the same (all of them when ``n`` is None or not smaller than ``total``)."""
    if n is None or n >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, n)})


def _entries(manifest: str, allow_roots) -> dict:
    return {e.scan_id: e for e in read_manifest(manifest, default_roots(manifest, allow_roots))}


def drawn_inside(prepared: Prepared, tumor) -> tuple[float, int]:
    """(share of the tumor's drawn shape inside the liver, vessel voxels inside it): the drawn
    shape (deformed ellipsoid before the mask blur) placed on the prepared scan. Measured, not read
    from the record: a ``paper`` record's ``inside_fraction`` and ``vessel_voxels`` count the
    location region its rules tested (the undeformed ellipsoid in 16 boxes), and the report shows
    what the rules achieved on the tumor itself."""
    return drawn_shape_counts(prepared.scan, tumor)


def record_tumors(measured: Measured, prepared: Prepared, params, sample: str, visible: set) -> None:
    """Tumor records of one sample (or case), and its satellite notes, into ``measured``."""
    spacing = np.asarray(prepared.scan.spacing_mm, float)
    large = params.tumors[0] if params.kind == "satellite" and params.tumors else None
    for n, t in enumerate(params.tumors):
        inside, vessels = drawn_inside(prepared, t)
        shell = None
        if t.kind == "satellite" and large is not None:
            offset = (np.asarray(t.center) - np.asarray(large.center)) * spacing
            shell = float(np.linalg.norm(offset) / large.radius_mm)
        measured.tumors.append(TumorRecord(
            source=measured.name, group=group_of(params.kind, t.kind), scan_id=params.scan_id,
            sample=sample, kind=t.kind, radius_mm=float(t.radius_mm), inside_fraction=inside,
            vessel_voxels=vessels,
            location_fallback=bool(getattr(t, "location_fallback", False)),
            location_reason=str(getattr(t, "location_reason", "") or ""), visible=n in visible,
            shell_r=shell))
        measured.satellites_placed += t.kind == "satellite"
    measured.satellites_dropped += sum(1 for note in getattr(params, "notes", ())
                                       if note.startswith("satellite dropped"))


def _post(measured: Measured, prepared: Prepared, params, sample: str, backend, budget: int) -> None:
    """Post-processing of a ``paper`` sample's tumors by paired synthesis, while ``measured`` holds
    fewer than ``budget``."""
    if params.profile not in PAPER_PROFILES:
        return
    for t in params.tumors:
        if len(measured.post) >= budget:
            return
        if getattr(t, "mass_effect", False) or getattr(t, "capsule", False):
            mass, cap = post_effects(prepared.scan, params, t, backend)
            measured.post.append(PostEffect(measured.name, group_of(params.kind, t.kind),
                                            params.scan_id, sample, float(t.radius_mm), mass, cap))


def measure_crop(measured: Measured, prepared: Prepared, params, image_zyx, label_zyx, sample: str,
                 backend, bins) -> None:
    """One dataset sample: its lesions on the stored crop, its tumor records."""
    real = params.profile == "real"
    image, label = zyx_to_ras(image_zyx), zyx_to_ras(label_zyx)
    base = None
    if not real:
        base = zyx_to_ras(synthesize(prepared.scan, dataclasses.replace(params, tumors=()),
                                     backend).image)
    spacing = prepared.scan.spacing_mm
    sd = prepared.parenchyma_sd_hu if real else float(params.parenchyma_sd_hu)
    labels, comps = component_measures(image, label, spacing, base=base, parenchyma_sd_hu=sd)
    origin = np.asarray(params.crop_origin)
    centers = [np.asarray(t.center) - origin for t in params.tumors]
    held = match_records(labels, len(comps), centers) if not real else [[] for _ in comps]
    visible = set()
    for comp, recs in zip(comps, held):
        if real:
            full = np.asarray(comp["center"]) + origin
            group, depth_center = real_group(comp["radius_mm"], bins), full
        else:
            visible.update(recs)
            main = max(recs, key=lambda r: params.tumors[r].radius_mm)
            t = params.tumors[main]
            group, depth_center, full = group_of(params.kind, t.kind), t.center, t.center
        measured.lesions.append(lesion_of(
            measured.name, "real" if real else "synthetic", group, params.scan_id, sample, comp,
            depth=prepared.depth_at(depth_center), reference=prepared.median_depth_mm, center=full,
            cut=comp["touches_edge"], records=len(recs)))
    record_tumors(measured, prepared, params, sample, visible)


def measure_dataset(url: str, name: str, samples: int | None, manifest: str | None, allow_roots,
                    backend, cache: ScanCache, post_budget: int, bins, log=print) -> Measured:
    """Lesions, tumor records and post-processing of (up to ``samples``) samples of a dataset."""
    ds = Dataset(url)
    picks = chosen(len(ds), samples)
    manifest = manifest or ds.index.manifest
    measured = Measured(name, "dataset", url, {
        "dataset_id": ds.dataset_id, "samples": len(ds), "samples_read": len(picks),
        "manifest": manifest, "profile": ds.index.spec["generator"].get("profile"),
        "generator_config": ds.index.spec["generator"], "corrupt_samples": []})
    # Provenance first, then the samples scan by scan, so each scan is prepared once.
    order = sorted(picks, key=lambda i: (ds.sample(i)[2].scan_id, i))
    entries = None
    for i in progress(order, f"stats {name}", "sample"):
        image, label, prov = ds.sample(i)
        want = ds.hashes(prov.key)
        if want is None or not want.matches(image, label):
            measured.info["corrupt_samples"].append(prov.key)
            continue
        if entries is None:
            entries = _entries(manifest, [*ds.index.allow_roots, *allow_roots])
        entry = entries.get(prov.scan_id)
        if entry is None:
            raise FidelityError(f"scan {prov.scan_id} of sample {i} is not in {manifest} (pass the "
                                f"manifest the dataset was made from with --manifest)")
        if entry.sha256 != prov.scan_sha256:
            raise FidelityError(f"scan {prov.scan_id} in {manifest} has other sha256 than the one "
                                f"sample {i} was made from (the scan changed since)")
        prepared = cache.get(entry, GeneratorConfig.from_json(prov.generator_config))
        params = SampleParams.from_json(prov.params)
        measure_crop(measured, prepared, params, image, label, str(i), backend, bins)
        _post(measured, prepared, params, str(i), backend, post_budget)
    return measured


def measure_real(manifest: str, name: str, samples: int | None, allow_roots, config,
                 cache: ScanCache, bins) -> Measured:
    """Real lesions of the ``tumor`` scans of a manifest, prepared as the generator prepares
    scans (RAS, ``config``'s spacing), measured as synthetic lesions are (no HU drop)."""
    entries = sorted((e for e in _entries(manifest, allow_roots).values() if e.role == "tumor"),
                     key=lambda e: e.scan_id)
    if not entries:
        raise FidelityError(f"{manifest} holds no scan with role 'tumor' (real lesions)")
    picks = chosen(len(entries), samples)
    measured = Measured(name, "real", manifest, {"scans": len(entries), "scans_read": len(picks),
                                                 "spacing_mm": list(config.target_spacing_mm)})
    for i in progress(picks, f"stats {name}", "scan"):
        e = entries[i]
        prepared = cache.get(e, config)
        scan = prepared.scan
        for comp in measure_scan(scan.image, scan.label(), scan.spacing_mm, depth=prepared.depth,
                                 parenchyma_sd_hu=prepared.parenchyma_sd_hu):
            measured.lesions.append(lesion_of(
                name, "real", real_group(comp["radius_mm"], bins), e.scan_id, e.scan_id, comp,
                depth=comp["depth_mm"], reference=prepared.median_depth_mm,
                center=np.asarray(comp["center"]) + np.asarray(scan.origin_vox)))
    return measured


def measure_synthesize(path: str, name: str, samples: int | None, allow_roots, backend,
                       cache: ScanCache, post_budget: int, bins) -> Measured:
    """Lesions, tumor records and post-processing of (up to ``samples``) cases of a ``tumorforge
    synthesize`` output, measured on the whole scans as written (prepared or native grid)."""
    try:
        run = read_run(path)
    except SynthesizeError as exc:
        raise FidelityError(f"not a tumorforge dataset (no index.json) nor a synthesize output "
                            f"({one_line(exc).removeprefix(path + ': ')})") from None
    config = run.config()
    picks = chosen(len(run.cases), samples)
    measured = Measured(name, "synthesize", path, {
        "cases": len(run.cases), "cases_read": len(picks), "manifest": run.manifest,
        "grid": run.grid, "profile": config.profile, "generator_config": run.generator_config,
        "corrupt_samples": []})
    entries = _entries(run.manifest, [*run.allow_roots, *allow_roots])
    grids: dict = {}
    for i in progress(sorted(picks, key=lambda n: (run.cases[n].scan_id, n)), f"stats {name}",
                      "case"):
        case = run.cases[i]
        entry = entries.get(case.scan_id)
        if entry is None:
            raise FidelityError(f"scan {case.scan_id} of case {case.case} is not in {run.manifest}")
        if entry.sha256 != case.scan_sha256:
            raise FidelityError(f"scan {case.scan_id} in {run.manifest} has other sha256 than the "
                                f"one case {case.case} was made from (the scan changed since)")
        image_vol = read_volume(storage.join(path, case.image))
        label_vol = read_volume(storage.join(path, case.label))
        if {"image": image_vol.sha256, "label": label_vol.sha256} != case.sha256:
            measured.info["corrupt_samples"].append(case.case)
            continue
        prepared = cache.get(entry, config)
        params = case.sample_params()
        image, affine = to_ras(np.asarray(image_vol.data, np.float32), image_vol.info.affine)
        label, _ = to_ras(np.asarray(label_vol.data).astype(np.uint8), label_vol.info.affine)
        base = grids.get(case.scan_id)
        if base is None:               # cases come sorted by scan: keep one scan's grid
            grids = {case.scan_id: output_grid(run.grid, *read_scan(entry), entry,
                                               prepared.scan).image.astype(np.float32)}
            base = grids[case.scan_id]
        measure_whole(measured, prepared, params, image, label, affine, base, case.case)
        _post(measured, prepared, params, case.case, backend, post_budget)
    return measured


def measure_whole(measured: Measured, prepared: Prepared, params, image, label, affine, base,
                  sample: str) -> None:
    """One whole synthetic scan (RAS arrays, ``affine`` voxel -> world): its lesions, each typed
    by the record it holds, and its tumor records."""
    spacing = spacing_of(affine)
    labels, comps = component_measures(image, label, spacing, base=base,
                                       parenchyma_sd_hu=float(params.parenchyma_sd_hu))
    organ = label >= ORGAN
    depth = organ_depth(organ, spacing)
    reference = float(np.median(depth[organ])) if organ.any() else None
    # Record centers are voxels of the prepared grid: through world mm onto this array's grid.
    scan = prepared.scan
    to_here = np.linalg.inv(affine) @ scan.affine
    centers = [np.rint(to_here[:3, :3] @ (np.asarray(t.center) - np.asarray(scan.origin_vox))
                       + to_here[:3, 3]).astype(int) for t in params.tumors]
    visible = set()
    for comp, recs in zip(comps, match_records(labels, len(comps), centers)):
        visible.update(recs)
        t = params.tumors[max(recs, key=lambda r: params.tumors[r].radius_mm)]
        d = float(depth[comp["center"]])
        measured.lesions.append(lesion_of(
            measured.name, "synthetic", group_of(params.kind, t.kind), params.scan_id, sample, comp,
            depth=d, reference=reference, cut=comp["touches_edge"], records=len(recs)))
    record_tumors(measured, prepared, params, sample, visible)
