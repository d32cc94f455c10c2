"""What a tumor does to the CT around it (Hu et al., CVPR 2023, Section 3.1): placement (eq. 4),
mass effect (eq. 5) and capsule appearance (eqs. 6-8); and the released profile's darkening.

``t`` is a tumor's packed row and ``r`` a crop's (``batch``). The paper's functions work in place on
views of one tumor's box of the canvas: ``img`` float32 HU,
``lab`` uint8 labels, ``mask`` the tumor's soft mask in [0, 1], all with axes ``(i, j, k)`` = (R, A,
S) of the prepared scan (voxels of edge ``s`` mm), the tumor's center at the box center.
``synthesize`` calls them in the paper's order: place, mass effect, capsule.
"""

from __future__ import annotations

import math

from tumorforge.manifests.conventions import ORGAN, TUMOR

from .backend import Backend


def place(backend: Backend, img, lab, sub, m, texture) -> None:
    """Eq. 4: ``img' = (1 - m) img + m texture`` (texture in HU) in ``img[sub]``; ``m`` is the soft
    mask on ``sub``. A voxel becomes tumor where ``m >= 0.5``."""
    xp = backend.xp
    img[sub] = (1.0 - m) * img[sub] + m * texture                        # eq. 4
    lab[sub] = xp.where(m >= 0.5, xp.uint8(TUMOR), lab[sub])


def darken(backend: Backend, r, img, lab, union, texture, s: float) -> None:
    """The released recipe on a whole canvas: the union of the sample's binary shapes within the
    liver, blurred once, darkens the liver by ``texture x blur x delta``; the label is the binary
    union itself (tumor inside the liver, unblurred)."""
    xp, ndi = backend.xp, backend.ndi
    liver = lab >= ORGAN
    union = union & liver
    blur = ndi.gaussian_filter(union.astype(xp.float32), float(r.mask_blur_mm) / s, mode="constant")
    img -= texture * blur * liver * xp.float32(r.delta_hu)
    lab[union] = TUMOR


def mass_effect(backend: Backend, t, img, lab, mask, h, s: float) -> None:
    """Eq. 5 local scaling warp of image (linear), labels (nearest) and mask (linear) inside the
    sphere of radius ``t.gamma_max_mm`` around the box center ``h`` (per axis, voxels)."""
    ndi = backend.ndi
    # Only the sphere of radius gamma_max moves, and it samples only from inside itself.
    gamma = float(t.gamma_max_mm) / s
    g = int(math.ceil(gamma))
    w = tuple(slice(int(c) - g, int(c) + g + 1) for c in h)
    coords = _warp_coords(backend, (2 * g + 1,) * 3, (g, g, g), gamma, float(t.intensity))
    img[w] = ndi.map_coordinates(img[w], coords, order=1, mode="nearest")
    lab[w] = ndi.map_coordinates(lab[w], coords, order=0, mode="nearest")
    mask[w] = ndi.map_coordinates(mask[w], coords, order=1, mode="nearest")


def capsule(backend: Backend, t, img, mask, s: float) -> None:
    """Eqs. 6-8: the edge band ``lb <= mask <= ub`` (eq. 6), blurred with sigma_d (eq. 7),
    brightens the image by up to ``capsule_hu`` HU (eq. 8)."""
    xp, ndi = backend.xp, backend.ndi
    lb, ub = (float(v) for v in t.capsule_band)     # Python floats: compared in float32
    edge = ((mask >= lb) & (mask <= ub)).astype(xp.float32)              # eq. 6
    img += xp.float32(t.capsule_hu) * ndi.gaussian_filter(edge, float(t.sigma_d_mm) / s,
                                                         mode="constant")  # eqs. 7-8


def _warp_coords(backend, shape, center, gamma_max, intensity):
    """Eq. 5 local scaling warp: output voxel at distance g from the center samples the input at
    g' = (1 - (1 - g / gamma_max)^2 * I / 100) * g, inside the sphere of radius gamma_max (voxels)."""
    xp = backend.xp
    axes = [xp.arange(s, dtype=xp.float32) - xp.float32(c) for s, c in zip(shape, center)]
    v = xp.meshgrid(*axes, indexing="ij")
    g = xp.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
    scale = xp.where(g < gamma_max,
                     1.0 - (1.0 - g / xp.float32(gamma_max)) ** 2 * xp.float32(intensity / 100.0),
                     xp.float32(1.0))
    return xp.stack([xp.float32(c) + vi * scale for vi, c in zip(v, center)])
