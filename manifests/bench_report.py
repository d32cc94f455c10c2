"""What every ``tumorforge bench ...`` report carries: the machine and the date, printed and
optionally written as JSON (docs/results/performance.md quotes these reports)."""

from __future__ import annotations

import json
import os
import platform
import time


def machine() -> dict:
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version()}


def finish_report(report: dict, path: str | None, show: bool = True) -> int:
    """Add machine and date to ``report``, print it (one line per field), write JSON to ``path``."""
    report.update(machine=machine(), date=time.strftime("%Y-%m-%d"))
    if show:
        for k, v in report.items():
            print(f"  {k:20s} {v}")
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return 0
