"""Realistic abdominal CT phantoms written in real dataset layouts (LiTS, MSD, BTCV, CHAOS)."""

from .anatomy import ORGAN_CODES, Phantom, make_phantom
from .layouts import LABEL_VALUES, LAYOUTS, write_layout
from .lesions import Lesion
from .preview import save_preview

__all__ = ["LABEL_VALUES", "LAYOUTS", "ORGAN_CODES", "Lesion", "Phantom", "make_phantom", "save_preview", "write_layout"]
