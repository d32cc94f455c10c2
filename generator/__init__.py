"""tumorforge generator: seeded liver-tumor synthesis (NumPy and CuPy backends)."""

__version__ = "0.5.0"

_TRANSFORM = ("TumorSynthesisd", "synthesis_record")


def __getattr__(name: str):
    """``TumorSynthesisd`` (the MONAI transform) on first use: importing the generator itself
    needs neither MONAI nor torch (the GPU path must import without them)."""
    if name in _TRANSFORM:
        from . import transform
        return getattr(transform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
