"""Atomic, self-describing checkpoints, keep-last-K."""

from __future__ import annotations

import io
import os
import random
import re

import numpy as np
import torch

from tumorforge.manifests import storage

PATTERN = re.compile(r"^step-(\d{9})\.pt$")


def path_for(folder: str, step: int) -> str:
    return os.path.join(folder, f"step-{step:09d}.pt")


def save(folder: str, step: int, state: dict, keep: int) -> str:
    """Write ``state`` for ``step`` atomically (temporary name, fsync, rename), then drop all but
    the newest ``keep``."""
    os.makedirs(folder, exist_ok=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {**state, "step": step, "rng": {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate()}}
    final = path_for(folder, step)
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_atomic(final, buf.getvalue())
    for old in list_steps(folder)[:-keep] if keep > 0 else []:
        os.remove(path_for(folder, old))
    return final


def list_steps(folder: str) -> list[int]:
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for f in os.listdir(folder) if (m := PATTERN.match(f)))


def load_latest(folder: str) -> dict | None:
    """The newest checkpoint in ``folder``, loaded with ``weights_only=True`` (tensors and plain
    Python values only, nothing unpickled into code), with the RNG states restored."""
    steps = list_steps(folder)
    if not steps:
        return None
    state = torch.load(path_for(folder, steps[-1]), map_location="cpu", weights_only=True)
    torch.set_rng_state(state["rng"]["torch"])
    kind, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["rng"]["python"])
    return state
