"""Command-line flags shared by every stage: ``--allow-root``, and flags generated from the fields
of a configuration dataclass (so every field is a flag by construction, defaults shown in --help).
"""

from __future__ import annotations

import argparse


def add_allow_root(p) -> None:
    """``--allow-root``: folders or s3:// prefixes a manifest's paths may point into (repeatable)."""
    p.add_argument("--allow-root", action="append", default=[], metavar="DIR_OR_URI",
                   help="a folder or s3:// prefix manifest paths may point into (repeatable); the "
                        "manifest's folder and $TUMORFORGE_ALLOWED_ROOTS are always allowed")
