"""The tumor's texture (Hu et al., CVPR 2023, Section 3.1, "Texture generation").

A texture is computed on the box the tumor's mask covers (array axes ``(i, j, k)`` = (R, A, S) of
the prepared scan, voxels); its Philox noise grid is anchored at the box corner, so the same record
gives the same texture on every run, and the same integer noise on every backend.

- ``paper``: Gaussian noise N(mu_t, sigma_p) in HU on a grid 1/eta as fine as the voxels, upscaled
  by cubic interpolation and blurred with sigma_b (voxels). The result is in HU: eq. 4 blends it in.
- ``released``: the authors' salt noise: a density drawn from blurred uniform noise and rescaled
  into ``texture_prob``, Bernoulli-sampled, blurred with ``texture_blur``, scaled to mean
  ``texture_mean`` and clipped to [0, 1]. Unitless: it scales the delta-HU darkening.
"""

from __future__ import annotations

import math

from . import noise
from .backend import Backend
from .params import PaperTumor, ReleasedTumor


def tumor_texture(backend: Backend, t, box_shape):
    """The texture of ``t`` on a box of ``box_shape`` voxels, float32 on the backend's device."""
    make = _paper_texture if isinstance(t, PaperTumor) else _released_texture
    return make(backend, t, box_shape)


def _paper_texture(backend, t: PaperTumor, box_shape):
    """Gaussian noise N(mu_t, sigma_p) on a grid 1/eta as fine, cubic upscaling, blur sigma_b."""
    xp, ndi = backend.xp, backend.ndi
    coarse = tuple(max(2, int(math.ceil(s / t.eta))) for s in box_shape)
    z = noise.normal(xp, coarse, t.texture_seed) * xp.float32(t.sigma_p) + xp.float32(t.mu_t)
    zoom = [s / c for s, c in zip(box_shape, coarse)]
    up = ndi.zoom(z, zoom, order=3, mode="mirror", grid_mode=False)
    up = up[: box_shape[0], : box_shape[1], : box_shape[2]]
    return ndi.gaussian_filter(up, t.sigma_b, mode="nearest")


def _released_texture(backend, t: ReleasedTumor, box_shape):
    """Salt noise with a smoothly varying density, blurred, scaled to mean ``texture_mean``, [0, 1]."""
    xp, ndi = backend.xp, backend.ndi
    density = ndi.gaussian_filter(noise.uniform(xp, box_shape, t.texture_seed, stream=0),
                                  t.texture_sigma, mode="mirror")
    lo, hi = density.min(), density.max()
    p_lo, p_hi = t.texture_prob
    density = p_lo + (density - lo) / xp.maximum(hi - lo, xp.float32(1e-6)) * (p_hi - p_lo)
    salt = (noise.uniform(xp, box_shape, t.texture_seed, stream=1) < density).astype(xp.float32)
    tex = ndi.gaussian_filter(salt, t.texture_blur, mode="mirror")
    tex = tex * (xp.float32(t.texture_mean) / xp.maximum(tex.mean(), xp.float32(1e-6)))
    return xp.clip(tex, 0.0, 1.0)
