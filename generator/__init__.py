"""tumorforge generator: seeded liver-tumor synthesis (NumPy and CuPy backends)."""

# The version of the generator's OUTPUT (not of the package): it enters every dataset id, scan
# cache key and golden hash, and changes only when the same seed would paint different bytes.
# The package's version is tumorforge's own (pyproject.toml; `tumorforge --version` shows both).
GENERATOR_VERSION = "0.7.0"

_TRANSFORM = ("TumorSynthesisd", "PrepareTumorSynthesisd", "synthesis_record")


def __getattr__(name: str):
    """``TumorSynthesisd`` (the MONAI transform) on first use: importing the generator itself
    needs neither MONAI nor torch (the GPU path must import without them)."""
    if name in _TRANSFORM:
        from . import transform
        return getattr(transform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
