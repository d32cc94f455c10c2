"""Compiled kernel modules: CUDA source as a CuPy ``RawModule`` on a GPU, or the same source built
as C++ for the CPU, behind one call ``module.launch(name, grid, block, args)``.

The CPU build (``cpu_module``) exists so the kernels' own text runs in tests on machines without a
GPU: a small C++ preamble defines CUDA's names (``__global__``, ``blockIdx``, ...; ``TF_CPU``
selects plain arithmetic for the ``_rn`` intrinsics) and ``launch`` runs every block and thread of
the grid one after another. That is faithful for kernels that, like tumorforge's, use neither
shared memory nor ``__syncthreads``. It needs a C++ compiler (``$CXX`` or ``c++``); built once per
source text into a private cache folder (``cache_folder``: this user's, mode 0700, checked before a
library in it is loaded; source and library renamed into place atomically).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from tumorforge.manifests.errors import UserError

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')

_CPU_PREAMBLE = r"""
#define TF_CPU 1
#include <cmath>
#include <cstring>
#include <utility>
#define __global__
#define __device__ static
#define __forceinline__ inline
#include <algorithm>
using std::sqrt; using std::log; using std::sin; using std::cos; using std::min; using std::max;
static inline float sinpif(float x) { return (float)std::sin(3.141592653589793 * (double)x); }
static inline float cospif(float x) { return (float)std::cos(3.141592653589793 * (double)x); }
struct tf_dim3 { unsigned x, y, z; };
static tf_dim3 blockIdx, threadIdx, blockDim, gridDim;
"""

_CPU_LAUNCHER = r"""
template <typename... A, std::size_t... I>
static void tf_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*reinterpret_cast<A*>(args[I])...);
}
template <typename... A>
static void tf_run(void (*k)(A...), unsigned gx, unsigned gy, unsigned bx, void** args) {
    gridDim = {gx, gy, 1}; blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x)
            for (unsigned t = 0; t < bx; ++t) {
                blockIdx = {x, y, 0}; threadIdx = {t, 0, 0};
                tf_call(k, args, std::index_sequence_for<A...>{});
            }
}
extern "C" int tf_launch(const char* name, unsigned gx, unsigned gy, unsigned bx, void** args) {
%s
    return 1;
}
"""


class KernelError(UserError, RuntimeError):
    pass


def kernel_names(source: str) -> list[str]:
    return _KERNEL.findall(source)


class CudaModule:
    """The source compiled by CuPy (NVRTC) for the current GPU."""

    device = "cuda"

    def __init__(self, source: str):
        import cupy
        self.xp = cupy
        self._module = cupy.RawModule(code=source, options=("--std=c++14",))
        self._kernels = {n: self._module.get_function(n) for n in kernel_names(source)}

    def launch(self, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        self._kernels[name](tuple(int(g) for g in grid), (int(block),), args)

    @staticmethod
    def pointer(array) -> int:
        return int(array.data.ptr)


class CpuModule:
    """The source built as C++ with the host compiler; arrays are NumPy arrays."""

    device = "cpu"
    xp = np

    def __init__(self, source: str, cache: Path | None = None):
        self._names = kernel_names(source)
        cases = "\n".join(f'    if (!std::strcmp(name, "{n}")) {{ tf_run({n}, gx, gy, bx, args); '
                          f'return 0; }}' for n in self._names)
        text = _CPU_PREAMBLE + source + _CPU_LAUNCHER % cases
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        folder = cache_folder(cache)
        lib = folder / f"paint-{digest}.so"
        if not _own_file(lib):
            _build(text, lib)
            if not _own_file(lib):
                raise KernelError(f"{lib}: missing after the build")
        self._lib = ctypes.CDLL(str(lib))
        self._lib.tf_launch.restype = ctypes.c_int

    def launch(self, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        keep, ptrs = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise KernelError(f"{name}: array arguments must be C-contiguous")
                holder = ctypes.c_void_p(a.ctypes.data)
            elif isinstance(a, np.generic):
                holder = np.ctypeslib.as_ctypes(np.asarray(a).reshape(1))
            else:
                raise KernelError(f"{name}: argument {a!r}: pass arrays or NumPy scalars")
            keep.append(holder)
            ptrs.append(ctypes.cast(ctypes.pointer(holder), ctypes.c_void_p))
        arr = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        if self._lib.tf_launch(name.encode(), int(grid[0]), int(grid[1]), int(block), arr):
            raise KernelError(f"no kernel named {name}")

    @staticmethod
    def pointer(array) -> int:
        return int(array.ctypes.data)


def compiler() -> str | None:
    """The C++ compiler ``cpu_module`` would use, or None."""
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _build(text: str, lib: Path) -> None:
    """Compile ``text`` into ``lib``: source and library are written under unique temporary names
    in the (private, checked) folder and renamed into place, so a reader never sees half a file and
    a planted link at either name is replaced, not written through."""
    cxx = compiler()
    if cxx is None:
        raise KernelError("building the kernels for the CPU needs a C++ compiler (set CXX)")
    src = lib.with_suffix(".cpp")
    fd, tmp_src = tempfile.mkstemp(dir=lib.parent, prefix=f".{lib.stem}.", suffix=".cpp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    fd, tmp_lib = tempfile.mkstemp(dir=lib.parent, prefix=f".{lib.stem}.", suffix=".so")
    os.close(fd)
    try:
        cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared",
               "-fPIC", "-o", tmp_lib, tmp_src]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelError(f"{cxx} could not build {src}: {done.stderr.strip()[-2000:]}")
        os.chmod(tmp_lib, 0o700)      # whatever the umask: writable by this user only
        os.replace(tmp_src, src)
        os.replace(tmp_lib, lib)
    finally:
        for leftover in (tmp_src, tmp_lib):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


def _owner() -> int:
    """The uid the cache must belong to (a seam for tests that run as root)."""
    return os.getuid()


def cache_folder(cache: str | os.PathLike | None = None) -> Path:
    """The folder for CPU builds: ``cache``, else ``$TUMORFORGE_KERNEL_CACHE``, else
    ``$XDG_CACHE_HOME/tumorforge/kernels`` (``~/.cache/...``), else, without a home folder,
    ``<tmp>/tumorforge-kernels-<uid>``. Created 0700; whichever it is, it must be a real directory
    (not a symlink) owned by this user with no group or other permissions, or it is refused: a
    library in it is loaded into this process."""
    chosen = cache or os.environ.get("TUMORFORGE_KERNEL_CACHE")
    fallback = Path(tempfile.gettempdir()) / f"tumorforge-kernels-{_owner()}"
    if chosen:
        folder = Path(chosen)
    else:
        base = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(base):
            home = os.path.expanduser("~")
            base = os.path.join(home, ".cache") if os.path.isabs(home) else ""
        folder = Path(base) / "tumorforge" / "kernels" if base else fallback
    try:
        _make_private(folder)
    except OSError as exc:
        if chosen or folder == fallback:
            raise KernelError(f"kernel cache {folder}: cannot create it ({exc.strerror}); set "
                              "TUMORFORGE_KERNEL_CACHE to a private folder") from None
        folder = fallback             # no writable home: a per-user folder in the temp dir
        try:
            _make_private(folder)
        except OSError as exc2:
            raise KernelError(f"kernel cache {folder}: cannot create it ({exc2.strerror}); set "
                              "TUMORFORGE_KERNEL_CACHE to a private folder") from None
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise KernelError(f"kernel cache {folder}: is a symlink or not a directory; expected a "
                          "private directory (remove it or set TUMORFORGE_KERNEL_CACHE)")
    if st.st_uid != _owner():
        raise KernelError(f"kernel cache {folder}: owned by uid {st.st_uid}, not by this user "
                          f"(uid {_owner()}); refusing to load libraries from it")
    if st.st_mode & 0o077:
        raise KernelError(f"kernel cache {folder}: mode {stat.S_IMODE(st.st_mode):04o} lets other "
                          f"users write or read it; expected 0700 (chmod 700 {folder}, or remove it)")
    return folder


def _make_private(folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass


def _own_file(path: Path) -> bool:
    """Whether ``path`` exists as a regular file owned by this user; a symlink, another kind of
    file or another owner's file is refused with :class:`KernelError`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise KernelError(f"kernel cache: {path} is a symlink or not a regular file; refusing to "
                          "load it (remove it to rebuild)")
    if st.st_uid != _owner() or st.st_mode & 0o022:
        raise KernelError(f"kernel cache: {path} is owned by uid {st.st_uid} with mode "
                          f"{stat.S_IMODE(st.st_mode):04o}; expected this user's (uid {_owner()}) "
                          "file, writable by no one else (remove it to rebuild)")
    return True


BLOCK = 256               # threads per block of every launch on a GPU


def block_size(module) -> int:
    """Threads per block: ``BLOCK`` on a GPU, one on the CPU build."""
    return BLOCK if module.device == "cuda" else 1


def grid_size(module, n: int) -> int:
    """Blocks along x: enough for ``n`` items per row on a GPU (capped: the loops stride), one on
    the CPU build (its threads run one after another anyway)."""
    if module.device != "cuda":
        return 1
    return int(min(max(1, -(-n // BLOCK)), 4096))
