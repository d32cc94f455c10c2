"""A hand-made liver scan for the generator's tests (simulated CT, not a real scan)."""

from __future__ import annotations

import numpy as np


def liver_volume(shape=(150, 130, 60), spacing=(1.0, 1.0, 2.0), seed=0):
    """An ellipsoid 'liver' (~100 HU, sd 12) in fat, with one bright vessel tube along its long
    axis; anisotropic spacing. Returns image (HU), label (0/1) and affine (LPS storage)."""
    rng = np.random.default_rng(seed)
    ax = [(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*ax, indexing="ij")
    liver = (x / 65) ** 2 + (y / 55) ** 2 + (z / 50) ** 2 < 1
    vessel = ((y - 10) ** 2 + (z - 5) ** 2 < 16) & liver
    image = np.where(liver, 100.0, -90.0) + rng.normal(0, 12, shape)
    image[vessel] += 80
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    return image.astype(np.int16), liver.astype(np.uint8), affine
