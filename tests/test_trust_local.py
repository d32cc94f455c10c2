"""Trust between local users (issue 26): the kernels' CPU build cache is private, and hostile NIfTI
headers and manifest lines are refused in one line with bounded memory. (DDP ranks and the
loopback rendezvous: tests/test_ddp_corrupt.py.)

Every hostile input is built here by the test itself.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import warnings

import nibabel as nib
import numpy as np
import pytest

from tumorforge.generator.kernels import module as kmodule
from conftest import peak_mib

TINY = 'extern "C" __global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }\n'

needs_cxx = pytest.mark.skipif(kmodule.compiler() is None, reason="no C++ compiler")


def _one_line(exc) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# -- 1. the kernels' CPU build cache -----------------------------------------------------------

@needs_cxx
def test_kernel_cache_is_private_built_atomically_and_reused(tmp_path, monkeypatch):
    folder = tmp_path / "kernels"
    m = kmodule.CpuModule(TINY, cache=folder)
    x = np.zeros(4, np.float32)
    m.launch("add_one", (1, 1), 4, (x,))
    assert x.tolist() == [1.0] * 4
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0].endswith(".cpp") and names[1].endswith(".so")
    assert not [n for n in names if n.startswith(".")]          # no temporaries left behind
    lib = folder / names[1]
    assert stat.S_IMODE(os.lstat(lib).st_mode) & 0o077 == 0
    before = os.lstat(lib).st_ino

    def no_build(*a):
        raise AssertionError("rebuilt a library that was already in the cache")
    monkeypatch.setattr(kmodule, "_build", no_build)
    kmodule.CpuModule(TINY, cache=folder).launch("add_one", (1, 1), 4, (x,))
    assert x.tolist() == [2.0] * 4 and os.lstat(lib).st_ino == before


@needs_cxx
def test_default_kernel_cache_is_per_user(tmp_path, monkeypatch):
    monkeypatch.delenv("TUMORFORGE_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = kmodule.cache_folder()
    assert folder == tmp_path / "xdg" / "tumorforge" / "kernels"
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")        # ignored, as the spec says
    monkeypatch.setenv("HOME", "/nonexistent-home/for/sure")
    monkeypatch.setattr(kmodule.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    if os.getuid() != 0:                                       # root may create anything
        assert kmodule.cache_folder() == tmp_path / "tmp" / f"tumorforge-kernels-{os.getuid()}"


def test_kernel_cache_open_to_others_or_a_symlink_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(kmodule, "_build", lambda *a: pytest.fail("built in a refused folder"))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(kmodule.KernelError, match=r"mode 0777 .* expected 0700") as err:
        kmodule.CpuModule(TINY, cache=shared)
    _one_line(err.value)
    os.chmod(shared, 0o750)                                    # group bits alone are enough
    with pytest.raises(kmodule.KernelError, match="mode 0750"):
        kmodule.cache_folder(shared)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(private)
    monkeypatch.setenv("TUMORFORGE_KERNEL_CACHE", str(link))   # the override is checked too
    with pytest.raises(kmodule.KernelError, match="symlink") as err:
        kmodule.CpuModule(TINY)
    _one_line(err.value)
    monkeypatch.setenv("TUMORFORGE_KERNEL_CACHE", str(shared))
    with pytest.raises(kmodule.KernelError, match="mode 0750"):
        kmodule.CpuModule(TINY)


def test_kernel_cache_of_another_user_is_refused(tmp_path, monkeypatch):
    """A folder another uid owns cannot be made here without root; the owner check is the same
    code either way, so the test moves "us" instead (or, as root, the folder)."""
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(folder, 4321, 4321)
    else:
        monkeypatch.setattr(kmodule, "_owner", lambda: os.getuid() + 1)
    with pytest.raises(kmodule.KernelError, match=r"owned by uid \d+, not by this user") as err:
        kmodule.CpuModule(TINY, cache=folder)
    _one_line(err.value)


@needs_cxx
def test_planted_library_is_refused_and_planted_source_not_followed(tmp_path):
    built = tmp_path / "built"
    kmodule.CpuModule(TINY, cache=built)
    so = next(built.glob("paint-*.so"))
    cpp = so.with_suffix(".cpp")

    # A symlinked library at the predictable name (the attacker's .so): refused, not loaded.
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / so.name).symlink_to(so)
    with pytest.raises(kmodule.KernelError, match="symlink or not a regular file") as err:
        kmodule.CpuModule(TINY, cache=planted)
    _one_line(err.value)

    # Another user's regular library: refused (as root the file is given away for real).
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    (theirs / so.name).write_bytes(so.read_bytes())
    os.chmod(theirs / so.name, 0o644)
    if os.getuid() == 0:
        os.chown(theirs / so.name, 4321, 4321)
    else:
        os.chmod(theirs / so.name, 0o666)                     # writable by others instead
    with pytest.raises(kmodule.KernelError, match="expected this user's") as err:
        kmodule.CpuModule(TINY, cache=theirs)
    _one_line(err.value)

    # A symlinked source at the predictable name: replaced by the build, its target untouched.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lured = tmp_path / "lured"
    lured.mkdir(mode=0o700)
    (lured / cpp.name).symlink_to(victim)
    x = np.zeros(2, np.float32)
    kmodule.CpuModule(TINY, cache=lured).launch("add_one", (1, 1), 2, (x,))
    assert x.tolist() == [1.0, 1.0]
    assert victim.read_text() == "precious\n"
    assert stat.S_ISREG(os.lstat(lured / cpp.name).st_mode)
    assert (lured / cpp.name).read_text() == cpp.read_text()


# -- 4/5. hostile NIfTI headers -----------------------------------------------------------------

def _nifti(path, data, affine=None, gz=True, **fields) -> str:
    """``data`` as NIfTI-1; ``affine``, when given, is written raw as the sform (qform off), so a
    singular one (which nibabel will not write) can be made."""
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    for key, value in fields.items():
        img.header[key] = value
    raw = bytearray(img.to_bytes())
    if affine is not None:
        header = nib.Nifti1Header(binaryblock=bytes(raw[:348]))
        header["qform_code"], header["sform_code"] = 0, 1
        header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
        raw[:348] = header.binaryblock
    raw = bytes(raw)
    path.write_bytes(gzip.compress(raw, 1) if gz else raw)
    return str(path)


def test_small_gz_declaring_a_huge_float64_volume_is_refused_before_allocating(tmp_path):
    """Red team 6: the cap is on voxel bytes, not voxels. 1024 x 1024 x 160 float64 voxels
    (1.25 GiB; 0.16 Gi voxels, well under the voxel cap) behind a gzip of a few hundred bytes."""
    from tumorforge.manifests.readers import MAX_VOXEL_BYTES, ScanError, read_volume
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float64)
    header.set_data_shape((1024, 1024, 160))
    header.set_zooms((0.8, 0.8, 2.5))
    header.set_sform(np.diag([0.8, 0.8, 2.5, 1.0]), 1)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(1 << 20), 9))
    assert path.stat().st_size < 5_000
    err, peak = peak_mib(lambda: read_volume(str(path)))
    assert isinstance(err, ScanError), err
    assert "refusing to allocate" in _one_line(err) and str(MAX_VOXEL_BYTES) in str(err)
    assert peak < 8, peak                       # the naive reader would hold 2 x 1.25 GiB
    err = pytest.raises(ScanError, read_volume, str(path), with_data=False).value
    assert "bytes of voxels exceed" in _one_line(err)  # header-only reads (manifest build) too
    # int16 scaled to float32 counts its float32 bytes: 1024 x 1024 x 300 = 1.2 GiB returned.
    header.set_data_dtype(np.int16)
    header.set_data_shape((1024, 1024, 300))
    header.set_slope_inter(2.0, -1024.0)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4, 9))
    err = pytest.raises(ScanError, read_volume, str(path)).value
    assert "scaled to float32" in _one_line(err)


def test_voxels_are_read_into_one_buffer_and_legit_files_still_read(tmp_path):
    from tumorforge.manifests.readers import read_volume
    rng = np.random.default_rng(0)
    image = rng.integers(-1024, 1500, (160, 128, 96), dtype=np.int16).astype(np.float32)  # 7.5 MiB
    big = np.concatenate([image] * 4, axis=2)                                              # 30 MiB
    path = _nifti(tmp_path / "big.nii.gz", big)
    mib = big.nbytes / 2 ** 20
    vol, peak = peak_mib(lambda: read_volume(path))
    assert np.array_equal(vol.data, big) and vol.data.dtype == np.float32
    file_mib = os.path.getsize(path) / 2 ** 20
    assert peak < mib + file_mib + 10, (peak, mib, file_mib)     # one buffer, not two or three
    # Scaled int16 (the usual CT storage): float32 values as astype(float32) * slope + inter.
    stored = rng.integers(0, 3000, (40, 30, 20), dtype=np.int16)
    for gz in (True, False):
        path = _nifti(tmp_path / f"scaled{gz}.nii{'.gz' if gz else ''}", stored, gz=gz,
                      scl_slope=2.0, scl_inter=-1024.0)
        vol = read_volume(path)
        assert vol.data.dtype == np.float32
        assert np.array_equal(vol.data, stored.astype(np.float32) * np.float32(2) - np.float32(1024))
    path = _nifti(tmp_path / "plain.nii", stored, gz=False)
    vol = read_volume(path)
    assert np.array_equal(vol.data, stored) and not vol.data.flags.writeable


@pytest.mark.parametrize("make, words", [
    (lambda d: dict(data=d.astype(np.int16), scl_slope=1e38, scl_inter=0), "beyond float32"),
    (lambda d: dict(data=d.astype(np.float32) * 1e10, scl_slope=1e38, scl_inter=0),
     "beyond float32"),
    (lambda d: dict(data=d.astype(np.int16), scl_slope=np.inf), "scl_slope inf"),
    (lambda d: dict(data=d.astype(np.int16), scl_slope=2.0, scl_inter=np.inf), "scl_inter inf"),
    (lambda d: dict(data=d.astype(np.int16), scl_slope=2.0, scl_inter=np.nan), "scl_inter nan"),
    (lambda d: dict(data=d.astype(np.int16), affine=np.diag([0.8, 0.8, 0.0, 1.0])), "singular"),
    (lambda d: dict(data=d.astype(np.int16), affine=np.diag([1e39, 1.0, 1.0, 1.0])),
     "singular or not finite"),
])
def test_hostile_scaling_and_affine_are_refused_in_one_line_without_warnings(tmp_path, make,
                                                                            words):
    from tumorforge.manifests.readers import ScanError, read_volume
    kw = make(np.arange(24).reshape(4, 3, 2) + 1)
    data, affine = kw.pop("data"), kw.pop("affine", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # nibabel's own, while writing
        path = _nifti(tmp_path / "bad.nii.gz", data, affine=affine, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="warn"):
            with pytest.raises(ScanError) as err:
                read_volume(path)
    assert words in _one_line(err.value) and "bad.nii.gz" in str(err.value)


# -- 5. scan_id with control characters ---------------------------------------------------------

@pytest.mark.parametrize("scan_id", ["evil\x1b[31mred\x1b[0m", "two\nlines", "bell\x07",
                                     "del\x7f", "c1\x85next", "sep\u2028x", "rtl\u202eab"])
def test_scan_id_with_control_characters_is_refused_naming_the_line(tmp_path, scan_id):
    from tumorforge.manifests.schema import ManifestError, parse_manifest, read_images
    entry = {"scan_id": "ok-0", "image": "a.nii", "label": "b.nii", "label_map": {"liver": [1]},
             "role": "healthy", "source": "lits", "sha256": {"image": "0" * 64, "label": "0" * 64},
             "shape": [4, 3, 2], "spacing_mm": [1, 1, 1], "orientation": "RAS",
             "liver_volume_ml": 1.0, "tumor_volume_ml": 0.0, "schema_version": 1}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(entry) + "\n" + json.dumps({**entry, "scan_id": scan_id}) + "\n")
    parsed = parse_manifest(str(path))
    assert [e.scan_id for e in parsed.entries] == ["ok-0"]
    (problem,) = [p for _, _, p in parsed.problems]
    assert f"{path}:2: scan_id must not contain control characters" in _one_line(problem)
    assert not any(c in problem for c in scan_id if not c.isprintable())
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: scan_id must not contain control") as err:
        read_images(str(path))
    _one_line(err.value)
