"""Whole scans with synthetic tumors as NIfTI (``tumorforge synthesize``), for users who train
outside tumorforge's shards (nnU-Net, their own loaders) and for the fidelity report.

A case is one healthy scan and one sample index: its parameters are drawn as for a crop
(``sample_params`` with ``SeedSequence(root_seed, spawn_key=(index,))``), then the crop is widened
to the whole prepared region (the liver's box plus half a crop, where every tumor lies), so one
synthesis call paints every tumor of the record. Two grids:

- ``prepared``: the whole scan resampled to the target spacing on RAS axes (the grid the generator
  works on; tumor centers in the record are its voxels). Outside the prepared region the image is
  the resampled scan.
- ``native``: the scan's own grid and voxel order. What synthesis changed is carried back, not the
  resampled scan: the HU difference (synthetic minus tumor-free, linear interpolation) is added to
  the original voxels, and the label takes the synthetic label (nearest neighbour) where synthesis
  changed it. Every voxel synthesis did not touch keeps its original value.

Labels follow the crops' convention (0 background, 1 liver, 2 tumor): the manifest's liver and
vessel values become 1, its tumor values 2. Images are int16 HU.

Real cases (``--real MANIFEST``): every scan of an annotated manifest, either role, written as it is
on the same grid (no tumor painted; its own label converted to 0/1/2) and named ``<scan>_real``, so
real and synthetic cases train together (the paper's "real + synthetic" arm). They are listed in
the run record's ``real_cases`` (a :class:`RealCaseRecord` each), not in ``params/``.

Output folder (``--format nifti``): ``images/<case>.nii.gz``, ``labels/<case>.nii.gz``,
``params/<case>.json`` (a :class:`CaseRecord`) and ``synthesize.json`` (a :class:`SynthesizeRun`),
written last: a folder without it is an unfinished run. ``--format nnunet`` writes an nnU-Net v2 raw
dataset ``Dataset<NNN>_<Name>/`` with ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``,
``dataset.json`` (background / liver / tumor) and ``splits_final.json`` (folds by source scan),
plus the same ``params/`` and ``synthesize.json`` (nnU-Net reads only its own files). Files are
gzip with a zero timestamp, so a rerun of the same command writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from tumorforge.manifests import storage
from tumorforge.manifests.conventions import BACKGROUND, ORGAN, TUMOR, from_ras, to_ras, zyx_to_ras
from tumorforge.manifests.nifti import GZIP_OS_UNIX, nifti_bytes
from tumorforge.manifests.organs import DEFAULT_ORGAN, get_organ
from tumorforge.manifests.records import RecordError, check_fields, loads, pretty_json
from tumorforge.manifests.schema import ROLES

from . import GENERATOR_VERSION
from .backend import Backend
from .config import GeneratorConfig
from .params import SampleParams
from .prepare import PAD_HU, PreparedScan, Regrid
from .sample import sample_params, sample_seed
from .synthesize import HU_MAX, HU_MIN, synthesize
from tumorforge.manifests.errors import UserError, one_line

GRIDS = ("prepared", "native")
OUTPUT_FORMATS = ("nifti", "nnunet")   # synthesize --format: NIfTI folders | nnU-Net raw dataset
RUN_RECORD = "synthesize.json"
RUN_FORMAT = "tumorforge-synthesize"
RUN_VERSION = 2
READ_RUN_VERSIONS = (1, 2)     # version 1: synthetic cases only (no real_manifest, real_cases)


class SynthesizeError(UserError, ValueError):
    """A synthesize request or output that cannot be used; the message names it."""


class _WrittenCase:
    """What every case record does: its JSON, spacing as a list (the field order is each record's
    own, so written records keep their bytes)."""

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["spacing_mm"] = list(self.spacing_mm)
        return out


@dataclass(frozen=True)
class CaseRecord(_WrittenCase):
    """How one whole-scan case was made: enough to regenerate it (same scan, config and backend)."""

    case: str
    scan_id: str
    scan_sha256: dict                 # {"image": ..., "label": ...} of the files read
    root_seed: int
    index: int                        # sample index: SeedSequence(root_seed, spawn_key=(index,))
    grid: str                         # prepared / native
    image: str                        # paths relative to the run's folder
    label: str
    sha256: dict                      # {"image": ..., "label": ...} of the files written
    spacing_mm: tuple[float, float, float]   # of the written volumes, along their voxel axes
    params: dict                      # SampleParams JSON (centers: voxels of the prepared grid)

    @classmethod
    def from_json(cls, obj, where: str) -> "CaseRecord":
        data = _written_case_fields(cls, obj, where)
        if data["grid"] not in GRIDS:
            raise RecordError(f"{where}: grid {data['grid']!r}; expected one of {GRIDS}")
        return cls(**data)

    def sample_params(self) -> SampleParams:
        return SampleParams.from_json(self.params)


@dataclass(frozen=True)
class RealCaseRecord(_WrittenCase):
    """One real annotated scan written as a case (``--real``): its own image and label, on the
    run's grid, nothing painted."""

    case: str
    scan_id: str
    scan_sha256: dict                 # {"image": ..., "label": ...} of the files read
    image: str                        # paths relative to the run's folder
    label: str
    sha256: dict                      # {"image": ..., "label": ...} of the files written
    spacing_mm: tuple[float, float, float]   # of the written volumes, along their voxel axes
    role: str                         # the manifest's role: tumor / healthy

    @classmethod
    def from_json(cls, obj, where: str) -> "RealCaseRecord":
        data = _written_case_fields(cls, obj, where)
        if data["role"] not in ROLES:
            raise RecordError(f"{where}: role {data['role']!r}; expected one of {ROLES}")
        return cls(**data)


def _written_case_fields(cls, obj, where: str) -> dict:
    """The fields of a case record (``cls``) with its spacing as floats and its file paths checked
    to stay inside the run's folder: a record read from elsewhere must not point a reader at other
    files."""
    data = check_fields(cls, obj, where)
    data["spacing_mm"] = tuple(float(s) for s in data["spacing_mm"])
    for key in ("image", "label"):
        path = data[key]
        if not isinstance(path, str) or path.startswith("/") or ".." in path.split("/"):
            raise RecordError(f"{where}: {key} {path!r} is not a path inside the run's folder")
    return data


@dataclass(frozen=True)
class SynthesizeRun:
    """The run record, ``synthesize.json``: what was asked and every case written."""

    format: str
    version: int
    generator_version: str
    generator_config: dict
    manifest: str
    allow_roots: tuple[str, ...]
    backend: str
    grid: str
    output_format: str
    root_seed: int
    command: str
    cases: tuple[CaseRecord, ...]     # synthetic
    rejected: tuple[dict, ...]        # {"scan_id", "reason"} ("real": true for a --real scan)
    real_manifest: str = ""           # --real ("" without)
    real_cases: tuple[RealCaseRecord, ...] = ()

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["allow_roots"] = list(self.allow_roots)
        out["cases"] = [c.to_json() for c in self.cases]
        out["rejected"] = list(self.rejected)
        out["real_cases"] = [c.to_json() for c in self.real_cases]
        return out

    @classmethod
    def from_json(cls, obj, where: str) -> "SynthesizeRun":
        data = check_fields(cls, obj, where)
        if data["format"] != RUN_FORMAT or data["version"] not in READ_RUN_VERSIONS:
            raise RecordError(f"{where}: format {data['format']!r} version {data['version']!r}; "
                              f"expected {RUN_FORMAT!r} version "
                              f"{' or '.join(map(str, READ_RUN_VERSIONS))}")
        if data["version"] == 1 and {"real_manifest", "real_cases"} & set(data):
            raise RecordError(f"{where}: version 1 has no real cases; found real_manifest or "
                              f"real_cases")
        for key, record, name in (("cases", CaseRecord, "case"),
                                  ("real_cases", RealCaseRecord, "real case")):
            cases = data.get(key, [])
            if not isinstance(cases, list):
                raise RecordError(f"{where}: {key}: expected a list")
            data[key] = tuple(record.from_json(c, f"{where} {name} {n}")
                              for n, c in enumerate(cases))
        data["allow_roots"] = tuple(data["allow_roots"])
        data["rejected"] = tuple(data["rejected"])
        return cls(**data)

    def config(self) -> GeneratorConfig:
        return GeneratorConfig.from_json(self.generator_config)


def read_run(folder: str) -> SynthesizeRun:
    """The run record of a synthesize output folder (local or s3://)."""
    uri = storage.join(folder, RUN_RECORD)
    if not storage.exists(uri):
        raise SynthesizeError(f"{folder}: no {RUN_RECORD} (not a tumorforge synthesize output, or "
                              f"a run that did not finish)")
    with storage.open_binary(uri) as f:
        return SynthesizeRun.from_json(loads(f.read(), uri), uri)


# ---------------------------------------------------------------------------------------------
# One case


def case_name(scan_id: str, index: int) -> str:
    """A file-safe case id: the scan id (characters other than letters, digits and '-' become '-')
    and the sample index."""
    return f"{_file_safe(scan_id)}_s{index:05d}"


def real_case_name(scan_id: str) -> str:
    """A real scan's case id: the file-safe scan id and ``_real``, which no synthetic case id
    (``_s<index>``) ends in."""
    return f"{_file_safe(scan_id)}_real"


def _file_safe(scan_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", scan_id)


def organ_label(label: np.ndarray, label_map) -> np.ndarray:
    """A scan's label in the crops' convention: liver and vessel values -> 1, tumor values -> 2
    (``label_map``: a manifest ``LabelMap``)."""
    out = np.where(np.isin(label, np.asarray(label_map.organ_values())), ORGAN, BACKGROUND)
    if label_map.tumor:
        out = np.where(np.isin(label, np.asarray(label_map.tumor)), TUMOR, out)
    return out.astype(np.uint8)


def whole_params(rng: np.random.Generator, scan: PreparedScan, config: GeneratorConfig
                 ) -> SampleParams:
    """A sample's parameters with its crop widened to the whole prepared region."""
    params = sample_params(rng, scan, config)
    return dataclasses.replace(params, crop_origin=tuple(int(v) for v in scan.origin_vox),
                               crop_size=tuple(int(v) for v in scan.shape), crop_anchor="whole")


def synthesize_region(scan: PreparedScan, params: SampleParams, backend: Backend
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The prepared region with the tumors of ``params`` (which must cover it, see
    :func:`whole_params`): (image int16 HU, label uint8), RAS voxel order like ``scan.image``."""
    if tuple(params.crop_size) != scan.shape or \
            tuple(params.crop_origin) != tuple(scan.origin_vox):
        raise ValueError(f"params of scan {params.scan_id} do not cover its prepared region")
    crop = synthesize(scan, params, backend)
    return np.ascontiguousarray(zyx_to_ras(crop.image)), np.ascontiguousarray(zyx_to_ras(crop.label))


@dataclass(frozen=True)
class WholeScan:
    """A synthesized whole scan on one grid: arrays in the voxel order of ``affine``."""

    image: np.ndarray             # int16 HU
    label: np.ndarray             # uint8 0/1/2
    affine: np.ndarray            # voxel -> RAS+ world mm


@dataclass(frozen=True)
class OutputGrid:
    """One scan's output grid, tumor-free, made once per scan and shared by its cases.

    ``image`` and ``label`` are RAS-ordered; on the prepared grid the prepared region of ``image``
    is the prepared scan itself (what synthesis saw), so ``image`` is every case's tumor-free HU.
    """

    grid: str
    image: np.ndarray             # int16 HU, RAS voxel order
    label: np.ndarray             # uint8 0/1/2, RAS voxel order
    affine: np.ndarray            # the affine written: RAS voxel -> world (prepared), the file's (native)
    factors: np.ndarray           # target spacing / native spacing, per RAS axis

    def written(self, image: np.ndarray, label: np.ndarray) -> WholeScan:
        """RAS arrays of this grid in the voxel order written: RAS on the prepared grid, the
        file's own order on the native grid."""
        if self.grid == "prepared":
            return WholeScan(image, label, self.affine)
        return WholeScan(from_ras(image, self.affine), from_ras(label, self.affine), self.affine)


def scan_on_grid(grid: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray,
                 spacing_mm) -> OutputGrid:
    """A whole scan on an output grid, nothing pasted in. ``image`` (HU) and ``label`` (0/1/2, see
    :func:`organ_label`) are in the file's voxel order with ``affine`` (voxel -> RAS+ mm).

    ``prepared``: RAS axes resampled to ``spacing_mm`` (the generator's target spacing) as
    ``prepare_scan`` resamples (image linear with ``PAD_HU`` outside, label nearest); ``native``:
    the file's own voxels, reordered to RAS. The image is rounded to int16 within
    [HU_MIN, HU_MAX]."""
    if grid not in GRIDS:
        raise SynthesizeError(f"grid {grid!r}: expected one of {GRIDS}")
    img_ras, ras_affine = to_ras(np.asarray(image, np.float32), affine)
    lab_ras, _ = to_ras(np.asarray(label, np.uint8), affine)
    regrid = Regrid.of(ras_affine, img_ras.shape, spacing_mm)
    if grid == "native":
        return OutputGrid(grid, _int16_hu(img_ras), lab_ras, affine, regrid.factors)
    zero = np.zeros(3, int)
    return OutputGrid(grid, _int16_hu(regrid.sample(img_ras, zero, regrid.full_shape, 1, PAD_HU)),
                      regrid.sample(lab_ras, zero, regrid.full_shape, 0, 0).astype(np.uint8),
                      regrid.affine(ras_affine, zero), regrid.factors)


def _int16_hu(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)


def output_grid(grid: str, image_vol, label_vol, entry, scan: PreparedScan) -> OutputGrid:
    """One scan's tumor-free output grid (:func:`scan_on_grid` at the prepared scan's spacing);
    on the prepared grid its prepared region is the prepared scan itself."""
    out = scan_on_grid(grid, image_vol.data, organ_label(label_vol.data, entry.label_map),
                       image_vol.info.affine, scan.spacing_mm)
    if grid == "prepared":
        region = prepared_region(scan)
        out.image[region] = scan.image
        out.label[region] = scan.label()
    return out


def prepared_region(scan: PreparedScan) -> tuple[slice, slice, slice]:
    """Where the prepared arrays sit in the whole scan on the prepared grid."""
    return tuple(slice(int(a), int(a + n)) for a, n in zip(scan.origin_vox, scan.shape))


def paste_region(out: OutputGrid, scan: PreparedScan, region_image, region_label) -> WholeScan:
    """The whole scan on the output grid with a synthesized prepared region pasted in.

    Prepared grid: pasted at ``scan.origin_vox``. Native grid: the HU difference synthesis made
    (linear) is added to the original voxels, and the label takes the synthetic label (nearest)
    where synthesis changed it; the native box the prepared region covers is all that is touched.
    """
    image, label = out.image.copy(), out.label.copy()
    if out.grid == "prepared":
        region = prepared_region(scan)
        image[region] = region_image
        label[region] = region_label
        return out.written(image, label)
    f, lo = out.factors, np.asarray(scan.origin_vox, float)
    diff = region_image.astype(np.float32) - scan.image.astype(np.float32)
    changed = (region_label != scan.label()).astype(np.uint8)
    # Native RAS voxel u sits at prepared-region voxel u / f - lo.
    ulo = np.maximum(np.floor(lo * f).astype(int), 0)
    uhi = np.minimum(np.ceil((lo + np.asarray(scan.shape) - 1) * f).astype(int) + 1, image.shape)
    if np.all(uhi > ulo):
        box = tuple(slice(int(a), int(b)) for a, b in zip(ulo, uhi))
        shape = tuple(int(n) for n in uhi - ulo)

        def back(data, order):
            return ndi.affine_transform(data, np.diag(1.0 / f), offset=ulo / f - lo,
                                        output_shape=shape, order=order, mode="constant", cval=0,
                                        prefilter=False)

        moved = back(diff, 1)
        image[box] = np.clip(np.rint(image[box] + moved), HU_MIN, HU_MAX).astype(np.int16)
        where = back(changed, 0).astype(bool)
        label[box] = np.where(where, back(region_label, 0), label[box]).astype(np.uint8)
    return out.written(image, label)


def make_case(scan: PreparedScan, out: OutputGrid, config: GeneratorConfig, root_seed: int,
              index: int, backend: Backend) -> tuple[WholeScan, SampleParams]:
    """One case: parameters drawn for sample ``index`` of ``root_seed``, synthesized over the
    prepared region, put on the output grid."""
    params = whole_params(np.random.default_rng(sample_seed(root_seed, index)), scan, config)
    region_image, region_label = synthesize_region(scan, params, backend)
    return paste_region(out, scan, region_image, region_label), params


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the voxel axes of a voxel-to-world affine."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))


# ---------------------------------------------------------------------------------------------
# A run


@dataclass(frozen=True)
class Layout:
    """Where a run's files go, relative to its folder."""

    output_format: str

    def image(self, case: str) -> str:
        return f"imagesTr/{case}_0000.nii.gz" if self.output_format == "nnunet" \
            else f"images/{case}.nii.gz"

    def label(self, case: str) -> str:
        return f"labelsTr/{case}.nii.gz" if self.output_format == "nnunet" \
            else f"labels/{case}.nii.gz"

    @staticmethod
    def params(case: str) -> str:
        return f"params/{case}.json"


def nnunet_folder(out: str, dataset_id: int, name: str) -> str:
    """``out/Dataset<NNN>_<Name>``, checked as nnU-Net v2 wants it."""
    if not 1 <= dataset_id <= 999:
        raise SynthesizeError(f"--dataset-id {dataset_id}: expected 1 to 999 (nnU-Net's NNN)")
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise SynthesizeError(f"--dataset-name {name!r}: expected letters, digits and '-'")
    return storage.join(out, f"Dataset{dataset_id:03d}_{name}")


def nnunet_dataset_json(run: SynthesizeRun, name: str) -> dict:
    """nnU-Net v2's dataset.json of a run: one CT channel, the organ record's classes (background
    / the organ / tumor) as its labels, every case (synthetic and real) counted."""
    organ = get_organ(run.generator_config.get("organ", DEFAULT_ORGAN))
    real = (f"; {len(run.real_cases)} real annotated cases from {run.real_manifest}"
            if run.real_cases else "")
    return {"channel_names": {"0": "CT"},
            "labels": {n: v for v, n in enumerate(organ.classes)},
            "numTraining": len(run.cases) + len(run.real_cases), "file_ending": ".nii.gz",
            "name": name,
            "description": f"synthetic {organ.name} tumors by tumorforge generator "
                           f"{run.generator_version}, "
                           f"profile {run.generator_config.get('profile')}, grid {run.grid}, "
                           f"root seed {run.root_seed}{real}; see synthesize.json and params/"}


# nnU-Net v2 reads its folds from this file in the preprocessed dataset folder (copy it there
# after nnUNetv2_plan_and_preprocess); without it nnU-Net splits the cases at random, and cases
# painted into one healthy scan (or a scan written both real and painted) would sit in a
# model's training and validation folds at once.
NNUNET_SPLITS = "splits_final.json"
NNUNET_FOLDS = 5


def nnunet_splits(cases, root_seed: int, folds: int = NNUNET_FOLDS) -> list[dict]:
    """nnU-Net's ``splits_final.json``: ``folds`` (at most one per source scan) train/val lists of
    case names, every case of one source scan in the same fold. ``cases``: records with ``case``,
    ``scan_id`` and ``scan_sha256`` (synthetic and real alike). A source scan is an image file's
    content (its sha256), so a scan written as a real case and painted as synthetic ones, even
    under two scan ids from two manifests, stays in one fold. The scans are dealt to the folds in
    an order fixed by ``root_seed`` and their (smallest) scan id."""
    by_scan: dict[str, list] = {}
    for c in cases:
        by_scan.setdefault(c.scan_sha256["image"], []).append(c)

    def deal_key(image_sha: str) -> tuple[str, str]:
        scan_id = min(c.scan_id for c in by_scan[image_sha])
        return hashlib.sha256(f"{root_seed}:{scan_id}".encode()).hexdigest(), image_sha

    order = sorted(by_scan, key=deal_key)
    k = max(1, min(folds, len(order)))
    val = [[case for s in order[f::k] for case in sorted(c.case for c in by_scan[s])]
           for f in range(k)]
    every = sorted(c.case for c in cases)
    return [{"train": [c for c in every if c not in set(v)], "val": v} for v in val]


def write_case(folder: str, layout: Layout, case: str, whole: WholeScan) -> dict:
    """Write a case's image and label (gzip NIfTI, zero timestamp) where ``layout`` puts them;
    returns their sha256 ``{"image": ..., "label": ...}``."""
    files = {"image": nifti_bytes(whole.image, whole.affine, gzip_os=GZIP_OS_UNIX),
             "label": nifti_bytes(whole.label, whole.affine, gzip_os=GZIP_OS_UNIX)}
    storage.write_atomic(storage.join(folder, layout.image(case)), files["image"])
    storage.write_atomic(storage.join(folder, layout.label(case)), files["label"])
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def check_real_entries(entries, manifest: str, organ: str) -> None:
    """Refuse a ``--real`` manifest whose scans cannot be written beside this run's: another
    organ (label 1 would mean two organs) or two scan ids with one case name."""
    named: dict[str, str] = {}
    for e in entries:
        if e.organ != organ:
            raise SynthesizeError(f"--real {manifest}: scan {e.scan_id} is a {e.organ} scan; this "
                                  f"run paints {organ} tumors (--organ)")
        case = real_case_name(e.scan_id)
        if case in named:
            raise SynthesizeError(f"--real {manifest}: scans {named[case]} and {e.scan_id} would "
                                  f"both be written as case {case}")
        named[case] = e.scan_id


def run_synthesize(entries, config: GeneratorConfig, *, out: str, manifest: str, allow_roots,
                   count: int, root_seed: int, grid: str, output_format: str, backend: Backend,
                   command: str = "", dataset_id: int = 501, dataset_name: str = "TumorforgeLiver",
                   real_entries=(), real_manifest: str = "", log=print
                   ) -> tuple[str, SynthesizeRun]:
    """Write ``count`` cases per scan of ``entries`` (sorted by scan id; case n of scan position p
    is sample index p * count + n), then every scan of ``real_entries`` (from ``real_manifest``)
    as a real case on the same grid, and the run record. A scan that cannot be read or prepared
    is listed in ``rejected`` with its reason and the run goes on. Returns (folder, run record)."""
    from tumorforge.manifests.nifti import ScanError
    from .prepare import PrepareError
    from .scans import prepare_volumes, read_scan
    if count < 1:
        raise SynthesizeError(f"--count {count}: expected at least 1")
    if grid not in GRIDS or output_format not in OUTPUT_FORMATS:
        raise SynthesizeError(f"grid {grid!r} / format {output_format!r}: expected {GRIDS} / "
                              f"{OUTPUT_FORMATS}")
    check_real_entries(real_entries, real_manifest, config.organ)
    folder = nnunet_folder(out, dataset_id, dataset_name) if output_format == "nnunet" else out
    if storage.exists(storage.join(folder, RUN_RECORD)):
        raise SynthesizeError(f"{folder} already holds a synthesize run ({RUN_RECORD}); choose "
                              f"another --out")
    layout = Layout(output_format)
    cases, rejected = [], []
    for position, entry in enumerate(sorted(entries, key=lambda e: e.scan_id)):
        try:
            image_vol, label_vol = read_scan(entry)
            scan = prepare_volumes(entry, image_vol, label_vol, config)
            out_grid = output_grid(grid, image_vol, label_vol, entry, scan)
        except (ScanError, PrepareError) as exc:
            rejected.append({"scan_id": entry.scan_id, "reason": one_line(exc)})
            log(f"synthesize: skipped scan {entry.scan_id}: {rejected[-1]['reason']}")
            continue
        for n in range(count):
            index = position * count + n
            case = case_name(entry.scan_id, index)
            whole, params = make_case(scan, out_grid, config, root_seed, index, backend)
            record = CaseRecord(case=case, scan_id=entry.scan_id, scan_sha256=dict(entry.sha256),
                                root_seed=root_seed, index=index, grid=grid,
                                image=layout.image(case), label=layout.label(case),
                                sha256=write_case(folder, layout, case, whole),
                                spacing_mm=spacing_of(whole.affine), params=params.to_json())
            storage.write_atomic(storage.join(folder, layout.params(case)),
                                 pretty_json(record.to_json()))
            tumors = int((whole.label == TUMOR).sum())
            log(f"synthesize: {case}: {len(params.tumors)} tumor(s) ({params.kind}), "
                f"{tumors} tumor voxels")
            cases.append(record)
    if not cases:
        raise SynthesizeError(f"{manifest}: no scan could be used "
                              f"({'; '.join(r['scan_id'] + ': ' + r['reason'] for r in rejected)})")
    real_cases = []
    for entry in sorted(real_entries, key=lambda e: e.scan_id):
        try:
            image_vol, label_vol = read_scan(entry)
        except ScanError as exc:
            rejected.append({"scan_id": entry.scan_id, "reason": one_line(exc), "real": True})
            log(f"synthesize: skipped real scan {entry.scan_id}: {rejected[-1]['reason']}")
            continue
        on_grid = scan_on_grid(grid, image_vol.data, organ_label(label_vol.data, entry.label_map),
                               image_vol.info.affine, config.target_spacing_mm)
        whole = on_grid.written(on_grid.image, on_grid.label)
        case = real_case_name(entry.scan_id)
        real_cases.append(RealCaseRecord(
            case=case, scan_id=entry.scan_id, scan_sha256=dict(entry.sha256),
            image=layout.image(case), label=layout.label(case),
            sha256=write_case(folder, layout, case, whole), spacing_mm=spacing_of(whole.affine),
            role=entry.role))
        log(f"synthesize: {case}: real scan ({entry.role}), "
            f"{int((whole.label == TUMOR).sum())} tumor voxels")
    if real_entries and not real_cases:
        raise SynthesizeError(f"--real {real_manifest}: no scan could be read ("
                              + "; ".join(r["scan_id"] + ": " + r["reason"]
                                          for r in rejected if r.get("real")) + ")")
    run = SynthesizeRun(format=RUN_FORMAT, version=RUN_VERSION, generator_version=GENERATOR_VERSION,
                        generator_config=config.to_json(), manifest=manifest,
                        allow_roots=tuple(allow_roots), backend=backend.name, grid=grid,
                        output_format=output_format, root_seed=root_seed, command=command,
                        cases=tuple(cases), rejected=tuple(rejected), real_manifest=real_manifest,
                        real_cases=tuple(real_cases))
    if output_format == "nnunet":
        storage.write_atomic(storage.join(folder, "dataset.json"),
                             json.dumps(nnunet_dataset_json(run, dataset_name), indent=1).encode())
        storage.write_atomic(storage.join(folder, NNUNET_SPLITS), json.dumps(
            nnunet_splits(run.cases + run.real_cases, root_seed), indent=1).encode())
    storage.write_atomic(storage.join(folder, RUN_RECORD), pretty_json(run.to_json()))
    return folder, run
