"""Read tumorforge's WebDataset shards with plain ``webdataset``, without tumorforge installed.

This file imports only the standard library, numpy and numcodecs: import it from the package
(``tumorforge.trainer.wds_decoder``) or copy it next to your training script::

    import torch
    import webdataset as wds
    from wds_decoder import decode_sample

    urls = "out/wds/shard-{000000..000099}.tar"
    crops = wds.WebDataset(urls, shardshuffle=False).map(decode_sample).to_tuple("image", "label")
    for image, label in torch.utils.data.DataLoader(crops, batch_size=4, num_workers=2):
        ...   # image (4, Z, Y, X) int16 HU, label (4, Z, Y, X) uint8

:func:`decode_sample` turns a sample's raw members into ``image``, ``label`` and ``provenance``,
keeping webdataset's ``__key__`` (``tf<dataset_id[:12]>_<index>``), ``__url__`` and other ``__``
fields. ``image``: int16 HU (clipped to [-1024, 3071]); ``label``: uint8, 0 background, 1 the
organ (the liver unless ``provenance["generator_config"]["organ"]`` names another), 2 tumor; both
``(Z, Y, X)`` = (S, A, R), the RAS voxel axes reversed (``.transpose(2, 1, 0)`` gives R, A, S);
``provenance``: the sample's JSON record (its crop's affine ``crop_affine``, voxel (R, A, S) ->
world mm, the drawn tumor parameters, ...). :func:`decode_member` is the same decoding as a
handler for ``.decode(decode_member)``, whose keys stay ``image.bnpy``, ``label.bnpy``, ``json``;
its errors cannot name the sample, which webdataset's ``DecodingError`` carries instead.

Members: ``<key>.image.bnpy`` / ``<key>.label.bnpy`` are a ``.npy`` header (version 1.0) followed
by the array's bytes as one Blosc frame; tars of earlier versions hold ``.npy.blosc`` (a whole
``.npy`` file inside Blosc) or plain ``.npy`` members, read the same. Nothing is unpickled: a
header must declare the member's dtype (image int16, label uint8: so never an object array), C
order and three axes, and the Blosc frame must declare exactly the bytes the header does, checked
before anything is allocated; an array is refused above :data:`MAX_ARRAY_BYTES`, or, with
``shape`` given (``functools.partial(decode_sample, shape=(96, 96, 96))``), of any other shape.
A refused member raises a one-line ``ValueError`` naming it.
"""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np

# What each array member must hold: the writer's little-endian dtypes.
DTYPES = {"image": np.dtype("<i2"), "label": np.dtype("<u1")}
# Array member encodings, newest first (the order a sample holding two is read in).
ENCODINGS = ("bnpy", "npy.blosc", "npy")
# The largest array decoded when no ``shape`` is given: 256 MiB, a 512^3 int16 crop (a 96^3 crop
# is 1.7 MB). It bounds what a hostile member can make the decoder allocate.
MAX_ARRAY_BYTES = 1 << 28
# A version 1.0 .npy header: 10 bytes, then at most 65,535.
NPY_HEADER_MAX = 10 + 65535
# Members that webdataset's own decoders would unpickle (``pickle.loads``, ``torch.load``).
PICKLED = ("pyd", "pkl", "pickle", "pth")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _npy_header(f, name: str, shape, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the .npy header at ``f``'s position (left after it), which must declare
    array ``name``'s dtype, C order, three axes and, when given, ``shape``."""
    try:
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise ValueError(f".npy header version {version}, expected (1, 0)")
        found, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    except ValueError as exc:
        raise ValueError(f"{where}: not a .npy header: {_one_line(exc)}") from None
    want = DTYPES[name]
    if dtype != want or fortran:
        note = " (an object array is a pickle: never loaded)" if dtype.hasobject else ""
        raise ValueError(f"{where}: .npy header says dtype {dtype}{note}, fortran_order "
                         f"{fortran}; expected {want} in C order")
    if len(found) != 3 or min(found) < 0 or (shape is not None and tuple(found) != tuple(shape)):
        raise ValueError(f"{where}: .npy header says shape {tuple(found)}; expected "
                         f"{tuple(shape) if shape is not None else 'three axes (Z, Y, X)'}")
    return tuple(found), dtype


def _blosc_nbytes(frame, low: int, high: int, where: str, what: str) -> None:
    """Refuse a Blosc frame whose header declares other than ``low..high`` decompressed bytes, or
    more compressed bytes than the member holds (a truncated frame)."""
    if len(frame) < 16:
        raise ValueError(f"{where}: {len(frame)} bytes, too short for a Blosc frame")
    nbytes, cbytes = struct.unpack_from("<I4xI", frame, 4)      # Blosc 1 header fields
    if not low <= nbytes <= high or cbytes > len(frame):
        raise ValueError(f"{where}: Blosc frame declares {nbytes} bytes ({cbytes} compressed, "
                         f"{len(frame)} present); expected {what}")


def _blosc_decode(frame, where: str, out=None):
    from numcodecs import Blosc
    try:
        return Blosc().decode(frame, out=out)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{where}: Blosc could not decode the frame: {_one_line(exc)}") from None


def _checked_size(shape, dtype: np.dtype, max_bytes: int, where: str) -> int:
    size = math.prod(shape) * dtype.itemsize
    if size > max_bytes:
        raise ValueError(f"{where}: .npy header says {shape} {dtype}, {size} bytes; more than "
                         f"max_bytes={max_bytes}")
    return size


def _from_npy(data, name: str, shape, max_bytes: int, where: str) -> np.ndarray:
    """The array of a whole .npy file held in ``data``."""
    f = io.BytesIO(data)
    found, dtype = _npy_header(f, name, shape, where)
    size = _checked_size(found, dtype, max_bytes, where)
    if len(data) - f.tell() != size:
        raise ValueError(f"{where}: {len(data) - f.tell()} data bytes; {found} {dtype} needs "
                         f"{size}")
    return np.frombuffer(data, dtype, offset=f.tell(), count=math.prod(found)).reshape(
        found).copy()


def decode_array(data: bytes, member: str, shape=None, max_bytes: int = MAX_ARRAY_BYTES,
                 where: str | None = None) -> np.ndarray:
    """The array of one member of a sample, ``member`` being its name after the key
    (``image.bnpy``, ``label.npy.blosc``, ``image.npy``): a new writable ``(Z, Y, X)`` array,
    int16 HU for ``image``, uint8 for ``label``. ``shape``: the (Z, Y, X) every crop must have;
    ``where``: how errors name the member (default ``member``)."""
    where = where or member
    name, _, encoding = member.partition(".")
    if name not in DTYPES or encoding not in ENCODINGS:
        raise ValueError(f"{where}: not an array member (expected image or label, then one of "
                         f"{', '.join('.' + e for e in ENCODINGS)})")
    if encoding == "npy":
        return _from_npy(data, name, shape, max_bytes, where)
    if encoding == "npy.blosc":
        low, high = 0, max_bytes + NPY_HEADER_MAX
        if shape is not None:
            low = math.prod(shape) * DTYPES[name].itemsize
            high = low + NPY_HEADER_MAX
        _blosc_nbytes(data, low, high, where, f"{low} to {high} bytes for a .npy file")
        return _from_npy(_blosc_decode(data, where), name, shape, max_bytes, where)
    f = io.BytesIO(data)
    found, dtype = _npy_header(f, name, shape, where)
    size = _checked_size(found, dtype, max_bytes, where)
    frame = memoryview(data)[f.tell():]
    _blosc_nbytes(frame, size, size, where, f"{size} bytes for {found} {dtype}")
    out = np.empty(found, dtype)
    _blosc_decode(frame, where, out=out)
    return out


def decode_provenance(data: bytes, where: str = "json") -> dict:
    """A sample's provenance record: the ``<key>.json`` member, one JSON object."""
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: not JSON: {_one_line(exc)}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a JSON {type(record).__name__}, expected an object")
    return record


def decode_sample(sample: dict, shape=None, max_bytes: int = MAX_ARRAY_BYTES) -> dict:
    """A raw webdataset sample (member name -> bytes) -> ``image``, ``label`` (numpy arrays, see
    :func:`decode_array`) and ``provenance`` (dict), with the sample's ``__`` fields
    (``__key__``, ``__url__``); other members are left out. For ``WebDataset(urls).map(...)``."""
    out = {k: v for k, v in sample.items() if k.startswith("__")}
    prefix = f"{sample.get('__url__', '<no url>')}: {sample.get('__key__', '<no key>')}"
    for name in DTYPES:
        member = next((f"{name}.{e}" for e in ENCODINGS if f"{name}.{e}" in sample), None)
        if member is None:
            raise ValueError(f"{prefix}: no {name} member (expected {name}.{ENCODINGS[0]})")
        out[name] = decode_array(sample[member], member, shape, max_bytes,
                                 f"{prefix}.{member}")
    if "json" not in sample:
        raise ValueError(f"{prefix}: no json member (the provenance record)")
    out["provenance"] = decode_provenance(sample["json"], f"{prefix}.json")
    return out


def decode_member(key: str, data: bytes):
    """A handler for ``WebDataset(urls).decode(decode_member)``: array members -> arrays, ``json``
    -> the provenance dict; a member webdataset would unpickle (``.pyd``, ``.pkl``,
    ``.pickle``, ``.pth``) is refused; anything else is left to webdataset (None)."""
    member = key.lstrip(".")
    if member == "json":
        return decode_provenance(data)
    if member.rpartition(".")[2].lower() in PICKLED:
        raise ValueError(f"{member}: a pickle; tumorforge shards hold none and this decoder "
                         f"never unpickles")
    if member.partition(".")[2] in ENCODINGS:
        return decode_array(data, member)
    return None
