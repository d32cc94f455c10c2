"""Streaming training samples from generated datasets (local or ``s3://``), never unpickling.

Two streams over the dataset contract of ``manifests/dataset/``, by what a source's storage format
(its entry of the format table) can do:
- **by sample** (formats with random access: zarr): an exact-epoch order: epoch e is a permutation
  of all samples seeded by (seed, e); rank r takes every world-th sample of it and DataLoader worker
  w every n-th of that, so each sample is read once per epoch and a stream can be resumed at any
  sample without reading what it skips.
- **by shard** (the others: wds): an infinite stream of resampled shards (WebDataset's
  ``ResampledShards`` with a fixed seed and ``deterministic=True``, seeded per rank and worker) or,
  with ``resample=False``, one pass in which ranks and then workers split the shards; each shard
  streamed by its format's reader; then a seeded shuffle buffer.

Several sources mix by weight: per sample, a seeded draw picks the source. Every sample is checked
against the index (shape, dtype, digests of image and label: sha256, or BLAKE3 in format 3); a
bad one is passed on marked corrupt with its key, so the trainer can skip and count it without
the stream losing its place.
"""

from __future__ import annotations

import random
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tumorforge.manifests.dataset.formats import FORMATS, random_access_formats
from tumorforge.manifests.dataset.names import parse_shard, shard_name
from tumorforge.manifests.dataset.reader import Dataset, DatasetError

from .config import Source


def open_source(src: Source) -> Dataset:
    """Open and check a source at start: it must exist, be complete and be the expected dataset."""
    if src.format not in FORMATS:
        raise DatasetError(f"{src.url}: format {src.format!r}, expected one of {list(FORMATS)}")
    ds = Dataset(src.url)
    if src.dataset_id and ds.dataset_id != src.dataset_id:
        raise DatasetError(f"{src.url} holds dataset {ds.dataset_id}, the configuration expects "
                           f"{src.dataset_id}")
    # A format the dataset lacks, or bad metadata, stops here with its message, not per sample.
    ds.reader(src.format).check()
    return ds


class _Checker:
    """Per-sample integrity against the index (formats 2-3: the sample's shard record)."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.shape = ds.crop_shape

    def sample(self, key, image, label) -> dict:
        try:
            want = self.ds.hashes(key)
        except DatasetError:         # its shard's record is missing or differs from the index
            want = None
        ok = (want is not None and image.shape == self.shape and label.shape == self.shape
              and image.dtype == np.int16 and label.dtype == np.uint8
              and want.matches(image, label))
        if not ok:
            image = np.zeros(self.shape, np.int16)
            label = np.zeros(self.shape, np.uint8)
        return {"image": image, "label": label, "key": str(key), "corrupt": not ok}


def _split() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class SampleStream:
    """Exact-epoch order over a dataset for one (rank, worker) split, read in storage format
    ``fmt``, which must have random access (by default the dataset's first that has)."""

    def __init__(self, ds: Dataset, seed: int, rank: int, world: int, fmt: str | None = None):
        self.ds, self.seed, self.rank, self.world = ds, seed, rank, world
        if fmt is None:
            found = random_access_formats(ds.formats)
            if not found:
                raise DatasetError(f"{ds.url}: reading by sample needs a format with random "
                                   f"access; this dataset has {ds.formats}")
            fmt = found[0]
        self.reader = ds.reader(fmt)
        self.check = _Checker(ds)

    def order(self, worker: int, workers: int, start: int = 0):
        """Sample indices this split reads, from its ``start``-th on (an infinite generator)."""
        n = len(self.ds)
        epoch, pos = 0, start
        while True:
            perm = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch,)))\
                .permutation(n)
            mine = perm[self.rank::self.world][worker::workers]
            if len(mine) == 0:
                raise DatasetError(f"{self.ds.url}: {n} samples are too few for {self.world} "
                                   f"rank(s) x {workers} worker(s)")
            if pos >= len(mine):
                pos -= len(mine)
            else:
                yield from (int(i) for i in mine[pos:])
                pos = 0
            epoch += 1

    def load(self, i: int) -> dict:
        try:
            return self.check.sample(*self.reader.sample(i))
        except Exception:            # undecodable chunk: corrupt, not fatal
            return self.check.sample(self.ds.keys[i], np.zeros(0), np.zeros(0))


class ShardStream:
    """The shards of a dataset read in storage format ``fmt``, for one rank; splits by
    DataLoader worker inside."""

    def __init__(self, ds: Dataset, seed: int, rank: int, world: int, fmt: str,
                 resample: bool = True, shuffle_buffer: int = 32):
        self.ds, self.seed, self.rank, self.world = ds, seed, rank, world
        self.resample, self.shuffle_buffer = resample, shuffle_buffer
        self.reader = ds.reader(fmt)
        self.check = _Checker(ds)
        self.urls = [shard_name(k) for k in range(ds.index.shard_count)]

    def pipeline(self, start_epoch: int = 0):
        import webdataset as wds
        rank, world = self.rank, self.world
        if self.resample:
            shards = wds.ResampledShards(self.urls, seed=self.seed + start_epoch,
                                         worker_seed=lambda: rank * 1000 + _split()[0],
                                         deterministic=True)
            stages = [shards]
        else:
            def by_rank(src):
                return (s for i, s in enumerate(src) if i % world == rank)
            stages = [wds.SimpleShardList(self.urls), by_rank, wds.split_by_worker]
        worker = _split()[0]
        rng = random.Random(f"{self.seed}/{start_epoch}/{rank}/{worker}")
        return wds.DataPipeline(*stages, self._samples, wds.shuffle(self.shuffle_buffer,
                                                                    initial=self.shuffle_buffer,
                                                                    rng=rng))

    def _samples(self, shards):
        for item in shards:
            k = parse_shard(item["url"])
            seen = set()
            try:                     # streamed: one member in memory at a time
                for key, image, label, _ in self.reader.stream(self.ds.shard(k)):
                    seen.add(key)
                    yield self.check.sample(key, image, label)
            except Exception:        # unreadable from here on: the rest of the tar is corrupt
                start, count = self.ds.index.layout(k)
                for key in self.ds.keys[start:start + count]:
                    if key not in seen:
                        yield self.check.sample(key, np.zeros(0), np.zeros(0))


class MixedStream(IterableDataset):
    """Samples from several sources by weight, deterministic per (seed, rank, worker).

    ``start`` skips, per worker, the samples it delivered before a checkpoint (exact for a source
    read by sample; one read by shard restarts its seeded stream from the next epoch instead).
    """

    def __init__(self, sources: list[Source], seed: int, rank: int = 0, world: int = 1,
                 batch_size: int = 1, start_batches: int = 0, resample: bool = True,
                 shuffle_buffer: int = 32, transforms: str | None = None):
        self.sources = sources
        self.seed, self.rank, self.world = seed, rank, world
        self.batch_size, self.start_batches, self.resample = batch_size, start_batches, resample
        self.shuffle_buffer, self.transforms = shuffle_buffer, transforms
        self.datasets = [open_source(s) for s in sources]
        weights = np.array([s.weight for s in sources], float)
        if weights.min() < 0 or weights.sum() <= 0:
            raise ValueError(f"source weights {list(weights)} must be >= 0 with a positive sum")
        self.p = weights / weights.sum()

    def __iter__(self):
        worker, workers = _split()
        # Batches go round-robin over workers: worker w delivered ceil((B - w) / n) of B batches.
        skip = max(0, -(-(self.start_batches - worker) // workers)) * self.batch_size
        pick = np.random.default_rng(np.random.SeedSequence(
            self.seed, spawn_key=(self.rank, worker, 1)))
        streams = []                  # (by sample?, stream, its iterator)
        for src, ds in zip(self.sources, self.datasets):
            if FORMATS[src.format].random_access:
                s = SampleStream(ds, self.seed, self.rank, self.world, src.format)
                streams.append((True, s, s.order(worker, workers)))
            else:
                s = ShardStream(ds, self.seed, self.rank, self.world, src.format,
                                resample=self.resample, shuffle_buffer=self.shuffle_buffer)
                streams.append((False, s, None))
        choices = (int(pick.choice(len(streams), p=self.p)) for _ in iter(int, 1))
        skipped = [0] * len(streams)
        for _ in range(skip):
            c = next(choices)
            skipped[c] += 1
            if streams[c][0]:
                next(streams[c][2])
        for c, (by_sample, s, _) in enumerate(streams):
            if not by_sample:
                streams[c] = (by_sample, s, iter(s.pipeline(start_epoch=1 if skipped[c] else 0)))
        user = self._user_transforms(worker)
        for c in choices:
            by_sample, stream, it = streams[c]
            try:
                sample = stream.load(next(it)) if by_sample else next(it)
            except StopIteration:
                return
            yield user(sample) if user and not sample["corrupt"] else sample

    def _user_transforms(self, worker: int):
        """The configured MONAI transforms as a per-sample function, seeded for this worker."""
        if not self.transforms:
            return None
        from .config import load_transforms
        transform = load_transforms(self.transforms)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=(self.seed * 1_000_003 + self.rank * 1009 + worker)
                                       % 2 ** 32)

        def apply(sample: dict) -> dict:
            shape = sample["image"].shape
            out = transform({"image": torch.from_numpy(sample["image"].astype(np.float32))[None],
                             "label": torch.from_numpy(sample["label"])[None]})
            image = np.asarray(out["image"])[0]
            label = np.asarray(out["label"])[0]
            if image.shape != shape or label.shape != shape:
                raise DatasetError(f"transforms {self.transforms}: changed the crop's shape "
                                   f"{shape} to {image.shape}; the batch needs equal shapes")
            return {**sample, "image": image.astype(np.float32),   # still HU: windowed later
                    "label": np.rint(label).astype(np.uint8)}
        return apply


def collate(samples: list[dict]) -> dict:
    """A batch: image (B, 1, Z, Y, X) int16, label (B, 1, Z, Y, X) uint8, keys, corrupt flags."""
    return {"image": torch.from_numpy(np.stack([s["image"] for s in samples])[:, None]),
            "label": torch.from_numpy(np.stack([s["label"] for s in samples])[:, None]),
            "key": [s["key"] for s in samples],
            "corrupt": torch.tensor([s["corrupt"] for s in samples])}
