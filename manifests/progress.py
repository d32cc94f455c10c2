"""Progress bars for commands that run for minutes: one rule for all of them (tqdm on stderr,
drawn only when stderr is a terminal, so logs and captured output stay clean)."""

from __future__ import annotations

import sys


def progress(items, desc: str, unit: str, total: int | None = None, enabled: bool = True):
    """``items`` counted on a bar named ``desc`` when ``enabled`` and stderr is a terminal."""
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, total=total, desc=desc, unit=unit, disable=None, file=sys.stderr,
                dynamic_ncols=True)
