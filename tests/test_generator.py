"""Tumor synthesis: draw-then-apply records, determinism, the paper's rules, crop-local output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tumorforge.generator.backend import get_backend
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.params import SampleParams
from tumorforge.generator.prepare import prepare_scan
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.cluster.audit import agreement
from tumorforge.generator.synthesize import synthesize

from generator_fixtures import liver_volume

NUMPY = get_backend("numpy")


@pytest.fixture(scope="module")
def scan():
    image, label, affine = liver_volume()
    return prepare_scan("toy", image, label, affine, organ_values=(1,))


def _params(scan, config, index, seed=0):
    return sample_params(np.random.default_rng(sample_seed(seed, index)), scan, config)


def test_prepare_reorients_resamples_and_finds_the_vessel(scan):
    assert scan.spacing_mm == (1.0, 1.0, 1.0)
    assert scan.affine[0, 0] > 0 and scan.affine[1, 1] > 0 and scan.affine[2, 2] > 0   # RAS
    assert 95 <= scan.parenchyma_mean_hu <= 105 and 8 <= scan.parenchyma_sd_hu <= 20
    assert scan.vessel_threshold_hu == pytest.approx(scan.organ_mean_hu + 15)
    # The tube (radius 4 mm at y=+10 mm, z=+5 mm) is found; LPS storage means +y is index-down.
    frac = scan.vessel.sum() / scan.organ.sum()
    assert 0.004 < frac < 0.05
    image, label, affine = liver_volume()
    flipped = prepare_scan("toy", image[::-1, :, ::-1].copy(), label[::-1, :, ::-1].copy(),
                           affine @ np.array([[-1, 0, 0, 149], [0, 1, 0, 0], [0, 0, -1, 59],
                                              [0, 0, 0, 1.0]]), organ_values=(1,))
    assert np.array_equal(flipped.image, scan.image) and np.array_equal(flipped.vessel, scan.vessel)


def test_params_are_deterministic_and_round_trip_json(scan):
    config = GeneratorConfig()
    a, b, c = _params(scan, config, 5), _params(scan, config, 5), _params(scan, config, 6)
    assert a == b and a != c
    text = json.dumps(a.to_json())
    assert SampleParams.from_json(json.loads(text)) == a
    # Built field by field (no asdict deep copy): the same JSON as the deep copy gives, less a
    # tumor's look when it has none (records of the paper's models are what they were).
    import dataclasses
    deep = dataclasses.asdict(a)
    deep["tumors"] = [{k: v for k, v in dataclasses.asdict(t).items()
                       if not (k == "look" and v is None)} for t in a.tumors]
    assert json.loads(text) == json.loads(json.dumps(deep))
    assert all("look" not in t for t in json.loads(text)["tumors"])


@pytest.mark.parametrize("size", ["tiny", "small", "medium", "large"])
def test_paper_draws_follow_table_1_and_table_6(scan, size):
    config = GeneratorConfig(profile="paper", size_mix={size: 1.0}, negative_fraction=0.0)
    preset = config.sizes[size]
    for i in range(6):
        p = _params(scan, config, i)
        assert p.kind == size and preset.count[0] <= len(p.tumors) <= preset.count[1]
        for t in p.tumors:
            assert all(0.75 * t.radius_mm <= a <= 1.25 * t.radius_mm for a in t.half_axes_mm)
            assert preset.sigma_e_mm[0] <= t.sigma_e_mm <= preset.sigma_e_mm[1]
            assert 0.6 <= t.sigma_c_mm <= 1.2 and 1.1 <= t.eta <= 1.5 and t.sigma_b_mm == 0.6
            assert 30 <= t.mu_t <= scan.parenchyma_mean_hu - 10
            assert t.gamma_max_mm == pytest.approx(1.3 * t.radius_mm) and t.intensity == 30
            assert t.mass_effect == t.capsule == (preset.radius_mm >= 20)
            assert scan.organ[tuple(np.asarray(t.center) - scan.origin_vox)]


def test_released_is_the_default_and_paper_train_leaves_out_the_turing_test_steps(scan):
    # Issue 28: the default of every command is the profile the evidence chose (released).
    assert GeneratorConfig().profile == "released"
    drawn = [_params(scan, GeneratorConfig(size_mix={"large": 1.0}), i) for i in range(4)]
    assert any(p.released is not None for p in drawn)
    # Figure 3: vessel segmentation, collision detection, mass effect and capsule are only used for
    # the Visual Turing Test. The paper's training recipe leaves them out.
    config = GeneratorConfig(profile="paper-train", size_mix={"large": 1.0}, negative_fraction=0.0)
    vessels_hit = 0
    for i in range(4):
        for t in _params(scan, config, i).tumors:
            assert not t.mass_effect and not t.capsule
            assert t.location_reason in ("", "volume")          # never "vessels": no vessel test
            vessels_hit += t.vessel_voxels > 0
    assert vessels_hit > 0          # large tumors overlap the toy's vessel tube: nothing avoided it


def _shape_voxels(scan, t):
    from tumorforge.generator.shape import drawn_offsets
    pos = drawn_offsets(t, scan.spacing_mm[0]) + (np.asarray(t.center) - scan.origin_vox)
    ok = np.all((pos >= 0) & (pos < scan.shape), axis=1)
    return pos, ok


def test_paper_tumors_avoid_vessels_inside_their_location_region(scan):
    from tumorforge.generator.location import region_counts_brute_force
    config = GeneratorConfig(profile="paper", size_mix={"small": 1.0}, negative_fraction=0.0)
    accepted = 0
    for i in range(4):
        for t in _params(scan, config, i).tumors:
            share, in_vessel = region_counts_brute_force(
                scan, np.asarray(t.center) - scan.origin_vox, np.asarray(t.half_axes_mm),
                vessel_margin_vox=t.sigma_e_mm)
            assert in_vessel == t.vessel_voxels                 # the record counts the region
            assert share == pytest.approx(t.inside_fraction, abs=1e-4)
            if not t.location_fallback:
                accepted += 1
                assert in_vessel == 0 and t.location_reason == ""
    assert accepted > 0


def test_location_test_in_constant_time_equals_counting_voxels(scan):
    # The summed-area tables give the very counts a voxel-by-voxel count of the same boxes gives,
    # for centers deep inside, at the edge of and outside the liver and the arrays.
    from tumorforge.generator.location import region_counts, region_counts_brute_force
    small = scan
    rng = np.random.default_rng(0)
    shape = np.asarray(small.shape)
    centers = np.concatenate([rng.integers(-20, shape + 20, (60, 3)),
                              np.array(np.unravel_index(small.organ_voxels[:20], small.shape)).T])
    half = rng.uniform(1.0, 30.0, (len(centers), 3))
    margin = rng.uniform(0.0, 5.0, len(centers))
    fast_share, fast_vessels = region_counts(small, centers, half, margin)
    for c, h, m, fs, fv in zip(centers, half, margin, fast_share, fast_vessels):
        share, vessels = region_counts_brute_force(small, c, h, m)
        assert fv == vessels and fs == pytest.approx(share, abs=1e-12)
    assert (fast_share > 0).any() and (fast_share == 0).any() and (fast_vessels > 0).any()


def test_location_region_covers_the_ellipsoid_in_disjoint_boxes():
    # 16 disjoint boxes holding every voxel of the ellipsoid, at most about 1.6 times its volume.
    from tumorforge.generator.location import region_boxes
    rng = np.random.default_rng(1)
    for n in range(30):
        a = rng.uniform(6.0, 40.0, 3) if n < 20 else rng.uniform(0.6, 6.0, 3)
        h = int(a.max()) + 2
        x = np.arange(-h, h + 1)
        grid = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)
        ellipsoid = ((grid / a) ** 2).sum(-1) <= 1
        covered = np.zeros(ellipsoid.shape, int)
        for b0, b1 in zip(*(v + h for v in region_boxes(a))):
            covered[b0[0]:b1[0], b0[1]:b1[1], b0[2]:b1[2]] += 1
        assert covered.max() == 1 and covered[ellipsoid].min() == 1
        if n < 20:
            assert covered.sum() / ellipsoid.sum() < 1.7


@pytest.mark.parametrize("profile", ["paper", "paper-train"])
def test_tumors_lie_inside_the_liver_not_on_its_rim(scan, profile):
    # The rim bias of 0.1.0: a cube that stuck out of the liver counted fewer vessels and won, so
    # tumors sat at the surface and lost half their volume to clipping. Now 90 % of the drawn shape
    # must lie in the liver, and centers are as deep as a uniformly drawn liver voxel or deeper.
    config = GeneratorConfig(profile=profile, size_mix={"mix": 1.0}, negative_fraction=0.0)
    depth = np.zeros(scan.shape, np.float32)
    depth.ravel()[scan.organ_voxels] = scan.organ_depth_mm
    centers, kept = [], []
    for i in range(3):
        for t in _params(scan, config, i).tumors:
            pos, ok = _shape_voxels(scan, t)      # the drawn (deformed) shape, not the region
            kept.append(scan.organ[tuple(pos[ok].T)].sum() / len(pos))
            centers.append(depth[tuple(np.asarray(t.center) - scan.origin_vox)])
    assert np.mean(np.asarray(kept) >= 0.9) >= 0.9
    assert np.median(centers) >= 0.8 * np.median(scan.organ_depth_mm)


def test_paper_texture_has_the_parenchyma_sd_and_the_drawn_mean(scan):
    # Section 3.1: graininess close to the parenchyma. Upscaling and blur alone left 0.36-0.49 of it.
    import dataclasses
    import scipy.ndimage as ndi
    config = GeneratorConfig(profile="paper-train", size_mix={"medium": 1.0},
                             negative_fraction=0.0)
    p = _params(scan, config, 0)
    for eta in (1.1, 1.5):
        t = dataclasses.replace(p.tumors[0], eta=eta)
        one = dataclasses.replace(p, tumors=(t,), crop_origin=tuple(np.asarray(t.center) - 48))
        crop = synthesize(scan, one, NUMPY)
        core = ndi.binary_erosion(crop.label == 2, iterations=3)
        assert core.sum() > 500
        ratio = crop.image[core].std() / scan.parenchyma_sd_hu
        assert 0.8 <= ratio <= 1.2, (eta, ratio)
        assert crop.image[core].mean() == pytest.approx(t.mu_t, abs=4.0)


def test_lengths_are_in_mm_whatever_the_grid(scan):
    # At 2 mm voxels the same record gives a tumor of the same physical size (8x fewer voxels).
    image, label, affine = liver_volume()
    coarse = prepare_scan("toy", image, label, affine, organ_values=(1,),
                          config=GeneratorConfig(target_spacing_mm=(2.0, 2.0, 2.0)))
    config = GeneratorConfig(size_mix={"medium": 1.0}, negative_fraction=0.0, crop_size=(48,) * 3)
    fine_cfg = GeneratorConfig(size_mix={"medium": 1.0}, negative_fraction=0.0, crop_size=(96,) * 3)
    p = _params(scan, fine_cfg, 0)
    t = p.tumors[0]
    ml = []
    for s, sc, cfg in ((1.0, scan, fine_cfg), (2.0, coarse, config)):
        c = np.asarray(t.center) - scan.origin_vox         # same physical point on either grid
        center = tuple(int(v) for v in np.rint(c / s) + np.asarray(sc.origin_vox))
        one = SampleParams(**{**p.__dict__, "tumors": (type(t)(**{**t.__dict__, "center": center}),),
                              "crop_origin": tuple(np.asarray(center) - cfg.crop_size[0] // 2),
                              "crop_size": cfg.crop_size})
        crop = synthesize(sc, one, NUMPY)
        ml.append((crop.label == 2).sum() * s ** 3 / 1000)
    assert ml[1] == pytest.approx(ml[0], rel=0.15)
    with pytest.raises(ValueError, match="isotropic"):
        GeneratorConfig(target_spacing_mm=(1.0, 1.0, 2.0))


def test_synthesis_is_bit_exact_and_labels_make_sense(scan):
    config = GeneratorConfig(size_mix={"medium": 1.0}, negative_fraction=0.0)
    p = _params(scan, config, 2)
    a, b = synthesize(scan, p, NUMPY), synthesize(scan, p, NUMPY)
    assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    assert a.image.shape == a.label.shape == (96, 96, 96)
    assert a.image.dtype == np.int16 and a.label.dtype == np.uint8
    assert set(np.unique(a.label)) == {0, 1, 2}
    tumor = a.label == 2
    assert tumor[40:56, 24:72, 24:72].any()             # positive crops are centred on a tumor
    assert a.image[tumor].mean() < a.image[a.label == 1].mean() - 10   # hypodense, as mu_t says


def test_negative_crops_are_the_scan_itself(scan):
    config = GeneratorConfig(negative_fraction=1.0)
    p = _params(scan, config, 0)
    crop = synthesize(scan, p, NUMPY)
    assert p.kind == "negative" and p.tumors == () and not (crop.label == 2).any()
    lo = np.asarray(p.crop_origin) - scan.origin_vox
    expected = np.full((96, 96, 96), -1024, np.int16)
    src = tuple(slice(max(a, 0), min(a + 96, n)) for a, n in zip(lo, scan.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    expected[dst] = scan.image[src]
    assert np.array_equal(crop.image, expected.transpose(2, 1, 0))


def test_tumors_outside_the_crop_do_not_matter(scan):
    config = GeneratorConfig(size_mix={"mix": 1.0}, negative_fraction=0.0)
    p = _params(scan, config, 1)
    far = {"center": (10_000, 10_000, 10_000)}
    moved = SampleParams(**{**p.__dict__, "tumors": p.tumors + (type(p.tumors[0])(
        **{**p.tumors[0].__dict__, **far}),)})
    assert synthesize(scan, moved, NUMPY).image.tobytes() == synthesize(scan, p, NUMPY).image.tobytes()


def test_mass_effect_and_capsule_change_only_what_they_should(scan):
    config = GeneratorConfig(profile="paper", size_mix={"large": 1.0}, negative_fraction=0.0)
    p = _params(scan, config, 3)
    plain = SampleParams(**{**p.__dict__, "tumors": tuple(type(t)(**{**t.__dict__, "mass_effect":
                                                                   False, "capsule": False})
                                                         for t in p.tumors)})
    full, base = synthesize(scan, p, NUMPY), synthesize(scan, plain, NUMPY)
    assert (full.label == 2).sum() > (base.label == 2).sum()      # the warp expands the tumor
    only_capsule = SampleParams(**{**p.__dict__, "tumors": tuple(type(t)(**{**t.__dict__,
                                                                 "mass_effect": False})
                                                                 for t in p.tumors)})
    cap = synthesize(scan, only_capsule, NUMPY)
    diff = cap.image.astype(int) - base.image.astype(int)
    assert diff.min() >= 0 and diff.max() > 30                  # a brighter rim, nothing darker
    assert np.array_equal(cap.label, base.label)


def test_released_profile_is_the_authors_recipe(scan):
    config = GeneratorConfig(profile="released", size_mix={"small": 1.0}, negative_fraction=0.0,
                             crop_policy="tumor-centred")
    p = _params(scan, config, 0)
    ks = np.flatnonzero(scan.organ.any(axis=(0, 1))) + scan.origin_vox[2]
    lo, hi = ks[0] + 0.3 * (ks[-1] - ks[0]) - 1, ks[0] + 0.7 * (ks[-1] - ks[0]) + 1
    for t in p.tumors:
        assert lo <= t.center[2] <= hi
        assert all(float(a).is_integer() for a in t.half_axes_mm)
        assert t.sigma_e_mm in (1.0, 2.0)                   # randint(1, 2) for small
    assert 65 <= p.released.delta_hu <= 145 and 1 <= p.released.mask_blur_mm <= 2
    crop = synthesize(scan, p, NUMPY)
    base = synthesize(scan, SampleParams(**{**p.__dict__, "tumors": ()}), NUMPY)
    assert crop.image[crop.label == 2].mean() < crop.image[crop.label == 1].mean() - 10
    # One union, one blur, one delta: overlapping tumors darken once, never more than delta; the
    # darkening stays inside the liver; the label is the binary shape (no blurred-mask threshold).
    drop = base.image.astype(int) - crop.image.astype(int)
    assert drop.max() <= p.released.delta_hu + 1 and drop.min() >= 0
    assert not drop[base.label == 0].any()
    from tumorforge.generator.shape import drawn_offsets
    union = np.zeros(scan.shape, bool)
    for t in p.tumors:
        pos = drawn_offsets(t, 1.0) + (np.asarray(t.center) - scan.origin_vox)
        ok = np.all((pos >= 0) & (pos < scan.shape), axis=1)
        union[tuple(pos[ok].T)] = True
    union = np.pad(union & scan.organ, 96)
    o = np.asarray(p.crop_origin) - scan.origin_vox + 96
    window = union[o[0]:o[0] + 96, o[1]:o[1] + 96, o[2]:o[2] + 96].transpose(2, 1, 0)
    assert window.any() and np.array_equal(crop.label == 2, window)


def test_released_crops_are_positive_negative_one_to_one(scan):
    config = GeneratorConfig(profile="released", size_mix={"tiny": 1.0}, crop_size=(32,) * 3)
    assert config.effective_crop_policy == "pos-neg"
    anchors = [_params(scan, config, i).crop_anchor for i in range(200)]
    assert 0.4 <= anchors.count("background") / len(anchors) <= 0.6
    assert set(anchors) == {"organ", "background"}
    for i in range(20):
        p = _params(scan, config, i)
        lo = np.asarray(p.crop_origin) - scan.origin_vox
        window = tuple(slice(int(a), int(a) + 32) for a in lo)
        if p.crop_anchor == "background":           # centred there, then shifted into the scan
            assert (~scan.organ[window] & (scan.image[window] > -21)).any()
        assert np.all(lo >= 0) and np.all(lo + 32 <= scan.shape)       # inside the scan


@pytest.mark.gpu
def test_gpu_matches_cpu_within_tolerance(scan):
    cupy = pytest.importorskip("cupy")
    try:
        gpu = get_backend("cupy")
    except Exception as exc:
        pytest.skip(f"no usable GPU: {exc}")
    config = GeneratorConfig(size_mix={"mix": 1.0}, negative_fraction=0.0)
    for i in range(4):
        p = _params(scan, config, i)
        a, b = synthesize(scan, p, NUMPY), synthesize(scan, p, gpu)
        check = agreement(a.image, a.label, b.image, b.label)
        assert check["within_tolerance"], check
        assert synthesize(scan, p, gpu).image.tobytes() == b.image.tobytes()


def test_real_profile_crops_real_tumors_untouched():
    image, label, affine = liver_volume()
    ax = np.indices(label.shape)
    lesion = ((ax[0] - 60) ** 2 + (ax[1] - 70) ** 2 + (ax[2] - 30) ** 2 * 4 < 64) & (label == 1)
    label[lesion] = 2
    image[lesion] -= 50
    scan = prepare_scan("real", image, label, affine, organ_values=(1, 2), tumor_values=(2,))
    config = GeneratorConfig(profile="real", negative_fraction=0.0)
    p = _params(scan, config, 0)
    crop = synthesize(scan, p, NUMPY)
    assert p.kind == "real" and p.tumors == ()
    assert 1000 < (crop.label == 2).sum() < 3000            # the scan's own ~2 mL lesion
    assert crop.image[crop.label == 2].mean() < crop.image[crop.label == 1].mean() - 30


def test_philox_matches_the_published_known_answer():
    # Random123 known-answer vector for philox4x32-10: counter 0, key 0.
    from tumorforge.generator.noise import philox4x32
    words = [int(w[0]) for w in philox4x32(np, 1, 0, 0)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_satellites_lie_in_their_shell_or_are_dropped_and_noted(scan):
    config = GeneratorConfig(profile="paper", size_mix={}, scenario_mix={"satellite": 1.0},
                             negative_fraction=0.0)
    placed = dropped = 0
    for i in range(4):
        p = _params(scan, config, i)
        large, satellites = p.tumors[0], p.tumors[1:]
        assert p.kind == "satellite" and large.kind == "large" and large.mass_effect
        assert all(t.kind == "satellite" for t in satellites)
        for t in satellites:
            d = np.linalg.norm(np.subtract(t.center, large.center)) / large.radius_mm
            assert 1.2 - 0.05 <= d <= 2.5 + 0.05
            assert t.inside_fraction >= 0.9
        n = len([x for x in p.notes if x.startswith("satellite dropped")])
        placed, dropped = placed + len(satellites), dropped + n
        assert 3 <= len(satellites) + n <= 8
    assert placed > dropped


def test_preview_command_writes_png_nifti_and_params(tmp_path, tiny_lits):
    import nibabel as nib
    from tumorforge.cluster.front_door import main
    from conftest import write_nifti
    image, label, affine = liver_volume(shape=(120, 110, 50))
    root = tmp_path / "scans"
    write_nifti(root / "volume-0.nii", image, affine)
    write_nifti(root / "segmentation-0.nii", label, affine)
    main(["manifest", "build", "--layout", "lits", str(root), "-o", str(root / "m.jsonl")])
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("paper:\n  capsule_hu: 60\n")
    out = tmp_path / "preview"
    assert main(["preview", "--manifest", str(root / "m.jsonl"), "--index", "3", "--out", str(out),
                 "--size-mix", "medium", "--negative-fraction", "0", "--backend", "numpy",
                 "--profile", "paper-train", "--generator-config", str(cfg)]) == 0
    stem = out / "lits-0-seed0-3"
    assert (out / "lits-0-seed0-3.png").stat().st_size > 10_000
    from PIL import Image
    with Image.open(out / "lits-0-seed0-3.png") as png:       # 5 panels a row: without the
        assert png.width == 5 * 3 * 110                        # tumor, with it, three planes
    params = json.loads((out / "lits-0-seed0-3.params.json").read_text())
    assert params["config"]["paper"]["capsule_hu"] == 60 and params["params"]["kind"] == "medium"
    img = nib.load(f"{stem}.image.nii.gz")
    lab = np.asarray(nib.load(f"{stem}.label.nii.gz").dataobj)
    assert img.shape == (96, 96, 96) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert 2 in lab
    # The exported crop sits where it was cut from: its world corner maps back into the scan.
    corner = img.affine @ [0, 0, 0, 1]
    assert np.allclose(np.linalg.inv(affine) @ corner, np.rint(np.linalg.inv(affine) @ corner),
                       atol=1e-3)


def test_preview_of_the_default_profile_is_centred_on_a_tumor(tmp_path):
    """The default profile (released) centres half its crops on background; a preview shows a
    tumor, so its crops are tumor-centred unless --crop-policy says otherwise."""
    import nibabel as nib
    from tumorforge.cluster.front_door import main
    from conftest import write_nifti
    image, label, affine = liver_volume(shape=(120, 110, 50))
    root = tmp_path / "scans"
    write_nifti(root / "volume-0.nii", image, affine)
    write_nifti(root / "segmentation-0.nii", label, affine)
    main(["manifest", "build", "--layout", "lits", str(root), "-o", str(root / "m.jsonl")])
    for index in range(3):
        out = tmp_path / "preview"
        assert main(["preview", "--manifest", str(root / "m.jsonl"), "--index", str(index),
                     "--out", str(out), "--size-mix", "medium", "--backend", "numpy"]) == 0
        params = json.loads((out / f"lits-0-seed0-{index}.params.json").read_text())
        assert params["config"]["profile"] == "released"
        assert params["config"]["crop_policy"] == "tumor-centred"
        lab = np.asarray(nib.load(out / f"lits-0-seed0-{index}.label.nii.gz").dataobj)
        assert (lab == 2).sum() > 100                               # a tumor in the crop


def test_preview_panels_are_radiological_and_lettered():
    """Previews: the patient's right on the image's left, anterior and superior up, and the
    letters on each panel's edges say so."""
    from tumorforge.generator.preview import _views
    image = np.zeros((8, 8, 8))                 # (Z, Y, X) = (S, A, R)
    image[4, 4, 7] = 1                          # far right
    image[4, 7, 4] = 2                          # far anterior
    image[7, 4, 4] = 3                          # far superior
    views = {plane: (img, letters) for plane, img, _, letters in _views(image, image, (4, 4, 4))}
    axial, letters = views["axial"]
    assert letters == "RLAP" and axial[3, 0] == 1 and axial[0, 3] == 2
    coronal, letters = views["coronal"]
    assert letters == "RLSI" and coronal[3, 0] == 1 and coronal[0, 3] == 3
    sagittal, letters = views["sagittal"]
    assert letters == "APSI" and sagittal[3, 0] == 2 and sagittal[0, 3] == 3   # anterior left


def test_real_profile_crops_follow_the_draw_and_the_crop_policy():
    """Issue 13 (fair arms): a real-profile sample is negative exactly when draws_negative says
    so (the plan routes it by that), positives centre on the scan's own tumor under tumor-centred,
    and pos-neg places real crops on organ and background voxels 1:1 as for synthetic tumors."""
    from tumorforge.generator.sample import draws_negative
    image, label, affine = liver_volume()
    label[70:80, 60:70, 25:30] = 2                       # a real "tumor" inside the liver
    real = prepare_scan("real", image, label, affine, organ_values=(1, 2), tumor_values=(2,))
    config = GeneratorConfig(profile="real", crop_size=(32, 32, 32), negative_fraction=0.3)
    kinds = []
    for i in range(40):
        p = _params(real, config, i, seed=5)
        assert (p.kind == "negative") == draws_negative(5, i, config)
        kinds.append(p.crop_anchor)
        if p.kind == "real":
            center = np.asarray(p.crop_origin) + 16 - np.asarray(real.origin_vox)
            nearest = np.abs(np.argwhere(real.tumor) - center).max(axis=1).min()
            assert nearest <= round(config.crop_jitter_mm / real.spacing_mm[0])
    assert set(kinds) == {"tumor", "organ"}
    posneg = GeneratorConfig(profile="real", crop_size=(32, 32, 32), negative_fraction=0.3,
                             crop_policy="pos-neg")
    anchors = [_params(real, posneg, i).crop_anchor for i in range(60)]
    assert set(anchors) == {"organ", "background"} and 15 < anchors.count("organ") < 45


def test_texture_operator_is_cubic_interpolation_then_blur_at_unit_variance():
    """The paper texture per axis: cubic interpolation of the noise grid (ndimage.zoom order 3,
    mirror, corners aligned), then the sigma_b blur (gaussian_filter1d, nearest), each row scaled
    to unit length so every voxel has unit variance; weights under 1e-9 of a row's largest are 0."""
    import scipy.ndimage as ndi
    from tumorforge.generator.texture import axis_operator
    for n, c, sigma in [(2, 2, 0.6), (17, 5, 0.6), (40, 31, 0.5), (96, 70, 0.6), (33, 6, 1.0)]:
        op, first, last = axis_operator(n, c, sigma)
        ref = np.stack([ndi.gaussian_filter1d(ndi.zoom(col, n / c, order=3, mode="mirror",
                                                       grid_mode=False), sigma, mode="nearest")
                        for col in np.eye(c)], axis=1)                 # (n, c): column j = e_j
        ref /= np.sqrt((ref ** 2).sum(1, keepdims=True))
        assert op.shape == (n, c) and np.abs(op - ref).max() < 1e-7, (n, c)
        assert np.allclose((op ** 2).sum(1), 1.0)
        for row, a, b in zip(op, first, last):           # the band holds every non-zero weight
            assert not row[:a].any() and not row[b:].any() and row[a] != 0 and row[b - 1] != 0


def test_texture_and_shape_on_part_of_a_box_equal_the_whole_box():
    """A tumor is painted on the part of its box inside the crop: the binary shape and the noise
    are exactly the whole box's, the texture to float64 rounding (matrix products of other sizes)."""
    from tumorforge.generator import noise
    from tumorforge.generator.batch import tumor_rows
    from tumorforge.generator.params import PaperTumor
    from tumorforge.generator.shape import tumor_halves, tumor_shape
    from tumorforge.generator.texture import paper_texture
    t = PaperTumor(kind="medium", center=(0, 0, 0), radius_mm=16.0, half_axes_mm=(14.0, 18.5, 16.2),
                   sigma_e_mm=4.0, deform_seed=11, sigma_c_mm=0.9, mu_t=60.0, sigma_p=14.0,
                   eta=1.3, sigma_b_mm=0.6, texture_seed=5, location_tries=1,
                   location_fallback=False, location_reason="", inside_fraction=1.0,
                   vessel_voxels=0, mass_effect=False, gamma_max_mm=20.8, intensity=30.0,
                   capsule=False, capsule_band=(0.4, 0.7), sigma_d_mm=0.8, capsule_hu=120.0)
    row = tumor_rows([t])[0]
    box = tuple(int(v) for v in 2 * tumor_halves(row, 1.0) + 1)
    whole_shape = tumor_shape(NUMPY, row, 1.0)
    whole_tex = paper_texture(NUMPY, row, box, 1.0)
    for lo, hi in [((3, 0, 5), (20, box[1], 31)), ((0, 7, 0), box), ((10, 11, 12), (11, 30, 13))]:
        part = tuple(slice(a, b) for a, b in zip(lo, hi))
        assert np.array_equal(tumor_shape(NUMPY, row, 1.0, lo, hi), whole_shape[part])
        assert np.abs(paper_texture(NUMPY, row, box, 1.0, lo, hi) - whole_tex[part]).max() < 1e-3
    coarse = (23, 29, 26)
    z = noise.normal(np, coarse, 9)
    assert np.array_equal(noise.normal(np, coarse, 9, lo=(2, 3, 5), hi=(20, 4, 26)), z[2:20, 3:4, 5:])
    # Analytic standardization: over the box, mean mu_t and sd sigma_p up to sampling.
    assert abs(whole_tex.mean() - 60.0) < 3.0 and 0.8 < whole_tex.std() / 14.0 < 1.2


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["paper-train", "paper", "released"])
def test_a_batch_gives_the_bytes_of_its_crops_one_by_one(scan, profile):
    """Issue 16: one code path; a packed batch over two scans synthesizes to the bytes each crop's
    record gives alone, whatever the mix of kinds (negatives, post-processing, several tumors)."""
    from tumorforge.generator.batch import pack
    from tumorforge.generator.synthesize import synthesize_batch
    config = GeneratorConfig(profile=profile, crop_size=(48, 48, 48),
                             size_mix={"small": 1, "large": 1, "mix": 1}, negative_fraction=0.2)
    image, label, affine = liver_volume(seed=1)
    other = prepare_scan("toy-2", image, label, affine, organ_values=(1,), config=config)
    scans = [scan, other]
    params = [_params(scans[i % 2], config, i) for i in range(8)]
    assert {p.kind for p in params} >= {"negative"} and any(p.tumors for p in params)
    batch = synthesize_batch(scans, pack(params, ["toy", "toy-2"]), NUMPY)
    assert batch.images.shape == (8, 48, 48, 48) and batch.labels.dtype == np.uint8
    for b, p in enumerate(params):
        one = synthesize(scans[b % 2], p, NUMPY)
        assert np.array_equal(one.image, batch.images[b]) and np.array_equal(one.label, batch.labels[b])
    with pytest.raises(ValueError, match="params are for scan toy-2"):
        pack(params[1:2], ["toy"])


def test_packed_rows_hold_every_number_of_the_records(scan):
    from tumorforge.generator.batch import _LOOK_FIELDS, TUMOR_DTYPE, pack
    config = GeneratorConfig(profile="paper", size_mix={"mix": 1.0}, negative_fraction=0.0)
    p = _params(scan, config, 3)
    packed = pack([p], ["toy"])
    assert len(packed.tumors) == len(p.tumors) and packed.crops.tumors[0] == len(p.tumors)
    for t, row in zip(p.tumors, packed.tumors):
        for name in TUMOR_DTYPE.names:
            if name in ("crop", "paper", *_LOOK_FIELDS):
                continue
            if name == "look":                          # no look: column 0 (the paper's texture)
                assert t.look is None and row.look == 0
                continue
            value = np.asarray(row[name], float)        # a record's one eta fills three columns
            assert np.array_equal(np.broadcast_to(np.asarray(getattr(t, name), float), value.shape),
                                  value), name
        assert row.paper and int(row.deform_seed) == t.deform_seed
    assert tuple(packed.crops.origin[0]) == p.crop_origin




def test_released_ellipsoid_holds_the_integer_points_strictly_inside():
    """The authors' ellipsoid is a mask of the integer grid with q < 1, read at each deformed voxel's
    nearest grid point: undeformed, half-axes 3, 3, 3 hold the 93 integer points with
    x^2 + y^2 + z^2 < 9 (not the 123 of q <= 1: (3, 0, 0) and (2, 2, 1) and their kind lie on the
    surface)."""
    from tumorforge.generator.batch import tumor_rows
    from tumorforge.generator.params import ReleasedTumor
    from tumorforge.generator.shape import tumor_shape
    t = ReleasedTumor(kind="tiny", center=(0, 0, 0), radius_mm=4.0, half_axes_mm=(3.0, 3.0, 3.0),
                      sigma_e_mm=0.0, deform_seed=1)
    mask = tumor_shape(get_backend("numpy"), tumor_rows([t])[0], 1.0)
    x = np.arange(-3, 4)
    inside = (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) < 9
    assert int(mask.sum()) == int(inside.sum()) == 93
    c = np.array(mask.shape) // 2
    assert mask[tuple(c)] == 1 and mask[c[0] + 3, c[1], c[2]] == 0


def test_released_texture_has_the_drawn_mean_over_its_voxels_above_012():
    """Half the field at 0.05 (below the floor), half at 0.2: scaled to mean 0.5 over the voxels
    above 0.12, the upper half becomes 0.5 and the lower 0.125 (over the whole field, as up to
    0.5.0, they would be 0.8 and 0.2)."""
    from tumorforge.generator.texture import scale_to_mean
    tex = np.concatenate([np.full(50, 0.05, np.float32), np.full(50, 0.2, np.float32)])
    out = scale_to_mean(np, tex, 0.5)
    assert out[50:] == pytest.approx(0.5) and out[:50] == pytest.approx(0.125)
    assert scale_to_mean(np, np.full(10, 0.1, np.float32), 0.5) == pytest.approx(0.5)


def test_released_textures_are_seeded_windows_of_a_bank_of_ten_volumes():
    """0.7.0: as the authors' code does, a sample's texture is a window of one of ten bank volumes
    (one per noise blur x salt blur), at an offset its texture seed draws, read through the
    volume's mirror extension; scaled to the drawn mean over the voxels above 0.12."""
    import types
    from tumorforge.generator import texture as T
    be = get_backend("numpy")
    assert T.bank_edge((38, 40, 38)) == 64 and T.bank_edge((104, 110, 104)) == 128
    assert T.bank_edge((300, 300, 200)) == 128                    # larger fields: mirrored
    # mirror extension: d c b | a b c d | c b a, the filters' boundary rule
    assert T.mirror_rows(4, (14,), (1,))[0].tolist() == [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]
    row = types.SimpleNamespace(texture_sigma_mm=6.0, texture_blur_mm=4.0, texture_prob=(0.05, 0.26),
                                texture_mean=0.52, texture_seed=7)
    a = T.released_texture(be, row, (40, 40, 40), 1.0)
    assert a.dtype == np.float32 and a.shape == (40, 40, 40) and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, T.released_texture(be, row, (40, 40, 40), 1.0))   # same seed
    other = T.released_texture(be, types.SimpleNamespace(**{**vars(row), "texture_seed": 8}),
                               (40, 40, 40), 1.0)
    assert not np.array_equal(a, other)                            # another window
    volume = T.bank_volume(be, 64, 1.0, 6.0, 4.0, (0.05, 0.26))
    rows = T.mirror_rows(64, (40, 40, 40), T.bank_offsets(7, 64))
    window = volume[np.ix_(*rows)]
    assert np.array_equal(a, np.clip(T.scale_to_mean(np, window, 0.52), 0, 1))
    # one volume per recipe pair, built once and kept
    assert T.bank_volume(be, 64, 1.0, 6.0, 4.0, (0.05, 0.26)) is volume
    assert not np.array_equal(volume, T.bank_volume(be, 64, 1.0, 9.0, 4.0, (0.05, 0.26)))
    # salt density follows the recipe: a blurred Bernoulli field with mean within the prob range
    assert 0.05 <= float(volume.mean()) <= 0.26


def test_auto_backend_says_in_a_few_words_why_it_runs_on_the_cpu():
    """``backend: numpy (auto: no usable GPU, CuPy is not installed)``: one short line, not the
    nested error (which ``--backend cupy`` still gives in full)."""
    import importlib.util
    from tumorforge.generator.backend import BackendError, get_backend, no_gpu_reason
    wrapped = BackendError("the cupy backend needs a working CUDA GPU and CuPy (...)")
    wrapped.__cause__ = RuntimeError("cudaErrorInsufficientDriver: driver too old\nmore")
    assert no_gpu_reason(wrapped) == "RuntimeError: cudaErrorInsufficientDriver: driver too old"
    assert no_gpu_reason(BackendError("CuPy found no CUDA device")) == "CuPy found no CUDA device"
    if importlib.util.find_spec("cupy") is None:            # this machine: no CuPy at all
        assert get_backend("auto").why == "auto: no usable GPU, CuPy is not installed"
        with pytest.raises(BackendError, match="needs a working CUDA GPU"):
            get_backend("cupy")


def test_preview_rows_say_size_in_ml_and_mm_and_mark_their_tumor(tmp_path):
    """A montage read back: the row's tumor is drawn red and the crop's other tumor orange (two
    tumors, two rows); captions give mL and the equivalent radius, and say when the crop's edge
    cuts the tumor."""
    from PIL import Image
    from tumorforge.generator.preview import save_montage, tumor_caption
    assert tumor_caption(1, 4.18879, False) == "tumor 1: 4.19 mL, r 10.0 mm"
    assert tumor_caption(2, 0.5, True).endswith("(cut by the crop's edge)")
    image = np.full((40, 40, 40), 100.0)
    label = np.ones((40, 40, 40), np.uint8)
    z, y, x = np.ogrid[:40, :40, :40]
    big = (z - 20) ** 2 + (y - 20) ** 2 + (x - 12) ** 2 < 36
    small = (z - 20) ** 2 + (y - 20) ** 2 + (x - 30) ** 2 < 9
    label[big | small] = 2
    image[big | small] = 40.0
    png = save_montage(image, label, str(tmp_path / "m.png"), spacing_mm=(2.0, 2.0, 2.0))
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    orange = (rgb[..., 0] > 200) & (rgb[..., 1] > 120) & (rgb[..., 1] < 200) & (rgb[..., 2] < 60)
    h = rgb.shape[0]
    top, bottom = slice(0, h // 2), slice(h // 2, h)
    assert red[top].sum() > 50 and red[bottom].sum() > 20        # each row marks its tumor
    assert orange[top].sum() > 10 and orange[bottom].sum() > 10  # and shows the other one
