"""Applying a sample's parameters: a pure function of (prepared scan, SampleParams, backend).

Work is crop-local. ``paper`` and ``paper-train``: the canvas is the crop plus the boxes of the
tumors that can reach it (a tumor counts when its box, including its mass-effect sphere, meets the
crop); each tumor is computed in its own box only. ``released``: the canvas is the crop plus the
reach of the sample's one mask blur; the binary shapes of the tumors that meet it are united there,
and the texture is one field over that canvas. Tumors that miss the canvas are part of the record
(tumors are drawn over the whole liver) but cannot change the crop, so they are skipped. This
definition is what audit regenerates, so it is exact by construction on one backend.

This module is the canvas only; each step of the paper (Hu et al., CVPR 2023, Section 3.1) has its
own room: ``location`` (drawn by ``sample``), ``shape``, ``texture`` and ``effects`` (placement,
mass effect, capsule).

Output crops are ``(Z, Y, X)`` arrays (Z toward superior, Y anterior, X toward the patient's right):
image int16 HU clipped to [-1024, 3071], label uint8 (0 background, 1 liver, 2 tumor).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tumorforge.manifests.conventions import LIVER, ras_to_zyx

from .backend import Backend
from .effects import capsule, darken, mass_effect, place
from .params import PaperTumor, SampleParams
from .prepare import PAD_HU, PreparedScan
from .shape import shape_half, tumor_mask, tumor_shape
from .texture import paper_texture, released_texture

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


def _half_size(t, s: float) -> int:
    """Half-width (voxels) of everything a tumor touches: its shape box, and for the paper's
    post-processing the mass-effect sphere and the blurred capsule band."""
    h = shape_half(t, s)
    if isinstance(t, PaperTumor) and (t.mass_effect or t.capsule):
        reach = t.gamma_max_mm / s + 2.0 + (3.0 * t.sigma_d_mm / s + 1.0 if t.capsule else 0.0)
        h = max(h, int(math.ceil(reach)))
    return h


def _box(t, origin, s: float) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(t.center) - origin
    h = _half_size(t, s)
    return c - h, c + h + 1


def _overlaps(lo, hi, lo2, hi2) -> bool:
    return bool(np.all(lo < hi2) and np.all(lo2 < hi))


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


def _support(backend, mask):
    """Slices of the smallest box holding every non-zero voxel of ``mask``; None if it is empty.

    Texture is computed on this box only: its noise grid is anchored at the box corner, so the
    box is part of the sample's definition (identical on every run and backend)."""
    xp = backend.xp
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = backend.asnumpy(xp.flatnonzero((mask > 0).any(axis=other)))
        if hit.size == 0:
            return None
        bounds.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(bounds)


def _apply_paper_tumor(backend, t, image, label, s, timer):
    """Paint one ``paper``/``paper-train`` tumor into the canvas (image float32 HU, label uint8) in
    place, within its box. The canvas always contains the whole box (``synthesize`` builds it so)."""
    xp = backend.xp
    h, hs = _half_size(t, s), shape_half(t, s)
    c = np.asarray(t.center)
    sl = tuple(slice(int(v - h), int(v + h + 1)) for v in c)
    img, lab = image[sl], label[sl]
    shape_sl = tuple(slice(h - hs, h + hs + 1) for _ in range(3))
    liver = (lab[shape_sl] >= LIVER).astype(xp.float32)
    mask = xp.zeros(img.shape, xp.float32)
    mask[shape_sl] = tumor_mask(backend, t, hs, s) * liver
    timer.mark("shape")
    sub = _support(backend, mask)
    if sub is not None:
        m = mask[sub]
        texture = paper_texture(backend, t, m.shape, s)
        timer.mark("texture")
        place(backend, img, lab, sub, m, texture)
        timer.mark("place")
    if t.mass_effect:
        mass_effect(backend, t, img, lab, mask, h, s)
        timer.mark("mass_effect")
    if t.capsule:
        capsule(backend, t, img, mask, s)
        timer.mark("capsule")


def _paste_union(union, shape, lo) -> None:
    """OR a tumor's binary ``shape`` whose corner sits at canvas voxel ``lo`` into ``union``,
    clipped to the canvas."""
    lo = np.asarray(lo)
    hi = lo + np.asarray(shape.shape)
    a = np.maximum(lo, 0)
    b = np.minimum(hi, union.shape)
    if np.any(b <= a):
        return
    src = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, lo))
    dst = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
    union[dst] |= shape[src] > 0


def _synthesize_released(backend, scan, params, s, crop_lo, crop_hi, timer):
    """The released recipe on the crop plus its blur margin; returns (image, label, crop slices)."""
    xp = backend.xp
    r = params.released
    margin = int(math.ceil(3.0 * r.mask_blur_mm / s)) + 1 if r is not None else 0
    lo, hi = crop_lo - margin, crop_hi + margin
    full_origin = np.asarray(scan.origin_vox)
    image_dev, label_dev = scan.on(backend)
    image = _extract(backend, image_dev, lo, hi, PAD_HU).astype(xp.float32)
    label = _extract(backend, label_dev, lo, hi, 0)
    timer.mark("canvas")
    if r is not None and params.tumors:
        union = xp.zeros(image.shape, bool)
        for t in params.tumors:
            blo, bhi = _box(t, full_origin, s)
            if not _overlaps(blo, bhi, lo, hi):
                continue
            h = shape_half(t, s)
            _paste_union(union, tumor_shape(backend, t, h, s), blo - lo)
        timer.mark("shape")
        if bool(union.any()):
            texture = released_texture(backend, r, image.shape, s)
            timer.mark("texture")
            darken(backend, r, image, label, union, texture, s)
            timer.mark("place")
    a, b = crop_lo - lo, crop_hi - lo
    return image, label, tuple(slice(int(x), int(y)) for x, y in zip(a, b))


def synthesize(scan: PreparedScan, params: SampleParams, backend: Backend,
               timer: Timer | None = None) -> Crop:
    """The crop of ``params`` with its tumors painted in, as host (NumPy) ``(Z, Y, X)`` arrays.

    ``timer``, if given, gets ``start()`` and then ``mark(step)`` after each step (canvas, shape,
    texture, place, mass_effect, capsule, output)."""
    xp = backend.xp
    timer = _Untimed() if timer is None else timer
    if params.scan_id != scan.scan_id:
        raise ValueError(f"params are for scan {params.scan_id}, not {scan.scan_id}")
    timer.start()
    s = float(scan.spacing_mm[0])
    full_origin = np.asarray(scan.origin_vox)
    crop_lo = np.asarray(params.crop_origin) - full_origin
    crop_hi = crop_lo + np.asarray(params.crop_size)
    if params.profile == "released":
        image, label, sl = _synthesize_released(backend, scan, params, s, crop_lo, crop_hi, timer)
    else:
        tumors = [t for t in params.tumors if _overlaps(*_box(t, full_origin, s), crop_lo, crop_hi)]
        lo, hi = crop_lo.copy(), crop_hi.copy()
        for t in tumors:
            blo, bhi = _box(t, full_origin, s)
            lo, hi = np.minimum(lo, blo), np.maximum(hi, bhi)
        image_dev, label_dev = scan.on(backend)
        image = _extract(backend, image_dev, lo, hi, PAD_HU).astype(xp.float32)
        label = _extract(backend, label_dev, lo, hi, 0)
        timer.mark("canvas")
        for t in tumors:
            center = tuple(int(v) for v in np.asarray(t.center) - full_origin - lo)
            _apply_paper_tumor(backend, dataclasses.replace(t, center=center), image, label, s,
                               timer)
        a, b = crop_lo - lo, crop_hi - lo
        sl = tuple(slice(int(x), int(y)) for x, y in zip(a, b))
    out_img = ras_to_zyx(xp.clip(xp.rint(image[sl]), HU_MIN, HU_MAX).astype(xp.int16))
    out_lab = ras_to_zyx(label[sl])
    crop = Crop(np.ascontiguousarray(backend.asnumpy(out_img)),
                np.ascontiguousarray(backend.asnumpy(out_lab)))
    timer.mark("output")
    return crop

