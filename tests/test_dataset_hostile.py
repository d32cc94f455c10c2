"""Hostile datasets (issue 26's red team, items 4 and 5), each built here by the test: an object
of a dataset replaced by a symlink to ``/dev/zero``, a named pipe or a sparse file far larger than
its record says, and a legacy ``.npy.blosc`` member whose Blosc header declares 1e9 bytes. Before,
``verify`` and ``bench loader`` grew to the 3 GB cap and ended in a MemoryError traceback, a FIFO
in place of index.json hung them, and the crafted member cost the loader 1,316 MB. Each must now
be refused in one line, in bounded memory, without hanging. Memory: the commands' peak resident
memory above where they started (tracemalloc cost a second a command); the API calls' peak traced
allocation.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest

from conftest import user_error
from test_red_team import no_hang, peak_mib, peak_rss_mib  # noqa: F401 (no_hang: a fixture)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """14 samples of 32^3 in 4 shards, zarr and wds, format 3, written inline without Ray. The
    commands' heavy imports are loaded here, so the first test's peak memory does not hold them."""
    import torch.utils.data  # noqa: F401
    import tumorforge.cluster.front_door  # noqa: F401
    import tumorforge.trainer.bench  # noqa: F401
    import tumorforge.trainer.data  # noqa: F401
    from cluster_fixtures import healthy_manifest, write_dataset
    root = tmp_path_factory.mktemp("hostile-objects")
    write_dataset(healthy_manifest(root, 2), root / "ds", formats=("zarr", "wds"))
    return root / "ds"


def hostile_copy(src, dst, path: str, how: str):
    """A copy of the dataset at ``src`` whose object ``path`` is replaced: ``zero`` a symlink to
    /dev/zero, ``fifo`` a named pipe, ``sparse`` a 1 GiB sparse regular file."""
    shutil.copytree(src, dst)
    target = dst / path
    target.unlink()
    if how == "zero":
        target.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(target)
    else:
        with open(target, "wb") as f:
            f.truncate(1 << 30)
    return dst


# Every kind of object verify reads, each as /dev/zero; the three kinds of the red team's
# findings (index, shard record, zarr.json) and a data object also as a FIFO and a sparse file.
VERIFY_CASES = [*((path, "zero") for path in (
    "index.json", "shards/shard-000001.json", "dataset.zarr/image/zarr.json",
    "dataset.zarr/image/c/1/0/0/0", "dataset.zarr/provenance/c/1", "wds/shard-000001.tar",
    "_commits/shard-000001.json", "plan.json")),
    *((path, how) for how in ("fifo", "sparse") for path in (
        "index.json", "shards/shard-000001.json", "dataset.zarr/image/zarr.json",
        "wds/shard-000001.tar"))]


@pytest.mark.parametrize("path, how", VERIFY_CASES)
def test_verify_refuses_what_is_not_the_object_its_index_lists(dataset, tmp_path, capsys, no_hang,
                                                               path, how):
    """index.json: exit 2 and one line; any other object: verify names it and exits 1."""
    from tumorforge.cluster.front_door import main
    ds = hostile_copy(dataset, tmp_path / "ds", path, how)
    if path == "index.json":
        message, peak = peak_rss_mib(lambda: user_error(capsys, ["verify", str(ds)]))
        assert "index.json" in message
        assert {"zero": "device", "fifo": "named pipe", "sparse": "1073741824 bytes"}[how] \
            in message
    else:
        code, peak = peak_rss_mib(lambda: main(["verify", str(ds)]))
        out = capsys.readouterr()
        assert code == 1 and "Traceback" not in out.out + out.err
        assert any(line.lstrip().startswith(path) for line in out.out.splitlines()), out.out
    assert peak < 48                     # the dataset's own objects; /dev/zero cost 3 GB


@pytest.mark.parametrize("path, fmt, how", [
    ("index.json", "zarr", "zero"), ("index.json", "wds", "fifo"),
    ("dataset.zarr/image/zarr.json", "zarr", "zero"),
    ("shards/shard-000001.json", "zarr", "zero"), ("shards/shard-000001.json", "wds", "fifo"),
    ("dataset.zarr/image/c/1/0/0/0", "zarr", "sparse"), ("wds/shard-000001.tar", "wds", "zero"),
    ("wds/shard-000001.tar", "wds", "sparse")])
def test_loader_refuses_or_skips_hostile_objects(dataset, tmp_path, capsys, no_hang, path, fmt,
                                                 how):
    """`bench loader`: a bad index.json or zarr metadata stops it in one line (exit 2); a bad
    shard record or data object makes that shard's samples corrupt (skipped and counted) while
    the other shards read."""
    from tumorforge.cluster.front_door import main
    ds = hostile_copy(dataset, tmp_path / "ds", path, how)
    argv = ["bench", "loader", str(ds), "--format", fmt, "--workers", "0", "--batch-size", "2",
            "--batches", "8", "--json", str(tmp_path / "report.json")]
    if path in ("index.json", "dataset.zarr/image/zarr.json"):
        message, peak = peak_rss_mib(lambda: user_error(capsys, argv))
        assert path in message
    else:
        code, peak = peak_rss_mib(lambda: main(argv))
        report = json.loads((tmp_path / "report.json").read_text())
        assert code == 0 and 0 < report["corrupt"] < report["samples"]
    assert peak < 96


def test_every_reader_path_is_bounded_by_the_record(dataset, tmp_path, no_hang):
    """The API under the commands: a record, tar or zarr object larger than its record says is
    refused before it is read, naming the object and the size expected."""
    from tumorforge.manifests.dataset.reader import Dataset, DatasetError
    ds_path = hostile_copy(dataset, tmp_path / "ds", "wds/shard-000001.tar", "sparse")
    ds = Dataset(str(ds_path))
    tars = ds.reader("wds")
    for read in (lambda: tars.read(ds.shard(1)), lambda: list(tars.stream(ds.shard(1)))):
        out, peak = peak_mib(read)
        assert isinstance(out, (DatasetError, ValueError)) and peak < 16, out
    assert "wds/shard-000001.tar" in str(peak_mib(lambda: tars.read(ds.shard(1)))[0])
    assert ds.copies(5)["wds"].startswith("unreadable") and ds.copies(5)["zarr"] == "ok"
    assert ds.sample(0)[2].index == 0                  # other shards read


def test_index_json_is_capped(tmp_path, no_hang):
    """index.json is read only up to INDEX_MAX_BYTES (sized for 10 million samples in shards of
    13 or more): a larger one is refused before it is read."""
    from tumorforge.manifests.dataset.reader import INDEX_MAX_BYTES, Dataset, DatasetError
    (tmp_path / "ds").mkdir()
    with open(tmp_path / "ds" / "index.json", "wb") as f:
        f.truncate(INDEX_MAX_BYTES + 1)
    out, peak = peak_mib(lambda: Dataset(str(tmp_path / "ds")))
    assert isinstance(out, DatasetError) and f"expected at most {INDEX_MAX_BYTES}" in str(out)
    assert peak < 1


def test_chunk_table_pointing_past_the_object_is_refused(dataset, tmp_path):
    """A zarr shard index (with a valid crc32c of its own) whose entry points past the object is
    refused before the range is read."""
    from tumorforge.manifests.dataset import codecs
    from tumorforge.manifests.dataset.reader import Dataset
    ds_path = tmp_path / "ds"
    shutil.copytree(dataset, ds_path)
    target = ds_path / "dataset.zarr/image/c/0/0/0/0"
    data = bytearray(target.read_bytes())
    n = codecs.shard_index_bytes(4)
    table = np.frombuffer(bytes(data[-n:-4]), "<u8").reshape(-1, 2).copy()
    table[1] = (len(data), 1 << 40)
    body = table.tobytes()
    data[-n:] = body + codecs._crc32c(body)
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="points past"):
        Dataset(str(ds_path)).zarr_sample(1)


def legacy_tar(key: str, image_member: bytes, label: np.ndarray) -> bytes:
    """A tar as issue 14 wrote it: `.npy.blosc` members (a whole .npy file inside Blosc zstd)."""
    from numcodecs import Blosc

    def npy_blosc(array):
        buf = io.BytesIO()
        np.save(buf, array)
        return bytes(Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE).encode(buf.getvalue()))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((f"{key}.image.npy.blosc", image_member),
                           (f"{key}.label.npy.blosc", npy_blosc(label)),
                           (f"{key}.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_legacy_npy_blosc_member_declaring_1e9_bytes_is_refused():
    """Item 5: a 32 KB Blosc frame declaring 1e9 bytes made the wds loader peak at 1,316 MB. Its
    declared size is checked against what the sample's shape and dtype allow (a .npy of them)
    before anything is decompressed."""
    from numcodecs import Blosc
    from tumorforge.manifests.dataset import codecs
    shape = (32, 32, 32)
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    buf = io.BytesIO()
    np.save(buf, image[:16])                         # a real frame of ~32 KB ...
    frame = bytearray(Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE).encode(
        buf.getvalue()))
    frame[4:8] = (10 ** 9).to_bytes(4, "little")     # ... whose header declares 1e9 bytes
    assert 16_000 < len(frame) < 64_000
    data = legacy_tar("tf000000000000_0000000000", bytes(frame), label)
    out, peak = peak_mib(lambda: codecs.read_tar(data, shape))
    assert isinstance(out, ValueError) and "1000000000 bytes" in str(out)
    assert ".image.npy.blosc" in str(out) and "\n" not in str(out)
    assert peak < 4
    good = bytearray(frame)
    buf = io.BytesIO()
    np.save(buf, image)
    good = legacy_tar("tf000000000000_0000000000", bytes(Blosc(
        cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE).encode(buf.getvalue())), label)
    (key, got, lab, _), = codecs.read_tar(good, shape)
    assert np.array_equal(got, image) and np.array_equal(lab, label)
    with pytest.raises(ValueError, match=r"\(32, 32, 32\) int16"):     # another shape: refused
        codecs.read_tar(good, (16, 32, 32))


def test_array_members_declaring_another_shape_are_refused_before_allocating():
    """A `.bnpy` or plain `.npy` member whose .npy header declares a huge array (and a Blosc frame
    to match) is refused against the dataset's crop shape before anything is allocated."""
    from tumorforge.manifests.dataset import codecs
    shape = (32, 32, 32)
    header = codecs._npy_header("image", (1000, 1000, 1000))
    frame = bytearray(codecs.compress_volume(np.zeros(shape, np.int16), "image", "lz4").data)
    frame[4:8] = (2 * 10 ** 9 % 2 ** 32).to_bytes(4, "little")
    for member, data in ((f"image.{codecs.BNPY}", header + bytes(frame)),
                         ("image.npy", header + bytes(64))):
        members = {member: data, "label.npy": b"", "json": b"{}"}
        out, peak = peak_mib(lambda: codecs._member_array("k", members, "image", shape))
        assert isinstance(out, ValueError) and "(1000, 1000, 1000)" in str(out)
        assert peak < 1
