"""The ``tumorforge stats`` command: measure every input (datasets, synthesize outputs, real-lesion
manifests), aggregate, and write the report; any error a user can cause comes back as one
:class:`FidelityError` line naming the input at fault.

Real lesions are prepared at the spacing the synthetic inputs were made with (the first input's
generator configuration), so both sides are measured on the same grid.
"""

from __future__ import annotations

import time

from tumorforge.generator.api import BackendError, GeneratorConfig, PrepareError, get_backend
from tumorforge.manifests import storage
from tumorforge.manifests.dataset.names import INDEX
from tumorforge.manifests.dataset.reader import DatasetError
from tumorforge.manifests.errors import one_line
from tumorforge.manifests.readers import ScanError
from tumorforge.manifests.records import RecordError
from tumorforge.manifests.schema import ManifestError

from .inputs import FidelityError, Measured, measure_dataset, measure_real, measure_synthesize
from .lesion_table import read_reference
from .lesions import size_bins
from .output import report
from .prepared import ScanCache

DEFAULT_POST_EFFECTS = 8              # tumors measured by paired synthesis, per input


def _names(paths) -> list[str]:
    """Short, unique names for inputs: the last part of each path."""
    out, seen = [], {}
    for p in paths:
        base = p.rstrip("/").rsplit("/", 1)[-1] or p
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def _kind(path: str) -> str:
    """``dataset`` (an index.json) or ``synthesize`` (a synthesize output folder)."""
    if not storage.exists(path.rstrip("/")):
        raise FidelityError("no such file or folder")
    return "dataset" if storage.exists(storage.join(path, INDEX)) else "synthesize"


def run(inputs, real=(), *, samples: int | None = None, manifest: str | None = None,
        allow_roots=(), backend: str = "numpy", post_effects_max: int = DEFAULT_POST_EFFECTS,
        out_dir: str | None = None, command: str = "", reference=(), log=print) -> dict:
    """Measure every input and write the report (see the package text). ``inputs``: datasets or
    synthesize output folders; ``real``: manifests of annotated scans; ``reference``: lesion
    tables of reference generators (``NAME=PATH`` or ``PATH``). Raises :class:`FidelityError`
    naming the input at fault."""
    known = (FidelityError, DatasetError, ManifestError, ScanError, PrepareError, RecordError,
             BackendError, OSError, ValueError)
    if not inputs and not real:
        raise FidelityError("no input: name a dataset or synthesize output, or --real MANIFEST")
    if samples is not None and samples < 1:
        raise FidelityError(f"--samples {samples}: expected at least 1")
    if post_effects_max < 0:
        raise FidelityError(f"--post-effects {post_effects_max}: expected 0 or more")
    try:
        synthesis = get_backend(backend)
    except BackendError as exc:
        raise FidelityError(f"--backend {backend}: {exc}") from None
    started = time.perf_counter()
    references = [read_reference(spec) for spec in reference]    # a bad table fails first
    cache = ScanCache()
    bins = size_bins()
    names = _names([*inputs, *real])
    measured: list[Measured] = []
    spacing = None
    for path, name in zip(inputs, names):
        log(f"stats: reading {path}")
        try:
            kind = _kind(path)
            if kind == "dataset":
                m = measure_dataset(path, name, samples, manifest, allow_roots, synthesis, cache,
                                    post_effects_max, bins, log)
            else:
                m = measure_synthesize(path, name, samples, allow_roots, synthesis, cache,
                                       post_effects_max, bins)
        except known as exc:
            raise FidelityError(f"{path}: {one_line(exc)}") from None
        spacing = spacing or _spacing_of(m)
        measured.append(m)
    config = GeneratorConfig(**({"target_spacing_mm": spacing} if spacing else {}))
    for path, name in zip(real, names[len(inputs):]):
        log(f"stats: reading real lesions of {path}")
        try:
            measured.append(measure_real(path, name, samples, allow_roots, config, cache, bins))
        except known as exc:
            raise FidelityError(f"--real {path}: {one_line(exc)}") from None
    measured += references
    try:
        return report(measured, command, time.perf_counter() - started, cache, bins, out_dir)
    except OSError as exc:
        raise FidelityError(f"--out {out_dir}: {one_line(exc)}") from None


def _spacing_of(m: Measured):
    config = m.info.get("generator_config") or {}
    spacing = config.get("target_spacing_mm")
    return tuple(float(s) for s in spacing) if spacing else None

