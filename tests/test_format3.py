"""Dataset format 3 (issue 26): samples digested by BLAKE3 and data objects checked by crc32c in
each shard's record, which names both; index.json and the shard records keep sha256, so the chain
index -> record -> objects and samples is whole. Format 2 (sha256 throughout) is still read,
verified, audited, resumed and grown as format 2. Datasets are written inline without Ray (the
job's writer and index code; `test_cluster_job` runs the same through Ray)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from conftest import user_error


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The same plan (14 samples of 32^3, 4 shards, zarr and wds) in format 3 and format 2."""
    from cluster_fixtures import healthy_manifest, write_dataset
    root = tmp_path_factory.mktemp("format3")
    manifest = healthy_manifest(root, 2)
    ids = {fmt: write_dataset(manifest, root / f"v{fmt}", dataset_format=fmt) for fmt in (3, 2)}
    return manifest, root / "v3", root / "v2", ids


def _repin(ds, k: int) -> None:
    """Make index.json pin shard ``k``'s record as it now is (as an attacker who rewrote both
    would): only what the record itself checks can then catch a change."""
    record = (ds / "shards" / f"shard-{k:06d}.json").read_bytes()
    index = json.loads((ds / "index.json").read_text())
    table = index["shards"]
    table["record_bytes"][k] = len(record)
    digests = table["record_sha256"]
    table["record_sha256"] = digests[:64 * k] + hashlib.sha256(record).hexdigest() + \
        digests[64 * (k + 1):]
    (ds / "index.json").write_text(json.dumps(index))


def test_format_3_names_its_digests_and_verifies(written, capsys):
    """The record names its digests; objects carry crc32c, samples BLAKE3, the index pins each
    record by sha256; provenance says blake3; verify and a bit-exact audit pass."""
    from tumorforge.cluster.front_door import main
    from tumorforge.manifests.dataset.reader import Dataset
    _, v3, _, _ = written
    index = json.loads((v3 / "index.json").read_text())
    assert index["format"] == "tumorforge.dataset/3" and "dataset_format" not in index["spec"]
    assert len(index["shards"]["record_sha256"]) == 4 * 64
    record = json.loads((v3 / "shards" / "shard-000000.json").read_text())
    assert (record["sample_digest"], record["object_check"]) == ("blake3", "crc32c")
    assert all(set(f) == {"bytes", "crc32c"} and len(f["crc32c"]) == 8
               for f in record["files"].values())
    assert set(record["samples"][0]) == {"key", "image_blake3", "label_blake3"}
    commit = json.loads((v3 / "_commits" / "shard-000000.json").read_text())
    assert set(commit["files"]["shards/shard-000000.json"]) == {"bytes", "sha256"}
    assert json.loads((v3 / "plan.json").read_text())["dataset_format"] == 3
    ds = Dataset(str(v3))
    image, label, prov = ds.sample(5)
    assert prov.provenance_version == 3 and prov.sample_digest == "blake3"
    import blake3
    assert prov.image_digest == blake3.blake3(image.astype("<i2").tobytes()).hexdigest()
    text = ds.shard_provenance(ds.shard(1))[0]
    assert text["sample_digest"] == "blake3" and "image_blake3" in text \
        and "image_sha256" not in text
    assert main(["verify", str(v3)]) == 0
    assert main(["audit", str(v3), "--index", "6"]) == 0
    out = capsys.readouterr().out
    assert "AUDIT OK: bit-exact" in out and "image blake3 " in out


def test_formats_2_and_3_of_one_plan_hold_the_same_samples(written):
    """The dataset format is how samples are checked, not what they are: the same plan has the
    same dataset_id, keys and array bytes in both formats."""
    from tumorforge.manifests.dataset.reader import Dataset
    _, v3, v2, ids = written
    assert ids[2] == ids[3]
    new, old = Dataset(str(v3)), Dataset(str(v2))
    assert list(new.keys) == list(old.keys)
    for fmt in ("zarr", "wds"):
        for a, b in zip(new.shard_samples(new.shard(2), fmt), old.shard_samples(old.shard(2), fmt)):
            assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    for name in ("image", "label"):         # the zarr chunks are the same bytes
        key = f"dataset.zarr/{name}/c/1/0/0/0"
        assert (v3 / key).read_bytes() == (v2 / key).read_bytes()


@pytest.mark.parametrize("target, fmt", [("dataset.zarr/image/c/1/0/0/0", "zarr"),
                                         ("wds/shard-000001.tar", "wds")])
def test_a_flipped_bit_in_a_data_object_is_caught(written, tmp_path, capsys, target, fmt):
    """verify names the object (crc32c differs from its record); readers refuse the copy (the
    zarr chunk's own crc32c; the tar's crc32c when read whole; the sample's BLAKE3 digest when
    streamed), and audit names the corrupt copy in one line."""
    from tumorforge.cluster.audit import verify
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.trainer.config import Source
    from tumorforge.trainer.data import MixedStream
    _, v3, _, _ = written
    ds_path = tmp_path / "ds"
    shutil.copytree(v3, ds_path)
    raw = bytearray((ds_path / target).read_bytes())
    raw[1200] ^= 0x10                                # inside sample 4's image (shard 1's first)
    (ds_path / target).write_bytes(bytes(raw))
    problems = dict(verify(Dataset(str(ds_path))))
    assert problems[target].startswith("corrupt: crc32c")
    assert Dataset(str(ds_path)).copies(4)[fmt].startswith("unreadable") or \
        Dataset(str(ds_path)).copies(4)[fmt] == "differs"
    message = user_error(capsys, ["audit", str(ds_path), "--index", "4", "--no-regenerate"])
    assert f"{fmt} copy" in message
    stream = MixedStream([Source(str(ds_path), format=fmt)], seed=0, resample=False)
    seen = {s["key"]: s["corrupt"] for s, _ in zip(stream, range(64))}
    keys = Dataset(str(ds_path)).keys
    assert seen[keys[4]] and not seen[keys[0]] and not seen[keys[9]]


def test_a_changed_sample_is_caught_by_its_blake3_digest(written, tmp_path):
    """A tar whose sample 5 has one voxel changed, with the record's crc32c and the index's pin
    rewritten to match (every object check passes): verify and the readers find the sample by
    its BLAKE3 digest."""
    from tumorforge.cluster.audit import verify
    from tumorforge.manifests.dataset import codecs
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    from tumorforge.manifests.dataset.records import hex_digest
    from tumorforge.trainer.datasets import CropStream
    _, v3, _, _ = written
    ds_path = tmp_path / "ds"
    shutil.copytree(v3, ds_path)
    samples = codecs.read_tar((ds_path / "wds/shard-000001.tar").read_bytes())
    keys, images, labels, provs = (list(x) for x in zip(*samples))
    images[1] = images[1].copy()
    images[1][3, 4, 5] += 1
    tar = codecs.tar_shard(keys, np.stack(images), np.stack(labels),
                           [json.dumps(p, sort_keys=True, separators=(",", ":")) for p in provs],
                           "lz4")
    (ds_path / "wds/shard-000001.tar").write_bytes(tar)
    record_path = ds_path / "shards/shard-000001.json"
    record = json.loads(record_path.read_text())
    record["files"]["wds/shard-000001.tar"] = {"bytes": len(tar), "crc32c": hex_digest(tar,
                                                                                       "crc32c")}
    record_path.write_text(json.dumps(record, sort_keys=True, separators=(",", ":")))
    _repin(ds_path, 1)
    ds = Dataset(str(ds_path))
    problems = dict(verify(ds))
    assert problems[f"{keys[1]} (wds)"] == "sample's blake3 digest differs from the index"
    assert ds.copies(5) == {"zarr": "ok", "wds": "differs"}
    with pytest.raises(DatasetError, match="do not match the index's digests"):
        list(CropStream(str(ds_path), fmt="wds"))


def test_format_2_is_read_verified_audited_and_grown_as_format_2(written, tmp_path, capsys):
    """A format 2 dataset (written by the format 2 writer, byte for byte what tumorforge wrote
    before format 3) reads, verifies and audits bit-exact; a job of the same plan, whose spec says
    format 3, resumes and grows it in format 2."""
    import dataclasses
    from cluster_fixtures import small_spec
    from tumorforge.cluster.audit import verify
    from tumorforge.cluster.front_door import main
    from tumorforge.cluster.job import _versions, _write_index, keep_output_format, prepare_output
    from tumorforge.cluster.plan import make_plan
    from tumorforge.cluster.worker import ShardWorker
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.manifests.dataset.store import Objects
    from tumorforge.manifests.schema import read_manifest
    from tumorforge.trainer.config import Source
    from tumorforge.trainer.data import MixedStream
    manifest, _, v2, _ = written
    assert json.loads((v2 / "index.json").read_text())["format"] == "tumorforge.dataset/2"
    assert "dataset_format" not in json.loads((v2 / "plan.json").read_text())
    record = json.loads((v2 / "shards" / "shard-000000.json").read_text())
    assert "sample_digest" not in record and set(record["samples"][0]) == {
        "key", "image_sha256", "label_sha256"}
    ds = Dataset(str(v2))
    assert verify(ds) == [] and ds.sample(3)[2].sample_digest == "sha256"
    assert main(["audit", str(v2), "--index", "3"]) == 0
    assert "AUDIT OK: bit-exact" in capsys.readouterr().out
    for fmt in ("zarr", "wds"):
        batch = next(iter(MixedStream([Source(str(v2), format=fmt)], seed=0)))
        assert not batch["corrupt"]
    grown = tmp_path / "grown"
    shutil.copytree(v2, grown)
    spec = small_spec(manifest, grown, samples=22)
    assert spec.dataset_format == 3
    plan = make_plan(spec, read_manifest(str(manifest)))
    said = []
    plan = keep_output_format(plan, Objects(str(grown)), said.append)
    assert plan.spec.dataset_format == 2 and "started in format 2" in said[0]
    out = Objects(str(grown))
    committed = prepare_output(plan, out)
    assert committed == {0, 1, 2}                   # shard 3 held 2 of 4 samples: rewritten
    worker = ShardWorker(dataclasses.replace(plan))
    for shard in plan.shards:
        if shard.index not in committed:
            worker.write_shard(shard.index)
    _write_index(plan, out, _versions())
    ds = Dataset(str(grown))
    assert ds.index.format == "tumorforge.dataset/2" and len(ds) == 22 and verify(ds) == []
    assert "sample_digest" not in json.loads((grown / "shards" / "shard-000005.json").read_text())


@pytest.mark.parametrize("field, value", [("sample_digest", "md5"), ("object_check", "adler32")])
def test_an_unknown_digest_name_is_refused_in_one_line(written, tmp_path, capsys, field, value):
    """A record (pinned by the index) naming a digest this tumorforge does not know is refused
    when its shard is opened, in one line naming it; verify names the record; a format 3 record
    that names none is refused too."""
    from tumorforge.cluster.front_door import main
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    _, v3, _, _ = written
    ds_path = tmp_path / "ds"
    shutil.copytree(v3, ds_path)
    path = ds_path / "shards" / "shard-000000.json"
    record = json.loads(path.read_text())
    record[field] = value
    path.write_text(json.dumps(record))
    _repin(ds_path, 0)
    with pytest.raises(DatasetError) as exc:
        Dataset(str(ds_path)).shard(0)
    assert f"{field} '{value}' is not one this tumorforge knows" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert main(["verify", str(ds_path)]) == 1
    assert f"{field} '{value}'" in capsys.readouterr().out
    del record["sample_digest"], record["object_check"]
    path.write_text(json.dumps(record))
    _repin(ds_path, 0)
    with pytest.raises(DatasetError, match="object_check and sample_digest"):
        Dataset(str(ds_path)).shard(0)


def test_provenance_names_its_digest(written):
    """Provenance 3 names its digest (refused when unknown); 1 and 2 are sha256."""
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.manifests.dataset.records import Provenance
    from tumorforge.manifests.records import RecordError
    _, v3, v2, _ = written
    new = Dataset(str(v3)).shard_provenance(Dataset(str(v3)).shard(0))[0]
    old = Dataset(str(v2)).shard_provenance(Dataset(str(v2)).shard(0))[0]
    assert Provenance.digests(new)[0] == "blake3" and Provenance.digests(old)[0] == "sha256"
    assert Provenance.from_json(old).image_digest == old["image_sha256"]
    with pytest.raises(RecordError, match="sample_digest 'md5'"):
        Provenance.from_json({**new, "sample_digest": "md5"})
