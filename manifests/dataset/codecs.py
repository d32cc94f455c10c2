"""The two shard formats, encoded to bytes in memory so that each object is written in one go.

Zarr v3 (``dataset.zarr``): arrays ``image (N, Z, Y, X) int16`` HU and ``label (N, Z, Y, X) uint8``,
one sample per chunk and S samples per shard (sharding codec; Blosc zstd level 3 with bitshuffle,
then crc32c), and per-sample side arrays ``key`` (string), ``sample_index`` (int64) and
``provenance`` (JSON string), chunked to S. A zarr shard's bytes do not depend on where the shard
sits in the array, so a writer encodes its shard in a private in-memory store and copies the bytes
to ``<array>/c/<k>/0/0/0``.

WebDataset (``wds/shard-000123.tar``): members ``<key>.image.npy``, ``<key>.label.npy`` and
``<key>.json`` in sample order; USTAR headers with mtime 0, uid/gid 0 and no user names, so a
rewrite is byte-identical; ``.npy`` written without pickle.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from .. import storage
from .names import ZARR_ROOT


def _volume_codecs(dtype) -> dict:
    return dict(serializer=BytesCodec(),
                compressors=[BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle,
                                        typesize=np.dtype(dtype).itemsize), Crc32cCodec()])


# The zarr arrays of a dataset that readers check against the index: the sample arrays' dtypes,
# and None for the arrays with one entry per sample.
ZARR_ARRAYS = {"image": "int16", "label": "uint8", "key": None, "provenance": None}


def volume_attributes(name: str, spacing_mm) -> dict:
    """Attributes of the ``image`` / ``label`` arrays: what a reader needs to interpret a crop
    without tumorforge (spacing per stored axis, units, axis meaning, label names)."""
    from ..conventions import LABEL_NAMES
    r, a, s = (float(v) for v in spacing_mm)
    out = {"spacing_mm": [s, a, r], "spacing_units": "mm",
           "axes": "sample, then z/y/x = S/A/R: RAS+ voxel axes of the crop stored (Z, Y, X); "
                   "transpose the last three to get (R, A, S)"}
    if name == "image":
        out["units"] = "HU"
    else:
        out["labels"] = {str(v): n for v, n in enumerate(LABEL_NAMES)}
    return out


def _define(store, n: int, per_shard: int, crop: tuple[int, int, int], attrs: dict | None = None,
            spacing_mm=None):
    """Create the group and its arrays for ``n`` samples in ``store`` (``spacing_mm``: the crops'
    spacing along R, A, S, recorded as array attributes when given)."""
    group = zarr.create_group(store, overwrite=True, attributes=attrs or {})
    for name in ("image", "label"):
        dtype = ZARR_ARRAYS[name]
        group.create_array(name, shape=(n, *crop), chunks=(1, *crop),
                           shards=(per_shard, *crop), dtype=dtype, fill_value=0,
                           dimension_names=("sample", "z", "y", "x"), **_volume_codecs(dtype),
                           attributes=volume_attributes(name, spacing_mm)
                           if spacing_mm is not None else None)
    group.create_array("key", shape=(n,), chunks=(per_shard,), dtype=str,
                       compressors=[ZstdCodec(level=3)])
    group.create_array("sample_index", shape=(n,), chunks=(per_shard,), dtype="int64",
                       fill_value=-1, compressors=[ZstdCodec(level=3)])
    group.create_array("provenance", shape=(n,), chunks=(per_shard,), dtype=str,
                       compressors=[ZstdCodec(level=3)])
    return group


def _store_items(store: MemoryStore) -> dict[str, bytes]:
    async def collect():
        out = {}
        async for key in store.list():
            buf = await store.get(key, prototype=default_buffer_prototype())
            out[key] = buf.to_bytes()
        return out
    return asyncio.run(collect())


def zarr_metadata(n: int, per_shard: int, crop, attrs: dict, spacing_mm=None
                  ) -> dict[str, bytes]:
    """The ``zarr.json`` objects of the whole dataset (keys relative to the output root)."""
    store = MemoryStore()
    _define(store, n, per_shard, tuple(crop), attrs, spacing_mm)
    return {f"{ZARR_ROOT}/{k}": v for k, v in _store_items(store).items() if k.endswith("zarr.json")}


NO_CHUNK = 2 ** 64 - 1       # a shard index entry (offset and length) of a chunk not stored


def _crc32c(data: bytes) -> bytes:
    import google_crc32c
    return np.uint32(google_crc32c.value(data)).tobytes()


def _sharded_volume(arrays: np.ndarray, per_shard: int) -> bytes | None:
    """One zarr v3 shard object of a (count, Z, Y, X) array, encoded as zarr-python 3.1 encodes it
    (:func:`_define`'s codecs): each sample a chunk (raw little-endian C-order bytes, Blosc zstd 3
    bitshuffle with the dtype's typesize, then crc32c), chunks in sample order, an all-zero chunk
    (the fill value) not stored, then the index of (offset, length) uint64 pairs for ``per_shard``
    chunks (absent ones 2^64-1) with its own crc32c at the end. None when no chunk is stored."""
    from numcodecs import Blosc
    dtype = np.dtype(arrays.dtype).newbyteorder("<")
    blosc = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE, blocksize=0,
                  typesize=dtype.itemsize)
    index = np.full((per_shard, 2), NO_CHUNK, dtype="<u8")
    parts, offset = [], 0
    for n, chunk in enumerate(arrays):
        if not chunk.any():
            continue
        encoded = blosc.encode(np.ascontiguousarray(chunk, dtype=dtype).view(np.uint8))
        encoded = bytes(encoded) + _crc32c(encoded)
        index[n] = (offset, len(encoded))
        parts.append(encoded)
        offset += len(encoded)
    if not parts:
        return None
    index_bytes = index.tobytes()
    return b"".join(parts) + index_bytes + _crc32c(index_bytes)


def _side_chunk(values, per_shard: int, fill) -> bytes:
    """One chunk of a per-sample side array (padded to ``per_shard`` with the fill value, as zarr
    pads an edge chunk): vlen-utf8 for strings, little-endian bytes for int64, then zstd 3."""
    from numcodecs import VLenUTF8, Zstd
    values = list(values) + [fill] * (per_shard - len(values))
    if isinstance(fill, str):
        raw = VLenUTF8().encode(np.asarray(values, dtype=object))
    else:
        raw = np.asarray(values, dtype="<i8").tobytes()
    return bytes(Zstd(level=3, checksum=False).encode(raw))


def volume_object(name: str, shard: int) -> str:
    """The object holding zarr shard ``shard`` of the ``image`` or ``label`` array."""
    return f"{ZARR_ROOT}/{name}/c/{shard}/0/0/0"


def shard_index_bytes(per_shard: int) -> int:
    """Length of a volume shard's trailing index: (offset, length) uint64 per chunk, crc32c."""
    return per_shard * 16 + 4


def read_shard_index(tail: bytes, where: str) -> np.ndarray:
    """The (per_shard, 2) chunk table of a volume shard from its trailing index bytes."""
    body, crc = tail[:-4], tail[-4:]
    if _crc32c(body) != crc:
        raise ValueError(f"{where}: shard index checksum does not match")
    return np.frombuffer(body, "<u8").reshape(-1, 2)


def decode_volume_chunk(data: bytes, dtype: str, shape, where: str) -> np.ndarray:
    """One sample's chunk of a volume shard (as :func:`_sharded_volume` writes it) -> array."""
    from numcodecs import Blosc
    body, crc = data[:-4], data[-4:]
    if _crc32c(body) != crc:
        raise ValueError(f"{where}: chunk checksum does not match")
    raw = Blosc().decode(body)
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != want:
        raise ValueError(f"{where}: chunk holds {len(raw)} bytes, expected {want}")
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def zarr_shard_objects(shard: int, images, labels, keys, indices, provenance, per_shard: int
                       ) -> dict[str, bytes]:
    """Encoded objects of zarr shard ``shard`` (keys relative to the output root), made straight
    through the codecs (zarr-python's pipeline cost 4x the codec work); the bytes are those
    :func:`zarr_shard_objects_reference` makes (tested)."""
    coords = f"c/{shard}"
    out = {}
    for name, arrays in (("image", images), ("label", labels)):
        data = _sharded_volume(np.asarray(arrays), per_shard)
        if data is not None:
            out[volume_object(name, shard)] = data
    out[f"{ZARR_ROOT}/key/{coords}"] = _side_chunk(keys, per_shard, "")
    out[f"{ZARR_ROOT}/sample_index/{coords}"] = _side_chunk(
        [int(i) for i in indices], per_shard, -1)
    out[f"{ZARR_ROOT}/provenance/{coords}"] = _side_chunk(provenance, per_shard, "")
    return out


def zarr_shard_objects_reference(shard: int, images, labels, keys, indices, provenance,
                                 per_shard: int) -> dict[str, bytes]:
    """The same objects through zarr-python's own pipeline (the reference the tests compare
    :func:`zarr_shard_objects` with)."""
    store = MemoryStore()
    group = _define(store, len(images), per_shard, tuple(images.shape[1:]))
    group["image"][:] = images
    group["label"][:] = labels
    group["key"][:] = np.asarray(keys, dtype=object)
    group["sample_index"][:] = np.asarray(indices, dtype=np.int64)
    group["provenance"][:] = np.asarray(provenance, dtype=object)
    out = {}
    for key, data in _store_items(store).items():
        if key.endswith("zarr.json"):
            continue
        name, _, chunk = key.partition("/c/")
        coords = chunk.split("/")
        coords[0] = str(shard)                 # the shard's position along the sample axis
        out[f"{ZARR_ROOT}/{name}/c/{'/'.join(coords)}"] = data
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


# WebDataset members of a sample: the arrays as .npy files compressed with Blosc (zstd level 3,
# bitshuffle, the dtype's typesize), as the Zarr chunks are; shards written before 0.3 hold plain
# .npy members and are still read.
NPY_BLOSC = "npy.blosc"


def encode_npy_blosc(array: np.ndarray) -> bytes:
    """An array as a Blosc-compressed .npy file (the .npy header stays inside)."""
    from numcodecs import Blosc
    array = np.ascontiguousarray(array)
    blosc = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE, blocksize=0,
                  typesize=array.dtype.itemsize)
    return bytes(blosc.encode(np.frombuffer(npy_bytes(array), np.uint8)))


def decode_npy_blosc(data: bytes) -> np.ndarray:
    """The array of a ``.npy.blosc`` member; never unpickles. Plain ``webdataset`` users register
    it: ``WebDataset(url).decode(wds.handle_extension("npy.blosc", decode_npy_blosc))``."""
    from numcodecs import Blosc
    return np.load(io.BytesIO(Blosc().decode(data)), allow_pickle=False)


def tar_shard(keys, images, labels, provenance) -> bytes:
    """One WebDataset tar; identical bytes for identical samples."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, label, prov in zip(keys, images, labels, provenance):
            for suffix, data in ((f"image.{NPY_BLOSC}", encode_npy_blosc(image)),
                                 (f"label.{NPY_BLOSC}", encode_npy_blosc(label)),
                                 ("json", prov.encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tar_members(fileobj, total: int, wanted=lambda name: True):
    """(name, bytes) of the regular members of a tar read from ``fileobj`` as a stream (one
    member in memory at a time; ``total``: the tar's size) whose name ``wanted`` accepts, each
    bounded before it is read: a sparse member or a declared size beyond the tar itself would be
    expanded into memory (a 2 KB tar declaring 1 GB cost 1.96 GB)."""
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile() or not wanted(info.name):
                continue
            if info.issparse():
                raise ValueError(f"tar member {info.name!r} is sparse (declares {info.size} bytes); "
                                 f"tumorforge never writes sparse members")
            if info.size > total:
                raise ValueError(f"tar member {info.name!r} declares {info.size} bytes, more than "
                                 f"the whole tar ({total} bytes)")
            yield info.name, tar.extractfile(info).read()


def iter_tar(fileobj, total: int):
    """Samples of a WebDataset shard streamed from ``fileobj`` as (key, image, label,
    provenance), each as soon as its members are read; ``.npy.blosc`` and plain ``.npy`` members.
    Never unpickles."""
    current, members = None, {}

    def finish(key, m):
        image = _member_array(key, m, "image")
        label = _member_array(key, m, "label")
        if "json" not in m:
            raise ValueError(f"sample {key}: tar lacks member(s) ['json']")
        return key, image, label, json.loads(m["json"])
    for name, content in _tar_members(fileobj, total):
        key, _, suffix = name.partition(".")
        if key != current:
            if current is not None:
                yield finish(current, members)
            current, members = key, {}
        members[suffix] = content
    if current is not None:
        yield finish(current, members)


def _member_array(key: str, m: dict, name: str) -> np.ndarray:
    if f"{name}.{NPY_BLOSC}" in m:
        return decode_npy_blosc(m[f"{name}.{NPY_BLOSC}"])
    if f"{name}.npy" in m:
        return np.load(io.BytesIO(m[f"{name}.npy"]), allow_pickle=False)
    raise ValueError(f"sample {key}: tar lacks member(s) ['{name}.{NPY_BLOSC}']")


def read_tar(data: bytes) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """Samples of a WebDataset shard held in memory (see :func:`iter_tar`)."""
    return list(iter_tar(io.BytesIO(data), len(data)))


def tar_provenance(data: bytes) -> list[tuple[str, dict]]:
    """(key, provenance dict) of every sample of a WebDataset shard, without decoding its arrays;
    members bounded as in :func:`read_tar`."""
    return [(name[:-len(".json")], json.loads(content))
            for name, content in _tar_members(io.BytesIO(data), len(data),
                                              lambda n: n.endswith(".json"))]


def open_zarr(url: str):
    """The dataset's zarr group at ``url`` (local or s3://), read-only."""
    if storage.is_remote(url):
        from zarr.storage import FsspecStore
        store = FsspecStore.from_url(url, storage_options=storage.storage_options(url),
                                     read_only=True)
    else:
        store = url.removeprefix("file://")
    return zarr.open_group(store, mode="r")
