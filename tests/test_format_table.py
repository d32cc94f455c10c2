"""The storage-format table: a format registered in it (here a toy one, ``raw``, defined only in
this file) is written by the job's writer, indexed, resumed, read, verified, inspected, estimated
by the dry run and streamed to the trainer with no other code edited. Datasets are written inline
without Ray (the job's writer and index code). Nothing is pickled: the toy stores a JSON header and
raw little-endian arrays."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from numcodecs import Blosc

from tumorforge.manifests.dataset.errors import DatasetError
from tumorforge.manifests.dataset.formats import FORMATS, owner
from tumorforge.manifests.dataset.names import shard_name
from tumorforge.manifests.dataset.storage_format import FormatReader, StorageFormat

LAYOUT = "raw/layout.json"


def _header(data: bytes) -> tuple[dict, memoryview]:
    end = data.index(b"\n")
    return json.loads(data[:end]), memoryview(data)[end + 1:]


class RawFormat(StorageFormat):
    """One object per shard: a JSON line (keys, provenance texts), then each sample's image
    (int16) and label (uint8) as raw little-endian bytes; one dataset-level object, the crop
    shape, which its reader checks against the index."""

    name = root = stage = "raw"
    metadata_keys = (LAYOUT,)

    def objects(self, shard):
        return (f"raw/{shard_name(shard)}.bin",)

    def metadata(self, layout):
        return {LAYOUT: json.dumps({"crop": list(layout.crop)}).encode()}

    def encode(self, samples):
        header = json.dumps({"keys": list(samples.keys), "provenance": list(samples.provenance)})
        arrays = [bytes(Blosc().decode(frame.data)) for pair in samples.frames for frame in pair]
        return {self.objects(samples.shard)[0]: [header.encode(), b"\n", *arrays]}

    def provenance_object(self, shard):
        return self.objects(shard)[0]

    def decode_provenance(self, data, per_shard, count, where):
        return [json.loads(text) for text in _header(data)[0]["provenance"]]

    def open(self, ds):
        return RawReader(self, ds)


class RawReader(FormatReader):
    def check(self):
        crop = json.loads(self.ds.checked(LAYOUT, self.ds.index.metadata[LAYOUT], "index.json"))
        if tuple(crop["crop"]) != self.ds.crop_shape:
            raise DatasetError(f"{self.ds.url}/{LAYOUT}: crop {crop['crop']}, index.json says "
                               f"{self.ds.crop_shape}")

    def samples(self, shard):
        head, body = _header(self.ds.object(shard, self.format.objects(shard.shard)[0]))
        shape = self.ds.crop_shape
        n = int(np.prod(shape))
        out = []
        for j, key in enumerate(head["keys"]):
            at = 3 * n * j
            image = np.frombuffer(body, "<i2", n, at).reshape(shape).astype(np.int16)
            label = np.frombuffer(body, np.uint8, n, at + 2 * n).reshape(shape).copy()
            out.append((key, image, label))
        return out


@pytest.fixture(scope="module")
def raw():
    """``raw`` registered in the format table for this module's tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(FORMATS, "raw", RawFormat())
        yield FORMATS["raw"]


@pytest.fixture(scope="module")
def written(raw, tmp_path_factory):
    """A manifest, and 6 samples of 32^3 in shards of 4 written as zarr + raw and as raw alone."""
    from cluster_fixtures import healthy_manifest, write_dataset
    root = tmp_path_factory.mktemp("table")
    manifest = healthy_manifest(root / "scans", 2)
    for name, formats in (("both", ("zarr", "raw")), ("raw", ("raw",))):
        write_dataset(manifest, root / name, formats=formats, samples=6, samples_per_shard=4)
    return manifest, root / "both", root / "raw"


def test_the_built_in_formats_own_exactly_their_objects():
    for name, fmt in FORMATS.items():
        for key in (*fmt.objects(3), *fmt.metadata_keys):
            assert owner(key) == name and fmt.owns(key)
    assert owner("shards/shard-000003.json") is None and owner("index.json") is None


def test_a_registered_format_is_written_read_and_verified_beside_zarr(written):
    from tumorforge.cluster.audit import verify
    from tumorforge.cluster.inspect_dataset import describe_dataset
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.manifests.dataset.records import ShardCommit
    _, both, _ = written
    ds = Dataset(str(both))
    assert ds.formats == ["zarr", "raw"] and LAYOUT in ds.index.metadata
    assert verify(ds) == []
    assert [ds.copies(i) for i in range(6)] == [{"zarr": "ok", "raw": "ok"}] * 6
    for shard in ds.shards:
        assert ds.shard_files(shard, "raw") == list(FORMATS["raw"].objects(shard.shard))
        zarr, raw = ds.shard_samples(shard, "zarr"), ds.shard_samples(shard, "raw")
        assert [k for k, _, _ in raw] == [k for k, _, _ in zarr]
        assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
                   for a, b in zip(zarr, raw))
    commit = ShardCommit.from_json(json.loads((both / "_commits/shard-000001.json").read_bytes()),
                                   "commit")
    assert commit.host_cpu_s["raw"] >= 0 and commit.host_cpu_s["zarr"] >= 0
    figures = describe_dataset(ds)
    assert set(figures["bytes"]) == {"zarr", "raw"} and figures["bytes"]["raw"] > 6 * 3 * 32 ** 3


def test_the_trainer_streams_a_registered_format(written):
    from tumorforge.trainer.config import Source
    from tumorforge.trainer.data import MixedStream
    from tumorforge.trainer.datasets import CropDataset, CropStream
    from tumorforge.manifests.dataset.reader import Dataset
    _, both, only_raw = written
    keys = Dataset(str(both)).keys
    items = list(CropStream(str(both), fmt="raw"))
    assert [it["key"] for it in items] == list(keys)
    assert [it["image"].meta["index"] for it in items] == list(range(6))
    stream = iter(MixedStream([Source(str(only_raw), format="raw")], seed=1, resample=False))
    got = [next(stream) for _ in range(6)]
    assert sorted(s["key"] for s in got) == sorted(Dataset(str(only_raw)).keys)
    assert not any(s["corrupt"] for s in got)
    with pytest.raises(DatasetError, match="random access"):
        CropDataset(str(only_raw))


def test_a_dataset_in_a_registered_format_alone_is_read_resumed_and_checked(written, raw,
                                                                           tmp_path):
    from tumorforge.cluster.audit import verify
    from tumorforge.cluster.job import prepare_output
    from tumorforge.cluster.plan import make_plan
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.manifests.dataset.store import Objects
    from tumorforge.manifests.schema import read_manifest
    from cluster_fixtures import small_spec
    manifest, _, only_raw = written
    ds = Dataset(str(only_raw))
    assert ds.preferred == "raw" and [ds.sample(i)[2].index for i in range(6)] == list(range(6))
    assert [p["index"] for p in ds.shard_provenance(ds.shard(1))] == [4, 5]
    copy = tmp_path / "ds"
    shutil.copytree(only_raw, copy)
    plan = make_plan(small_spec(manifest, copy, formats=("raw",), samples=6,
                                samples_per_shard=4), read_manifest(str(manifest)))
    assert plan.dataset_id == ds.dataset_id
    assert prepare_output(plan, Objects(str(copy))) == {0, 1}        # both shards kept
    target = copy / raw.objects(1)[0]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    (copy / "raw" / "stray.bin").write_bytes(b"x")
    problems = dict(verify(Dataset(str(copy))))
    assert "raw/shard-000001.bin" in problems and "extra" in problems["raw/stray.bin"]
    assert Dataset(str(copy)).copies(5)["raw"].startswith("unreadable")
    assert prepare_output(plan, Objects(str(copy))) == {0}            # shard 1 would be redone
    (copy / LAYOUT).write_text(json.dumps({"crop": [16, 16, 16]}))
    problems = dict(verify(Dataset(str(copy))))
    assert "raw metadata" in problems or LAYOUT in problems


def test_the_dry_run_estimates_a_registered_format(written, raw, tmp_path):
    from tumorforge.cluster.dry_run import dry_run
    from tumorforge.manifests.schema import read_manifest
    from cluster_fixtures import small_spec
    manifest, _, _ = written
    result = dry_run(small_spec(manifest, tmp_path / "never", formats=("raw",), samples=6,
                                samples_per_shard=4), read_manifest(str(manifest)), calibrate=1)
    assert set(result.calibration["bytes_per_sample"]) == {"raw"}
    assert result.calibration["bytes_per_sample"]["raw"] > 3 * 32 ** 3
    assert not (tmp_path / "never").exists()


def test_an_index_naming_a_format_not_in_the_table_is_refused(written, tmp_path):
    from tumorforge.manifests.dataset.reader import Dataset
    _, _, only_raw = written
    copy = tmp_path / "ds"
    shutil.copytree(only_raw, copy)
    index = json.loads((copy / "index.json").read_text())
    index["formats"] = ["parquet"]
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="formats among .*'zarr', 'wds'"):
        Dataset(str(copy))
