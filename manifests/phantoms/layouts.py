"""Write phantoms in the file layouts and conventions of public CT datasets: four liver datasets,
MSD Task07_Pancreas and KiTS.

- lits:  volume-N.nii / segmentation-N.nii (uncompressed), labels 0 background,
         1 liver, 2 tumor.  Real LiTS mixes orientation conventions between
         source hospitals, so most cases are stored LPS and every third case
         (i % 3 == 2) LPI (reversed slice order).
- msd:   Task03_Liver/{imagesTr,labelsTr,imagesTs}/liver_N.nii.gz plus
         dataset.json in the Medical Segmentation Decathlon format; RAS storage.
- btcv:  RawData/Training/{img,label}/{img,label}NNNN.nii.gz with the 13 BTCV
         organ codes (liver = 6); LPS storage; never tumors.
- chaos: Train_Sets/CT/<id>/{image,liver_mask}.nii.gz, mask 0/1 liver.  Real
         CHAOS ships DICOM series and PNG masks; this is the NIfTI conversion
         layout tumorforge documents.  LPS storage; never tumors.

- msd-pancreas: Task07_Pancreas/{imagesTr,labelsTr,imagesTs}/pancreas_NNN.nii.gz plus
         dataset.json; labels 0 background, 1 pancreas, 2 tumor (MSD: "cancer");
         RAS storage; pancreatic masses (organ_lesions).
- kits:  case_NNNNN/{imaging,segmentation}.nii.gz, KiTS23 labels 1 kidney,
         2 tumor, 3 cyst (KiTS19 has no 3: its cysts are kidney); arrays stored
         slices first (axis codes SPL), as KiTS stores (slices, rows, columns);
         renal masses, often exophytic, and simple cysts (organ_lesions).

Arrays are re-stored in each convention by flipping axes and updating the
affine so world coordinates never change: nibabel.as_closest_canonical gives
back the phantom's RAS arrays.  Output is byte-identical for the same
(layout, n_cases, seed, scale): case i draws from
SeedSequence([seed, LAYOUTS.index(layout), i]) and gzip streams carry no
timestamp or file name.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from ..nifti import GZIP_OS_UNKNOWN, write_nifti
from .anatomy import LIVER_CODE, ORGAN_CODES
from .organ_lesions import CYST_CODE
from .phantom import Phantom, make_phantom

# New layouts go at the end: a case's seed stream is keyed by its layout's index here.
LAYOUTS = ("lits", "msd", "btcv", "chaos", "msd-pancreas", "kits")
# The organ each layout's lesions grow in.
LESION_ORGAN = {"msd-pancreas": "pancreas", "kits": "kidney"}
KIDNEY_CODES = (ORGAN_CODES["right_kidney"], ORGAN_CODES["left_kidney"])
# Phantom.organs codes that make each organ of the organ table (cysts are kidney, as in KiTS).
PHANTOM_ORGAN_CODES = {"liver": (LIVER_CODE,), "pancreas": (ORGAN_CODES["pancreas"],),
                       "kidney": (*KIDNEY_CODES, CYST_CODE)}
GENERATOR = "tumorforge phantoms v1"
# (liver label values, tumor label values) in each layout's label files, for previews and checks.
# (The new organs' entries name the organ's values in place of the liver's.)
LABEL_VALUES = {"lits": ((1, 2), (2,)), "msd": ((1, 2), (2,)), "btcv": ((LIVER_CODE,), ()), "chaos": ((1,), ()),
                "msd-pancreas": ((1, 2), (2,)), "kits": ((1, 2, 3), (2,))}
# The 20 CHAOS CT training ids; later cases continue with the same kind of gaps.
CHAOS_CT_IDS = (1, 2, 5, 6, 8, 10, 14, 16, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30)


def case_rng(layout: str, seed: int, index: int) -> np.random.Generator:
    """The generator case `index` of `layout` draws from."""
    return np.random.default_rng(np.random.SeedSequence([seed, LAYOUTS.index(layout), index]))


def has_tumor(layout: str, index: int) -> bool:
    """LiTS, MSD, MSD-Pancreas and KiTS: every case but i % 4 == 3 carries lesions (the tumor-free
    ones make a healthy pool; the real pancreas and KiTS sets have none); BTCV and CHAOS never do."""
    return layout in ("lits", "msd", "msd-pancreas", "kits") and index % 4 != 3


def storage_axcodes(layout: str, index: int) -> str:
    """Axis codes (nibabel convention) the arrays of case `index` are stored in."""
    if layout == "lits":
        return "LPI" if index % 3 == 2 else "LPS"
    if layout == "kits":
        return "SPL"
    return "RAS" if layout in ("msd", "msd-pancreas") else "LPS"


def chaos_id(index: int) -> int:
    if index < len(CHAOS_CT_IDS):
        return CHAOS_CT_IDS[index]
    return CHAOS_CT_IDS[-1] + 2 * (index - len(CHAOS_CT_IDS) + 1)


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute voxel axes to `axcodes`, returning the array and the affine that keeps world mm fixed."""
    ornt = nib.orientations
    xform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(axcodes)))
    out = np.ascontiguousarray(ornt.apply_orientation(array, xform))
    return out, affine @ ornt.inv_ornt_aff(xform, array.shape)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype) -> None:
    """One phantom NIfTI file (gzip-compressed for ``*.gz``) of ``array`` stored as ``dtype``:
    qform = sform = affine (code 1), mm units, descrip "tumorforge phantom"."""
    write_nifti(str(path), array, affine, dtype=dtype, description="tumorforge phantom",
                gzip_os=GZIP_OS_UNKNOWN)


def _label(layout: str, phantom: Phantom) -> np.ndarray:
    if layout == "btcv":
        return phantom.organs
    if layout == "msd-pancreas":
        label = (phantom.organs == ORGAN_CODES["pancreas"]).astype(np.uint8)
        label[phantom.tumor] = 2
        return label
    if layout == "kits":
        label = np.isin(phantom.organs, KIDNEY_CODES).astype(np.uint8)
        label[phantom.organs == CYST_CODE] = 3
        label[phantom.tumor] = 2
        return label
    label = (phantom.organs == LIVER_CODE).astype(np.uint8)
    if layout in ("lits", "msd"):
        label[phantom.tumor] = 2
    return label


def _paths(layout: str, index: int, test: bool = False) -> tuple[str, str, str]:
    """(case id, image path, label path) relative to the layout's output folder."""
    if layout == "lits":
        return f"volume-{index}", f"volume-{index}.nii", f"segmentation-{index}.nii"
    if layout == "msd":
        images = "imagesTs" if test else "imagesTr"
        name = f"liver_{index}.nii.gz"
        return f"liver_{index}", f"Task03_Liver/{images}/{name}", f"Task03_Liver/labelsTr/{name}"
    if layout == "msd-pancreas":
        images = "imagesTs" if test else "imagesTr"
        name = f"pancreas_{index + 1:03d}.nii.gz"
        return (f"pancreas_{index + 1:03d}", f"Task07_Pancreas/{images}/{name}",
                f"Task07_Pancreas/labelsTr/{name}")
    if layout == "kits":
        case = f"case_{index:05d}"
        return case, f"{case}/imaging.nii.gz", f"{case}/segmentation.nii.gz"
    if layout == "btcv":
        n = f"{index + 1:04d}"
        return n, f"RawData/Training/img/img{n}.nii.gz", f"RawData/Training/label/label{n}.nii.gz"
    cid = chaos_id(index)
    return str(cid), f"Train_Sets/CT/{cid}/image.nii.gz", f"Train_Sets/CT/{cid}/liver_mask.nii.gz"


def _write_case(layout: str, out: Path, index: int, seed: int, scale: float, test: bool = False) -> dict:
    """Write one case; returns its record with image/label paths relative to `out`."""
    tumors = has_tumor(layout, index)
    phantom = make_phantom(case_rng(layout, seed, index), scale=scale, tumors=tumors,
                           lesion_organ=LESION_ORGAN.get(layout, "liver"))
    case, image_path, label_path = _paths(layout, index, test)
    axcodes = storage_axcodes(layout, index)
    image, affine = reorient(phantom.image, phantom.affine, axcodes)
    _write_nifti(out / image_path, image, affine, np.int16)
    record = {"case": case, "image": image_path}
    if not test:
        label, _ = reorient(_label(layout, phantom), phantom.affine, axcodes)
        _write_nifti(out / label_path, label, affine, np.uint8)
        record["label"] = label_path
    record.update(
        has_tumor=bool(phantom.lesions),
        lesions=[asdict(lesion) for lesion in phantom.lesions],
        spacing_mm=[float(v) for v in phantom.spacing_mm],
        axcodes="".join(nib.aff2axcodes(affine)),
        liver_volume_ml=round(phantom.liver_volume_ml, 3),
    )
    if layout in LESION_ORGAN:
        organ = LESION_ORGAN[layout]
        codes = PHANTOM_ORGAN_CODES[organ]
        record["organ"] = organ
        record["organ_volume_ml"] = round(float(np.count_nonzero(np.isin(phantom.organs, codes)))
                                          * float(np.prod(phantom.spacing_mm)) / 1000.0, 3)
        record["has_tumor"] = any(les["kind"] == "tumor" for les in record["lesions"])
    return record


def _msd_dataset_json(n_cases: int, layout: str = "msd") -> dict:
    if layout == "msd-pancreas":
        names, organ, task = [f"pancreas_{i + 1:03d}" for i in range(n_cases + 1)], "pancreas", "Task07_Pancreas"
    else:
        names, organ, task = [f"liver_{i}" for i in range(n_cases + 1)], "liver", "Task03_Liver"
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names[:-1]]
    return {
        "name": organ.capitalize(),
        "description": f"tumorforge phantoms: synthetic abdominal CT with {organ} and lesion labels, "
        f"generated by code. Not patient data; only the file layout follows MSD {task}.",
        "reference": "tumorforge phantoms v1 (synthetic)",
        "licence": "synthetic data, no patient information",
        "release": GENERATOR,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": organ, "2": "cancer"},
        "numTraining": n_cases,
        "numTest": 1,
        "training": training,
        "test": [f"./imagesTs/{names[-1]}.nii.gz"],
    }


def write_layout(layout: str, out_dir: str | Path, n_cases: int, seed: int = 0, scale: float = 1.0) -> list[dict]:
    """Write n_cases phantoms under out_dir in `layout` (one of LAYOUTS).

    Returns one dict per labelled case: case id, image and label paths
    (str, under out_dir), has_tumor, lesions (Lesion fields: world RAS+ mm,
    mm, HU), spacing_mm (stored voxel axes), axcodes (storage orientation),
    liver_volume_ml.  Also writes out_dir/phantom_truth.json holding the same
    records with paths relative to out_dir, plus layout, seed, scale and
    generator.  For msd one extra unlabeled test case is written and listed
    under "test_cases" in the truth file only.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"phantom layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if n_cases < 1:
        raise ValueError(f"phantom layout {layout!r}: n_cases must be >= 1, got {n_cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [_write_case(layout, out, i, seed, scale) for i in range(n_cases)]
    truth = {"generator": GENERATOR, "layout": layout, "seed": seed, "scale": scale, "cases": records}
    if layout in ("msd", "msd-pancreas"):
        task = "Task03_Liver" if layout == "msd" else "Task07_Pancreas"
        truth["test_cases"] = [_write_case(layout, out, n_cases, seed, scale, test=True)]
        (out / task / "dataset.json").write_text(json.dumps(_msd_dataset_json(n_cases, layout), indent=2) + "\n")
    (out / "phantom_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return [{**r, "image": str(out / r["image"]), "label": str(out / r["label"])} for r in records]
