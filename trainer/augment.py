"""Intensity window and the reference recipe's augmentations, on whatever device the batch is on.

Every random choice comes from a ``torch.Generator`` seeded by (seed, step), so a resumed run
augments step s exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch


def window(image_hu: torch.Tensor, window_hu: tuple[float, float]) -> torch.Tensor:
    """HU -> [0, 1] over ``window_hu`` (the organ's training window, ``Preprocessing.window_hu``),
    clipped."""
    lo, hi = window_hu
    return ((image_hu.float() - lo) / (hi - lo)).clamp_(0.0, 1.0)


def augment(image: torch.Tensor, label: torch.Tensor, seed: int, step: int,
            flip_p: float = 0.5, rot_p: float = 0.5, scale: float = 0.1, shift: float = 0.1):
    """Per sample: random flips along each spatial axis, a random 90-degree rotation in a random
    plane, intensity scale by U(1 - scale, 1 + scale) and shift by U(-shift, shift) (image only).
    ``image`` is (B, 1, Z, Y, X) float in [0, 1]; ``label`` (B, 1, Z, Y, X) integer."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    out_i, out_l = [], []
    for b in range(image.shape[0]):
        img, lab = image[b], label[b]
        for axis in (1, 2, 3):
            if torch.rand((), generator=g) < flip_p:
                img, lab = img.flip(axis), lab.flip(axis)
        if torch.rand((), generator=g) < rot_p:
            plane = [(1, 2), (1, 3), (2, 3)][int(torch.randint(3, (), generator=g))]
            k = int(torch.randint(1, 4, (), generator=g))
            if img.shape[plane[0]] == img.shape[plane[1]]:
                img, lab = img.rot90(k, plane), lab.rot90(k, plane)
        factor = 1.0 + (torch.rand((), generator=g).item() * 2 - 1) * scale
        offset = (torch.rand((), generator=g).item() * 2 - 1) * shift
        out_i.append(img * factor + offset)
        out_l.append(lab)
    return torch.stack(out_i), torch.stack(out_l)
