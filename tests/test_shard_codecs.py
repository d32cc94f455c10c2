"""The shard writer's bytes: the zarr encoder writes, straight through the codecs, the very bytes
zarr-python's own pipeline writes (issue 14: the pipeline cost 4-5x the codec work), for every
compression, full and partial shards and chunks that equal the fill value (not stored); the tar is
what tarfile writes and shares the zarr chunks' compressed frames (issue 16); a written shard
reads back, is rewritten byte for byte and records its host CPU time by stage."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from tumorforge.manifests.dataset import codecs


@pytest.mark.parametrize("compression", sorted(codecs.COMPRESSIONS))
@pytest.mark.parametrize("count, per_shard, zero", [(4, 4, None), (3, 4, None), (4, 4, 2)])
def test_direct_zarr_encoding_equals_zarr_python(count, per_shard, zero, compression, tmp_path):
    rng = np.random.default_rng(count + per_shard)
    images = rng.normal(40, 150, (count, 16, 20, 24)).astype(np.int16)
    labels = rng.integers(0, 3, (count, 16, 20, 24)).astype(np.uint8)
    if zero is not None:
        labels[zero] = 0                          # the fill value: zarr stores no chunk for it
    keys = [f"tfabcdef012345_{i:010d}" for i in range(count)]
    prov = ['{"index":%d,"note":"\u00e9"}' % i for i in range(count)]
    args = (7, images, labels, keys, range(7 * per_shard, 7 * per_shard + count), prov, per_shard,
            compression)
    direct = codecs.zarr_shard_objects(*args)
    assert direct == codecs.zarr_shard_objects_reference(*args)
    # And zarr reads them back as written, in a store of the whole dataset.
    n = 7 * per_shard + count
    root = tmp_path / "dataset"
    for key, data in {**codecs.zarr_metadata(n, per_shard, images.shape[1:], {}, compression),
                      **direct}.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    group = zarr.open_group(str(root / codecs.ZARR_ROOT), mode="r")
    assert group["image"].metadata.codecs[0].codecs[1].cname.value == compression
    assert np.array_equal(group["image"][7 * per_shard:], images)
    assert np.array_equal(group["label"][7 * per_shard:], labels)
    assert list(group["key"][7 * per_shard:]) == keys
    assert list(group["provenance"][7 * per_shard:]) == prov


def _old_tar(keys, images, labels, prov, encode) -> bytes:
    """A tar as earlier versions wrote it: ``encode(npy file bytes) -> (suffix, member bytes)``."""
    import io
    import tarfile
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, label, p in zip(keys, images, labels, prov):
            members = []
            for name, array in (("image", image), ("label", label)):
                npy = io.BytesIO()
                np.lib.format.write_array(npy, array, version=(1, 0), allow_pickle=False)
                suffix, blob = encode(npy.getvalue())
                members.append((f"{name}.{suffix}", blob))
            for suffix, blob in (*members, ("json", p.encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return out.getvalue()


def test_webdataset_members_are_compressed_streamed_and_readable_by_plain_webdataset(tmp_path):
    """Tar members are .bnpy (a .npy header, then the zarr chunk's Blosc frame: one compression
    for both formats), which plain webdataset reads with the registered decoder; a tar is read as
    a stream (one sample's members in memory at a time); tars of 0.3 (.npy.blosc members) and
    before (plain .npy) are still read."""
    import tarfile
    import tracemalloc
    import webdataset as wds
    from numcodecs import Blosc
    from tumorforge.manifests.dataset.store import Objects
    rng = np.random.default_rng(0)
    n = 40
    images = rng.integers(-1000, 1000, (n, 48, 48, 48)).astype(np.int16)
    labels = (images > 300).astype(np.uint8)
    keys = [f"tfabcdef012345_{i:010d}" for i in range(n)]
    prov = ['{"index":%d}' % i for i in range(n)]
    data = codecs.tar_shard(keys, images, labels, prov, "lz4")
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(data)
    with tarfile.open(path) as tar:
        assert tar.getnames()[:3] == [f"{keys[0]}.image.bnpy", f"{keys[0]}.label.bnpy",
                                      f"{keys[0]}.json"]
        member = tar.extractfile(f"{keys[1]}.image.bnpy").read()
    chunk = codecs.compress_volume(images[1], "image", "lz4").data
    assert member.endswith(chunk) and len(member) == 128 + len(chunk)   # + the .npy header
    plain = wds.WebDataset(str(path), shardshuffle=False).decode(
        wds.handle_extension("bnpy", codecs.decode_bnpy))
    got = list(plain)
    assert [s["__key__"] for s in got] == keys
    assert all(np.array_equal(s["image.bnpy"], images[i]) and s["image.bnpy"].flags.writeable
               and np.array_equal(s["label.bnpy"], labels[i]) for i, s in enumerate(got))
    # Streamed: the peak allocation stays near one sample, far below the tar.
    tracemalloc.start()
    try:
        with Objects(str(tmp_path)).open(path.name) as f:
            for i, (key, image, label, p) in enumerate(codecs.iter_tar(f, len(data))):
                assert key == keys[i] and np.array_equal(label, labels[i]) and p["index"] == i
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert i == n - 1 and peak < len(data) / 4
    # Tars of earlier versions read the same.
    zstd = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)
    for encode in (lambda npy: ("npy", npy), lambda npy: ("npy.blosc", zstd.encode(npy))):
        back = codecs.read_tar(_old_tar(keys[:3], images, labels, prov, encode))
        assert [k for k, *_ in back] == keys[:3] and np.array_equal(back[2][1], images[2])


def test_tar_bytes_are_what_tarfile_writes_and_never_unpickled():
    """The tar is joined from headers and frames in one go, byte for byte what the standard
    library's tarfile writes for the same members (the reference), so a rewrite is identical; a
    .bnpy member declaring an object dtype, Fortran order or a size its frame does not hold is
    refused, never unpickled."""
    import io
    import tarfile
    from tumorforge.cluster.bench_encode import _crops
    images, labels = _crops(3, 20)
    labels[1] = 0                                     # a fill-value label: still a tar member
    keys = [f"tfabcdef012345_{i:010d}" for i in range(3)]
    prov = ['{"index":%d,"note":"\u00e9"}' % i for i in range(3)]
    data = codecs.tar_shard(keys, images, labels, prov, "lz4")
    assert data == codecs.tar_shard(keys, images, labels, prov, "lz4")
    reference = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as ours, \
            tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m in ours.getmembers():
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime, info.mode, info.uname, info.gname = m.size, 0, 0o644, "", ""
            tar.addfile(info, ours.extractfile(m))
    assert reference.getvalue() == data and len(data) % tarfile.RECORDSIZE == 0
    back = codecs.read_tar(data)
    assert all(np.array_equal(b[1], images[i]) and np.array_equal(b[2], labels[i])
               for i, b in enumerate(back))
    frame = codecs.compress_volume(images[0], "image", "lz4").data
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False,
                                                  "shape": (20, 20, 20)})
    with pytest.raises(ValueError, match="plain numeric dtype"):
        codecs.decode_bnpy(header.getvalue() + frame)
    for shape in ((20, 20, 21), (20, 20, 20, 2)):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<i2", "fortran_order": False,
                                                      "shape": shape})
        with pytest.raises(ValueError, match="expected"):
            codecs.decode_bnpy(header.getvalue() + frame)
    member = codecs._npy_header("image", (20, 20, 20)) + frame
    assert np.array_equal(codecs.decode_bnpy(member), images[0])
    with pytest.raises(ValueError, match="present"):
        codecs.decode_bnpy(member[:-10])                 # a truncated frame


@pytest.mark.parametrize("compression", sorted(codecs.COMPRESSIONS))
def test_tar_bytes_per_sample_equal_zarr(compression):
    """A sample is compressed once: the tar holds the zarr chunks' frames, so a WebDataset shard
    takes the zarr bytes plus headers and provenance (plain .npy members, before 0.3, made it
    3.5x)."""
    from tumorforge.cluster.bench_encode import _crops
    images, labels = _crops(8, 64)
    keys = [f"tfabcdef012345_{i:010d}" for i in range(8)]
    prov = ['{"index":%d,"params":"%s"}' % (i, "x" * 3000) for i in range(8)]
    zarr_bytes = sum(len(v) for v in codecs.zarr_shard_objects(
        0, images, labels, keys, range(8), prov, 8, compression).values())
    tar_bytes = len(codecs.tar_shard(keys, images, labels, prov, compression))
    assert zarr_bytes < tar_bytes <= 1.05 * zarr_bytes


def test_provenance_text_is_the_canonical_json_of_every_field():
    """Provenance serializes from a shallow dict (no dataclasses.asdict deep copy): the text is
    the canonical JSON of the full deep-copied record, byte for byte."""
    import dataclasses
    import json
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.manifests.dataset.records import Provenance
    from tumorforge.manifests.records import canonical_json
    p = Provenance(key="k", index=1, shard=0, dataset_id="d", root_seed=0, spawn_key=(1,),
                   scan_id="s", scan_sha256={"image": "a", "label": "b"},
                   generator_version="0.4.0", profile="paper", backend="numpy",
                   versions={"numpy": "2"}, generator_config=GeneratorConfig().to_json(),
                   params={"tumors": [{"center": [1, 2, 3], "radius_mm": 3.0}],
                           "crop_origin": [1, 2, 3]},
                   image_digest="x", label_digest="y", shape=(96, 96, 96),
                   crop_affine=((1.0, 0.0, 0.0, 5.0), (0.0, 1.0, 0.0, 6.0),
                                (0.0, 0.0, 1.0, 7.0), (0.0, 0.0, 0.0, 1.0)))
    deep = dataclasses.asdict(p)
    deep.update(spawn_key=[1], shape=[96, 96, 96], crop_affine=[list(r) for r in p.crop_affine],
                image_blake3=deep.pop("image_digest"), label_blake3=deep.pop("label_digest"))
    assert p.to_json_text() == canonical_json(deep)
    assert Provenance.from_json(json.loads(p.to_json_text())) == p


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory):
    from cluster_fixtures import healthy_manifest
    return healthy_manifest(tmp_path_factory.mktemp("scan"), n_scans=1)


def test_written_shards_read_back_and_rewrite_byte_for_byte(tiny_scan, tmp_path):
    """A dataset written by the shard writer (hashing and compression on its thread pool, both
    formats): every sample of both formats matches its recorded hashes, zarr-python reads the
    zarr arrays the tars hold, zarr.json declares the spec's codec, and another writer rewrites a
    shard to the same bytes."""
    import dataclasses
    import shutil
    from cluster_fixtures import small_spec, write_dataset
    from tumorforge.cluster.plan import make_plan
    from tumorforge.cluster.worker import ShardWorker
    from tumorforge.manifests.dataset.names import record_key
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.manifests.schema import read_manifest
    out = tmp_path / "ds"
    write_dataset(tiny_scan, out, samples=6, samples_per_shard=4)
    ds = Dataset(str(out))
    group = zarr.open_group(str(out / codecs.ZARR_ROOT), mode="r")
    assert group["label"].metadata.codecs[0].codecs[1].cname.value == "lz4"
    n = 0
    for shard in ds.shards:
        for (key, image, label, _), hashes in zip(ds.reader("wds").read(shard), shard.samples):
            i = ds.index_of(key)
            assert key == hashes.key and hashes.matches(image, label)
            assert np.array_equal(group["image"][i], image)
            assert np.array_equal(group["label"][i], label)
            n += 1
    assert n == 6
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    spec = dataclasses.replace(small_spec(tiny_scan, copy, samples=6, samples_per_shard=4),
                               backend="numpy")
    files = dict(ShardWorker(make_plan(spec, read_manifest(str(tiny_scan)))).write_shard(1).files)
    assert files.pop(record_key(1)) == ds.index.table.record(1)
    assert files == dict(ds.shard(1).files)


def test_bench_generate_reports_the_writers_host_work_per_crop(tiny_scan):
    """`tumorforge bench generate --no-ray`: the plan written in process, and the commit records'
    CPU time of each host stage besides synthesis, per crop, against the budget (4 ms with both
    storage formats); `--dataset-format 2,3` writes it in both dataset formats in one run."""
    from tumorforge.cluster.bench_generate import HOST_STAGES, bench_generate
    lines = []
    r = bench_generate(str(tiny_scan), samples=4, samples_per_shard=2, crop=32, ray=False,
                       dataset_formats=[2, 3], log=lines.append)
    ms = r["host_cpu_ms_per_crop"]
    assert set(ms) == {*HOST_STAGES, "total"} and all(v >= 0 for v in ms.values())
    assert ms["hash"] > 0 and ms["compress"] > 0 and ms["write"] > 0
    assert abs(ms["total"] - sum(ms[s] for s in HOST_STAGES)) < 0.01
    assert r["host_within_budget"] == (ms["total"] <= r["host_budget_ms"] == 4.0)
    assert r["formats"] == ["zarr", "wds"] and r["compression"] == "lz4"
    assert set(r["by_dataset_format"]) == {"2", "3"} and r["dataset_formats"] == [2, 3]
    assert r["by_dataset_format"]["2"]["host_cpu_ms_per_crop"] == ms
    assert any(line.lstrip().startswith("total") for line in lines)


def test_compression_is_part_of_the_dataset_identity(tiny_scan):
    """The spec's compression changes the shards' bytes, so it changes the dataset id; an
    unknown one is refused by name."""
    import dataclasses
    from cluster_fixtures import small_spec
    from tumorforge.cluster.plan import make_plan
    from tumorforge.cluster.spec import SpecError
    from tumorforge.manifests.schema import read_manifest
    spec = dataclasses.replace(small_spec(tiny_scan, "out"), backend="numpy")
    assert spec.compression == "lz4"
    entries = read_manifest(str(tiny_scan))
    ids = {c: make_plan(dataclasses.replace(spec, compression=c), entries).dataset_id
           for c in codecs.COMPRESSIONS}
    assert len(set(ids.values())) == len(codecs.COMPRESSIONS)
    with pytest.raises(SpecError, match="compression 'gzip'"):
        dataclasses.replace(spec, compression="gzip")


def test_commits_written_before_the_host_cpu_field_still_read():
    from tumorforge.manifests.dataset.records import ShardCommit
    from tumorforge.manifests.records import RecordError
    old = {"dataset_id": "d", "shard": 0, "start": 0, "count": 1, "scans": ["s"], "files": {},
           "seconds": {"load": 0.1}, "worker": {}}
    assert ShardCommit.from_json(old, "old").host_cpu_s == {}
    with pytest.raises(RecordError, match="host_cpu_s"):
        ShardCommit.from_json({**old, "host_cpu_s": {"hash": -1}}, "bad")
