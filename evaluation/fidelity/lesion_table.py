"""The lesion table: one CSV row per measured lesion, the form in which lesions leave ``tumorforge
stats`` (``lesions.csv`` beside ``stats.json``) and come back in as a reference generator's
(``stats --reference NAME=TABLE``).

Why a table: a reference generator need not be tumorforge. The tumors of another generator (the
seed authors' code, a new tumor model, an older tumorforge) are measured with the same lesion
measures (:func:`lesions.measure_scan` on its output and the tumor-free scan) and written as rows;
``stats`` then sets each synthetic size type beside the reference's rows of the same type. Only
``group`` (the size type), ``sample`` (the volume the lesion is in) and the measures compared are
required; every other column may be empty.
"""

from __future__ import annotations

import csv
import io
import math
import os

from tumorforge.manifests import storage

from .inputs import FidelityError, Measured
from .lesions import Lesion

# The columns, in order. Measures are floats in mm or HU; an empty cell is "not measured".
FIELDS = ("source", "origin", "group", "scan_id", "sample", "radius_mm", "contrast_hu",
          "hu_drop_hu", "depth_ratio", "texture_ratio", "grain_ratio", "volume_mm3",
          "cut_by_crop")
REQUIRED = ("group", "sample", "radius_mm", "hu_drop_hu")
MEASURES = ("radius_mm", "contrast_hu", "hu_drop_hu", "depth_ratio", "texture_ratio",
            "grain_ratio", "volume_mm3")
TABLE_NAME = "lesions.csv"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(value)   # exact round trip


def write_table(path: str, lesions) -> None:
    """Write ``lesions`` (:class:`Lesion`) as a lesion table at ``path`` (atomically)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for les in lesions:
        w.writerow([_cell(getattr(les, k)) for k in FIELDS])
    storage.write_atomic(path, buf.getvalue().encode())


def _float(path: str, line: int, column: str, text: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FidelityError(f"{path}, line {line}: {column} is {text!r}; expected a number or "
                            "an empty cell")
    return value


def parse_reference(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (the name is then the file's stem) -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or "/" in name:
        path = spec
        name = os.path.splitext(os.path.basename(path.rstrip("/")))[0] or path
    return name, path


def read_reference(spec: str) -> Measured:
    """The lesions of a reference generator's lesion table (``NAME=PATH`` or ``PATH``), each
    with origin ``reference`` and the table's size type. Raises :class:`FidelityError` naming
    the file (and line) for a table that is missing, has no required column or a cell that is
    not a number."""
    name, path = parse_reference(spec)
    if not storage.exists(path):
        raise FidelityError(f"{path}: no such lesion table")
    try:
        with storage.open_binary(path) as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError:
        raise FidelityError(f"{path}: not a text (UTF-8 CSV) lesion table") from None
    rows = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED if c not in (rows.fieldnames or ())]
    if missing:
        raise FidelityError(f"{path}: a lesion table needs the columns {', '.join(REQUIRED)}; "
                            f"{', '.join(missing)} missing (found: "
                            f"{', '.join(rows.fieldnames or ()) or 'no header'})")
    measured = Measured(name, "reference", path)
    for line, row in enumerate(rows, 2):
        group = (row.get("group") or "").strip()
        sample = (row.get("sample") or "").strip()
        if not group or not sample:
            raise FidelityError(f"{path}, line {line}: group and sample must not be empty")
        values = {k: _float(path, line, k, row.get(k) or "") for k in MEASURES}
        measured.lesions.append(Lesion(
            source=name, origin="reference", group=group, scan_id=(row.get("scan_id") or "").strip(),
            sample=sample, center=(), voxels=0, volume_mm3=values["volume_mm3"] or 0.0,
            radius_mm=values["radius_mm"], contrast_hu=values["contrast_hu"],
            hu_drop_hu=values["hu_drop_hu"], depth_mm=None, reference_depth_mm=None,
            depth_ratio=values["depth_ratio"], texture_sd_hu=None, parenchyma_sd_hu=None,
            texture_ratio=values["texture_ratio"], grain_ratio=values["grain_ratio"],
            cut_by_crop=(row.get("cut_by_crop") or "").strip() in ("1", "true", "True")))
    if not measured.lesions:
        raise FidelityError(f"{path}: the lesion table has a header but no lesion")
    measured.info = {"lesion_table": path, "rows": len(measured.lesions)}
    return measured
