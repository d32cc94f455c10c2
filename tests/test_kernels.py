"""The GPU kernels (generator/kernels/paint.cu) on a CPU: their own text built as C++ runs every
block and thread of each launch, and must paint what the array path paints; each kernel equals its
NumPy twin. nvcc, where installed, checks the text compiles for the H100/H200 (sm_90) without
contracted float arithmetic."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import scipy.ndimage as ndi

from tumorforge.generator.backend import BackendError, get_backend
from tumorforge.generator.batch import pack
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.kernels import module as kmodule
from tumorforge.generator.kernels import paint
from tumorforge.generator.prepare import prepare_scan
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.generator.shape import tumor_halves, tumor_mask
from tumorforge.generator.synthesize import synthesize_batch
from tumorforge.generator.texture import paper_texture

import kernel_twins as twins
from generator_fixtures import liver_volume

NUMPY = get_backend("numpy")
pytestmark = pytest.mark.skipif(kmodule.compiler() is None, reason="no C++ compiler to build the kernels")


@pytest.fixture(scope="module")
def scan():
    image, label, affine = liver_volume()
    return prepare_scan("toy", image, label, affine, organ_values=(1,))


def _packed(scan, profile, n, crop=48, start=0, **kw):
    config = GeneratorConfig(profile=profile, negative_fraction=0.0, crop_size=(crop,) * 3, **kw)
    params = [sample_params(np.random.default_rng(sample_seed(3, i)), scan, config)
              for i in range(start, start + n)]
    return params, pack(params, [scan.scan_id])


@pytest.mark.slow
@pytest.mark.parametrize("profile,mix", [
    ("paper-train", {"small": 0.4, "medium": 0.3, "mix": 0.3}),
    ("paper", {"small": 0.3, "large": 0.4, "mix": 0.3}),        # mass effect and capsule
    ("paper-grain", {"small": 0.5, "medium": 0.5}),             # one noise grid per axis
])
def test_kernels_paint_what_the_array_path_paints(scan, profile, mix):
    params, packed = _packed(scan, profile, 4, size_mix=mix)
    a = synthesize_batch([scan], packed, NUMPY, kernels="off")
    b = synthesize_batch([scan], packed, NUMPY, kernels=paint.cpu_module())
    c = synthesize_batch([scan], packed, NUMPY, kernels=twins.TwinModule())
    assert (a.labels == 2).sum() > 1000                       # tumors were painted
    canvas = paint.plan([scan], packed, np.arange(len(packed))).ci[:, paint.CI.index("canvas")]
    assert canvas.any() == (profile == "paper")
    for other in (b, c):
        assert np.array_equal(a.labels, other.labels)         # mask arithmetic is NumPy's, op by op
        d = np.abs(a.images.astype(np.int32) - other.images)
        # the texture's float64 sums run in another order than BLAS: at most 1 HU after rounding
        assert d.max() <= 1 and (d > 0).mean() < 1e-4


def test_kernels_follow_the_array_path_on_a_coarser_grid():
    """1.3 mm voxels: every mm length of a record becomes voxels the same way in both paths."""
    image, label, affine = liver_volume()
    config = GeneratorConfig(profile="paper", negative_fraction=0.0, crop_size=(40,) * 3,
                             target_spacing_mm=(1.3,) * 3, size_mix={"small": 0.5, "large": 0.5})
    coarse = prepare_scan("toy-1.3", image, label, affine, organ_values=(1,), config=config)
    params = [sample_params(np.random.default_rng(sample_seed(4, i)), coarse, config)
              for i in range(3)]
    packed = pack(params, [coarse.scan_id])
    a = synthesize_batch([coarse], packed, NUMPY, kernels="off")
    b = synthesize_batch([coarse], packed, NUMPY, kernels=paint.cpu_module())
    assert (a.labels == 2).sum() > 100 and np.array_equal(a.labels, b.labels)
    d = np.abs(a.images.astype(np.int32) - b.images)
    assert d.max() <= 1 and (d > 0).mean() < 1e-4


def test_crops_with_mass_effect_or_capsule_are_painted_on_a_canvas(scan):
    params, packed = _packed(scan, "paper", 6, size_mix={"large": 0.5, "small": 0.5})
    assert paint.eligible(packed).all()
    p = paint.plan([scan], packed, np.arange(len(packed)))
    col = {n: i for i, n in enumerate(paint.CI)}
    for b, (prm, c) in enumerate(zip(params, p.ci)):
        post = any(t.mass_effect or t.capsule for t in prm.tumors)
        assert bool(c[col["canvas"]]) == post   # every large tumor here reaches its 48^3 crop
        dims = [c[col[f"cv_dim{a}"]] for a in range(3)]
        if post:                                # the canvas holds the crop and the warp's reach
            assert all(d > 48 for d in dims)
        else:
            assert dims == [48, 48, 48]
    _, released = _packed(scan, "released", 3)
    assert not paint.eligible(released).any()


def _tables(scan, n=4):
    _, packed = _packed(scan, "paper-train", n, size_mix={"small": 0.5, "medium": 0.5})
    p = paint.plan([scan], packed, np.arange(len(packed)))
    assert p.tumors >= n
    return packed, p


def _run(name, fn, *args):
    """Run kernel ``name`` of the CPU build on a 3-block x 2-thread grid per row (so the
    grid-stride loops are exercised) with the given arrays, or its twin ``fn``."""
    if fn is None:
        rows = len(args[0])
        paint.cpu_module().launch(name, (3, rows), 2, args)
    else:
        fn(*args)


def test_each_kernel_equals_its_numpy_twin(scan):
    packed, p = _tables(scan)
    ws = {}
    for who in ("kernel", "twin"):
        get = lambda name: None if who == "kernel" else getattr(twins, name)
        a = np.zeros(p.sizes["ws"], np.float32)
        b = np.zeros_like(a)
        _run("paint_shape", get("paint_shape"), p.ti, p.tf, a)
        shape = a.copy()
        for axis, (src, dst) in enumerate([(a, b), (b, a), (a, b)]):
            _run("paint_blur", get("paint_blur"), p.ti, paint.NULL, p.weights, src, dst,
                 np.int32(axis), np.int32(0))
        z = np.zeros(p.sizes["z"])
        _run("paint_noise", get("paint_noise"), p.ti, p.seeds, z, np.int32(0))
        p1, p2 = np.zeros(p.sizes["p1"]), np.zeros(p.sizes["p2"])
        tex = np.zeros(p.sizes["tex"], np.float32)
        for k, (src, dst) in enumerate([(z, p1), (p1, p2), (p2, p2)]):
            _run("paint_texture", get("paint_texture"), p.ti, p.td, p.ops, p.bands, src, dst, tex,
                 np.int32(k))
        ws[who] = dict(shape=shape, mask=b.copy(), z=z, tex=tex)
    k, t = ws["kernel"], ws["twin"]
    assert k["shape"].sum() > 100 and np.array_equal(k["shape"], t["shape"])
    assert np.array_equal(k["mask"], t["mask"])
    # Box-Muller through the C library's log/cos/sin vs NumPy's: float32 values agree to 1 ulp
    assert np.allclose(k["z"], t["z"], rtol=2e-7, atol=1e-7) and np.mean(k["z"] == t["z"]) > 0.999
    assert np.allclose(k["tex"], t["tex"], rtol=0, atol=1e-3)
    # the blend kernel against its twin, on the tables' own masks and texture
    ci = p.ci.copy()
    size = tuple(int(v) for v in packed.crops.crop_size[0])
    out = {}
    for who in ("kernel", "twin"):
        images = np.zeros((len(packed),) + size[::-1], np.int16)
        labels = np.zeros((len(packed),) + size[::-1], np.uint8)
        if who == "kernel":
            img, lab = scan.on(NUMPY)
            ptrs = np.array([img.ctypes.data, lab.ctypes.data], np.uint64)
            shapes = np.array(img.shape, np.int32)
            paint.cpu_module().launch("paint_blend", (5, len(ci)), 3,
                                      (ci, p.ti, ptrs, shapes, k["mask"], k["tex"], images, labels,
                                       *(np.int32(v) for v in size)))
        else:
            twins.paint_blend(ci, p.ti, [scan.on(NUMPY)], k["mask"], k["tex"], images, labels, *size)
        out[who] = (images, labels)
    assert (out["kernel"][1] == 2).sum() > 100
    assert np.array_equal(out["kernel"][0], out["twin"][0])
    assert np.array_equal(out["kernel"][1], out["twin"][1])


def test_twins_equal_the_array_path_they_replace(scan):
    packed, p = _tables(scan, n=3)
    mask = np.zeros(p.sizes["ws"], np.float32)
    tmp = np.zeros_like(mask)
    twins.paint_shape(p.ti, p.tf, mask)
    for axis, (src, dst) in enumerate([(mask, tmp), (tmp, mask), (mask, tmp)]):
        twins.paint_blur(p.ti, None, p.weights, src, dst, axis, 0)
    z = np.zeros(p.sizes["z"])
    twins.paint_noise(p.ti, p.seeds, z)
    p1, p2 = np.zeros(p.sizes["p1"]), np.zeros(p.sizes["p2"])
    tex = np.zeros(p.sizes["tex"], np.float32)
    for k, (src, dst) in enumerate([(z, p1), (p1, p2), (p2, p2)]):
        twins.paint_texture(p.ti, p.td, p.ops, p.bands, src, dst, tex, k)
    col = {n: i for i, n in enumerate(paint.TI)}
    v = lambda r, n: np.array([r[col[f"{n}{a}"]] for a in range(3)])
    done = 0
    for r, t in zip(p.ti, packed.tumors[p.rows]):
        s_lo, s_hi, r_lo, r_hi = (v(r, n) for n in ("s_lo", "s_hi", "r_lo", "r_hi"))
        hb = tumor_halves(t, 1.0)
        box_lo = np.asarray(t.center) - np.asarray(packed.crops.origin[r[col["crop"]]]) - hb
        want = tumor_mask(NUMPY, t, 1.0, s_lo - box_lo, s_hi - box_lo)
        got = tmp[r[col["ws"]]:][:want.size].reshape(want.shape)
        assert np.array_equal(got, want)
        want = paper_texture(NUMPY, t, tuple(2 * hb + 1), 1.0, r_lo - box_lo, r_hi - box_lo)
        got = tex[r[col["tex_off"]]:][:want.size].reshape(want.shape)
        assert np.allclose(got, want, rtol=0, atol=1e-3)
        done += 1
    assert done == p.tumors


def test_blur_kernel_is_scipys_gaussian_filter_bit_for_bit():
    rng = np.random.default_rng(0)
    x = (rng.random((9, 7, 11)) > 0.6).astype(np.float32)
    sigma, radius = 1.7, int(4 * 1.7 + 0.5)
    ti = np.zeros((1, len(paint.TI)), np.int32)
    col = {n: i for i, n in enumerate(paint.TI)}
    for a, n in enumerate(x.shape):
        ti[0, col[f"s_hi{a}"]] = n
    ti[0, col["radius"]] = radius
    w = paint.gaussian_weights(sigma, radius)
    a, b = x.ravel().copy(), np.zeros(x.size, np.float32)
    for axis, (src, dst) in enumerate([(a, b), (b, a), (a, b)]):
        paint.cpu_module().launch("paint_blur", (2, 1), 4, (ti, paint.NULL, w, src, dst,
                                                            np.int32(axis), np.int32(0)))
    assert np.array_equal(b.reshape(x.shape), ndi.gaussian_filter(x, sigma, mode="constant"))


def test_cpu_build_refuses_unknown_kernels_and_python_numbers():
    m = paint.cpu_module()
    with pytest.raises(kmodule.KernelError, match="no kernel named"):
        m.launch("paint_nothing", (1, 1), 1, ())
    with pytest.raises(kmodule.KernelError, match="NumPy scalars"):
        m.launch("paint_blur", (1, 1), 1, (np.zeros(1), 3))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_kernels_compile_for_hopper_without_contracted_arithmetic(tmp_path):
    src = tmp_path / "paint.cu"
    src.write_text(paint.source())
    ptx = tmp_path / "paint.ptx"
    done = subprocess.run(["nvcc", "-arch=sm_90", "-ptx", "-std=c++14", str(src), "-o", str(ptx)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = ptx.read_text()
    entries = re.findall(r"\.entry (\w+)\(", text)
    assert sorted(entries) == sorted(kmodule.kernel_names(paint.source()))
    # fused multiply-adds only inside the device's libm (Box-Muller's log/sin/cos)
    for body in re.split(r"\.entry ", text)[1:]:
        name = body.split("(")[0]
        if name != "paint_noise":
            assert " fma" not in body and "\tfma" not in body, name


@pytest.mark.gpu
def test_cuda_kernels_paint_what_their_cpu_build_paints(scan):
    pytest.importorskip("cupy")
    try:
        gpu = get_backend("cupy")
    except Exception as exc:
        pytest.skip(f"no usable GPU: {exc}")
    for profile in ("paper-train", "paper"):
        _, packed = _packed(scan, profile, 8, crop=96, size_mix={"small": 0.3, "medium": 0.3,
                                                                  "large": 0.2, "mix": 0.2})
        cpu = synthesize_batch([scan], packed, NUMPY, kernels=paint.cpu_module())
        cuda = synthesize_batch([scan], packed, gpu, kernels="auto")
        assert np.array_equal(cpu.labels, cuda.labels), profile
        d = np.abs(cpu.images.astype(np.int32) - cuda.images)
        assert d.max() <= 1 and (d > 0).mean() < 1e-4, (profile, int(d.max()), float((d > 0).mean()))
        again = synthesize_batch([scan], packed, gpu, kernels="auto")
        assert again.images.tobytes() == cuda.images.tobytes()       # deterministic on the GPU


def test_float32_noise_stays_within_a_few_ulp_and_paints_the_same_crops(scan, monkeypatch):
    packed, p = _tables(scan, n=3)
    z64, z32 = np.zeros(p.sizes["z"]), np.zeros(p.sizes["z"])
    paint.cpu_module().launch("paint_noise", (2, p.tumors), 3, (p.ti, p.seeds, z64, np.int32(0)))
    paint.cpu_module().launch("paint_noise", (2, p.tumors), 3, (p.ti, p.seeds, z32, np.int32(1)))
    assert np.abs(z32 - z64).max() < 1e-5 * max(1.0, np.abs(z64).max())
    a = synthesize_batch([scan], packed, NUMPY, kernels="off")
    monkeypatch.setenv("TUMORFORGE_KERNEL_NOISE", "float32")
    b = synthesize_batch([scan], packed, NUMPY, kernels=paint.cpu_module())
    assert np.array_equal(a.labels, b.labels)
    d = np.abs(a.images.astype(np.int32) - b.images)
    assert d.max() <= 1 and (d > 0).mean() < 1e-3
    monkeypatch.setenv("TUMORFORGE_KERNEL_NOISE", "float16")
    with pytest.raises(BackendError, match="TUMORFORGE_KERNEL_NOISE='float16': expected one of"):
        synthesize_batch([scan], packed, NUMPY, kernels=paint.cpu_module())


def test_a_wrong_kernel_setting_stops_bench_generator_in_one_line():
    import os
    import sys
    env = dict(os.environ, TUMORFORGE_KERNELS="maybe")
    done = subprocess.run([sys.executable, "-m", "tumorforge.cluster", "bench", "generator",
                           "--samples", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("bench generator: TUMORFORGE_KERNELS='maybe': expected one of "
                                   "on, off")


@pytest.mark.gpu
def test_cuda_backend_copies_through_pinned_memory_and_caps_its_pool():
    cupy = pytest.importorskip("cupy")
    try:
        gpu = get_backend("cupy")
    except Exception as exc:
        pytest.skip(f"no usable GPU: {exc}")
    a = cupy.arange(1000, dtype=cupy.int16).reshape(10, 100)
    pending = gpu.to_host_async(a, a[:, ::2])
    host, strided = pending.result()
    assert np.array_equal(host, np.arange(1000, dtype=np.int16).reshape(10, 100))
    assert np.array_equal(strided, host[:, ::2]) and strided.flags.c_contiguous
    pool = cupy.get_default_memory_pool()
    before = pool.get_limit()
    try:
        report = gpu.bound_memory(0.0, 256)
        assert report["limit_mb"] == 256.0 and report["held_mb"] >= 0
        with pytest.raises(cupy.cuda.memory.OutOfMemoryError):
            cupy.empty(512 << 20, cupy.uint8)
    finally:
        pool.set_limit(size=before)
