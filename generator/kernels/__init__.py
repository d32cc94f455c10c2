"""Batched synthesis kernels (CUDA through CuPy, the same text built for the CPU in tests)."""
