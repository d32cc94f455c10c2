"""The ``released`` recipe's fused kernels (``generator/kernels/released.cu``): their C++ build
and their NumPy twins paint the array path's bytes, kernel by kernel and crop by crop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import released_twins as twins
from tumorforge.generator.backend import get_backend
from tumorforge.generator.batch import pack
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.kernels import paint, released
from tumorforge.generator.prepare import prepare_scan
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.generator.synthesize import synthesize_batch
from tumorforge.generator.tumor_models import TumorModelError, register, tumor_model

NUMPY = get_backend("numpy")


@pytest.fixture(scope="module")
def scan():
    from tumorforge.manifests.phantoms import make_phantom
    phantom = make_phantom(np.random.default_rng(3), scale=0.25)
    return prepare_scan("released-kernels", phantom.image, phantom.organs, phantom.affine,
                        organ_values=(6,), config=GeneratorConfig(crop_size=(48,) * 3))


def _packed(scan, n, start=0, **kw):
    config = GeneratorConfig(profile="released", crop_size=(48,) * 3, **kw)
    params = [sample_params(np.random.default_rng(sample_seed(5, i)), scan, config)
              for i in range(start, start + n)]
    return pack(params, [scan.scan_id])


@pytest.mark.parametrize("mix", [{"tiny": 0.5, "large": 0.5}, {"small": 0.5, "mix": 0.5}])
def test_kernels_and_twins_paint_the_array_paths_bytes(scan, mix):
    packed = _packed(scan, 6, size_mix=mix)
    assert tumor_model("released").fused
    a = synthesize_batch([scan], packed, NUMPY, kernels="off")
    b = synthesize_batch([scan], packed, NUMPY, kernels=paint.cpu_module())
    c = synthesize_batch([scan], packed, NUMPY, kernels=twins.ReleasedTwins())
    assert (a.labels == 2).sum() > 1000                                  # tumors were painted
    assert (a.labels == 2).any(axis=(1, 2, 3)).sum() < len(packed)       # and negatives made
    for other in (b, c):
        assert np.array_equal(a.labels, other.labels)
        assert np.array_equal(a.images, other.images)


def test_each_released_kernel_equals_its_twin(scan):
    packed = _packed(scan, 4, size_mix={"medium": 0.5, "tiny": 0.5})
    crops = np.arange(len(packed))
    p = released.plan(NUMPY, [scan], packed, crops)
    assert len(p.rt) and p.rc[:, released.RC.index("tumors")].any()
    module = paint.cpu_module()
    image, label = scan.on(NUMPY)
    ptrs = np.array([image.ctypes.data, label.ctypes.data], np.uint64)
    shapes = np.array(image.shape, np.int32)
    banks = np.array([v.ctypes.data for v in p.banks], np.uint64)
    size = tuple(int(v) for v in packed.crops.crop_size[0])
    out = {}
    for who in ("kernel", "twin"):
        uni = np.zeros(p.canvas, np.uint8)
        field, other = np.zeros(p.canvas, np.float32), np.zeros(p.canvas, np.float32)
        sums, counts = np.zeros(len(crops)), np.zeros(len(crops), np.uint64)
        images = np.zeros((len(crops),) + size[::-1], np.int16)
        labels = np.zeros_like(images, np.uint8)
        if who == "kernel":
            run = lambda name, *args: module.launch(name, (3, max(len(crops), 1)), 2, args)
            union = lambda: module.launch("released_union", (3, len(p.rt)), 2,
                                          (p.rc, p.rt, p.rtf, p.rtd, uni))
            scans, bank = ptrs, banks
        else:
            run = lambda name, *args: getattr(twins, name)(*args)
            union = lambda: twins.released_union(p.rc, p.rt, p.rtf, p.rtd, uni)
            scans, bank = {0: (image, label)}, p.banks
        union()
        shape = uni.copy()
        if who == "kernel":
            run("released_liver", p.rc, scans, shapes, uni, field)
        else:
            run("released_liver", p.rc, scans, uni, field)
        for axis, (src, dst) in enumerate([(field, other), (other, field), (field, other)]):
            run("released_blur", p.rc, p.weights, src, dst, np.int32(axis))
        run("released_stats", p.rc, bank, sums, counts)
        run("released_fallback", p.rc, bank, sums, counts)
        if who == "kernel":
            run("released_output", p.rc, p.rf, scans, shapes, bank, uni, other, sums, counts,
                images, labels, *(np.int32(v) for v in size))
        else:
            run("released_output", p.rc, p.rf, scans, bank, uni, other, sums, counts, images,
                labels, *size)
        out[who] = dict(shape=shape, union=uni, blur=other, sums=sums, counts=counts,
                        images=images, labels=labels)
    k, t = out["kernel"], out["twin"]
    assert k["shape"].sum() > 100
    for name in k:
        assert np.array_equal(k[name], t[name]), name


def test_a_window_with_no_voxel_above_the_floor_takes_the_whole_windows_mean(scan):
    """Sparse salt (probability 0.002-0.004): no texture voxel reaches 0.12, so the mean is over
    the whole window; the kernels sum it in row-major order (the twin too), NumPy pairwise: the
    crops agree to a rounding of that mean."""
    packed = _packed(scan, 4, size_mix={"medium": 1.0})
    crops = packed.crops.copy()
    crops.texture_prob[:] = (0.002, 0.004)
    packed = dataclasses.replace(packed, crops=np.rec.array(crops))
    p = released.plan(NUMPY, [scan], packed, np.arange(len(packed)))
    assert all(v.max() <= 0.12 for v in p.banks)
    a = synthesize_batch([scan], packed, NUMPY, kernels="off")
    b = synthesize_batch([scan], packed, NUMPY, kernels=paint.cpu_module())
    c = synthesize_batch([scan], packed, NUMPY, kernels=twins.ReleasedTwins())
    assert (a.labels == 2).sum() > 100
    assert np.array_equal(b.images, c.images) and np.array_equal(b.labels, c.labels)
    assert np.array_equal(a.labels, b.labels)
    assert np.abs(a.images.astype(np.int32) - b.images).max() <= 1


def test_only_the_textures_the_kernels_compute_can_be_fused():
    from tumorforge.generator.tumor_models import TUMOR_MODELS
    base = tumor_model("released")
    try:
        assert register(dataclasses.replace(base, name="released-copy", builtin=False)).fused
        with pytest.raises(TumorModelError, match="released-family models with 'salt-noise-blur'"):
            register(dataclasses.replace(base, name="released-odd", texture="other",
                                         builtin=False))
    finally:
        TUMOR_MODELS.pop("released-copy", None)
        TUMOR_MODELS.pop("released-odd", None)


@pytest.mark.gpu
def test_cuda_kernels_paint_what_the_cupy_array_path_paints(scan):
    """On a GPU the bank is built by CuPy (cupyx's filters round differently from SciPy's), so
    the CUDA kernels are held to the CuPy array path: the same labels, HU within 1 (the union's
    blur sums in SciPy's order in the kernels, cupyx's in the array path), and deterministic."""
    pytest.importorskip("cupy")
    try:
        gpu = get_backend("cupy")
    except Exception as exc:
        pytest.skip(f"no usable GPU: {exc}")
    packed = _packed(scan, 8, size_mix={"small": 0.3, "medium": 0.3, "large": 0.2, "mix": 0.2})
    array = synthesize_batch([scan], packed, gpu, kernels="off")
    cuda = synthesize_batch([scan], packed, gpu, kernels="auto")
    assert (cuda.labels == 2).sum() > 1000
    assert np.array_equal(array.labels, cuda.labels)
    d = np.abs(array.images.astype(np.int32) - cuda.images)
    assert d.max() <= 1 and (d > 0).mean() < 1e-3, (int(d.max()), float((d > 0).mean()))
    again = synthesize_batch([scan], packed, gpu, kernels="auto")
    assert again.images.tobytes() == cuda.images.tobytes()
