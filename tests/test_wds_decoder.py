"""The standalone WebDataset decoder (trainer/wds_decoder.py, issue 29 item 6): plain `webdataset`
with it reads every sample of a dataset the project wrote byte for byte as tumorforge's own reader
does, also in a fresh virtual environment where tumorforge is not installed; tars of earlier
versions read too; hostile members are refused in one line naming them, before anything is
allocated, and nothing is ever unpickled."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
import venv
from pathlib import Path

import numpy as np
import pytest

from tumorforge.manifests.dataset import codecs
from tumorforge.trainer import wds_decoder
from tumorforge.trainer.wds_decoder import decode_member, decode_sample
from conftest import peak_mib

CROP = (32, 32, 32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """6 samples of 32^3 in 2 WebDataset shards (4 + 2), written by the job's writer without Ray;
    returns (dataset path, [(key, image, label, provenance)] as tumorforge's reader reads them)."""
    from cluster_fixtures import healthy_manifest, write_dataset
    from tumorforge.manifests.dataset.reader import Dataset
    root = tmp_path_factory.mktemp("wds-decoder")
    write_dataset(healthy_manifest(root, 1), root / "ds", formats=("wds",), samples=6,
                  samples_per_shard=4)
    ds = Dataset(str(root / "ds"))
    assert ds.crop_shape == CROP
    return root / "ds", [s for shard in ds.shards for s in ds.reader("wds").read(shard)]


def _tars(path: Path) -> list[str]:
    return [str(p) for p in sorted((path / "wds").glob("shard-*.tar"))]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_plain_webdataset_reads_every_sample_as_tumorforge_does(dataset):
    """`.map(decode_sample)` (with and without a crop shape) and `.decode(decode_member)` give
    the arrays tumorforge's reader gives, byte for byte, and the same provenance records."""
    import webdataset as wds
    path, expected = dataset
    want = {key: (image, label, prov) for key, image, label, prov in expected}
    for decode in (decode_sample, functools.partial(decode_sample, shape=CROP)):
        got = list(wds.WebDataset(_tars(path), shardshuffle=False).map(decode))
        assert [s["__key__"] for s in got] == [key for key, *_ in expected]
        for s in got:
            image, label, prov = want[s["__key__"]]
            assert _same(s["image"], image) and _same(s["label"], label)
            assert s["image"].dtype == np.int16 and s["label"].dtype == np.uint8
            assert s["image"].flags.writeable and s["provenance"] == prov
            assert s["__url__"].endswith(".tar")
    raw = list(wds.WebDataset(_tars(path), shardshuffle=False).decode(decode_member))
    assert len(raw) == len(expected)
    for s in raw:
        image, label, prov = want[s["__key__"]]
        assert _same(s["image.bnpy"], image) and _same(s["label.bnpy"], label)
        assert s["json"] == prov


def test_the_documented_dataloader_recipe_batches_every_sample_once(dataset):
    """The module docstring's recipe: two DataLoader workers, each sample once, int16 HU images
    and uint8 labels in (batch, Z, Y, X)."""
    import torch
    import webdataset as wds
    path, expected = dataset
    crops = wds.WebDataset(_tars(path), shardshuffle=False).map(decode_sample).to_tuple(
        "__key__", "image", "label")
    keys = []
    for key, image, label in torch.utils.data.DataLoader(crops, batch_size=2, num_workers=2):
        assert image.dtype == torch.int16 and label.dtype == torch.uint8
        assert image.shape == label.shape == (len(key), *CROP)
        keys += key
    assert sorted(keys) == sorted(key for key, *_ in expected)


def _old_tar(samples, encoding: str) -> bytes:
    """A tar as tumorforge wrote it before the .bnpy members: ``npy.blosc`` (a whole .npy file
    inside Blosc zstd 3, bitshuffle) or plain ``npy`` array members."""
    from numcodecs import Blosc
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, label, prov in samples:
            members = []
            for name, array in (("image", image), ("label", label)):
                npy = io.BytesIO()
                np.save(npy, array, allow_pickle=False)
                blob = npy.getvalue()
                if encoding == "npy.blosc":
                    blob = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE).encode(blob)
                members.append((f"{name}.{encoding}", bytes(blob)))
            for suffix, blob in (*members, ("json", json.dumps(prov).encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return out.getvalue()


@pytest.mark.parametrize("encoding", ["npy.blosc", "npy"])
def test_tars_of_earlier_versions_read_as_tumorforge_reads_them(dataset, tmp_path, encoding):
    import webdataset as wds
    samples = dataset[1][:3]
    data = _old_tar(samples, encoding)
    (tmp_path / "old.tar").write_bytes(data)
    theirs = codecs.read_tar(data, CROP)
    ours = list(wds.WebDataset(str(tmp_path / "old.tar"), shardshuffle=False).map(
        functools.partial(decode_sample, shape=CROP)))
    assert [s["__key__"] for s in ours] == [key for key, *_ in theirs]
    for s, (key, image, label, prov) in zip(ours, theirs):
        assert _same(s["image"], image) and _same(s["label"], label) and s["provenance"] == prov


# Run by the fresh environment's interpreter: the decoder copied beside it, webdataset plain.
VENV_SCRIPT = """
import hashlib, json, sys
try:
    import tumorforge
except ModuleNotFoundError:
    pass
else:
    sys.exit(f"tumorforge is importable here: {tumorforge.__path__}")
import webdataset as wds
import wds_decoder
from wds_decoder import decode_member, decode_sample

def digest(a):
    return [hashlib.sha256(a.tobytes()).hexdigest(), list(a.shape), a.dtype.str]

urls, out = json.loads(sys.argv[1]), sys.argv[2]
rows = [[s["__key__"], digest(s["image"]), digest(s["label"]), s["provenance"]]
        for s in wds.WebDataset(urls, shardshuffle=False).map(decode_sample)]
handler = [[s["__key__"], digest(s["image.bnpy"]), digest(s["label.bnpy"]), s["json"]]
           for s in wds.WebDataset(urls, shardshuffle=False).decode(decode_member)]
json.dump({"rows": rows, "handler": handler, "decoder": wds_decoder.__file__,
           "loaded": sorted({m.split(".")[0] for m in sys.modules})}, open(out, "w"))
"""


def _digest(a: np.ndarray) -> list:
    return [hashlib.sha256(a.tobytes()).hexdigest(), list(a.shape), a.dtype.str]


def test_a_fresh_venv_without_tumorforge_reads_the_shards(dataset, tmp_path):
    """A new virtual environment (no pip, no system site-packages) that sees only numpy,
    numcodecs, typing_extensions (numcodecs needs it), webdataset, braceexpand and yaml (webdataset
    needs them), through symlinks listed by a .pth file: tumorforge is not importable there, and
    the decoder file copied beside a script reads the dataset's tars as tumorforge's reader
    does."""
    import braceexpand
    import numcodecs
    import typing_extensions
    import webdataset
    import yaml
    path, expected = dataset
    start = time.perf_counter()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, system_site_packages=False)
    site = env_dir / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert site.is_dir()
    visible = tmp_path / "visible"
    visible.mkdir()
    for module in (np, numcodecs, typing_extensions, webdataset, braceexpand, yaml):
        source = Path(module.__file__)
        source = source.parent if source.name == "__init__.py" else source
        (visible / source.name).symlink_to(source)
    (site / "visible.pth").write_text(f"{visible}\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "wds_decoder.py").write_bytes(Path(wds_decoder.__file__).read_bytes())
    (work / "read.py").write_text(VENV_SCRIPT)
    out = tmp_path / "out.json"
    # -E: no PYTHONPATH or other PYTHON* variables; -s: no user site-packages.
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-E", "-s", str(work / "read.py"),
                           json.dumps(_tars(path)), str(out)], cwd=work, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    elapsed = time.perf_counter() - start
    assert report["decoder"] == str(work / "wds_decoder.py")
    assert not {"tumorforge", "torch", "zarr"} & set(report["loaded"])
    want = [[key, _digest(image), _digest(label), prov] for key, image, label, prov in expected]
    assert report["rows"] == want and report["handler"] == want
    assert elapsed < 10, elapsed


def _npy_header(shape, descr: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                                "shape": tuple(shape)})
    return buf.getvalue()


def _frame(array: np.ndarray) -> bytes:
    return codecs.compress_volume(array, "image" if array.dtype == np.int16 else "label",
                                  "lz4").data


def _sample(**members) -> dict:
    image = np.arange(np.prod(CROP), dtype=np.int16).reshape(CROP)
    label = (image % 3).astype(np.uint8)
    sample = {"__key__": "tfabcdef012345_0000000007", "__url__": "wds/shard-000001.tar",
              "image.bnpy": _npy_header(CROP, "<i2") + _frame(image),
              "label.bnpy": _npy_header(CROP, "|u1") + _frame(label), "json": b'{"index": 7}'}
    sample.update(members)
    return {k: v for k, v in sample.items() if v is not None}


def _refused(sample: dict, **kw) -> str:
    with pytest.raises(ValueError) as info:
        decode_sample(sample, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


FRAME = _frame(np.arange(np.prod(CROP), dtype=np.int16).reshape(CROP))
HOSTILE = {
    "truncated frame": ({"image.bnpy": _npy_header(CROP, "<i2") + FRAME[:len(FRAME) // 2]},
                        "image.bnpy", f"({len(FRAME)} compressed, {len(FRAME) // 2} present)"),
    "header shape, frame of another": ({"image.bnpy": _npy_header((32, 32, 33), "<i2") + FRAME},
                                       "image.bnpy", "expected 67584 bytes for (32, 32, 33) int16"),
    "header dtype of the other array": ({"label.bnpy": _npy_header(CROP, "<i2") + FRAME},
                                        "label.bnpy", "dtype int16, fortran_order False; "
                                                      "expected uint8"),
    "object dtype": ({"image.bnpy": _npy_header(CROP, "|O") + FRAME}, "image.bnpy",
                     "dtype object (an object array is a pickle: never loaded)"),
    "two axes": ({"image.bnpy": _npy_header((32, 1024), "<i2") + FRAME}, "image.bnpy",
                 "shape (32, 1024); expected three axes"),
    "not a .npy header": ({"image.bnpy": b"\x93NUMPY\x03\x00garbage"}, "image.bnpy",
                          "not a .npy header"),
    "corrupt frame body": ({"image.bnpy": _npy_header(CROP, "<i2") + FRAME[:16]
                            + bytes(len(FRAME) - 16)}, "image.bnpy", "Blosc could not decode"),
    "provenance not JSON": ({"json": b"{not json"}, ".json", "not JSON"),
    "provenance a list": ({"json": b"[1, 2]"}, ".json", "a JSON list, expected an object"),
    "no label member": ({"label.bnpy": None}, "_0000000007:", "no label member"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_members_are_refused_in_one_line_naming_them(case):
    members, member, detail = HOSTILE[case]
    message = _refused(_sample(**members))
    assert message.startswith("wds/shard-000001.tar: tfabcdef012345_0000000007")
    assert member in message and detail in message, message


class _TouchOnLoad:
    """Unpickling it creates the file ``path``: a stand-in for a malicious pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_a_pickle_bearing_npy_member_is_never_unpickled(tmp_path):
    """A legacy `.npy` member holding an object array whose pickle would create a file when
    loaded (it does, through numpy with allow_pickle=True) is refused on its header; so is a
    `.pyd` member in `.decode(decode_member)`, which webdataset's own decoders unpickle."""
    import webdataset as wds
    from webdataset.autodecode import DecodingError
    planted = tmp_path / "unpickled"
    import pickle
    payload = np.empty((1, 1, 1), dtype=object)
    payload[0, 0, 0] = _TouchOnLoad(planted)
    npy = io.BytesIO()
    np.save(npy, payload, allow_pickle=True)
    np.load(io.BytesIO(npy.getvalue()), allow_pickle=True)
    assert planted.exists()                         # the payload is live ...
    planted.unlink()
    message = _refused(_sample(**{"image.bnpy": None, "image.npy": npy.getvalue()}))
    assert "image.npy" in message and "never loaded" in message
    pickled = io.BytesIO()
    with tarfile.open(fileobj=pickled, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, blob in (("k.image.npy", npy.getvalue()),
                           ("k.extra.pyd", pickle.dumps(_TouchOnLoad(planted)))):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (tmp_path / "pickled.tar").write_bytes(pickled.getvalue())
    for name in ("image.npy", "extra.pyd"):
        with pytest.raises(DecodingError) as info:
            list(wds.WebDataset(str(tmp_path / "pickled.tar"), shardshuffle=False).decode(
                decode_member, only=[name]))
        assert isinstance(info.value.__cause__, ValueError) and name in str(info.value.__cause__)
    assert not planted.exists()                     # ... and never ran


def test_declared_sizes_are_checked_before_anything_is_allocated():
    """A header declaring 1000^3 int16 (2 GB) with a frame to match, a legacy `.npy.blosc`
    member declaring 1e9 bytes (which cost tumorforge's loader 1,316 MB) and a header of 600^3
    (432 MB, under the cap) against the crop shape are each refused in one line with a peak
    allocation under 1 MiB."""
    from numcodecs import Blosc
    huge = bytearray(FRAME)
    huge[4:8] = (2 * 1000 ** 3 % 2 ** 32).to_bytes(4, "little")
    npy = io.BytesIO()
    np.save(npy, np.zeros(CROP, np.int16))
    legacy = bytearray(Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE).encode(
        npy.getvalue()))
    legacy[4:8] = (10 ** 9).to_bytes(4, "little")
    cases = [({"image.bnpy": _npy_header((1000,) * 3, "<i2") + bytes(huge)}, {},
              "2000000000 bytes; more than max_bytes=268435456"),
             ({"image.bnpy": None, "image.npy.blosc": bytes(legacy)}, {},
              "declares 1000000000 bytes"),
             ({"image.bnpy": None, "image.npy.blosc": bytes(legacy)}, {"shape": CROP},
              "expected 65536 to 131081 bytes"),
             ({"image.bnpy": _npy_header((600,) * 3, "<i2") + FRAME}, {"shape": CROP},
              "shape (600, 600, 600); expected (32, 32, 32)")]
    for members, kw, detail in cases:
        out, peak = peak_mib(lambda: decode_sample(_sample(**members), **kw))
        assert isinstance(out, ValueError) and detail in str(out), out
        assert "\n" not in str(out) and peak < 1, (str(out), peak)
    assert wds_decoder.MAX_ARRAY_BYTES == 2 ** 28


def test_the_decoder_imports_only_the_standard_library_numpy_and_numcodecs():
    """What lets it be copied beside a training script: no tumorforge, no relative import."""
    import ast
    tree = ast.parse(Path(wds_decoder.__file__).read_text())
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}"
            tops.add(node.module.split(".")[0])
    assert tops - set(sys.stdlib_module_names) == {"numpy", "numcodecs"}
