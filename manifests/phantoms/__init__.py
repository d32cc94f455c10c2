"""Realistic abdominal CT phantoms written in real dataset layouts (LiTS, MSD, BTCV, CHAOS)."""

from .anatomy import ORGAN_CODES
from .layouts import LABEL_VALUES, LAYOUTS, write_layout
from .lesions import Lesion
from .phantom import Phantom, make_phantom

__all__ = ["LABEL_VALUES", "LAYOUTS", "ORGAN_CODES", "Lesion", "Phantom", "make_phantom", "save_preview", "write_layout"]


def __getattr__(name: str):
    """``save_preview`` on first use: it needs matplotlib, which the GPU synthesis path (phantoms
    for ``bench generator``) must not."""
    if name == "save_preview":
        from .preview import save_preview
        return save_preview
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
