"""Generated datasets as plain torch Datasets yielding MONAI-convention dictionaries, for users who
bring their own training loop (the trainer's own loader is ``data.py``).

Each item is ``{"image": MetaTensor (1, R, A, S) float32 HU, "label": MetaTensor (1, R, A, S)
uint8 (0 background, 1 liver, 2 tumor), "key": str}``: channel-first, RAS voxel axes (the stored
(Z, Y, X) crop transposed), as ``LoadImaged`` + ``EnsureChannelFirstd`` + ``Orientationd("RAS")``
give a scan, so MONAI dictionary transforms apply unchanged. The MetaTensors carry the crop's
affine (voxel -> RAS+ world mm of its scan, from the sample's provenance; datasets written before
provenance version 2 get the crop's spacing and its origin in the resampled scan instead) and, in
``meta``, the sample's key, index, dataset id, scan id and spacing. Every sample is checked
against the index's digests before it is handed out; a corrupt one raises :class:`DatasetError`
naming it (``skip_corrupt=True`` skips it in the iterable instead).

- :class:`CropDataset`: map-style (``ds[i]``), local or ``s3://``, over the dataset's first storage
  format with random access (zarr: the lean reader's two ranged GETs per sample), plus one read of
  the shard's provenance per shard (kept for the last few shards).
- :class:`CropStream`: iterable, in any storage format the dataset has (zarr in order, WebDataset
  tars streamed), shards split over DataLoader workers; ``shuffle_buffer`` shuffles within a
  seeded buffer.
"""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset, get_worker_info

from tumorforge.manifests.conventions import zyx_to_ras
from tumorforge.manifests.dataset.formats import FORMATS, random_access_formats
from tumorforge.manifests.dataset.reader import Dataset, DatasetError
from tumorforge.manifests.dataset.records import Provenance


def _affine(dataset: Dataset, prov: dict) -> np.ndarray:
    """The crop's voxel (R, A, S) -> world affine from its provenance."""
    rows = prov.get("crop_affine")
    if rows:
        return np.asarray(rows, np.float64)
    spacing = np.asarray(dataset.index.spacing_mm, float)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(prov["params"]["crop_origin"], float) * spacing
    return affine


def as_item(dataset: Dataset, key: str, image: np.ndarray, label: np.ndarray, prov: dict) -> dict:
    """A stored crop ((Z, Y, X) int16 / uint8) and its provenance as a MONAI-convention dict,
    after checking it against the index (DatasetError names the sample when it differs)."""
    want = dataset.hashes(key)
    if want is None or image.shape != dataset.crop_shape or label.shape != dataset.crop_shape \
            or not want.matches(image, label):
        raise DatasetError(f"{dataset.url} sample {key}: its arrays do not match the index's "
                           f"digests (corrupt)")
    affine = torch.as_tensor(_affine(dataset, prov))
    meta = {"key": key, "index": int(prov["index"]), "dataset_id": dataset.dataset_id,
            "scan_id": prov["scan_id"], "spacing_mm": list(dataset.index.spacing_mm)}
    img = torch.from_numpy(np.ascontiguousarray(zyx_to_ras(image), np.float32))[None]
    lab = torch.from_numpy(np.ascontiguousarray(zyx_to_ras(label)))[None]
    return {"image": MetaTensor(img, affine=affine, meta=dict(meta)),
            "label": MetaTensor(lab, affine=affine.clone(), meta=dict(meta)), "key": key}


class CropDataset(TorchDataset):
    """Map-style access to the dataset at ``url``, read in its first storage format with random
    access."""

    PROVENANCE_CACHE = 8          # shards whose provenance is kept

    def __init__(self, url: str):
        self.url = url
        self.dataset = Dataset(url)
        found = random_access_formats(self.dataset.formats)
        if not found:
            raise DatasetError(f"{url}: map-style access needs a storage format with random "
                               f"access ({random_access_formats(FORMATS)}); this dataset has "
                               f"{self.dataset.formats} (use CropStream)")
        self.reader = self.dataset.reader(found[0])
        self.reader.check()
        self._provenance: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.dataset)

    def _prov(self, i: int) -> dict:
        shard = self.dataset.shard_of(i)
        records = self._provenance.get(shard.shard)
        if records is None:
            records = self._provenance[shard.shard] = self.dataset.shard_provenance(shard)
            while len(self._provenance) > self.PROVENANCE_CACHE:
                self._provenance.popitem(last=False)
        return records[i - shard.start]

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        i = i % len(self)
        key, image, label = self.reader.sample(i)
        return as_item(self.dataset, key, image, label, self._prov(i))

    def provenance(self, i: int) -> Provenance:
        """How sample ``i`` was made (its full provenance record)."""
        return Provenance.from_json(self._prov(i), f"{self.url} sample {i}")


class CropStream(IterableDataset):
    """One pass over the dataset at ``url`` in storage format ``fmt`` (a name of the format
    table), shards split over DataLoader workers (and over ``world`` ranks, this one being
    ``rank``); with ``shuffle_buffer`` > 0, a seeded shuffle within a buffer of that many
    samples."""

    def __init__(self, url: str, fmt: str = "wds", shuffle_buffer: int = 0, seed: int = 0,
                 rank: int = 0, world: int = 1, skip_corrupt: bool = False):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: expected {' or '.join(FORMATS)}")
        self.url, self.fmt, self.shuffle_buffer, self.seed = url, fmt, shuffle_buffer, seed
        self.rank, self.world, self.skip_corrupt = rank, world, skip_corrupt
        self.dataset = Dataset(url)
        self.reader = self.dataset.reader(fmt)

    def _shards(self) -> list[int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = list(range(self.dataset.index.shard_count))[self.rank::self.world]
        return mine[worker::workers]

    def _samples(self):
        ds = self.dataset
        for k in self._shards():
            for key, image, label, prov in self.reader.stream(ds.shard(k)):
                try:
                    yield as_item(ds, key, image, label, prov)
                except DatasetError:
                    if not self.skip_corrupt:
                        raise

    def __iter__(self):
        if self.shuffle_buffer <= 0:
            yield from self._samples()
            return
        info = get_worker_info()
        rng = random.Random(f"{self.seed}/{self.rank}/{info.id if info else 0}")
        buffer = []
        for item in self._samples():
            buffer.append(item)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer
