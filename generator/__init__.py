"""tumorforge generator: seeded liver-tumor synthesis (NumPy and CuPy backends)."""

__version__ = "0.3.0"
