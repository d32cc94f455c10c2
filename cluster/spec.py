"""The generation job spec (YAML) and its validation.

Every field has a command-line flag of the same name (``--samples-per-shard`` for
``samples_per_shard``); flags override the file. Fields under ``generator`` are the generator's
configuration (see ``generator/config.py``); ``resources`` only say how to run, not what to make, so
they never change the dataset's identity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from tumorforge.generator.backend import BACKENDS, DEFAULT_BACKEND
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.tumor_models import tumor_model
from tumorforge.manifests.flags import merged
from tumorforge.manifests.records import RecordError, from_fields
from tumorforge.manifests.dataset.formats import FORMATS
from tumorforge.manifests.dataset.names import DEFAULT_FORMATS
from tumorforge.manifests.errors import UserError


class SpecError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Resources:
    actors: int = 2                  # writer actors
    gpus_per_actor: float = 0.0      # fractional allowed; > 0 needs the cupy backend
    cpus_per_actor: float = 1.0
    gpu_memory_mb: int = 0           # GPU memory pool cap per actor; 0: its share of the device
    scan_cache_mb: int = 2048        # prepared scans an actor keeps (LRU by memory)
    scan_retries: int = 2            # re-tries of a scan that fails to load, before giving up
    shard_retries: int = 3           # re-runs of a shard whose actor died


@dataclass(frozen=True)
class JobSpec:
    manifest: str
    output: str
    samples: int
    samples_per_shard: int = 64
    root_seed: int = 0
    backend: str = DEFAULT_BACKEND   # numpy | cupy | auto (resolved before planning)
    formats: tuple[str, ...] = DEFAULT_FORMATS   # storage formats to write (the format table)
    compression: str = "lz4"         # Blosc codec: lz4 (fast) | zstd (18 % smaller, 4x the CPU)
    scans_per_shard: int = 2         # distinct scans one shard draws from
    # Not part of the dataset id: the samples are the same in both (see identity()).
    dataset_format: int = 3          # 3: BLAKE3 + crc32c | 2: sha256; an output keeps its own
    allow_roots: tuple[str, ...] = ()
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    resources: Resources = field(default_factory=Resources)

    def __post_init__(self):
        if self.samples < 1:
            raise SpecError(f"samples must be >= 1, got {self.samples}")
        if not 1 <= self.samples_per_shard <= 100_000:
            raise SpecError(f"samples_per_shard must be 1..100000, got {self.samples_per_shard}")
        if not self.formats or set(self.formats) - set(FORMATS):
            raise SpecError(f"formats {list(self.formats)}: expected one or more of "
                            f"{tuple(FORMATS)}")
        from tumorforge.manifests.dataset.codecs import COMPRESSIONS
        if self.compression not in COMPRESSIONS:
            raise SpecError(f"compression {self.compression!r}: expected one of "
                            f"{sorted(COMPRESSIONS)}")
        from tumorforge.manifests.dataset.records import WRITABLE_FORMATS
        if self.dataset_format not in WRITABLE_FORMATS:
            raise SpecError(f"dataset_format {self.dataset_format!r}: expected one of "
                            f"{list(WRITABLE_FORMATS)}")
        if self.backend not in BACKENDS:
            raise SpecError(f"backend {self.backend!r}: expected one of {BACKENDS}")
        if self.scans_per_shard < 1:
            raise SpecError(f"scans_per_shard must be >= 1, got {self.scans_per_shard}")
        r = self.resources
        if (r.actors < 1 or r.gpus_per_actor < 0 or r.cpus_per_actor <= 0
                or r.gpu_memory_mb < 0):
            raise SpecError(f"resources {r}: need actors >= 1, gpus_per_actor >= 0, "
                            "cpus_per_actor > 0, gpu_memory_mb >= 0")
        if r.gpus_per_actor > 0 and self.backend == "numpy":
            raise SpecError("gpus_per_actor > 0 needs backend cupy (or auto on a GPU node)")

    @property
    def shards(self) -> int:
        return -(-self.samples // self.samples_per_shard)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["generator"] = self.generator.to_json()
        out["formats"] = list(self.formats)
        out["allow_roots"] = list(self.allow_roots)
        return out

    def identity(self) -> dict:
        """What determines the dataset's samples: everything but where it goes, how it runs, how
        many samples it holds (sample i is the same whatever the total, so a dataset can grow
        under the same id) and how its integrity is checked (``dataset_format``: the samples'
        arrays, keys and parameters are the same in formats 2 and 3; only the digests recorded
        beside them differ). A tumor model that is not built in adds its definition
        (``TumorModel.identity``), so a registered model never shares a dataset id with another."""
        out = self.to_json()
        for key in ("output", "resources", "allow_roots", "manifest", "samples", "dataset_format"):
            out.pop(key)
        model = tumor_model(self.generator.profile)
        if not model.builtin:        # a built-in model's definition is the generator version's
            out["tumor_model"] = model.identity()
        return out

    @classmethod
    def from_json(cls, obj: dict, where: str = "job spec") -> "JobSpec":
        """Read through the strict-record checker: every field, the ``generator`` section (at any
        depth) and ``resources`` checked by name and type, and the whole spec checked, before any
        work starts. Anything wrong is one :class:`SpecError` naming ``where`` and the field."""
        if not isinstance(obj, dict):
            raise SpecError(f"{where}: expected a mapping, found {type(obj).__name__}")
        try:
            data = dict(obj)
            data["generator"] = GeneratorConfig.from_json(obj.get("generator") or {},
                                                          f"{where}: generator")
            data["resources"] = obj.get("resources") or {}
            return from_fields(cls, data, where)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        except RecordError as exc:
            raise SpecError(str(exc)) from None


def load_spec(path: str | None, overrides: dict) -> JobSpec:
    """The spec from a YAML file (if any) with ``overrides`` (flags) applied on top."""
    obj: dict = {}
    if path:
        try:
            with open(path) as f:
                obj = yaml.safe_load(f) or {}
        except OSError as exc:
            raise SpecError(f"{path}: cannot read the job spec ({exc})") from exc
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(obj, dict):
        raise SpecError(f"{path}: expected a mapping of job spec fields, found {type(obj).__name__}")
    obj = merged(obj, {k: v for k, v in overrides.items() if v is not None},
                 sections=("generator", "resources", "generator.paper", "generator.released"))
    return JobSpec.from_json(obj, path or "job spec")
