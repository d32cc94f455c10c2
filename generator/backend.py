"""Array backends: NumPy/SciPy on the CPU, CuPy/cupyx on an NVIDIA GPU, one code path for both.

CuPy is optional (``pip install tumorforge[gpu]``) and imported only when a GPU backend is asked for.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from tumorforge.manifests.errors import UserError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "numpy", "cupy")
# Generation jobs and the generator benchmark default to NumPy: its bytes are the reference that
# audit reproduces bit for bit on any machine. Interactive commands (preview, demo) take "auto".
DEFAULT_BACKEND = "numpy"


class BackendError(UserError, RuntimeError):
    pass


# Settings of the GPU kernels (generator/kernels), from the environment: developer knobs that the
# GPU check flips, named here so a wrong value stops a command at start in one line.
KERNEL_SETTINGS = {"TUMORFORGE_KERNELS": ("on", "off"),
                   "TUMORFORGE_KERNEL_NOISE": ("float64", "float32")}


def kernel_setting(name: str) -> str:
    """The value of kernel setting ``name`` (its first allowed value when unset)."""
    allowed = KERNEL_SETTINGS[name]
    value = os.environ.get(name, allowed[0])
    if value not in allowed:
        raise BackendError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Backend:
    name: str
    xp: ModuleType       # numpy or cupy
    ndi: ModuleType      # scipy.ndimage or cupyx.scipy.ndimage
    why: str = "asked for"   # how it was chosen, for the user: "auto: no GPU (...)"

    def asarray(self, a):
        return self.xp.asarray(a)

    def to_host_async(self, *arrays) -> "HostCopy":
        """Start copying device arrays to the host. On CuPy they go into page-locked (pinned)
        host memory from CuPy's pinned pool, on a second stream that first waits for the work
        queued so far on the current one, so the host can go on (draw the next batch) while the
        GPU computes and copies; ``result()`` waits for the copies. On NumPy: done at once."""
        if self.name != "cupy":
            return HostCopy(tuple(np.ascontiguousarray(a) for a in arrays))
        import cupyx
        stream = _copy_stream()
        stream.wait_event(self.xp.cuda.get_current_stream().record())
        out = []
        for a in arrays:
            host = cupyx.empty_pinned(a.shape, a.dtype)
            try:
                self.xp.ascontiguousarray(a).get(stream=stream, out=host, blocking=False)
            except TypeError:            # CuPy before 13: get() has no blocking flag
                self.xp.ascontiguousarray(a).get(stream=stream, out=host)
            out.append(host)
        return HostCopy(tuple(out), stream.record(), keep=arrays)

    def bound_memory(self, share: float, mb: int = 0) -> dict:
        """Cap this process's GPU memory pool (CuPy): ``mb`` MiB, or when 0 the process's ``share``
        of the device's memory (a Ray actor's fractional GPU); returns :meth:`memory`. No-op on
        NumPy."""
        if self.name != "cupy":
            return {}
        pool = self.xp.get_default_memory_pool()
        if mb > 0:
            pool.set_limit(size=int(mb) << 20)
        elif 0 < share < 1:
            pool.set_limit(fraction=float(share))
        return self.memory()

    def memory(self) -> dict:
        """GPU memory of this process's CuPy pool in MiB: its limit (0: none), what it holds
        (its high-water mark: the pool keeps freed blocks) and what is in use now. {} on NumPy."""
        if self.name != "cupy":
            return {}
        pool = self.xp.get_default_memory_pool()
        mib = lambda v: round(v / 2 ** 20, 1)
        return {"limit_mb": mib(pool.get_limit()), "held_mb": mib(pool.total_bytes()),
                "used_mb": mib(pool.used_bytes())}

    def versions(self) -> dict:
        import scipy
        out = {"numpy": np.__version__, "scipy": scipy.__version__}
        if self.name == "cupy":
            out["cupy"] = self.xp.__version__
            out["cuda_runtime"] = int(self.xp.cuda.runtime.runtimeGetVersion())
            out["gpu"] = self.xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        return out


class HostCopy:
    """Host arrays being filled by device-to-host copies; ``result()`` waits for them."""

    def __init__(self, arrays: tuple, done=None, keep: tuple = ()):
        self._arrays, self._done = arrays, done
        self._keep = keep                 # the device arrays stay alive until the copy is done

    def result(self) -> tuple[np.ndarray, ...]:
        if self._done is not None:
            self._done.synchronize()
            self._done, self._keep = None, ()
        return self._arrays


_COPY_STREAMS: dict = {}


def _copy_stream():
    """One non-blocking CuPy stream per device for device-to-host copies."""
    import cupy
    dev = cupy.cuda.Device().id
    if dev not in _COPY_STREAMS:
        _COPY_STREAMS[dev] = cupy.cuda.Stream(non_blocking=True)
    return _COPY_STREAMS[dev]


def _numpy() -> Backend:
    import scipy.ndimage
    return Backend("numpy", np, scipy.ndimage)


def _cupy() -> Backend:
    try:
        import cupy
        import cupyx.scipy.ndimage
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise BackendError("CuPy found no CUDA device")
        cupy.zeros(1).sum().item()       # fails here, not mid-job, if the driver is unusable
        for name in KERNEL_SETTINGS:
            kernel_setting(name)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"the cupy backend needs a working CUDA GPU and CuPy "
                           f"(pip install 'tumorforge[gpu]'): {type(exc).__name__}: {exc}") from exc
    return Backend("cupy", cupy, cupyx.scipy.ndimage)


def no_gpu_reason(exc: BaseException) -> str:
    """Why ``auto`` fell back to NumPy, in a few words (the full error is what ``--backend cupy``
    says): CuPy missing, no CUDA device, or the first line of what failed."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ModuleNotFoundError):
        return "CuPy is not installed"
    text = str(exc) if cause is exc else f"{type(cause).__name__}: {cause}"
    first = text.splitlines()[0] if text else type(cause).__name__
    return first if len(first) <= 80 else first[:77] + "..."


def get_backend(name: str = "auto") -> Backend:
    """``auto`` picks CuPy when a GPU works, else NumPy, and logs which it picked and why."""
    if name not in BACKENDS:
        raise BackendError(f"backend {name!r}: expected one of {BACKENDS}")
    if name == "numpy":
        return _numpy()
    if name == "cupy":
        return _cupy()
    try:
        backend = _cupy()
        why = f"auto: GPU {backend.versions().get('gpu')}"
        backend = Backend(backend.name, backend.xp, backend.ndi, why)
    except BackendError as exc:
        numpy_backend = _numpy()
        backend = Backend(numpy_backend.name, np, numpy_backend.ndi,
                          f"auto: no usable GPU, {no_gpu_reason(exc)}")
    log.info("backend %s (%s)", backend.name, backend.why)
    return backend
