"""The two shard formats, encoded to bytes in memory so that each object is written in one go.

Zarr v3 (``dataset.zarr``): arrays ``image (N, Z, Y, X) int16`` HU and ``label (N, Z, Y, X) uint8``,
one sample per chunk and S samples per shard (sharding codec; Blosc as the job spec's
``compression`` says, see :data:`COMPRESSIONS`, then crc32c), and per-sample side arrays ``key``
(string), ``sample_index`` (int64) and ``provenance`` (JSON string), chunked to S. A zarr shard's
bytes do not depend on where the shard sits in the array, so a writer encodes its shard in memory
and writes the bytes to ``<array>/c/<k>/0/0/0``.

WebDataset (``wds/shard-000123.tar``): members ``<key>.image.bnpy``, ``<key>.label.bnpy`` and
``<key>.json`` in sample order; USTAR headers with mtime 0, uid/gid 0 and no user names, so a
rewrite is byte-identical. A ``.bnpy`` member is an uncompressed ``.npy`` header followed by the
array's data as one Blosc frame: the very frame the zarr chunk holds, so a sample is compressed
once for both formats. Never pickled.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import tarfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from .. import storage
from .names import ZARR_ROOT


@dataclass(frozen=True)
class BloscSettings:
    """How one volume array's chunks are compressed: Blosc with this compressor, level and shuffle
    (zarr's names: ``shuffle`` = byte shuffle, ``bitshuffle``, ``noshuffle``), the array's dtype
    size as typesize and Blosc's automatic block size (zarr's defaults)."""

    cname: str
    clevel: int
    shuffle: str

    def numcodecs(self, typesize: int):
        from numcodecs import Blosc
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                   "bitshuffle": Blosc.BITSHUFFLE}[self.shuffle]
        return Blosc(cname=self.cname, clevel=self.clevel, shuffle=shuffle, blocksize=0,
                     typesize=typesize)

    def zarr(self, typesize: int) -> BloscCodec:
        return BloscCodec(cname=self.cname, clevel=self.clevel,
                          shuffle=BloscShuffle(self.shuffle), typesize=typesize)


# The job spec's ``compression``: Blosc settings of the ``image`` and ``label`` arrays. ``lz4``
# (the spec's default) is the one near the writer's CPU budget: 1.27 CPU ms per 96^3 crop for
# 0.99 MB, where ``zstd`` (the only codec before) takes 4.98 ms for 0.81 MB (docs/results/performance.md).
# Byte shuffle suits int16 HU with lz4 (bitshuffle: 0.94 MB but 1.73 ms); labels take bitshuffle
# (0.02 MB instead of 0.08 MB for 0.1 ms). Blosc frames name their codec, so a dataset reads
# whatever it was written with.
COMPRESSIONS = {
    "lz4": {"image": BloscSettings("lz4", 5, "shuffle"),
            "label": BloscSettings("lz4", 5, "bitshuffle")},
    "zstd": {"image": BloscSettings("zstd", 3, "bitshuffle"),
             "label": BloscSettings("zstd", 3, "bitshuffle")},
}


def _volume_codecs(name: str, compression: str) -> dict:
    typesize = np.dtype(ZARR_ARRAYS[name]).itemsize
    return dict(serializer=BytesCodec(),
                compressors=[COMPRESSIONS[compression][name].zarr(typesize), Crc32cCodec()])


# The zarr arrays of a dataset that readers check against the index: the sample arrays' dtypes,
# and None for the arrays with one entry per sample.
ZARR_ARRAYS = {"image": "int16", "label": "uint8", "key": None, "provenance": None}


def volume_attributes(name: str, spacing_mm, classes) -> dict:
    """Attributes of the ``image`` / ``label`` arrays: what a reader needs to interpret a crop
    without tumorforge (spacing per stored axis, units, axis meaning, the label values' class
    names: ``classes`` of the dataset's organ)."""
    r, a, s = (float(v) for v in spacing_mm)
    out = {"spacing_mm": [s, a, r], "spacing_units": "mm",
           "axes": "sample, then z/y/x = S/A/R: RAS+ voxel axes of the crop stored (Z, Y, X); "
                   "transpose the last three to get (R, A, S)"}
    if name == "image":
        out["units"] = "HU"
    else:
        out["labels"] = {str(v): n for v, n in enumerate(classes)}
    return out


def _define(store, n: int, per_shard: int, crop: tuple[int, int, int], compression: str,
            attrs: dict | None = None, spacing_mm=None, classes=()):
    """Create the group and its arrays for ``n`` samples in ``store`` (``spacing_mm``: the crops'
    spacing along R, A, S, recorded with the class names ``classes`` as array attributes when
    given)."""
    group = zarr.create_group(store, overwrite=True, attributes=attrs or {})
    for name in ("image", "label"):
        group.create_array(name, shape=(n, *crop), chunks=(1, *crop),
                           shards=(per_shard, *crop), dtype=ZARR_ARRAYS[name], fill_value=0,
                           dimension_names=("sample", "z", "y", "x"),
                           **_volume_codecs(name, compression),
                           attributes=volume_attributes(name, spacing_mm, classes)
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


def zarr_metadata(n: int, per_shard: int, crop, attrs: dict, compression: str,
                  spacing_mm=None, classes=()) -> dict[str, bytes]:
    """The ``zarr.json`` objects of the whole dataset (keys relative to the output root)."""
    store = MemoryStore()
    _define(store, n, per_shard, tuple(crop), compression, attrs, spacing_mm, classes)
    return {f"{ZARR_ROOT}/{k}": v for k, v in _store_items(store).items() if k.endswith("zarr.json")}


NO_CHUNK = 2 ** 64 - 1       # a shard index entry (offset and length) of a chunk not stored


def _crc32c(data: bytes) -> bytes:
    import google_crc32c
    return np.uint32(google_crc32c.value(data)).tobytes()


@lru_cache(maxsize=None)
def _blosc(compression: str, name: str):
    return COMPRESSIONS[compression][name].numcodecs(np.dtype(ZARR_ARRAYS[name]).itemsize)


@dataclass(frozen=True)
class Frame:
    """One sample's ``image`` or ``label``, compressed once for both formats: ``data`` is the
    Blosc frame of its canonical bytes (C order, little-endian), ``shape`` its (Z, Y, X) and
    ``fill`` whether it is all fill value (0), which zarr does not store as a chunk."""

    name: str
    data: bytes
    shape: tuple[int, ...]
    fill: bool


def compress_volume(array: np.ndarray, name: str, compression: str) -> Frame:
    """Compress one sample's ``image`` (int16 HU) or ``label`` (uint8) array, (Z, Y, X). On a
    thread other than the main one, Blosc runs with one internal thread and without the
    interpreter lock (numcodecs' rule)."""
    raw = np.ascontiguousarray(array, dtype=np.dtype(ZARR_ARRAYS[name]).newbyteorder("<"))
    data = _blosc(compression, name).encode(raw.view(np.uint8))
    # An all-zero array compresses to a few hundredths of its size: only then is it tested.
    fill = len(data) * 64 < raw.nbytes and not raw.any()
    return Frame(name, bytes(data), tuple(raw.shape), bool(fill))


def compress_sample(image: np.ndarray, label: np.ndarray, compression: str
                    ) -> tuple[Frame, Frame]:
    """A sample's (image, label) frames, what both formats are built from."""
    return (compress_volume(image, "image", compression),
            compress_volume(label, "label", compression))


def _sharded_volume(frames: list[Frame], per_shard: int) -> list[bytes] | None:
    """One zarr v3 shard object of an array from its samples' frames, as the pieces that make it
    (written without joining them), encoded as zarr-python 3.1 encodes it (:func:`_define`'s
    codecs): each sample a chunk (its Blosc frame, then crc32c), chunks in sample order, a chunk
    of fill values not stored, then the index of (offset, length) uint64 pairs for ``per_shard``
    chunks (absent ones 2^64-1) with its own crc32c at the end. None when no chunk is stored."""
    index = np.full((per_shard, 2), NO_CHUNK, dtype="<u8")
    parts, offset = [], 0
    for n, frame in enumerate(frames):
        if frame.fill:
            continue
        parts += (frame.data, _crc32c(frame.data))
        index[n] = (offset, len(frame.data) + 4)
        offset += len(frame.data) + 4
    if not parts:
        return None
    index_bytes = index.tobytes()
    return [*parts, index_bytes, _crc32c(index_bytes)]


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


def decode_side_chunk(data: bytes, per_shard: int, where: str) -> list[str]:
    """The strings of a side array's chunk (``key`` or ``provenance``), as :func:`_side_chunk`
    writes them: zstd, then vlen-utf8 of ``per_shard`` strings (padding included)."""
    from numcodecs import VLenUTF8, Zstd
    values = VLenUTF8().decode(Zstd().decode(data))
    if len(values) != per_shard:
        raise ValueError(f"{where}: {len(values)} values, expected {per_shard}")
    return [str(v) for v in values]


def side_object(name: str, shard: int) -> str:
    """The object holding chunk ``shard`` of side array ``name`` (``key``, ``provenance``, ...)."""
    return f"{ZARR_ROOT}/{name}/c/{shard}"


def volume_object(name: str, shard: int) -> str:
    """The object holding zarr shard ``shard`` of the ``image`` or ``label`` array."""
    return f"{ZARR_ROOT}/{name}/c/{shard}/0/0/0"


def shard_index_bytes(per_shard: int) -> int:
    """Length of a volume shard's trailing index: (offset, length) uint64 per chunk, crc32c."""
    return per_shard * 16 + 4


def read_shard_index(tail: bytes, where: str, size: int | None = None) -> np.ndarray:
    """The (per_shard, 2) chunk table of a volume shard from its trailing index bytes; with
    ``size`` (the shard object's, as its record gives it), every stored chunk must lie before the
    index."""
    body, crc = tail[:-4], tail[-4:]
    if _crc32c(body) != crc:
        raise ValueError(f"{where}: shard index checksum does not match")
    table = np.frombuffer(body, "<u8").reshape(-1, 2)
    if size is not None:
        stored, end = table[table[:, 0] != NO_CHUNK], max(0, size - len(tail))
        if ((stored[:, 0] > end) | (stored[:, 1] > end)
                | (stored[:, 0] + stored[:, 1] > end)).any():     # each <= end: no overflow
            raise ValueError(f"{where}: its index points past the shard's {size} bytes")
    return table


def volume_chunks(data: bytes, dtype: str, shape, per_shard: int, count: int, where: str
                  ) -> list[np.ndarray]:
    """The first ``count`` samples of a whole volume shard object of ``per_shard`` chunks (as
    :func:`_sharded_volume` writes it; a chunk not stored is all fill value), each chunk's crc32c
    checked and its declared size checked before it is decoded."""
    table = read_shard_index(data[-shard_index_bytes(per_shard):], where, len(data))
    out = []
    for j, (offset, length) in enumerate(table[:count].tolist()):
        out.append(np.zeros(shape, dtype) if offset == NO_CHUNK else decode_volume_chunk(
            data[offset:offset + length], dtype, shape, f"{where} chunk {j}"))
    return out


def _blosc_sizes(frame, low: int, high: int, where: str, what: str) -> None:
    """Refuse a Blosc frame whose header declares other than ``low..high`` decompressed bytes, or
    more compressed bytes than it holds: checked before Blosc allocates what it declares (a 32 KB
    frame declaring 1e9 bytes cost 1 GB)."""
    if len(frame) < 16:
        raise ValueError(f"{where}: {len(frame)} bytes, too short for a Blosc frame")
    nbytes, cbytes = struct.unpack_from("<I4xI", frame, 4)      # Blosc 1 header fields
    if not low <= nbytes <= high or cbytes > len(frame):
        raise ValueError(f"{where}: Blosc frame of {nbytes} bytes ({cbytes} compressed, "
                         f"{len(frame)} present); expected {what}")


def _decode_frame(frame, dtype, shape, where: str) -> np.ndarray:
    """A Blosc frame (any codec: frames name theirs) -> a new (writable) array of ``dtype`` and
    ``shape``; the size the frame's header declares is checked before anything is allocated."""
    from numcodecs import Blosc
    dtype = np.dtype(dtype)
    want = int(np.prod(shape)) * dtype.itemsize
    _blosc_sizes(frame, want, want, where, f"{want} bytes for {tuple(shape)} {dtype}")
    out = np.empty(shape, dtype.newbyteorder("<"))
    Blosc().decode(frame, out=out)
    return out.astype(dtype, copy=False)


def _read_npy_header(f, where: str, expect=None) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of the .npy header at ``f``'s position, which is left after it. Object
    dtypes and Fortran order are refused (nothing is ever unpickled); with ``expect`` ((shape,
    dtype) the sample must have), any other shape or dtype too, before the data is allocated."""
    version = np.lib.format.read_magic(f)
    if version != (1, 0):
        raise ValueError(f"{where}: .npy header version {version}, expected (1, 0)")
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    if dtype.hasobject or fortran:
        raise ValueError(f"{where}: dtype {dtype}, fortran_order {fortran}; expected a plain "
                         "numeric dtype in C order")
    if expect is not None and (tuple(shape), dtype) != (tuple(expect[0]), np.dtype(expect[1])):
        raise ValueError(f"{where}: .npy header says {tuple(shape)} {dtype}; the dataset's samples "
                         f"are {tuple(expect[0])} {np.dtype(expect[1])}")
    return shape, dtype


def decode_volume_chunk(data: bytes, dtype: str, shape, where: str) -> np.ndarray:
    """One sample's chunk of a volume shard (as :func:`_sharded_volume` writes it) -> array."""
    body, crc = data[:-4], data[-4:]
    if _crc32c(body) != crc:
        raise ValueError(f"{where}: chunk checksum does not match")
    return _decode_frame(body, dtype, shape, where)


def zarr_shard_parts(shard: int, frames: list[tuple[Frame, Frame]], keys, indices, provenance,
                     per_shard: int) -> dict[str, list[bytes]]:
    """Encoded objects of zarr shard ``shard`` (keys relative to the output root) from its
    samples' (image, label) frames, each as the pieces that make it, made straight through the
    codecs (zarr-python's pipeline cost 4x the codec work); joined, they are the bytes
    :func:`zarr_shard_objects_reference` makes (tested)."""
    out = {}
    for n, name in enumerate(("image", "label")):
        parts = _sharded_volume([f[n] for f in frames], per_shard)
        if parts is not None:
            out[volume_object(name, shard)] = parts
    out[side_object("key", shard)] = [_side_chunk(keys, per_shard, "")]
    out[side_object("sample_index", shard)] = [_side_chunk([int(i) for i in indices], per_shard,
                                                           -1)]
    out[side_object("provenance", shard)] = [_side_chunk(provenance, per_shard, "")]
    return out


def zarr_shard_from_frames(shard: int, frames: list[tuple[Frame, Frame]], keys, indices,
                           provenance, per_shard: int) -> dict[str, bytes]:
    """:func:`zarr_shard_parts`, each object's pieces joined."""
    return {k: b"".join(v) for k, v in zarr_shard_parts(shard, frames, keys, indices, provenance,
                                                          per_shard).items()}


def zarr_shard_objects(shard: int, images, labels, keys, indices, provenance, per_shard: int,
                       compression: str) -> dict[str, bytes]:
    """:func:`zarr_shard_from_frames` of (count, Z, Y, X) ``images`` and ``labels``."""
    frames = [compress_sample(i, lb, compression) for i, lb in zip(images, labels)]
    return zarr_shard_from_frames(shard, frames, keys, indices, provenance, per_shard)


def zarr_shard_objects_reference(shard: int, images, labels, keys, indices, provenance,
                                 per_shard: int, compression: str) -> dict[str, bytes]:
    """The same objects through zarr-python's own pipeline (the reference the tests compare
    :func:`zarr_shard_objects` with)."""
    store = MemoryStore()
    group = _define(store, len(images), per_shard, tuple(images.shape[1:]), compression)
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


# WebDataset array members. ``.bnpy`` (written): an uncompressed .npy header (version 1.0), then
# the array's data as one Blosc frame, the zarr chunk's own frame. Read too: ``.npy.blosc`` (older
# tars: a whole .npy file inside Blosc zstd 3) and plain ``.npy`` (the oldest).
BNPY = "bnpy"
NPY_BLOSC = "npy.blosc"


@lru_cache(maxsize=64)
def _npy_header(name: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(ZARR_ARRAYS[name]).newbyteorder(
        "<").str, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def decode_bnpy(data: bytes, expect=None, where: str = ".bnpy member") -> np.ndarray:
    """The array of a ``.bnpy`` member: its .npy header gives dtype and shape, its Blosc frame the
    data; object dtypes and Fortran order are refused (nothing is ever unpickled), and with
    ``expect`` ((shape, dtype)) any other array. Plain ``webdataset`` users without tumorforge
    use ``trainer/wds_decoder.py`` (standard library, numpy and numcodecs only)."""
    f = io.BytesIO(data)
    shape, dtype = _read_npy_header(f, where, expect)
    return _decode_frame(memoryview(data)[f.tell():], dtype, shape, where)


# A .npy file's header: 10 bytes, then at most 65,535 (version 1.0's length field).
NPY_HEADER_MAX = 10 + 65535


def decode_npy_blosc(data: bytes, expect=None, where: str = ".npy.blosc member") -> np.ndarray:
    """The array of a ``.npy.blosc`` member (older tars: a whole .npy file inside Blosc); never
    unpickles. With ``expect`` ((shape, dtype) of the dataset's samples),
    the size the Blosc header declares must be that array's plus a .npy header, checked before
    anything is decompressed, and the .npy header must say that array."""
    from numcodecs import Blosc
    if expect is not None:
        want = int(np.prod(expect[0])) * np.dtype(expect[1]).itemsize
        _blosc_sizes(data, want, want + NPY_HEADER_MAX, where,
                     f"{want} to {want + NPY_HEADER_MAX} bytes for a .npy of "
                     f"{tuple(expect[0])} {np.dtype(expect[1])}")
    return _load_npy(Blosc().decode(data), expect, where)


def _load_npy(raw: bytes, expect, where: str) -> np.ndarray:
    """The array of a .npy file held in ``raw``, its header checked
    (:func:`_read_npy_header`) before the array is allocated."""
    f = io.BytesIO(raw)
    shape, dtype = _read_npy_header(f, where, expect)
    count = int(np.prod(shape))
    if len(raw) - f.tell() != count * dtype.itemsize:
        raise ValueError(f"{where}: {len(raw) - f.tell()} data bytes; {tuple(shape)} {dtype} "
                         f"needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype, count, f.tell()).reshape(shape).copy()


def _tar_parts(members) -> list[bytes]:
    """A USTAR tar of ``members`` ((name, list of byte strings that make its content)) as the
    pieces that make it (written without joining them), byte for byte what :mod:`tarfile` writes
    (tested) with mtime 0, uid/gid 0 and no owner names."""
    parts, offset = [], 0
    for name, content in members:
        size = sum(len(c) for c in content)
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
        pad = -size % tarfile.BLOCKSIZE
        parts += (header, *content, bytes(pad))
        offset += len(header) + size + pad
    offset += 2 * tarfile.BLOCKSIZE                       # the end-of-archive blocks
    parts.append(bytes(2 * tarfile.BLOCKSIZE + (-offset % tarfile.RECORDSIZE)))
    return parts


def tar_parts(keys, frames: list[tuple[Frame, Frame]], provenance) -> list[bytes]:
    """One WebDataset tar from its samples' (image, label) frames, as the pieces that make it;
    identical bytes for identical samples."""
    members = []
    for key, pair, prov in zip(keys, frames, provenance):
        for frame in pair:
            members.append((f"{key}.{frame.name}.{BNPY}",
                            (_npy_header(frame.name, frame.shape), frame.data)))
        members.append((f"{key}.json", (prov.encode(),)))
    return _tar_parts(members)


def tar_from_frames(keys, frames: list[tuple[Frame, Frame]], provenance) -> bytes:
    """:func:`tar_parts`, joined."""
    return b"".join(tar_parts(keys, frames, provenance))


def tar_shard(keys, images, labels, provenance, compression: str) -> bytes:
    """:func:`tar_from_frames` of (count, Z, Y, X) ``images`` and ``labels``."""
    return tar_from_frames(keys, [compress_sample(i, lb, compression)
                                  for i, lb in zip(images, labels)], provenance)


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


def iter_tar(fileobj, total: int, shape=None):
    """Samples of a WebDataset shard streamed from ``fileobj`` as (key, image, label,
    provenance), each as soon as its members are read; ``.bnpy``, ``.npy.blosc`` and plain
    ``.npy`` members. Never unpickles. ``shape``: the dataset's crop shape (Z, Y, X); an array
    member declaring another shape or dtype, or a Blosc frame declaring another size, is refused
    before it is decompressed."""
    current, members = None, {}

    def finish(key, m):
        image = _member_array(key, m, "image", shape)
        label = _member_array(key, m, "label", shape)
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


def _member_array(key: str, m: dict, name: str, shape=None) -> np.ndarray:
    expect = None if shape is None else (tuple(shape), ZARR_ARRAYS[name])
    for suffix, decode in ((BNPY, decode_bnpy), (NPY_BLOSC, decode_npy_blosc), ("npy", _load_npy)):
        member = f"{name}.{suffix}"
        if member in m:
            return decode(m[member], expect, f"tar member {key}.{member}")
    raise ValueError(f"sample {key}: tar lacks member(s) ['{name}.{BNPY}']")


def read_tar(data: bytes, shape=None) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """Samples of a WebDataset shard held in memory (see :func:`iter_tar`)."""
    return list(iter_tar(io.BytesIO(data), len(data), shape))


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
