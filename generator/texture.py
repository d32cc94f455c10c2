"""The tumor's texture (Hu et al., CVPR 2023, Section 3.1, "Texture generation").

A texture is computed on a box of the prepared scan (array axes ``(i, j, k)`` = (R, A, S), voxels
of edge ``s`` mm); its Philox noise grid is anchored at the box corner, so the same record gives the
same texture on every run, and the same integer noise on every backend.

- ``paper``: Gaussian noise on a grid ``eta`` mm apart, upscaled by cubic interpolation and blurred
  with sigma_b, on the box the tumor's mask covers. Upscaling and blur remove most of the noise's
  variance (left alone, the texture's sd is 0.36-0.49 of sigma_p), while Section 3.1 wants the
  parenchyma's sd sigma_p and graininess close to it; so the result is standardized over its box to
  mean mu_t and sd sigma_p (HU). Eq. 4 blends it in.
- ``released``: the authors' salt noise, one field per sample (the crop and its blur margin): a
  density drawn from blurred uniform noise and rescaled over the field into ``texture_prob``,
  Bernoulli-sampled, blurred with ``texture_blur``, scaled to mean ``texture_mean`` over the field
  and clipped to [0, 1]. Unitless: it scales the delta-HU darkening.
"""

from __future__ import annotations

import math

from . import noise
from .backend import Backend
from .params import PaperTumor, ReleasedSample


def paper_texture(backend: Backend, t: PaperTumor, box_shape, s: float):
    """Gaussian texture of ``t`` on a box of ``box_shape`` voxels: noise on a grid ``eta`` mm
    apart, cubic upscaling, blur sigma_b, standardized to mean mu_t and sd sigma_p (float32 HU)."""
    xp, ndi = backend.xp, backend.ndi
    step = max(t.eta / s, 1.0)                       # noise grid spacing in voxels
    coarse = tuple(max(2, int(math.ceil(n / step))) for n in box_shape)
    z = noise.normal(xp, coarse, t.texture_seed)
    zoom = [n / c for n, c in zip(box_shape, coarse)]
    up = ndi.zoom(z, zoom, order=3, mode="mirror", grid_mode=False)
    up = up[: box_shape[0], : box_shape[1], : box_shape[2]]
    up = ndi.gaussian_filter(up, t.sigma_b_mm / s, mode="nearest")
    sd = xp.maximum(up.std(), xp.float32(1e-6))
    return (up - up.mean()) * (xp.float32(t.sigma_p) / sd) + xp.float32(t.mu_t)


def released_texture(backend: Backend, r: ReleasedSample, field_shape, s: float):
    """The authors' salt-noise texture over one sample's field (float32 in [0, 1])."""
    xp, ndi = backend.xp, backend.ndi
    density = ndi.gaussian_filter(noise.uniform(xp, field_shape, r.texture_seed, stream=0),
                                  r.texture_sigma_mm / s, mode="mirror")
    lo, hi = density.min(), density.max()
    p_lo, p_hi = r.texture_prob
    density = p_lo + (density - lo) / xp.maximum(hi - lo, xp.float32(1e-6)) * (p_hi - p_lo)
    salt = (noise.uniform(xp, field_shape, r.texture_seed, stream=1) < density).astype(xp.float32)
    tex = ndi.gaussian_filter(salt, r.texture_blur_mm / s, mode="mirror")
    tex = tex * (xp.float32(r.texture_mean) / xp.maximum(tex.mean(), xp.float32(1e-6)))
    return xp.clip(tex, 0.0, 1.0)
