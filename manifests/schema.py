"""The scan manifest contract: one JSON object per line, one scan per object.

This module is the only definition of a manifest entry; builders, validators, the cluster planner and
evaluation all import it. A reader refuses what it does not understand: an unknown schema version, an
unknown or missing field, or a value of the wrong type.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable

from . import storage
from .records import RecordError, loads
from .errors import UserError
from .organs import DEFAULT_ORGAN, OrganError, get_organ

SCHEMA_VERSION = 2
READ_VERSIONS = (1, 2)      # schema 1: liver only, ``label_map.liver`` and ``liver_volume_ml``
ROLES = ("healthy", "tumor")
MAX_LINE_CHARS = 1 << 16       # one manifest entry is well under 2 KB


# Bidirectional embeddings, overrides and isolates: they reorder how a log line or table reads.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def scan_id_problem(value) -> str | None:
    """Why ``value`` cannot be a scan_id, or None. A scan_id names files and appears in logs and
    tables, so it is a non-empty string without '/', not starting with '.', and without control
    characters (C0, DEL, C1), line or paragraph separators or bidi controls: one of those could
    start a new log line, move the cursor or recolor a terminal."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if "/" in value or value.startswith("."):
        return "must not contain '/' or start with '.'"
    bad = sorted({c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI})
    if bad:
        return ("must not contain control characters ("
                + ", ".join(f"U+{ord(c):04X}" for c in bad) + ")")
    return None


class ManifestError(UserError, ValueError):
    """A manifest file or one of its lines does not follow the contract."""


@dataclass(frozen=True)
class LabelMap:
    """Which integer label values mean the organ, tumor and the organ's vessels in a scan's label
    file.

    The organ, for synthesis, is the union of all three lists (tumor and vessel voxels sit inside
    the organ). Lists may be empty except ``organ``. Schema 2 writes ``{"organ": [...], "tumor":
    [...], "vessel": [...]}``; schema 1 called the organ list ``liver``.
    """

    organ: tuple[int, ...]
    tumor: tuple[int, ...] = ()
    vessel: tuple[int, ...] = ()

    def organ_values(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.organ) | set(self.tumor) | set(self.vessel)))

    def to_json(self) -> dict:
        return {"organ": list(self.organ), "tumor": list(self.tumor), "vessel": list(self.vessel)}

    @classmethod
    def from_json(cls, obj, where: str, version: int = SCHEMA_VERSION) -> "LabelMap":
        """Schema ``version``'s label map: ``organ`` (``liver`` in schema 1), optional ``tumor``
        and ``vessel``, each a list of label values."""
        key = "organ" if version >= 2 else "liver"
        if not isinstance(obj, dict) or set(obj) - {key, "tumor", "vessel"} or key not in obj:
            raise ManifestError(f"{where}: label_map must be an object with {key!r} and optional "
                                f"'tumor', 'vessel' lists; found {obj!r}")
        values = {}
        for name, val in obj.items():
            if not isinstance(val, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                    and 0 <= v < 65536 for v in val):
                raise ManifestError(f"{where}: label_map.{name} must be a list of label values "
                                    f"0..65535; found {val!r}")
            values["organ" if name == key else name] = tuple(val)
        if not values["organ"]:
            raise ManifestError(f"{where}: label_map.{key} is empty; a scan needs an organ label")
        return cls(**values)

    @classmethod
    def parse(cls, text: str, organ: str = DEFAULT_ORGAN) -> "LabelMap":
        """From the command-line form ``liver=1,tumor=2``: roles are the organ (by its name, or
        ``organ``), ``tumor`` and ``vessel``; a role may repeat (``liver=1,liver=5``)."""
        values: dict[str, list[int]] = {"organ": [], "tumor": [], "vessel": []}
        for item in filter(None, (t.strip() for t in text.split(","))):
            role, _, value = item.partition("=")
            role = "organ" if role.strip() == organ else role.strip()
            if role not in values or not value.strip().isdigit():
                raise ValueError(f"label map item {item!r}: expected ROLE=VALUE with ROLE one of "
                                 f"{organ} (or organ), tumor, vessel and VALUE a non-negative "
                                 "integer")
            values[role].append(int(value))
        if not values["organ"]:
            raise ValueError(f"label map {text!r} names no {organ} value")
        return cls(**{k: tuple(v) for k, v in values.items()})


@dataclass(frozen=True)
class ScanEntry:
    """One scan: image and label files plus what was measured when the manifest was built.

    ``organ`` names an entry of ``manifests.organs.ORGANS`` (the organ tumors go into; its label
    values are ``label_map.organ``). ``shape`` and ``spacing_mm`` are in the file's own voxel axis
    order; ``orientation`` gives that order as nibabel axis codes (``"LPS"``: first axis runs
    toward the patient's left, ...). Schema 1 lines (liver only) are read as ``organ`` liver.
    """

    scan_id: str
    image: str
    label: str
    label_map: LabelMap
    role: str
    source: str
    sha256: dict[str, str]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    organ_volume_ml: float
    tumor_volume_ml: float
    organ: str = DEFAULT_ORGAN
    fold: int | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        out = asdict(self)
        out["label_map"] = self.label_map.to_json()
        out["shape"] = list(self.shape)
        out["spacing_mm"] = list(self.spacing_mm)
        return out

    def with_fold(self, fold: int | None) -> "ScanEntry":
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["fold"] = fold
        return ScanEntry(**data)

    @classmethod
    def from_json(cls, obj, where: str) -> "ScanEntry":
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        version = obj.get("schema_version")
        if version not in READ_VERSIONS or isinstance(version, bool):
            raise ManifestError(f"{where}: schema_version {version!r} is not supported "
                                f"(this tumorforge reads versions {', '.join(map(str, READ_VERSIONS))})")
        if version == 1:
            obj = _from_schema_1(obj)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {unknown}; expected only {sorted(known)}")
        missing = sorted(f.name for f in fields(cls)
                         if f.name not in obj and f.name not in ("fold", "schema_version"))
        if missing:
            raise ManifestError(f"{where}: missing field(s) {missing}")

        def need(name, ok, expected):
            if not ok(obj[name]):
                raise ManifestError(f"{where}: {name} must be {expected}; found {obj[name]!r}")
            return obj[name]

        def is_number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        problem = scan_id_problem(obj["scan_id"])
        if problem:
            raise ManifestError(f"{where}: scan_id {problem}; found {obj['scan_id']!r}")
        scan_id = obj["scan_id"]
        where = f"{where} (scan {scan_id})"
        try:
            organ = get_organ(obj["organ"], f"{where}: organ").name
        except OrganError as exc:
            raise ManifestError(str(exc)) from None
        return cls(
            scan_id=scan_id,
            image=need("image", lambda v: isinstance(v, str) and v, "a path or URI"),
            label=need("label", lambda v: isinstance(v, str) and v, "a path or URI"),
            label_map=LabelMap.from_json(obj["label_map"], where, version),
            organ=organ,
            role=need("role", lambda v: v in ROLES, f"one of {ROLES}"),
            source=need("source", lambda v: isinstance(v, str) and v, "a dataset name"),
            sha256=need("sha256", lambda v: isinstance(v, dict) and set(v) == {"image", "label"}
                        and all(isinstance(h, str) and len(h) == 64 for h in v.values()),
                        "{'image': hex64, 'label': hex64}"),
            shape=tuple(need("shape", lambda v: isinstance(v, list) and len(v) == 3 and all(
                isinstance(n, int) and n > 0 for n in v), "three positive integers")),
            spacing_mm=tuple(float(s) for s in need("spacing_mm", lambda v: isinstance(v, list)
                             and len(v) == 3 and all(is_number(s) and s > 0 for s in v),
                             "three positive numbers (mm)")),
            orientation=need("orientation", lambda v: isinstance(v, str) and len(v) == 3,
                             "three axis codes such as 'LPS'"),
            organ_volume_ml=float(need("organ_volume_ml", lambda v: is_number(v) and v >= 0,
                                       "a non-negative number")),
            tumor_volume_ml=float(need("tumor_volume_ml", lambda v: is_number(v) and v >= 0,
                                       "a non-negative number")),
            fold=obj.get("fold") if obj.get("fold") is None else need(
                "fold", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                "a non-negative integer or null"),
        )


def _from_schema_1(obj: dict) -> dict:
    """A schema-1 line (liver only) in schema 2's field names; its label map keeps the ``liver``
    key, which ``LabelMap.from_json`` reads as the organ's for version 1."""
    out = {("organ_volume_ml" if k == "liver_volume_ml" else k): v for k, v in obj.items()}
    out["organ"] = DEFAULT_ORGAN
    return out


@dataclass(frozen=True)
class Rejection:
    """A scan the builder left out, and why. Written beside the manifest as JSON Lines."""

    scan_id: str
    image: str
    label: str
    problem: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ParsedManifest:
    entries: list[ScanEntry] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (scan_id, file, problem)


def resolve(entry_path: str, manifest_uri: str) -> str:
    """Paths in a manifest may be relative; they are relative to the manifest's folder."""
    if storage.is_remote(entry_path) or os.path.isabs(entry_path) or entry_path.startswith("file://"):
        return entry_path
    return storage.join(storage.parent(manifest_uri), entry_path)


def parse_manifest(uri: str, allowed: storage.AllowedRoots | None = None) -> ParsedManifest:
    """Read every line, collecting problems instead of stopping at the first.

    With ``allowed`` given, image and label paths are resolved (relative to the manifest) and must
    lie inside an allowed root; entries that escape are reported, not returned.
    """
    out = ParsedManifest()
    seen: dict[str, int] = {}
    try:
        with storage.open_binary(uri) as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ManifestError(f"{uri}: cannot read the manifest ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{uri}:{number}"
        if len(line) > MAX_LINE_CHARS:
            out.problems.append(("?", uri, f"line {number}: {len(line)} characters; expected at "
                                           f"most {MAX_LINE_CHARS} for one scan"))
            continue
        try:
            entry = ScanEntry.from_json(loads(line, f"line {number}"), where)
        except RecordError as exc:
            out.problems.append(("?", uri, str(exc)))
            continue
        except ManifestError as exc:
            out.problems.append(("?", uri, str(exc)))
            continue
        if entry.scan_id in seen:
            out.problems.append((entry.scan_id, uri, f"line {number}: duplicate scan_id, first "
                                 f"used on line {seen[entry.scan_id]}"))
            continue
        seen[entry.scan_id] = number
        if allowed is not None:
            try:
                entry = _with_paths(entry, allowed.check(resolve(entry.image, uri), "image"),
                                    allowed.check(resolve(entry.label, uri), "label"))
            except storage.PathEscapeError as exc:
                out.problems.append((entry.scan_id, uri, f"line {number}: {exc}"))
                continue
        out.entries.append(entry)
    return out


def _with_paths(entry: ScanEntry, image: str, label: str) -> ScanEntry:
    data = {f.name: getattr(entry, f.name) for f in fields(entry)}
    data.update(image=image, label=label)
    return ScanEntry(**data)


def default_roots(manifest_uri: str, extra: Iterable[str] = ()) -> storage.AllowedRoots:
    """The manifest's own folder, ``TUMORFORGE_ALLOWED_ROOTS`` (os.pathsep-separated) and ``extra``."""
    env = [r for r in os.environ.get("TUMORFORGE_ALLOWED_ROOTS", "").split(os.pathsep) if r]
    return storage.AllowedRoots.of([storage.parent(manifest_uri), *env, *extra])


def read_manifest(uri: str, allowed: storage.AllowedRoots | None = None) -> list[ScanEntry]:
    """Read a manifest strictly: any problem raises :class:`ManifestError` listing all of them."""
    parsed = parse_manifest(uri, allowed if allowed is not None else default_roots(uri))
    if parsed.problems:
        listing = "\n".join(f"  {sid}: {problem}" for sid, _, problem in parsed.problems)
        raise ManifestError(f"{uri}: {len(parsed.problems)} problem(s):\n{listing}")
    if not parsed.entries:
        raise ManifestError(f"{uri}: the manifest holds no scans")
    return parsed.entries


IMAGE_LIST_KIND = "image-only"


@dataclass(frozen=True)
class ImageEntry:
    """A scan without a label (image-only datasets such as Pancreas-CT or MSD Pancreas/Spleen/
    Colon): one line of an image list, which ``manifest build --layout generic`` writes when no
    label pattern is given and ``manifest label-liver`` turns into a manifest. Not a manifest
    entry: nothing can synthesize into a scan before its liver is known."""

    scan_id: str
    image: str
    source: str
    sha256: str                      # of the image file
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    kind: str = IMAGE_LIST_KIND
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        out = asdict(self)
        out["shape"], out["spacing_mm"] = list(self.shape), list(self.spacing_mm)
        return out

    @classmethod
    def from_json(cls, obj, where: str) -> "ImageEntry":
        if not isinstance(obj, dict) or obj.get("kind") != IMAGE_LIST_KIND:
            raise ManifestError(f"{where}: expected an image-list line (kind {IMAGE_LIST_KIND!r})")
        if obj.get("schema_version") not in READ_VERSIONS or isinstance(obj.get("schema_version"), bool):
            raise ManifestError(f"{where}: schema_version {obj.get('schema_version')!r} is not "
                                f"supported (this tumorforge reads versions "
                                f"{', '.join(map(str, READ_VERSIONS))})")
        known = {f.name for f in fields(cls)}
        if set(obj) != known:
            raise ManifestError(f"{where}: fields {sorted(obj)}; expected {sorted(known)}")
        problem = scan_id_problem(obj["scan_id"])
        if problem:
            raise ManifestError(f"{where}: scan_id {problem}; found {obj['scan_id']!r}")
        ok = (isinstance(obj["image"], str)
              and obj["image"] and isinstance(obj["sha256"], str) and len(obj["sha256"]) == 64
              and isinstance(obj["shape"], list) and len(obj["shape"]) == 3
              and isinstance(obj["spacing_mm"], list) and len(obj["spacing_mm"]) == 3)
        if not ok:
            raise ManifestError(f"{where}: malformed image-list line (scan_id, image, sha256, "
                                "shape and spacing_mm)")
        return cls(scan_id=obj["scan_id"], image=obj["image"], source=str(obj["source"]),
                   sha256=obj["sha256"], shape=tuple(int(n) for n in obj["shape"]),
                   spacing_mm=tuple(float(v) for v in obj["spacing_mm"]),
                   orientation=str(obj["orientation"]))


def read_images(uri: str, allowed: storage.AllowedRoots | None = None) -> list[ImageEntry]:
    """The scans of an image list, or of a manifest (its labels ignored), with image paths
    resolved and kept inside the allowed roots. Any problem raises :class:`ManifestError`."""
    allowed = allowed if allowed is not None else default_roots(uri)
    try:
        with storage.open_binary(uri) as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ManifestError(f"{uri}: cannot read the image list ({exc})") from None
    out, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{uri}:{number}"
        if len(line) > MAX_LINE_CHARS:
            raise ManifestError(f"{where}: {len(line)} characters; expected at most "
                                f"{MAX_LINE_CHARS}")
        try:
            obj = loads(line, where)
            if isinstance(obj, dict) and obj.get("kind") == IMAGE_LIST_KIND:
                entry = ImageEntry.from_json(obj, where)
            else:
                scan = ScanEntry.from_json(obj, where)
                entry = ImageEntry(scan.scan_id, scan.image, scan.source, scan.sha256["image"],
                                   scan.shape, scan.spacing_mm, scan.orientation)
        except RecordError as exc:
            raise ManifestError(str(exc)) from None
        if entry.scan_id in seen:
            raise ManifestError(f"{where}: duplicate scan_id {entry.scan_id}")
        seen.add(entry.scan_id)
        try:
            image = allowed.check(resolve(entry.image, uri), "image")
        except storage.PathEscapeError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        out.append(ImageEntry(**{**asdict(entry), "image": image}))
    if not out:
        raise ManifestError(f"{uri}: holds no scans")
    return out


def write_jsonl(uri: str, records: Iterable) -> None:
    """Write records (anything with ``to_json``) as JSON Lines, atomically."""
    text = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records).encode()
    storage.write_atomic(uri, text)


def rejected_path(manifest_uri: str) -> str:
    base = manifest_uri[:-len(".jsonl")] if manifest_uri.endswith(".jsonl") else manifest_uri
    return base + ".rejected.jsonl"
