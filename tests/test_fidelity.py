"""The generator fidelity report (evaluation/fidelity/, ``tumorforge stats``): known answers on
hand-made volumes with a planted lesion, paired synthesis of mass effect and capsule on a box
liver, and the command end to end on a small generated dataset and a real-lesion manifest."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import write_nifti
from tumorforge.evaluation import fidelity as fd
from tumorforge.evaluation.fidelity.inputs import chosen, drawn_inside, record_tumors
from tumorforge.evaluation.fidelity.lesions import Lesion, organ_depth, real_group
from tumorforge.evaluation.fidelity.post_effects import capsule_rim, post_effects
from tumorforge.evaluation.fidelity.prepared import Prepared, ScanCache
from tumorforge.manifests.conventions import ORGAN, TUMOR
from conftest import user_error

SPACING = (1.0, 1.0, 2.0)          # anisotropic on purpose: every length must be physical
CENTER = (30, 40, 20)              # voxel; (30, 40, 40) mm
RADIUS_MM = 10.0


def planted(seed: int = 0):
    """A box liver (100 HU, sd 5) with a sphere of radius 10 mm (40 HU, sd 10) at CENTER.
    The liver spans voxels 5..74 (i, j) and 5..34 (k): the center lies 26 mm below the i = 4 face
    (the nearest: 36 mm along j, 15 x 2 = 30 mm along k). Returns (synthetic, tumor-free, label)."""
    rng = np.random.default_rng(seed)
    shape = (80, 80, 40)
    liver = np.zeros(shape, bool)
    liver[5:75, 5:75, 5:35] = True
    mm = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, CENTER, SPACING)],
                     indexing="ij")
    sphere = sum(g ** 2 for g in mm) <= RADIUS_MM ** 2
    base = np.where(liver, 100.0 + rng.normal(0, 5, shape), -100.0)
    image = np.where(sphere, 40.0 + rng.normal(0, 10, shape), base)
    label = np.where(sphere, TUMOR, np.where(liver, ORGAN, 0)).astype(np.uint8)
    return image, base, label


def test_planted_sphere_measures_come_out_right():
    image, base, label = planted()
    (les,) = fd.measure_scan(image, label, SPACING, base=base)
    assert les["radius_mm"] == pytest.approx(RADIUS_MM, abs=1.0)        # within a voxel
    assert les["contrast_hu"] == pytest.approx(40 - 100, abs=2.0)
    assert les["hu_drop_hu"] == pytest.approx(100 - 40, abs=2.0)
    assert les["depth_mm"] == pytest.approx(26.0, abs=1.0)
    assert tuple(les["center"]) == pytest.approx(CENTER, abs=1)
    assert les["texture_ratio"] == pytest.approx(10 / 5, abs=0.25)       # sd 10 in sd-5 liver
    # The reference is where a random liver voxel lies: median depth of the box's voxels.
    depth = organ_depth(label >= ORGAN, SPACING)
    assert les["reference_depth_mm"] == pytest.approx(np.median(depth[label >= ORGAN]))
    assert les["reference_depth_mm"] < les["depth_mm"]


def test_ring_is_liver_only_and_real_lesions_have_no_hu_drop():
    """Background around a lesion at the liver edge does not count as the ring's liver; without
    a tumor-free image there is no HU drop."""
    image, _, label = planted()
    outside = np.zeros(label.shape, bool)
    outside[:19] = True                       # the liver now ends 1 voxel from the sphere (i 20..40)
    label[outside & (label == ORGAN)] = 0
    image[outside & (label == 0)] = -1000.0   # far darker than the liver
    (les,) = fd.measure_scan(image, label, SPACING)
    assert les["contrast_hu"] == pytest.approx(-60, abs=2.0)
    assert les["hu_drop_hu"] is None


def box_scan(size_mm: int = 60, margin: int = 20, seed: int = 0):
    """A prepared scan of a box liver (100 HU, sd 5) at 1 mm; its faces sit at voxels ``margin``
    and ``margin + size_mm`` of the input volume."""
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.prepare import prepare_scan
    rng = np.random.default_rng(seed)
    n = size_mm + 2 * margin
    label = np.zeros((n, n, n), np.uint8)
    label[margin:margin + size_mm, margin:margin + size_mm, margin:margin + size_mm] = 1
    image = np.where(label, 100.0, -100.0) + rng.normal(0, 5, label.shape)
    config = GeneratorConfig(profile="paper", crop_size=(32, 32, 32))
    scan = prepare_scan("box", image.astype(np.int16), label, np.eye(4), organ_values=(1,),
                        config=config)
    return Prepared.of(scan), margin


def paper_tumor(center, **kw):
    from tumorforge.generator.params import PaperTumor
    fields = dict(kind="large", center=tuple(int(c) for c in center), radius_mm=20.0,
                  half_axes_mm=(20.0, 20.0, 20.0), sigma_e_mm=0.0, deform_seed=1, sigma_c_mm=0.8,
                  mu_t=40.0, sigma_p=5.0, eta=1.2, sigma_b_mm=0.6, texture_seed=2,
                  location_tries=1, location_fallback=False, location_reason="",
                  inside_fraction=1.0, vessel_voxels=0, mass_effect=True, gamma_max_mm=26.0,
                  intensity=30.0, capsule=True, capsule_band=(0.4, 0.7), sigma_d_mm=0.8,
                  capsule_hu=120.0)
    fields.update(kw)
    return PaperTumor(**fields)


def one_tumor(prepared, tumor):
    from tumorforge.generator.params import SampleParams
    scan = prepared.scan
    return SampleParams(scan_id=scan.scan_id, profile="paper", kind=tumor.kind,
                        crop_origin=tuple(int(c) - 16 for c in tumor.center), crop_size=(32,) * 3,
                        tumors=(tumor,), parenchyma_mean_hu=scan.parenchyma_mean_hu,
                        parenchyma_sd_hu=scan.parenchyma_sd_hu)


@pytest.fixture(scope="module")
def box():
    return box_scan()


def _full(prepared, vox):
    """A voxel of the input volume (identity affine, RAS) in full resampled-scan coordinates."""
    return np.asarray(vox)           # 1 mm input and 1 mm target: the grids coincide


def test_lesion_cut_by_the_liver_edge_has_inside_share_below_one(box):
    """The inside share is measured from the drawn shape on the prepared scan, for released
    records (which carry none) and paper records (whose own counts their location region)."""
    from tumorforge.generator.params import ReleasedTumor
    prepared, margin = box
    edge = ReleasedTumor(kind="small", center=(margin, 50, 50), radius_mm=8.0,
                         half_axes_mm=(8.0, 8.0, 8.0), sigma_e_mm=0.0, deform_seed=3)
    deep = dataclasses.replace(edge, center=(50, 50, 50))
    inside, _ = drawn_inside(prepared, edge)
    assert 0.35 < inside < 0.65                                # half the sphere is outside
    assert drawn_inside(prepared, deep) == (1.0, 0)
    # A record's own counts (its location region) are not what the report measures.
    recorded = paper_tumor((50, 50, 50), inside_fraction=0.5, vessel_voxels=7)
    assert drawn_inside(prepared, recorded) == (1.0, 0)


def test_fallback_rates_and_dropped_satellites_are_counted(box):
    prepared, margin = box
    # The large lesion sticks out of the liver's top face (z 55-95 against 20-80): less than 90 %
    # of it inside, whatever its record says; the satellite sits 20 mm below it, inside.
    large = paper_tumor((50, 50, 75), location_fallback=True, location_reason="vessels",
                        inside_fraction=1.0)
    sat = paper_tumor((50, 50, 55), kind="satellite", radius_mm=8.0, half_axes_mm=(8.0,) * 3,
                      mass_effect=False, capsule=False)      # 20 mm from the large one: 1.0 r
    params = dataclasses.replace(one_tumor(prepared, large), kind="satellite", tumors=(large, sat),
                                 notes=("satellite dropped: no spot in its shell",))
    measured = fd.Measured("ds", "dataset", "ds")
    record_tumors(measured, prepared, params, "0", visible={0})
    assert (measured.satellites_placed, measured.satellites_dropped) == (1, 1)
    rows = {r["type"]: r for r in fd.summarize_groups([measured])}
    assert rows["large"]["fallback"] == {"share": 1.0, "by_reason": {"vessels": 1.0}}
    assert rows["satellite"]["fallback"]["share"] == 0.0
    assert rows["all"]["fallback"] == {"share": 0.5, "by_reason": {"vessels": 0.5}}
    assert (rows["large"]["inside_90_share"], rows["all"]["inside_90_share"]) == (0.0, 0.5)
    assert rows["satellite"]["measures"]["shell_r"]["median"] == pytest.approx(1.0)
    assert rows["satellite"]["in_shell_share"] == 0.0           # the default shell is 1.2-2.5 r
    assert rows["large"]["in_shell_share"] is None
    result = fd.report([measured], "tumorforge stats ds", 0.0, ScanCache(), fd.size_bins(), None)
    assert result["inputs"][0]["satellites"] == {"placed": 1, "dropped": 1, "dropped_share": 0.5}


def test_mass_effect_moves_the_liver_margin_by_eq5(box):
    """Eq. 5 shifts content radially by at most 4/27 gamma I / 100 (1.16 mm for gamma 26 mm, I 30):
    a liver face gamma/3 from the center moves by about that, one out of reach does not move."""
    from tumorforge.generator.backend import get_backend
    prepared, margin = box
    backend = get_backend("numpy")
    near = paper_tumor(_full(prepared, (margin + 8, 50, 50)))
    mass, cap = post_effects(prepared.scan, one_tumor(prepared, near), near, backend)
    assert mass["max_theory_mm"] == pytest.approx(4 / 27 * 26 * 0.3)
    assert 0.5 < mass["max_mm"] <= mass["max_theory_mm"] + 1.0   # voxel labels: within a voxel
    assert mass["surface_voxels"] > 0
    deep = paper_tumor(_full(prepared, (50, 50, 50)), radius_mm=10.0, half_axes_mm=(10.0,) * 3,
                       gamma_max_mm=13.0)
    mass, cap = post_effects(prepared.scan, one_tumor(prepared, deep), deep, backend)
    assert mass["max_mm"] == 0.0 and mass["surface_voxels"] == 0
    # The capsule brightens a thin band at the tumor's edge, by less than d = 120 HU.
    assert 20 < cap["peak_hu"] <= cap["max_hu"] <= 120
    assert 1.0 <= cap["width_mm"] <= 5.0
    assert abs(cap["offset_mm"]) <= 1.5
    assert cap["band_mean_hu"] > 10


def test_capsule_rim_on_a_known_band():
    """+50 HU in a Gaussian band of sd 1 mm centred 1 mm outside a sphere's edge: peak 50 HU at
    +1 mm, full width at half maximum 2.355 mm."""
    shape = (40, 40, 40)
    g = np.sqrt(sum(a ** 2 for a in np.meshgrid(*[np.arange(n) - 20.0 for n in shape],
                                                 indexing="ij")))
    tumor = g <= 8.0
    added = 50.0 * np.exp(-0.5 * (g - 8.5 - 1.0) ** 2)      # the voxel edge lies at about 8.5
    rim = capsule_rim(100.0 + added, np.full(shape, 100.0), tumor, (1.0,) * 3)
    assert rim["peak_hu"] == pytest.approx(50.0, abs=5.0) and rim["max_hu"] <= 50.0
    assert rim["width_mm"] == pytest.approx(2.355, abs=0.5)
    assert rim["offset_mm"] == pytest.approx(1.0, abs=0.5)
    assert 25.0 < rim["band_mean_hu"] < 50.0


def test_size_bins_cut_between_table6_radii():
    bins = fd.size_bins()
    assert [b[0] for b in bins] == ["tiny", "small", "medium", "large"]
    assert real_group(4.0, bins) == "tiny" and real_group(7.0, bins) == "small"
    assert real_group(16.0, bins) == "medium" and real_group(40.0, bins) == "large"
    assert chosen(10, 4) == [0, 3, 6, 9] and chosen(3, None) == [0, 1, 2]


# -- the command end to end --------------------------------------------------------------------


def real_manifest(root):
    """A LiTS-layout folder with two scans holding one planted lesion each, and its manifest."""
    from tumorforge.manifests.build import build_manifest
    for n in range(2):
        image, _, label = planted(seed=n)
        affine = np.diag([*SPACING, 1.0])
        write_nifti(root / "lits" / f"volume-{n}.nii", image.astype(np.int16), affine)
        write_nifti(root / "lits" / f"segmentation-{n}.nii", label, affine)
    manifest = root / "lits.jsonl"
    build_manifest("lits", str(root / "lits"), str(manifest))
    return str(manifest)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small generated dataset (paper-train, 48^3 crops centred on a tumor) and a real-lesion
    manifest."""
    from cluster_fixtures import healthy_manifest, write_dataset
    from tumorforge.generator.config import GeneratorConfig
    root = tmp_path_factory.mktemp("fidelity")
    manifest = healthy_manifest(root, 2)
    gen = GeneratorConfig(crop_size=(48, 48, 48), size_mix={"tiny": 1.0, "small": 1.0},
                          negative_fraction=0.0, crop_jitter_mm=0.0)
    write_dataset(manifest, root / "ds", samples=6, samples_per_shard=3, generator=gen)
    return str(root / "ds"), real_manifest(root)


def stats(argv, capsys):
    from tumorforge.cluster.front_door import main
    code = main(["stats", *argv])
    return code, capsys.readouterr()


@pytest.mark.slow
def test_stats_reports_every_size_type_and_writes_json_and_pngs(dataset, tmp_path, capsys):
    ds, real = dataset
    out = tmp_path / "report"
    code, captured = stats([ds, "--real", real, "--samples", "5", "--out", str(out)], capsys)
    assert code == 0
    table = captured.out.splitlines()
    rows = {(line.split()[0], line.split()[2]) for line in table[2:] if line and
            line.split()[0] in ("ds", "lits.jsonl")}
    assert {("ds", "tiny"), ("ds", "small"), ("ds", "all"), ("lits.jsonl", "small")} <= rows
    real_row = next(line for line in table if line.startswith("lits.jsonl") and " small " in line)
    assert real_row.split()[3] == "2" and "n/a" in real_row         # two lesions, no HU drop
    result = json.loads((out / "stats.json").read_text())
    assert result["command"].startswith("tumorforge stats ") and "--samples 5" in result["command"]
    assert result["versions"]["tumorforge_generator"] and result["machine"]["cores"]
    assert [i["samples_read"] for i in result["inputs"] if i["kind"] == "dataset"] == [5]
    groups = {(g["source"], g["type"]): g for g in result["groups"]}
    for t in ("tiny", "small"):
        g = groups[("ds", t)]
        assert g["lesions"] > 0 and g["tumors"] >= g["lesions"] - g["merged"]
        m = g["measures"]
        assert m["hu_drop_hu"]["n"] == g["lesions"] and m["hu_drop_hu"]["median"] > 0
        assert m["contrast_hu"]["median"] < 0            # mu_t < mu_p: darker than the liver
        assert m["depth_mm"]["median"] > 0 and m["inside_fraction"]["median"] >= 0.9
        assert g["fallback"]["share"] >= 0
    real_g = groups[("lits.jsonl", "small")]
    assert real_g["origin"] == "real" and real_g["measures"]["hu_drop_hu"]["n"] == 0
    assert real_g["measures"]["radius_mm"]["median"] == pytest.approx(RADIUS_MM, abs=1.0)
    assert real_g["measures"]["contrast_hu"]["median"] == pytest.approx(-60, abs=5.0)
    for name in ("radius_mm.png", "contrast_hu.png", "hu_drop_hu.png", "depth_mm.png"):
        assert name in result["figures"] and (out / name).read_bytes()[:4] == b"\x89PNG"
    assert {les["origin"] for les in result["lesions"]} == {"synthetic", "real"}


def test_lesion_table_round_trips_and_tests_a_reference_generator(dataset, tmp_path, capsys):
    """--out writes lesions.csv; read back as a reference generator's table, each synthetic size
    type is tested against the reference's lesions of that type: the dataset against its own
    lesions gives D = 0, against a copy darkened by 40 HU it differs on HU drop (D = 1) and not
    on radius."""
    import csv
    ds, _ = dataset
    out = tmp_path / "first"
    code, _ = stats([ds, "--post-effects", "0", "--out", str(out)], capsys)
    assert code == 0
    table = out / "lesions.csv"
    rows = list(csv.DictReader(table.read_text().splitlines()))
    result = json.loads((out / "stats.json").read_text())
    assert len(rows) == len(result["lesions"]) > 4
    assert {r["group"] for r in rows} == {"tiny", "small"} and all(r["sample"] for r in rows)
    darker = tmp_path / "darker.csv"
    with open(darker, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "hu_drop_hu": float(r["hu_drop_hu"]) + 40} for r in rows])
    code, captured = stats([ds, "--post-effects", "0", "--reference", f"self={table}",
                            "--reference", str(darker), "--out", str(tmp_path / "second")],
                           capsys)
    assert code == 0
    assert "synthetic vs a reference generator's lesions" in captured.out
    second = json.loads((tmp_path / "second" / "stats.json").read_text())
    assert "--reference self=" in second["command"]
    tests = {(r["reference"], r["type"]): r for r in second["versus_reference"]}
    assert set(tests) == {(n, t) for n in ("self", "darker") for t in ("tiny", "small")}
    for t in ("tiny", "small"):
        same, dark = tests[("self", t)], tests[("darker", t)]
        assert same["tests"]["hu_drop_hu"]["d"] == 0.0                 # exact round trip
        assert same["tests"]["hu_drop_hu"]["n_reference"] == same["tests"]["hu_drop_hu"]["n"] > 1
        assert dark["tests"]["hu_drop_hu"]["d"] == 1.0 and dark["tests"]["hu_drop_hu"]["p"] < 0.01
    # radius: crops cut most small tumors (no radius); the tiny ones are whole
    assert tests[("self", "tiny")]["tests"]["radius_mm"]["d"] == 0.0
    assert tests[("darker", "tiny")]["tests"]["radius_mm"]["d"] == 0.0
    origins = {g["origin"] for g in second["groups"] if g["source"] in ("self", "darker")}
    assert origins == {"reference"}                      # the table's rows sit in the report
    mine = fd.Measured("ds", "dataset", ds)
    assert fd.compare_to_reference([mine]) == []                       # no table, no test


@pytest.mark.parametrize("content, says", [
    ("group,sample,radius_mm\ntiny,0,3\n", "hu_drop_hu missing"),
    ("group,sample,radius_mm,hu_drop_hu\ntiny,0,3,dark\n", "line 2: hu_drop_hu is 'dark'"),
    ("group,sample,radius_mm,hu_drop_hu\n,0,3,40\n", "line 2: group and sample"),
    ("group,sample,radius_mm,hu_drop_hu\n", "no lesion"),
    (None, "no such lesion table"),
])
def test_a_bad_lesion_table_is_one_line_naming_it(content, says, tmp_path, capsys):
    table = tmp_path / "ref.csv"
    if content is not None:
        table.write_text(content)
    message = user_error(capsys, ["stats", str(tmp_path), "--reference", f"a={table}"])
    assert str(table) in message and says in message


@pytest.mark.parametrize("argv, names", [
    (["/no/such/dataset"], "/no/such/dataset"),
    (["--real", "/no/such/lits.jsonl"], "/no/such/lits.jsonl"),
    ([], "no input"),
])
def test_bad_input_is_one_line_naming_it(argv, names, capsys):
    message = user_error(capsys, ["stats", *argv])
    assert message.startswith("stats: ") and names in message


def test_folder_that_is_no_input_and_manifest_without_lesions(tmp_path, capsys):
    from cluster_fixtures import healthy_manifest
    manifest = healthy_manifest(tmp_path, 1)
    for argv in ([str(tmp_path / "ct")], ["--real", str(manifest)]):
        assert argv[-1] in user_error(capsys, ["stats", *argv])


def test_versus_real_ks_tells_same_from_shifted_distributions():
    """KS of synthetic against real lesions of the same type: the same radii give p = 1, radii
    shifted by 3 mm give p < 0.001; mix lesions are tested against all real lesions."""
    def lesion(origin, group, radius):
        return Lesion(source=origin, origin=origin, group=group, scan_id="s", sample="0",
                         center=(0, 0, 0), voxels=1, volume_mm3=1.0, radius_mm=radius,
                         contrast_hu=-40.0, hu_drop_hu=None, depth_mm=10.0,
                         reference_depth_mm=10.0, depth_ratio=1.0, texture_sd_hu=10.0,
                         parenchyma_sd_hu=10.0, texture_ratio=1.0)
    radii = np.linspace(6.0, 10.0, 30)
    same, shifted, real = (fd.Measured(n, "synthesize", n) for n in ("same", "shifted", "real"))
    same.lesions = [lesion("synthetic", "small", r) for r in radii]
    shifted.lesions = [lesion("synthetic", "small", r + 3.0) for r in radii] + \
        [lesion("synthetic", "mix", 3.0)] * 3
    real.lesions = [lesion("real", "small", r) for r in radii] + [lesion("real", "tiny", 3.0)] * 2
    rows = {(r["source"], r["type"]): r for r in fd.compare_to_real([same, shifted, real],
                                                                    fd.size_bins())}
    assert rows[("same", "small")]["tests"]["radius_mm"]["p"] == pytest.approx(1.0)
    assert rows[("shifted", "small")]["tests"]["radius_mm"]["p"] < 1e-3
    mix = rows[("shifted", "mix")]
    assert mix["real_type"] == "all" and mix["tests"]["radius_mm"]["n_real"] == 32
    assert fd.compare_to_real([same], fd.size_bins()) == []            # no real input, no test


def test_versus_real_with_volumes_as_the_unit():
    """Ten synthetic volumes of six tumors each, every volume's tumors sharing one radius (as a
    released sample's share one draw): tumor by tumor, 60 values against 60 real ones make a
    confident p; volume by volume there are 10 against 10, and the same shift is weaker evidence.
    The table prints both."""
    def lesion(origin, sample, radius):
        return Lesion(source=origin, origin=origin, group="small", scan_id="s", sample=sample,
                      center=(0, 0, 0), voxels=1, volume_mm3=1.0, radius_mm=radius,
                      contrast_hu=-40.0, hu_drop_hu=None, depth_mm=10.0, reference_depth_mm=10.0,
                      depth_ratio=1.0, texture_sd_hu=10.0, parenchyma_sd_hu=10.0,
                      texture_ratio=1.0)
    rng = np.random.default_rng(0)
    synthetic, real = fd.Measured("syn", "dataset", "syn"), fd.Measured("real", "real", "real")
    synthetic.lesions = [lesion("synthetic", str(v), r) for v, r in
                         enumerate(rng.normal(7.6, 1.0, 10)) for _ in range(6)]
    real.lesions = [lesion("real", str(v), r) for v in range(10)
                    for r in rng.normal(7.0, 1.0, 6)]
    [row] = [r for r in fd.compare_to_real([synthetic, real], fd.size_bins())
             if r["source"] == "syn"]
    tumors, volumes = row["tests"]["radius_mm"], row["volume_tests"]["radius_mm"]
    assert (tumors["n"], tumors["n_real"], volumes["n"], volumes["n_real"]) == (60, 60, 10, 10)
    assert volumes["p"] > tumors["p"]
    text = fd.format_table([], [], [row])
    assert "volumes as the unit" in text


def test_grain_ratio_tells_per_voxel_noise_from_the_parenchymas_grain():
    """The correlation length tells fine from coarse texture at the same sd: white noise has
    almost none, noise smoothed with sigma 2 voxels about 2.8 voxels (sqrt 2 sigma, its Gaussian
    autocorrelation); a lesion of per-voxel noise in smoothed parenchyma has grain ratio < 0.5,
    one of the parenchyma's own texture about 1."""
    import scipy.ndimage as ndi
    from tumorforge.evaluation.fidelity.lesions import component_measures, grain_mm
    rng = np.random.default_rng(0)
    shape, spacing = (64, 64, 64), (1.0, 1.0, 1.0)
    white = rng.normal(0, 10, shape)
    smooth = ndi.gaussian_filter(rng.normal(0, 10, shape), 2.0)
    smooth *= 10 / smooth.std()
    everywhere = np.ones(shape, bool)
    assert grain_mm(white, everywhere, spacing) < 0.5
    assert 2.3 < grain_mm(smooth, everywhere, spacing) < 3.3
    # Twice the voxel, about twice the length (not exactly: the local-mean blocks are 20 mm, so
    # half as many voxels wide, and take out a little more of the field's own variance).
    assert grain_mm(smooth, everywhere, (2.0, 2.0, 2.0)) == pytest.approx(
        2 * grain_mm(smooth, everywhere, spacing), rel=0.15)
    assert grain_mm(white, np.zeros(shape, bool), spacing) is None
    label = np.full(shape, ORGAN, np.uint8)
    ball = np.sum((np.indices(shape) - 32) ** 2, axis=0) <= 12 ** 2
    label[ball] = TUMOR
    fine = np.where(ball, 60 + white, 100 + smooth)
    grainy = ndi.gaussian_filter(rng.normal(0, 10, shape), 2.0)
    coarse = np.where(ball, 60 + grainy * 10 / grainy.std(), 100 + smooth)
    (_, [f]), (_, [c]) = (component_measures(img, label, spacing) for img in (fine, coarse))
    assert f["grain_ratio"] < 0.5 and 0.8 <= c["grain_ratio"] <= 1.25
    assert f["texture_ratio"] == pytest.approx(1.0, abs=0.15)     # same sd: sd alone cannot tell


def test_stats_counts_what_it_reads_on_a_terminal_bar(monkeypatch, capsys):
    import sys
    from tumorforge.evaluation.fidelity.inputs import progress
    assert list(progress([3, 1], "stats x", "scan")) == [3, 1]      # not a terminal: no bar
    assert "stats x" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert list(progress([3, 1], "stats x", "scan")) == [3, 1]
    assert "stats x: 100%" in capsys.readouterr().err
