"""Tumor synthesis as a MONAI dictionary transform: ``TumorSynthesisd``, in place of the authors'
``TumorGenerated`` in a training ``Compose``.

It takes a sample as MONAI loads it (``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd("RAS")``,
``Spacingd``: channel-first ``(1, X, Y, Z)`` image in HU and label, ``MetaTensor`` with its affine),
prepares it as a healthy scan (liver mask from the label, vessels and parenchyma statistics as
eq. 1-2 say), draws one sample's tumors with the chosen profile and size mix, paints them over the
whole liver region and gives back the image (same dtype) and the label (0 background, 1 liver, 2
tumor). Voxels synthesis did not touch keep their values.

Seeding: MONAI's ``Randomizable`` contract. ``set_random_state(seed)`` (or a ``Compose`` /
DataLoader worker seeding) fixes the transform's generator; each call draws one seed from it (0 to
2^31 - 2, as RandomState gives) and every tumor parameter from ``SeedSequence(seed)``. The seed and
every drawn parameter go into the image's metadata (``meta["tumor_synthesis"]``, JSON text so that
it collates; read it with :func:`synthesis_record`), and :meth:`TumorSynthesisd.replay`
repaints a sample from that record: same arrays, bit for bit, on the same backend.

Caching: preparing the scan (resampling, liver statistics, vessels) is deterministic and is most
of a call's time on a whole scan. :class:`PrepareTumorSynthesisd` does it alone, so that MONAI's
``CacheDataset`` (which caches every transform before the first random one) keeps it; put it right
before ``TumorSynthesisd`` with the same settings, and the random step then only draws and paints.
Without it ``TumorSynthesisd`` prepares the scan itself, as before.

Backend: NumPy, or CuPy when the image tensor is on a GPU (``backend="auto"``); preparation and
parameter drawing run on the CPU either way. This module imports MONAI and torch: import it from
``tumorforge.generator.transform`` (``tumorforge.generator`` itself stays importable without them).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from tumorforge.manifests.conventions import from_ras
from tumorforge.manifests.records import canonical_json
from tumorforge.manifests.schema import LabelMap

from . import GENERATOR_VERSION
from .backend import get_backend
from .config import DEFAULT_PROFILE, GeneratorConfig
from .params import SampleParams
from .prepare import PrepareError, prepare_scan
from .whole_scan import organ_label, paste_region, scan_on_grid, synthesize_region, whole_params

META_KEY = "tumor_synthesis"
PREPARED_KEY = "tumor_synthesis_prepared"     # PrepareTumorSynthesisd's output, popped by the next


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What both transforms are given: the generator configuration and the label values."""
    config: GeneratorConfig
    label_map: LabelMap
    allow_missing_liver: bool

    @classmethod
    def of(cls, profile, size_mix, config, liver_values, tumor_values, vessel_values,
           allow_missing_liver) -> "_Settings":
        base = config if isinstance(config, GeneratorConfig) else \
            GeneratorConfig.from_json({**(config or {})}) if config else GeneratorConfig()
        changes = {"profile": profile, "negative_fraction": 0.0}
        if size_mix is not None:
            changes["size_mix"] = dict(size_mix)
        return cls(dataclasses.replace(base, **changes),
                   LabelMap(organ=tuple(int(v) for v in liver_values),
                            tumor=tuple(int(v) for v in tumor_values),
                            vessel=tuple(int(v) for v in vessel_values)),
                   bool(allow_missing_liver))

    def key(self) -> str:
        """What a prepared scan depends on: the configuration and the label values."""
        return canonical_json({"config": self.config.to_json(),
                               "label_map": dataclasses.asdict(self.label_map)})

    def prepare(self, image, label, keys=("image", "label")):
        """(the prepared scan or None, the reason it could not be prepared or None)."""
        img, affine = _volume(image, keys[0]), _affine(image)
        lab = np.rint(_volume(label, keys[1])).astype(np.int32)
        if img.shape != lab.shape:
            raise ValueError(f"{keys[0]} shape {img.shape} and {keys[1]} shape {lab.shape} "
                             "differ")
        try:
            return prepare_scan("sample", img, lab, affine,
                                organ_values=self.label_map.organ_values(),
                                vessel_values=self.label_map.vessel, config=self.config,
                                tumor_values=self.label_map.tumor), None
        except PrepareError as exc:
            if not self.allow_missing_liver:
                raise ValueError(str(exc)) from None
            return None, str(exc)


@dataclasses.dataclass(frozen=True)
class PreparedSample:
    """A scan prepared for synthesis, carried from :class:`PrepareTumorSynthesisd` to
    :class:`TumorSynthesisd` under ``PREPARED_KEY`` (never collated: the second pops it)."""
    key: str
    scan: object            # a PreparedScan, or None with ``reason``
    reason: str | None = None


class PrepareTumorSynthesisd(MapTransform):
    """The deterministic half of :class:`TumorSynthesisd`: the scan prepared for synthesis (RAS,
    resampled, liver statistics, vessels), put in the sample under ``PREPARED_KEY``. Not random,
    so ``CacheDataset`` caches its output; give it the same arguments as the ``TumorSynthesisd``
    that follows it (a mismatch is a ValueError there)."""

    def __init__(self, keys: KeysCollection = ("image", "label"), profile: str = DEFAULT_PROFILE,
                 size_mix: dict | None = None, liver_values=(1,), tumor_values=(2,),
                 vessel_values=(), config: GeneratorConfig | dict | None = None,
                 allow_missing_liver: bool = True) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys {self.keys}: expected (image key, label key)")
        self.settings = _Settings.of(profile, size_mix, config, liver_values, tumor_values,
                                     vessel_values, allow_missing_liver)

    def __call__(self, data):
        d = dict(data)
        scan, reason = self.settings.prepare(d[self.keys[0]], d[self.keys[1]], self.keys)
        d[PREPARED_KEY] = PreparedSample(self.settings.key(), scan, reason)
        return d


class TumorSynthesisd(Randomizable, MapTransform):
    """Paint seeded synthetic liver tumors into a MONAI sample.

    ``keys``: the image key and the label key, in that order. ``profile`` (default ``released``,
    the default of every command), ``size_mix`` and any other :class:`GeneratorConfig` field
    (``config``) as in generation jobs (``size_mix``: weights of tiny, small, medium, large, mix). ``prob``: chance a sample gets tumors (the authors' transform
    used 0.9 during training); otherwise it passes unchanged and its record says so.
    ``liver_values`` / ``tumor_values`` / ``vessel_values``: label values of the liver, of tumors the
    scan already has (kept), and of labelled vessels. ``backend``: ``"numpy"``, ``"cupy"`` or
    ``"auto"`` (CuPy when the image is on a GPU). A sample without liver voxels passes unchanged
    with the reason in its record, unless ``allow_missing_liver=False`` (then ValueError).
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), profile: str = DEFAULT_PROFILE,
                 size_mix: dict | None = None, prob: float = 1.0, liver_values=(1,),
                 tumor_values=(2,), vessel_values=(), backend: str = "auto",
                 config: GeneratorConfig | dict | None = None,
                 allow_missing_liver: bool = True) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys {self.keys}: expected (image key, label key)")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob {prob}: expected a probability in [0, 1]")
        self.settings = _Settings.of(profile, size_mix, config, liver_values, tumor_values,
                                     vessel_values, allow_missing_liver)
        self.config, self.label_map = self.settings.config, self.settings.label_map
        self.prob = float(prob)
        self.backend = backend
        self._apply, self._seed = True, 0

    def randomize(self, data=None) -> None:
        self._apply = bool(self.R.random() < self.prob)
        self._seed = int(self.R.randint(0, 2 ** 31 - 1))

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        if not self._apply:
            d.pop(PREPARED_KEY, None)
            return self._record(d, {"applied": False, "seed": self._seed})
        return self._paint(d, self._seed, None)

    def replay(self, data, record: dict | None = None):
        """The sample painted again from a record (``meta["tumor_synthesis"]`` of an earlier
        output, by default the one ``data``'s image carries): the same tumors, drawn from its
        seed, checked against its parameters. Give it the sample as it was before the transform."""
        d = dict(data)
        record = record or synthesis_record(d[self.keys[0]])
        if not record or not record.get("applied"):
            d.pop(PREPARED_KEY, None)
            return self._record(d, dict(record or {"applied": False}))
        return self._paint(d, int(record["seed"]), SampleParams.from_json(record["params"]))

    # -----------------------------------------------------------------------------------------
    def _record(self, d: dict, record: dict) -> dict:
        image = d[self.keys[0]]
        if isinstance(image, MetaTensor):      # JSON text: collates into a batch as strings
            image.meta[META_KEY] = canonical_json(record)
        return d

    def _paint(self, d: dict, seed: int, expected: SampleParams | None) -> dict:
        image_key, label_key = self.keys
        image, label = d[image_key], d[label_key]
        on_gpu = isinstance(image, torch.Tensor) and image.is_cuda
        backend = get_backend("cupy" if on_gpu and self.backend == "auto" else
                              ("numpy" if self.backend == "auto" else self.backend))
        affine = _affine(image)
        img = _volume(image, image_key)
        lab = np.rint(_volume(label, label_key)).astype(np.int32)
        if img.shape != lab.shape:
            raise ValueError(f"{image_key} shape {img.shape} and {label_key} shape {lab.shape} "
                             "differ")
        prepared = d.pop(PREPARED_KEY, None)
        if prepared is None:
            scan, reason = self.settings.prepare(image, label, self.keys)
        elif prepared.key != self.settings.key():
            raise ValueError("the sample was prepared (PrepareTumorSynthesisd) with other "
                             "settings than this TumorSynthesisd's; give both the same arguments")
        else:
            scan, reason = prepared.scan, prepared.reason
        if scan is None:
            return self._record(d, {"applied": False, "seed": seed, "reason": reason})
        params = whole_params(np.random.default_rng(np.random.SeedSequence(seed)), scan,
                              self.config)
        if expected is not None and params.to_json() != expected.to_json():
            raise ValueError("the record's parameters are not what its seed draws on this sample "
                             "(another sample, configuration or generator version)")
        region_image, region_label = synthesize_region(scan, params, backend)
        out = scan_on_grid("native", img, organ_label(lab, self.label_map), affine,
                           scan.spacing_mm)
        whole = paste_region(out, scan, region_image, region_label)
        # Untouched voxels keep their exact values (the int16 rounding is only where HU changed).
        changed = whole.image != from_ras(out.image, affine)
        new_img = np.where(changed, whole.image.astype(np.float32), img)
        d[image_key] = _like(image, new_img)
        d[label_key] = _like(label, whole.label.astype(np.float32))
        return self._record(d, {"applied": True, "seed": seed, "params": params.to_json(),
                                "config": self.config.to_json(),
                                "generator_version": GENERATOR_VERSION, "backend": backend.name})


def synthesis_record(image) -> dict | None:
    """What :class:`TumorSynthesisd` recorded in ``image``'s metadata (a dict: applied, seed,
    params, config, generator version, backend), or None."""
    text = getattr(image, "meta", {}).get(META_KEY)
    return json.loads(text) if isinstance(text, str) else text


def _affine(image) -> np.ndarray:
    affine = getattr(image, "affine", None)
    if affine is None:
        return np.eye(4)
    return np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine,
                      np.float64)


def _volume(x, key: str) -> np.ndarray:
    """A channel-first single-channel tensor or array as a (X, Y, Z) float32 array."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise ValueError(f"{key}: expected a channel-first (1, X, Y, Z) volume, found shape "
                         f"{tuple(arr.shape)}")
    return arr[0].astype(np.float32)


def _like(template, arr: np.ndarray):
    """``arr`` (X, Y, Z) as ``template`` is: channel-first, same type, dtype, device and meta."""
    arr = arr[None]
    if isinstance(template, torch.Tensor):
        out = torch.as_tensor(arr, dtype=template.dtype if template.dtype.is_floating_point
                              else torch.float32).to(template.device)
        if template.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8):
            out = out.round().to(template.dtype)
        if isinstance(template, MetaTensor):
            out = MetaTensor(out, meta=dict(template.meta))
        return out
    return arr.astype(np.asarray(template).dtype)
