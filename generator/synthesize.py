"""Applying samples' parameters: a pure function of (prepared scans, packed records, backend).

``synthesize_batch(scans, packed, backend)`` makes a whole batch of crops per call from packed
records (``batch.pack``); ``synthesize(scan, params, backend)`` is a batch of one, so there is one
code path. Every box below follows from the packed rows alone (``shape.shape_halves``), never from
the data, so nothing waits on the device to decide a shape and a kernel sees few distinct shapes.

Work is crop-local. ``paper`` and ``paper-train``: a tumor counts when its box (its tumor box,
``shape.tumor_halves``, and for post-processing its mass-effect sphere and capsule band) meets the
crop; it is painted on the part of its tumor box inside the crop (shape and mask blur on that part
plus the blur's reach, texture on that part), or, with mass effect or capsule, on its whole reach,
which the canvas then holds. Every step of a tumor is a function of its position in its own box,
so the part gives the whole box's values (the texture up to float64 rounding in its matrix
products, see ``texture``). ``released``: the canvas is the crop plus the reach of the sample's one
mask blur; the binary shapes of the tumors that meet it are united there, and the texture is one
field over that canvas. Tumors that miss the canvas are part of the record (tumors are drawn over the whole liver)
but cannot change the crop, so they are skipped. This definition is what audit regenerates, so it
is exact by construction on one backend.

This module is the canvas only; each step of the paper (Hu et al., CVPR 2023, Section 3.1) has its
own room: ``location`` (drawn by ``sample``), ``shape``, ``texture`` and ``effects`` (placement,
mass effect, capsule).

Output crops are ``(Z, Y, X)`` arrays (Z toward superior, Y anterior, X toward the patient's right):
image int16 HU clipped to [-1024, 3071], label uint8 (0 background, 1 liver, 2 tumor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from tumorforge.manifests.conventions import ORGAN, ras_to_zyx

from .backend import Backend, kernel_setting
from .batch import Packed, pack
from .effects import capsule, darken, mass_effect, place
from .params import SampleParams
from .prepare import PAD_HU, PreparedScan
from .shape import (blur_radius, released_margin, released_parts, tumor_halves, tumor_mask,
                    tumor_shape, work_boxes)
from .texture import released_texture
from .tumor_models import TEXTURES

HU_MIN, HU_MAX = -1024, 3071


class Timer(Protocol):
    """What ``synthesize`` reports its steps to (the benchmark's step timer is one)."""

    def start(self) -> None: ...

    def mark(self, step: str) -> None: ...


class _Untimed:
    def start(self) -> None:
        pass

    def mark(self, step: str) -> None:
        pass


@dataclass(frozen=True)
class Crop:
    image: np.ndarray   # (Z, Y, X) int16 HU
    label: np.ndarray   # (Z, Y, X) uint8


@dataclass(frozen=True)
class CropBatch:
    images: np.ndarray  # (B, Z, Y, X) int16 HU
    labels: np.ndarray  # (B, Z, Y, X) uint8


def _extract(backend: Backend, arr, lo, hi, fill):
    """arr[lo:hi] with out-of-range parts filled (arrays on the backend's device)."""
    xp = backend.xp
    shape = tuple(int(v) for v in hi - lo)
    out = xp.full(shape, fill, dtype=arr.dtype)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, arr.shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
        arr[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
    return out


def _apply_paper_tumor(backend, t, center, work_lo, work_hi, image, label, s, timer, texture_step):
    """Paint one ``paper``/``paper-train`` tumor (its row ``t``, at canvas voxel ``center``) into
    the canvas (image float32 HU, label uint8) in place, within its work box ``[work_lo, work_hi)``
    (canvas voxels; ``synthesize_batch`` builds the canvas to hold it): the part of its tumor box in
    the crop, or for post-processing (mass effect, capsule) its whole reach."""
    xp = backend.xp
    hb = tumor_halves(t, s)
    box_lo = np.asarray(center) - hb                       # the tumor box's corner (canvas)
    r_lo = np.maximum(box_lo, work_lo)                     # R: where the tumor is painted
    r_hi = np.minimum(box_lo + 2 * hb + 1, work_hi)
    if np.any(r_hi <= r_lo):
        return
    pad = blur_radius(t, s)                                # S: R plus the blur's reach
    s_lo = np.maximum(box_lo, r_lo - pad)
    s_hi = np.minimum(box_lo + 2 * hb + 1, r_hi + pad)
    inner = tuple(slice(int(a), int(b)) for a, b in zip(r_lo - s_lo, r_hi - s_lo))
    m = tumor_mask(backend, t, s, s_lo - box_lo, s_hi - box_lo)[inner]
    region = tuple(slice(int(a), int(b)) for a, b in zip(r_lo, r_hi))
    m = m * (label[region] >= ORGAN).astype(xp.float32)
    timer.mark("shape")
    texture = texture_step(backend, t, tuple(2 * hb + 1), s, r_lo - box_lo, r_hi - box_lo)
    timer.mark("texture")
    place(backend, image, label, region, m, texture)
    timer.mark("place")
    if t.mass_effect or t.capsule:
        work = tuple(slice(int(a), int(b)) for a, b in zip(work_lo, work_hi))
        img, lab = image[work], label[work]
        mask = xp.zeros(img.shape, xp.float32)
        mask[tuple(slice(int(a), int(b)) for a, b in zip(r_lo - work_lo, r_hi - work_lo))] = m
        if t.mass_effect:
            mass_effect(backend, t, img, lab, mask, np.asarray(center) - work_lo, s)
            timer.mark("mass_effect")
        if t.capsule:
            capsule(backend, t, img, mask, s)
            timer.mark("capsule")


def _released_crop(backend, scan, r, rows, s, crop_lo, crop_hi, timer):
    """The released recipe on the crop plus its blur margin (``r``: the crop's row, ``rows``: its
    tumors); returns (image, label, crop slices)."""
    xp = backend.xp
    margin = released_margin(r.mask_blur_mm, s) if len(rows) else 0
    lo, hi = crop_lo - margin, crop_hi + margin
    image_dev, label_dev = scan.on(backend)
    image = _extract(backend, image_dev, lo, hi, PAD_HU).astype(xp.float32)
    label = _extract(backend, label_dev, lo, hi, 0)
    timer.mark("canvas")
    if len(rows):
        canvas = np.asarray(image.shape)
        parts = released_parts(rows, s, scan.origin_vox, lo, canvas)
        if parts:
            union = xp.zeros(image.shape, bool)
            u_lo, u_hi = canvas.copy(), np.zeros(3, np.int64)
            for n, corner, a, b in parts:
                # only the part of the tumor's box on the canvas (a pointwise function of position)
                part = tumor_shape(backend, rows[n], s, a, b)
                dst = tuple(slice(int(x), int(y)) for x, y in zip(corner + a, corner + b))
                union[dst] |= part > 0
                u_lo, u_hi = np.minimum(u_lo, corner + a), np.maximum(u_hi, corner + b)
            timer.mark("shape")
            texture = released_texture(backend, r, image.shape, s)
            timer.mark("texture")
            # The blurred union is 0 beyond the blur's reach of the shapes' boxes (a box known from
            # the records): darkening that part of the canvas gives the whole canvas's bytes.
            reach = int(4.0 * float(r.mask_blur_mm) / s + 0.5)
            sub = tuple(slice(int(x), int(y)) for x, y in zip(np.maximum(u_lo - reach, 0),
                                                               np.minimum(u_hi + reach, canvas)))
            darken(backend, r, image[sub], label[sub], union[sub], texture[sub], s)
            timer.mark("place")
    a, b = crop_lo - lo, crop_hi - lo
    return image, label, tuple(slice(int(x), int(y)) for x, y in zip(a, b))


def _paper_crop(backend, scan, model, rows, s, crop_lo, crop_hi, timer):
    """The paper's recipe: each tumor that reaches the crop is painted on its work box (its tumor
    box cut to the crop; with post-processing, its whole reach, which the canvas then holds;
    ``shape.work_boxes``, as the kernels' plan takes them); returns (image, label, crop slices)."""
    xp = backend.xp
    centers = np.asarray(rows.center).reshape(-1, 3) - np.asarray(scan.origin_vox)
    meets, _, work_lo, work_hi = work_boxes(rows, s, centers, crop_lo, crop_hi)
    hit = np.flatnonzero(meets)
    lo = np.minimum(crop_lo, work_lo[hit].min(0)) if len(hit) else crop_lo
    hi = np.maximum(crop_hi, work_hi[hit].max(0)) if len(hit) else crop_hi
    image_dev, label_dev = scan.on(backend)
    image = _extract(backend, image_dev, lo, hi, PAD_HU).astype(xp.float32)
    label = _extract(backend, label_dev, lo, hi, 0)
    timer.mark("canvas")
    texture_step = TEXTURES[model.texture] if len(hit) else None
    for n in hit:
        _apply_paper_tumor(backend, rows[n], centers[n] - lo, work_lo[n] - lo, work_hi[n] - lo,
                           image, label, s, timer, texture_step)
    a, b = crop_lo - lo, crop_hi - lo
    return image, label, tuple(slice(int(x), int(y)) for x, y in zip(a, b))


def kernels_for(backend: Backend, kernels="auto"):
    """The compiled kernel module ``synthesize_batch`` paints with: ``"auto"`` is the CUDA module
    on the ``cupy`` backend (``TUMORFORGE_KERNELS=off`` turns it off) and none on ``numpy``;
    ``"off"`` or None is none; a module (``kernels.paint.cpu_module()``) is used as given."""
    if kernels is None or kernels == "off":
        return None
    if kernels != "auto":
        return kernels
    if backend.name != "cupy" or kernel_setting("TUMORFORGE_KERNELS") == "off":
        return None
    from .kernels.paint import cuda_module
    return cuda_module()


class PendingBatch:
    """A batch whose crops are on their way to the host (:func:`start_batch`)."""

    def __init__(self, copy, timer):
        self._copy, self._timer = copy, timer

    def result(self) -> CropBatch:
        out = CropBatch(*self._copy.result())
        self._timer.mark("output")
        return out


def synthesize_batch(scans: Sequence[PreparedScan], packed: Packed, backend: Backend,
                     timer: Timer | None = None, kernels="auto") -> CropBatch:
    """:func:`start_batch`, waited for: the batch's crops as host arrays."""
    return start_batch(scans, packed, backend, timer, kernels).result()


def start_batch(scans: Sequence[PreparedScan], packed: Packed, backend: Backend,
                timer: Timer | None = None, kernels="auto") -> PendingBatch:
    """The crops of ``packed`` (``batch.pack`` with these ``scans``' ids, in this order) with their
    tumors painted in, as host (NumPy) ``(B, Z, Y, X)`` arrays; every crop of a batch has the same
    size. Written into one device buffer per array and copied to the host once.

    ``kernels`` (:func:`kernels_for`): with a kernel module, the crops it can paint
    (``kernels.paint.eligible``: the crops of fused ``paper``-family models; ``kernels.released``:
    those of fused ``released``-family models) are painted by its fused kernels in one pass for the
    batch, the others by the array code below.

    ``timer``, if given, gets ``start()`` and then ``mark(step)`` after each step (canvas, shape,
    texture, place, mass_effect, capsule, plan, kernels, output).

    Returns once the batch is queued: on a GPU its kernels and the copy to the host run on while
    the caller goes on; ``result()`` of the returned :class:`PendingBatch` waits for them (the
    worker draws the next batch meanwhile). On NumPy the work is done before it returns."""
    xp = backend.xp
    timer = _Untimed() if timer is None else timer
    module = kernels_for(backend, kernels)
    crops = packed.crops
    if len(crops) == 0:
        raise ValueError("synthesize_batch: the batch holds no crop")
    size = np.asarray(crops.crop_size[0])
    if not np.all(np.asarray(crops.crop_size) == size):
        raise ValueError(f"synthesize_batch: crops of one batch share a size; found "
                         f"{sorted({tuple(map(int, c)) for c in crops.crop_size})}")
    timer.start()
    zyx = tuple(int(v) for v in size[::-1])
    images = xp.empty((len(crops),) + zyx, xp.int16)
    labels = xp.empty((len(crops),) + zyx, xp.uint8)
    fused = np.zeros(len(crops), bool)
    if module is not None:
        from .kernels import paint
        from .kernels import released as released_kernels
        fused = paint.eligible(packed)
        paint.paint(module, backend, scans, packed, np.flatnonzero(fused), images, labels, timer)
        rel = released_kernels.eligible(packed)
        released_kernels.paint(module, backend, scans, packed, np.flatnonzero(rel), images,
                               labels, timer)
        fused |= rel
    for b in np.flatnonzero(~fused):
        r = crops[b]
        scan = scans[int(r.scan)]
        s = float(scan.spacing_mm[0])
        crop_lo = np.asarray(r.origin) - np.asarray(scan.origin_vox)
        crop_hi = crop_lo + size
        released = packed.models[b].family == "released"
        make = _released_crop if released else _paper_crop
        args = (r,) if released else (packed.models[b],)
        image, label, sl = make(backend, scan, *args, packed.tumors_of(b), s, crop_lo, crop_hi,
                                timer)
        images[b] = ras_to_zyx(xp.clip(xp.rint(image[sl]), HU_MIN, HU_MAX).astype(xp.int16))
        labels[b] = ras_to_zyx(label[sl])
    return PendingBatch(backend.to_host_async(images, labels), timer)


def synthesize(scan: PreparedScan, params: SampleParams, backend: Backend,
               timer: Timer | None = None, kernels="auto") -> Crop:
    """The crop of ``params`` with its tumors painted in, as host (NumPy) ``(Z, Y, X)`` arrays: a
    batch of one (:func:`synthesize_batch`)."""
    out = synthesize_batch([scan], pack([params], [scan.scan_id]), backend, timer, kernels)
    return Crop(out.images[0], out.labels[0])
