"""Training configuration (YAML; every field also a flag of ``tumorforge train``). Imports no
torch, so command-line parsers stay fast."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import yaml

from tumorforge.manifests.errors import UserError
from tumorforge.manifests.records import RecordError, typed_fields

from .models import MODELS

DEVICES = ("auto", "cpu", "cuda")     # where a model runs: auto takes CUDA when torch sees it


class ConfigError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Source:
    """One dataset in the training mix."""

    url: str
    weight: float = 1.0
    format: str = "zarr"              # a storage format (manifests/dataset/formats.py)
    dataset_id: str | None = None     # if given, the dataset must have this id
    samples: int | None = None        # recorded in checkpoints: the dataset's size when opened
                                      # (a dataset grows under its id)


@dataclass(frozen=True)
class TrainConfig:
    sources: tuple[Source, ...]           # the training mix: real, synthetic, or both
    out: str = "runs/train"               # checkpoints, metrics.jsonl, TensorBoard events
    model: str = "unet"
    steps: int = 1000                     # optimizer steps
    batch_size: int = 2                   # samples per micro-batch (per rank)
    accumulate: int = 1                   # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 50                # linear warmup, then cosine decay to 0 at ``steps``
    workers: int = 2                      # DataLoader workers per rank
    seed: int = 0
    checkpoint_every: int = 100
    keep: int = 3                         # checkpoints kept
    log_every: int = 10
    val: Source | None = None             # held-out crops for a periodic validation Dice
    val_samples: int = 8
    val_every: int = 100
    device: str = "auto"                  # auto | cpu | cuda
    bf16: bool = True                     # autocast to bfloat16 on CUDA
    resample: bool = True                 # wds sources: infinite resampled stream
    shuffle_buffer: int = 32              # wds sources: samples in the seeded shuffle buffer
    # Your own MONAI transforms, applied to each sample in the DataLoader workers before
    # batching: "package.module:function", a function returning a dictionary transform over
    # "image" (float32 HU) and "label" (uint8), both channel-first (1, Z, Y, X); it must keep
    # the crop's shape and HU units (the trainer windows afterwards). A Randomizable is seeded
    # per (seed, rank, worker).
    transforms: str | None = None         # your MONAI transforms: "package.module:function"

    def __post_init__(self):
        if not self.sources:
            raise ConfigError("no training sources: give at least one dataset (--source URL)")
        if self.model not in MODELS:
            raise ConfigError(f"model {self.model!r}: expected one of {MODELS}")
        for name in ("steps", "batch_size", "accumulate", "checkpoint_every", "log_every",
                     "val_every", "val_samples", "keep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r}: expected one of {DEVICES}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.transforms is not None:
            load_transforms(self.transforms)            # a bad import path fails here

    def warnings(self) -> list[str]:
        """Settings that are allowed but probably not meant."""
        out = []
        if self.warmup_steps > 0.1 * self.steps:
            out.append(f"warmup_steps {self.warmup_steps} is {self.warmup_steps / self.steps:.0%} "
                       f"of the {self.steps} steps (more than 10 %): the learning rate peaks late "
                       "and the cosine decay has little room")
        return out

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def load_transforms(path: str):
    """The transform ``package.module:function`` names (the function's return value)."""
    import importlib
    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"transforms {path!r}: expected 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"transforms {path!r}: cannot import it ({type(exc).__name__}: "
                          f"{exc})") from None
    if not callable(factory):
        raise ConfigError(f"transforms {path!r}: {name} is not callable")
    transform = factory()
    if not callable(transform):
        raise ConfigError(f"transforms {path!r}: {name}() returned {type(transform).__name__}, "
                          "not a transform")
    return transform


def parse_source(text: str) -> dict:
    """``URL[,weight=W][,format=zarr|wds]`` from the command line."""
    url, *opts = text.split(",")
    out: dict = {"url": url}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "weight":
            out["weight"] = float(value)
        elif key == "format":
            out["format"] = value
        else:
            raise ConfigError(f"source option {opt!r}: expected weight=W or format=zarr|wds")
    return out


def load_config(path: str | None, overrides: dict) -> TrainConfig:
    """The training configuration from ``path`` (YAML, optional) with ``overrides`` (flags) on top,
    read through the strict-record checker: an unknown or mistyped field, at any depth, is one
    :class:`ConfigError` naming the file and the field. A source may be written as its URL alone."""
    obj: dict = {}
    where = path or "training config"
    if path:
        try:
            with open(path) as f:
                obj = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the training config ({exc})") from exc
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: expected a mapping of training config fields, found "
                              f"{type(obj).__name__}")
    obj = {**obj, **{k: v for k, v in overrides.items() if v is not None}}
    if isinstance(obj.get("sources"), (list, tuple)):
        obj["sources"] = [{"url": s} if isinstance(s, str) else s for s in obj["sources"]]
    elif obj.get("sources") is None:
        obj["sources"] = ()
    if isinstance(obj.get("val"), str):
        obj["val"] = {"url": obj["val"]}
    try:
        fields = typed_fields(TrainConfig, obj, where)
    except RecordError as exc:
        raise ConfigError(str(exc)) from None
    return TrainConfig(**fields)
