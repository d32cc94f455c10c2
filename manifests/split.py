"""Deterministic k-fold assignment of a manifest's scans."""

from __future__ import annotations

import numpy as np

from .schema import ScanEntry


def assign_folds(entries: list[ScanEntry], folds: int, seed: int) -> list[ScanEntry]:
    """Give every scan a fold in ``0..folds-1``, stratified by role (healthy / tumor).

    The assignment depends only on the set of scan IDs, their roles, ``folds`` and ``seed``, never
    on the order of lines in the manifest: scans are sorted by ID, shuffled per role with
    ``SeedSequence(seed)``, and dealt round-robin, so fold sizes differ by at most one per role.
    Entries come back in the input order.
    """
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if folds > len(entries):
        raise ValueError(f"--folds {folds} is more than the {len(entries)} scans in the manifest")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    fold_of: dict[str, int] = {}
    start = 0
    for role in ("tumor", "healthy"):
        ids = sorted(e.scan_id for e in entries if e.role == role)
        for rank, i in enumerate(rng.permutation(len(ids))):
            fold_of[ids[i]] = (start + rank) % folds
        start += len(ids)   # the next role continues the deal, balancing total fold sizes
    return [e.with_fold(fold_of[e.scan_id]) for e in entries]
