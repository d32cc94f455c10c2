"""Hostile and broken inputs, built here by the tests themselves: each must give a clear one-line
error naming the file, cost bounded memory, and never cost the good scans of a batch.

Memory is measured with tracemalloc (Python and NumPy allocations), against the size a naive
reader would allocate; whole commands by the process's peak resident memory (``peak_rss_mib``).
"""

from __future__ import annotations

import gzip
import os
import io
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from tumorforge.manifests.readers import ScanError, read_volume
from conftest import user_error


def hostile_nifti_bytes(data, affine=None, **header) -> bytes:
    """An uncompressed NIfTI-1 file whose header fields are set raw (no checks), so a test can
    write what no honest writer would (zero pixdim, a huge vox_offset)."""
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.66, 1.0]) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    return img.to_bytes()


def _call(fn) -> object:
    try:
        return fn()
    except Exception as exc:              # the test inspects it
        return exc


def peak_mib(fn) -> tuple[object, float]:
    """(what ``fn`` raised or returned, peak traced allocation in MiB). Counts what is allocated
    even if never touched, so it can tell "refused before allocating"."""
    tracemalloc.start()
    try:
        return _call(fn), tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


def _status_mib(key: str) -> float:
    """A ``VmRSS``-like field of /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) / 1024
    raise KeyError(f"/proc/self/status has no {key}")


def peak_rss_mib(fn) -> tuple[object, float]:
    """(what ``fn`` raised or returned, how far this process's resident memory peaked above where
    it started, in MiB). For whole commands: tracemalloc costs about a second per ``verify``,
    this costs nothing. A read of /dev/zero or of a sparse file touches every page it fills, so
    it shows here as in tracemalloc. Import what ``fn`` imports first: pages of freshly loaded
    libraries count. Falls back to tracemalloc where the kernel's peak cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                  # reset VmHWM (the peak) to the current VmRSS
    except OSError:
        return peak_mib(fn)
    start = _status_mib("VmRSS")
    out = _call(fn)
    peak = _status_mib("VmHWM")
    return out, peak - start


@pytest.fixture
def volume():
    return np.arange(8 * 8 * 6, dtype=np.int16).reshape(8, 8, 6)


def test_gzip_crc_is_checked(tmp_path, volume):
    """A bit flipped in a .nii.gz is caught by the CRC at the end of the stream (reading only the
    size the header promises used to let it through)."""
    raw = bytearray(gzip.compress(hostile_nifti_bytes(volume), mtime=0))
    raw[-8] ^= 0x01                                   # CRC32 field of the gzip trailer
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ScanError) as exc:
        read_volume(str(path))
    assert str(path) in str(exc.value) and "CRC" in str(exc.value)
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(hostile_nifti_bytes(volume), mtime=0))
    assert np.array_equal(read_volume(str(good)).data, volume)


def test_zero_or_nan_pixdim_is_refused(tmp_path, volume):
    """nibabel would turn a zero pixdim into 1 mm silently: 3.66 mm slices read as 1 mm and a
    liver of 1295 mL measured as 354 mL."""
    for bad in (0.0, float("nan")):
        pixdim = [1.0, 0.8, 0.8, bad, 1, 1, 1, 1]
        path = tmp_path / f"pixdim-{bad}.nii"
        path.write_bytes(hostile_nifti_bytes(volume, pixdim=pixdim))
        with pytest.raises(ScanError) as exc:
            read_volume(str(path))
        assert str(path) in str(exc.value) and "pixdim" in str(exc.value)


def test_huge_vox_offset_costs_no_memory(tmp_path, volume):
    """A 1 KB .nii.gz declaring vox_offset 1.5e9: refused before reading, a few MiB at most (it
    cost 3 GB before)."""
    path = tmp_path / "offset.nii.gz"
    path.write_bytes(gzip.compress(hostile_nifti_bytes(volume, vox_offset=1.5e9)[:352], mtime=0))
    out, peak = peak_mib(lambda: read_volume(str(path)))
    assert isinstance(out, ScanError) and "vox_offset" in str(out) and str(path) in str(out)
    assert peak < 8


def test_gzip_bomb_after_the_voxels_is_refused_with_bounded_memory(tmp_path, volume):
    """A valid volume followed by 200 MB of zeros (200 KB compressed): refused, without inflating
    the bomb into memory."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(hostile_nifti_bytes(volume))
        zeros = bytes(1 << 20)
        for _ in range(200):
            f.write(zeros)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(buf.getvalue())
    out, peak = peak_mib(lambda: read_volume(str(path)))
    assert isinstance(out, ScanError) and "after the voxel data" in str(out)
    assert peak < 64


def test_truncated_uncompressed_file_is_refused_before_allocating(tmp_path):
    """A header declaring 512 x 512 x 400 int16 (200 MiB) on a 2 KB file."""
    data = np.zeros((4, 4, 4), np.int16)
    raw = bytearray(hostile_nifti_bytes(data))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    header.set_data_shape((512, 512, 400))
    path = tmp_path / "short.nii"
    path.write_bytes(header.binaryblock + bytes(4) + bytes(raw[352:]))
    out, peak = peak_mib(lambda: read_volume(str(path)))
    assert isinstance(out, ScanError) and "truncated" in str(out) and str(path) in str(out)
    assert peak < 8


# -- manifests: one bad scan never stops a build; hostile manifests give one-line errors --------


class Hang(Exception):
    pass


@pytest.fixture
def no_hang():
    """Fail instead of hanging: a FIFO opened for reading blocks until a writer comes."""
    import signal

    def alarm(*_):
        raise Hang("blocked for 30 s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def lits_folder(root, good=(0,)):
    from conftest import tiny_scan, write_nifti
    for n in good:
        image, label = tiny_scan(seed=n)
        write_nifti(root / f"volume-{n}.nii", image)
        write_nifti(root / f"segmentation-{n}.nii", label)


def test_giant_label_value_is_a_rejection_not_30_gib(tmp_path):
    """One voxel of 4e9 in a uint32 label: bincount would allocate 29.8 GiB and kill the build
    (nothing written); now the scan is rejected with the value and the good scan is kept."""
    from conftest import tiny_scan, write_nifti
    from tumorforge.manifests.build import build_manifest
    root = tmp_path / "lits"
    lits_folder(root)
    image, label = tiny_scan(seed=1)
    label = label.astype(np.uint32)
    label[0, 0, 0] = 4_000_000_000
    write_nifti(root / "volume-1.nii", image)
    write_nifti(root / "segmentation-1.nii", label)
    out, peak = peak_mib(lambda: build_manifest("lits", str(root), str(tmp_path / "m.jsonl"),
                                                workers=1))
    assert [e.scan_id for e in out.entries] == ["lits-0"]
    (rejection,) = out.rejections
    assert rejection.scan_id == "lits-1" and "4000000000" in rejection.problem
    assert peak < 64


def test_any_failure_of_one_scan_becomes_its_rejection(tmp_path, monkeypatch):
    """Even an error nobody foresaw (here a MemoryError) rejects only that scan."""
    from tumorforge.manifests import build
    root = tmp_path / "lits"
    lits_folder(root, good=(0, 1))
    real = build.label_counts

    def fails_for_one(values):
        if values.shape == (24, 20, 10) and values.sum() % 2:    # deterministic pick
            raise MemoryError("simulated")
        return real(values)
    calls = []
    monkeypatch.setattr(build, "label_counts", lambda v: calls.append(1) or fails_for_one(v))
    result = build.build_manifest("lits", str(root), str(tmp_path / "m.jsonl"), workers=1)
    assert len(calls) == 2 and len(result.entries) + len(result.rejections) == 2
    for r in result.rejections:
        assert "MemoryError" in r.problem
    assert (tmp_path / "m.jsonl").exists() and (tmp_path / "m.rejected.jsonl").exists()


def test_named_pipes_are_refused_without_blocking(tmp_path, no_hang, capsys):
    from tumorforge.cluster.front_door import main
    from tumorforge.manifests.build import build_manifest
    root = tmp_path / "lits"
    lits_folder(root)
    os.mkfifo(root / "volume-1.nii")
    from conftest import tiny_scan, write_nifti
    write_nifti(root / "segmentation-1.nii", tiny_scan(seed=1)[1])
    result = build_manifest("lits", str(root), str(tmp_path / "m.jsonl"), workers=1)
    assert [e.scan_id for e in result.entries] == ["lits-0"]
    assert "named pipe" in result.rejections[0].problem
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    assert "named pipe" in user_error(capsys, ["manifest", "validate", str(fifo)])


@pytest.mark.parametrize("line, words", [
    ("[" * 20_000 + "]" * 20_000, "not valid JSON"),
    ('{"scan_id": ' + "9" * 5000 + "}", "not valid JSON"),
    ("x" * 100_000, "characters"),
])
def test_hostile_manifest_lines_are_problems_not_tracebacks(tmp_path, line, words, capsys):
    from tumorforge.cluster.front_door import main
    from tumorforge.manifests.build import build_manifest
    root = tmp_path / "lits"
    lits_folder(root)
    manifest = tmp_path / "m.jsonl"
    build_manifest("lits", str(root), str(manifest))
    manifest.write_text(manifest.read_text() + line + "\n")
    assert main(["manifest", "validate", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "line 2" in out and words in out and "Traceback" not in out


def test_empty_manifest_does_not_validate(tmp_path, capsys):
    from tumorforge.cluster.front_door import main
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["manifest", "validate", str(empty)]) == 1
    assert "holds no scans" in capsys.readouterr().out


def test_preparing_a_scan_rechecks_its_content_not_only_its_hash(tmp_path):
    """A hand-made manifest whose sha256 matches a constant image: 0.2.0 painted 24,186 tumor
    voxels into air; now the scan is refused with the reason and the good scan is used."""
    import hashlib
    import json
    from cluster_fixtures import healthy_manifest
    from conftest import write_nifti
    from tumorforge.cluster.front_door import main
    from tumorforge.generator.whole_scan import read_run
    manifest = healthy_manifest(tmp_path, 2)
    path = tmp_path / "ct" / "case1.nii.gz"
    old = nib.load(str(path))
    write_nifti(path, np.full(old.shape, 40, np.int16), old.affine)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    for entry in lines:
        if entry["scan_id"] == "toy-case1":
            entry["sha256"]["image"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text("".join(json.dumps(e) + "\n" for e in lines))
    out = tmp_path / "out"
    assert main(["synthesize", "--manifest", str(manifest), "--crop-size", "48,48,48",
                 "--size-mix", "small", "--out", str(out)]) == 0
    run = read_run(str(out))
    assert [c.scan_id for c in run.cases] == ["toy-case0"]
    assert run.rejected[0]["scan_id"] == "toy-case1" and "constant" in run.rejected[0]["reason"]


# -- the embedded Ray cluster --------------------------------------------------------------------


ATTACKER = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
    @ray.remote
    def steal():
        import os
        return os.environ.get("AWS_SECRET_ACCESS_KEY")
    print("CONNECTED", ray.get(steal.remote(), timeout=20))
except Exception as exc:
    print("REFUSED", type(exc).__name__)
"""

# The job's side, in its own process: Ray keeps per-process state that must not leak into the
# rest of the suite (which runs its clusters with auth disabled).
JOB = """
import os, subprocess, sys, ray
from tumorforge.cluster.job import start_embedded
start_embedded(ray)
@ray.remote
def works():
    return 1
assert ray.get(works.remote()) == 1
print("TOKEN", len(os.environ["RAY_AUTH_TOKEN"]), os.environ["RAY_AUTH_MODE"])
env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
# A refused process gives up after two tries of about a second each (Ray's default is 20): the
# token is wrong on every try, and a process holding it connects at the first.
env.update(RAY_gcs_rpc_server_connect_timeout_s="3", RAY_gcs_rpc_server_reconnect_timeout_s="3",
           RAY_NUM_REDIS_GET_RETRIES="2")
# The cluster listens on 127.0.0.1 only; an attacker on this host who knows Ray keeps its address
# as given (without this, Ray rewrites 127.0.0.1 to the host address, where nothing listens).
env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
out = subprocess.run([sys.executable, "-c", sys.argv[1], ray.get_runtime_context().gcs_address],
                     env=env, capture_output=True, text=True, timeout=120).stdout
print("ATTACKER", out.strip())
ray.shutdown()
"""


@pytest.mark.slow
def test_embedded_cluster_refuses_a_process_without_its_token():
    """0.2.0 turned Ray's auth off: a second process connected to the job's cluster, ran code and
    read the AWS secret from a worker. Now the cluster wants a token made for this job; loopback
    keeps other hosts out, and a local process that reaches 127.0.0.1 is refused for the token."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["AWS_SECRET_ACCESS_KEY"] = "simulated-secret"
    out = subprocess.run([sys.executable, "-c", JOB, ATTACKER], env=env, capture_output=True,
                         text=True, timeout=240).stdout
    assert "TOKEN 64 token" in out
    assert "ATTACKER REFUSED" in out and "simulated-secret" not in out


# -- shards --------------------------------------------------------------------------------------


def sparse_tar(realsize: int = 10 ** 9) -> bytes:
    """A 10 KB tar whose one member is GNU sparse (PAX 1.0) and declares ``realsize`` bytes."""
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        sparse_map = b"1\n" + str(realsize - 1).encode() + b"\n1\n"
        payload = sparse_map.ljust(512, b"\0") + b"x".ljust(512, b"\0")
        info = tarfile.TarInfo("k.image.npy")
        info.size = len(payload)
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "k.image.npy", "GNU.sparse.realsize": str(realsize)}
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_sparse_tar_member_is_refused_without_expanding_it():
    from tumorforge.manifests.dataset.codecs import read_tar
    data = sparse_tar()
    out, peak = peak_mib(lambda: read_tar(data))
    assert isinstance(out, ValueError) and "sparse" in str(out) and "k.image.npy" in str(out)
    assert peak < 8                                         # it cost 1.96 GB before


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """14 samples of 32^3 in 4 shards (zarr and wds), written inline without Ray."""
    from cluster_fixtures import healthy_manifest, write_dataset
    root = tmp_path_factory.mktemp("hostile-ds")
    manifest = healthy_manifest(root, 2)
    write_dataset(manifest, root / "ds", formats=("zarr", "wds"))
    return root / "ds"


def edited_copy(src, dst, path, edit):
    """A copy of the dataset at ``src`` with the JSON file ``path`` edited by ``edit(obj)``."""
    import json
    import shutil
    shutil.copytree(src, dst)
    target = dst / path
    obj = json.loads(target.read_text())
    edit(obj)
    target.write_text(json.dumps(obj))
    return dst


@pytest.mark.parametrize("name, edit, words", [
    ("fewer", lambda ix: ix.update(samples=10), "samples"),
    ("huge", lambda ix: ix.update(samples=200_000_000), "samples"),
    ("shard", lambda ix: ix["shards"].update(scan_offsets=ix["shards"]["scan_offsets"][:-1]),
     "scan_offsets"),
    ("crop", lambda ix: ix["spec"]["generator"].update(crop_size=[4096, 32, 32]), "crop_size"),
])
def test_index_that_disagrees_with_itself_is_refused(small_dataset, tmp_path, name, edit, words):
    """Valid JSON edits of index.json passed verify before ("samples": 32 -> 22 and the trainer
    read 22; 2e8 cost the loader 1.87 GB). The index must agree with its spec and shard layout."""
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    ds = edited_copy(small_dataset, tmp_path / name, "index.json", edit)
    out, peak = peak_mib(lambda: Dataset(str(ds)))
    assert isinstance(out, DatasetError) and words in str(out) and "index.json" in str(out)
    assert peak < 16


@pytest.fixture(scope="module")
def small_dataset_v2(tmp_path_factory):
    """The same dataset in format 2 (sha256 throughout), as written before format 3."""
    from cluster_fixtures import healthy_manifest, write_dataset
    root = tmp_path_factory.mktemp("hostile-ds-v2")
    manifest = healthy_manifest(root, 2)
    write_dataset(manifest, root / "ds", formats=("zarr", "wds"), dataset_format=2)
    return root / "ds"


def _as_format_1(src, dst):
    """A copy of the dataset at ``src`` as tumorforge 0.2 wrote it (format 1): index.json lists
    every shard's record inline, commits carry the sample hashes, no shards/ folder."""
    import json
    import shutil
    shutil.copytree(src, dst)
    index = json.loads((dst / "index.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((dst / "shards").iterdir())]
    shutil.rmtree(dst / "shards")
    index.update(format="tumorforge.dataset/1", shards=records)
    (dst / "index.json").write_text(json.dumps(index, sort_keys=True, indent=1))
    for record in records:
        commit = dst / "_commits" / f"shard-{record['shard']:06d}.json"
        old = json.loads(commit.read_text())
        commit.write_text(json.dumps({**record, "seconds": old["seconds"],
                                      "worker": old["worker"]}, sort_keys=True, indent=1))
    return dst


def test_format_2_index_lists_shards_and_format_1_is_still_read(small_dataset_v2, tmp_path,
                                                                capsys):
    """Issue 14: index.json lists shards only (each shard's record: size and sha256; its scans);
    per-sample hashes live in the shard's record, read when the shard is opened, and keys follow
    from the dataset id. A format 1 dataset reads, verifies and streams as before; an unknown
    format is refused in one line."""
    import json
    from tumorforge.cluster.audit import verify
    from tumorforge.cluster.front_door import main
    from tumorforge.manifests.dataset.names import sample_key
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    from tumorforge.trainer.config import Source
    from tumorforge.trainer.data import MixedStream
    index = json.loads((small_dataset_v2 / "index.json").read_text())
    assert index["format"] == "tumorforge.dataset/2"
    assert set(index["shards"]) == {"scan_names", "record_bytes", "record_sha256",
                                    "scan_offsets", "scan_ids"}
    assert "samples" not in json.dumps(index["shards"]) and len(index["shards"]["record_bytes"]) == 4
    new = Dataset(str(small_dataset_v2))
    assert new.keys[13] == sample_key(new.dataset_id, 13) and new.index_of(new.keys[13]) == 13
    assert not new._records                          # opening read no shard record
    old = Dataset(str(_as_format_1(small_dataset_v2, tmp_path / "v1")))
    assert old.index.format == "tumorforge.dataset/1" and list(old.keys) == list(new.keys)
    assert [old.shard(k) for k in range(4)] == list(new.shards)
    assert verify(old) == [] and verify(new) == []
    for i in (0, 13):
        assert all(np.array_equal(a, b) for a, b in zip(old.sample(i)[:2], new.sample(i)[:2]))
        assert old.copies(i) == new.copies(i) == {"zarr": "ok", "wds": "ok"}
    for fmt in ("zarr", "wds"):
        batch = next(iter(MixedStream([Source(str(tmp_path / "v1"), format=fmt)], seed=0)))
        assert not batch["corrupt"] and batch["key"] in list(new.keys)
    with pytest.raises(DatasetError, match="no sample with key"):
        new.index_of("tf000000000000_0000000001")
    (tmp_path / "v1" / "index.json").write_text(json.dumps({**index,
                                                            "format": "tumorforge.dataset/4"}))
    message = user_error(capsys, ["verify", str(tmp_path / "v1")])
    assert "tumorforge.dataset/4" in message and "newer tumorforge" in message


def test_a_shard_record_that_differs_from_the_index_is_refused(small_dataset, tmp_path):
    """Format 2: the index pins each shard record's size and sha256, so an edited, missing or
    swapped record is refused when its shard is opened (the trainer marks its samples corrupt);
    the other shards read."""
    import shutil
    from tumorforge.cluster.audit import verify
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    from tumorforge.trainer.data import SampleStream
    ds_path = tmp_path / "ds"
    shutil.copytree(small_dataset, ds_path)
    one, two = ds_path / "shards" / "shard-000001.json", ds_path / "shards" / "shard-000002.json"
    one.write_bytes(two.read_bytes())               # a well-formed record, of another shard
    ds = Dataset(str(ds_path))
    with pytest.raises(DatasetError, match="shard-000001.json.*index.json says"):
        ds.shard(1)
    assert ds.sample(0)[2].index == 0 and ds.sample(9)[2].index == 9
    stream = SampleStream(ds, seed=0, rank=0, world=1)
    assert stream.load(5)["corrupt"] and not stream.load(9)["corrupt"]
    problems = dict(verify(ds))
    assert "shards/shard-000001.json" in problems and len(problems) == 1
    one.unlink()
    assert "missing" in dict(verify(Dataset(str(ds_path))))["shards/shard-000001.json"]


def test_zarr_metadata_that_disagrees_with_the_index_is_refused(small_dataset, tmp_path):
    """A zarr.json whose shape says 400^3 per sample: verify allocated 1.33 GB before."""
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError

    def grow(meta):
        meta["shape"] = [meta["shape"][0], 400, 400, 400]
    import json
    ds = edited_copy(small_dataset, tmp_path / "zarr", "dataset.zarr/image/zarr.json", grow)
    out, peak = peak_mib(lambda: Dataset(str(ds)).sample(0))
    assert isinstance(out, DatasetError) and "image/zarr.json" in str(out)    # hash in the index
    assert peak < 32
    index = json.loads((ds / "index.json").read_text())
    del index["metadata"]                  # an index from before the metadata was listed
    (ds / "index.json").write_text(json.dumps(index))
    out, peak = peak_mib(lambda: Dataset(str(ds)).sample(0))
    assert isinstance(out, DatasetError) and "image" in str(out) and "400" in str(out)
    assert peak < 32
    assert Dataset(str(small_dataset)).sample(0)[0].shape == (32, 32, 32)   # the original reads


def test_loader_refuses_bad_zarr_metadata_with_a_message(small_dataset, tmp_path):
    """It exited 0 having skipped every sample when the image array's metadata was corrupt."""
    from tumorforge.manifests.dataset.reader import DatasetError
    from tumorforge.trainer.config import Source
    from tumorforge.trainer.data import open_source
    ds = edited_copy(small_dataset, tmp_path / "bad", "dataset.zarr/image/zarr.json",
                     lambda meta: meta.update(data_type="float64"))
    with pytest.raises(DatasetError) as exc:
        open_source(Source(url=str(ds), format="zarr"))
    assert "image" in str(exc.value) and "\n" not in str(exc.value)
    assert open_source(Source(url=str(small_dataset), format="zarr")).dataset_id


@pytest.mark.parametrize("target, fmt", [("dataset.zarr/image/c/0/0/0/0", "zarr"),
                                         ("wds/shard-000000.tar", "wds")])
def test_audit_names_a_corrupt_copy_in_one_line(small_dataset, tmp_path, capsys, target, fmt):
    """A flipped chunk gave a traceback, and only the zarr copy was checked."""
    import shutil
    from tumorforge.cluster.front_door import main
    ds = tmp_path / "ds"
    shutil.copytree(small_dataset, ds)
    path = ds / target
    raw = bytearray(path.read_bytes())
    raw[700] ^= 0xFF                 # inside sample 0: the shard's first chunk or tar member
    path.write_bytes(bytes(raw))
    message = user_error(capsys, ["audit", str(ds), "--index", "0", "--no-regenerate"])
    assert message.startswith("audit: ") and f"{fmt} copy" in message
    assert main(["audit", str(small_dataset), "--index", "0", "--no-regenerate"]) == 0
    assert "zarr copy matches the index, wds copy matches the index" in capsys.readouterr().out


def test_retried_shard_removes_the_temporaries_of_its_killed_writer(tmp_path):
    """An actor killed while writing left `<object>.tmp-<id>`, and verify then failed a job that
    exited 0 (4 of 4 tries). Rewriting the object removes what its earlier writer left."""
    from tumorforge.manifests import storage
    from tumorforge.manifests.dataset.store import Objects
    out = Objects(str(tmp_path / "ds"))
    out.put("wds/shard-000001.tar", b"first")
    stale = tmp_path / "ds" / "wds" / f"shard-000001.tar{storage.TMP_MARK}dead"
    other = tmp_path / "ds" / "wds" / f"shard-000002.tar{storage.TMP_MARK}live"
    stale.write_bytes(b"half")
    other.write_bytes(b"another shard's writer")
    out.put("wds/shard-000001.tar", b"second")
    assert not stale.exists() and other.exists()
    assert out.get("wds/shard-000001.tar") == b"second"


@pytest.mark.parametrize("path, edit, words", [
    ("_commits/shard-000001.json",
     lambda c: c["files"]["wds/shard-000001.tar"].update(bytes=3), "commit record differs"),
    ("shards/shard-000001.json",
     lambda r: r["samples"][0].update(image_blake3="0" * 64), "index.json says"),
    ("dataset.zarr/label/zarr.json",
     lambda m: m.update(shape=[m["shape"][0], 64, 64, 64]), "dataset.zarr metadata"),
    ("dataset.zarr/image/zarr.json", lambda m: m.update(fill_value=7), "corrupt"),
    ("dataset.zarr/zarr.json", lambda m: m["attributes"].update(root_seed=9), "corrupt"),
])
def test_verify_checks_commits_and_zarr_metadata(small_dataset, tmp_path, capsys, path, edit,
                                                 words):
    """verify only checked that commit records existed, and listed no zarr metadata (3 of 4 edits
    of zarr.json files went undetected); the index now lists them with size and sha256."""
    from tumorforge.cluster.front_door import main
    ds = edited_copy(small_dataset, tmp_path / "ds", path, edit)
    assert main(["verify", str(ds)]) == 1
    out = capsys.readouterr().out
    assert words in out and "Traceback" not in out
    assert main(["verify", str(small_dataset)]) == 0


def test_rerun_redoes_a_shard_whose_objects_changed(tmp_path):
    """Resume trusted a commit whose files existed: a flipped bit survived every rerun. Now the
    commit's sizes and sha256 are checked, the shard is redone byte-identical, and verify passes."""
    from cluster_fixtures import healthy_manifest, small_spec, write_dataset
    from tumorforge.cluster.audit import verify
    from tumorforge.cluster.job import _versions, _write_index, prepare_output
    from tumorforge.cluster.plan import make_plan
    from tumorforge.cluster.worker import ShardWorker
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.manifests.dataset.store import Objects
    from tumorforge.manifests.schema import read_manifest
    manifest = healthy_manifest(tmp_path, 2)
    write_dataset(manifest, tmp_path / "ds", formats=("zarr", "wds"))
    tar = tmp_path / "ds" / "wds" / "shard-000001.tar"
    original = tar.read_bytes()
    flipped = bytearray(original)
    flipped[700] ^= 0x01
    tar.write_bytes(bytes(flipped))
    assert verify(Dataset(str(tmp_path / "ds")))                      # found...
    plan = make_plan(small_spec(manifest, tmp_path / "ds", formats=("zarr", "wds")),
                     read_manifest(str(manifest)))
    out = Objects(str(tmp_path / "ds"))
    committed = prepare_output(plan, out)
    assert committed == {0, 2, 3}                                     # ...and redone on a rerun
    ShardWorker(plan).write_shard(1)
    _write_index(plan, out, _versions())
    assert tar.read_bytes() == original and verify(Dataset(str(tmp_path / "ds"))) == []


def test_output_lock_is_exclusive_beats_and_breaks_when_stale(tmp_path, s3_server):
    """Local disk and S3 (moto's server on 127.0.0.1): one holder at a time; a lock whose
    heartbeat stopped (its run died) is taken over; a live holder keeps it fresh."""
    import json
    import time
    import boto3
    from tumorforge.manifests.dataset.store import LockHeld, Objects, OutputLock
    boto3.client("s3").create_bucket(Bucket="locks")
    for root in (str(tmp_path / "out"), "s3://locks/out"):
        objects = Objects(root)
        first = OutputLock(objects, "_lock.json", heartbeat_s=0.2).acquire()
        with pytest.raises(LockHeld) as exc:
            OutputLock(objects, "_lock.json").acquire()
        assert "_lock.json" in str(exc.value) and "\n" not in str(exc.value)
        beat = json.loads(objects.get("_lock.json"))["heartbeat"]
        time.sleep(0.6)
        assert json.loads(objects.get("_lock.json"))["heartbeat"] > beat   # kept fresh
        first.release()
        assert not objects.exists("_lock.json")
        objects.put("_lock.json", json.dumps({"owner": "dead:1", "token": "x",
                                              "heartbeat": time.time() - 3600}).encode())
        taken = OutputLock(objects, "_lock.json", stale_after_s=600).acquire()
        assert json.loads(objects.get("_lock.json"))["token"] == taken.token
        taken.release()


@pytest.mark.parametrize("path, edit, words", [
    ("index.json", lambda ix: ix["spec"]["generator"].update(profile="paper-train"),
     "spec differs from the plan"),
    ("index.json", lambda ix: ix["versions"].update(numpy="0.0"), None),
    ("plan.json", lambda p: p["identity"].update(root_seed=4), "not the hash of its contents"),
])
def test_verify_cross_checks_index_against_plan(small_dataset, tmp_path, capsys, path, edit,
                                                words):
    """Valid-JSON edits of index.json passed verify (6 of 6). The spec must be the plan's, and the
    plan must hash to its dataset_id. (Library versions are a record of the run, not checked.)"""
    from tumorforge.cluster.front_door import main
    ds = edited_copy(small_dataset, tmp_path / "ds", path, edit)
    code = main(["verify", str(ds)])
    out = capsys.readouterr().out
    assert (code, words is None or words in out) == ((0, True) if words is None else (1, True))


@pytest.mark.parametrize("formats", [("zarr", "wds"), ("zarr",)])
def test_rerun_redoes_a_shard_whose_commit_disagrees_with_its_samples(tmp_path, formats):
    """A sample hash edited in a commit record, objects intact: the index built from it made a
    good sample fail, and reruns never repaired it. Resume now compares the shard record's sample
    hashes with the provenance stored beside the samples (tar members or the zarr provenance
    array), even when the commit was edited to list the edited record's size and sha256."""
    import hashlib
    import json
    from cluster_fixtures import healthy_manifest, small_spec, write_dataset
    from tumorforge.cluster.job import prepare_output
    from tumorforge.cluster.plan import make_plan
    from tumorforge.manifests.dataset.store import Objects
    from tumorforge.manifests.schema import read_manifest
    manifest = healthy_manifest(tmp_path, 2)
    write_dataset(manifest, tmp_path / "ds", formats=formats)
    path = tmp_path / "ds" / "shards" / "shard-000002.json"
    record = json.loads(path.read_text())
    record["samples"][1]["label_blake3"] = "0" * 64
    path.write_bytes(json.dumps(record).encode())
    commit = tmp_path / "ds" / "_commits" / "shard-000002.json"
    listed = json.loads(commit.read_text())
    listed["files"]["shards/shard-000002.json"] = {
        "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    commit.write_text(json.dumps(listed))
    plan = make_plan(small_spec(manifest, tmp_path / "ds", formats=formats),
                     read_manifest(str(manifest)))
    assert prepare_output(plan, Objects(str(tmp_path / "ds"))) == {0, 1, 3}
