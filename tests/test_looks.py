"""The ``diverse`` tumor model: looks drawn from several families of liver lesions, lobulated
shapes as unions of ellipsoids (generator/looks.py; issue 28, item 2)."""

from __future__ import annotations

import collections
import types

import numpy as np
import pytest
import scipy.ndimage as ndi

from tumorforge.generator.backend import get_backend
from tumorforge.generator.batch import pack
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.kernels import paint
from tumorforge.generator.looks import LOOK_NAMES, LOOKS, looks_texture
from tumorforge.generator.params import SampleParams
from tumorforge.generator.prepare import prepare_scan
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.generator.synthesize import synthesize

from generator_fixtures import liver_volume

NUMPY = get_backend("numpy")


@pytest.fixture(scope="module")
def scan():
    image, label, affine = liver_volume()
    return prepare_scan("toy", image, label, affine, organ_values=(1,))


@pytest.fixture(scope="module")
def drawn(scan):
    config = GeneratorConfig(profile="diverse", negative_fraction=0.0, crop_size=(48, 48, 48))
    return [sample_params(np.random.default_rng(sample_seed(9, i)), scan, config)
            for i in range(60)]


def test_every_family_is_drawn_within_its_ranges(scan, drawn):
    tumors = [t for p in drawn for t in p.tumors]
    seen = collections.Counter(t.look.name for t in tumors)
    assert set(seen) == set(LOOK_NAMES), seen
    sd = scan.parenchyma_local_sd_hu
    for t in tumors:
        family = LOOKS[t.look.name]
        assert family.heterogeneity[0] * sd - 1e-3 <= t.sigma_p <= family.heterogeneity[1] * sd + 1e-3
        assert family.margin_mm[0] <= t.sigma_c_mm <= family.margin_mm[1]
        assert t.radius_mm >= family.min_radius_mm or t.look.lobe
        if family.mean_hu is not None:                                   # cystic: near water
            assert family.mean_hu[0] <= t.mu_t <= family.mean_hu[1]
        else:                           # hypo- to nearly iso-attenuating, wider than the paper's
            assert scan.parenchyma_mean_hu - 90 - 1e-3 <= t.mu_t <= scan.parenchyma_mean_hu - 5
        assert isinstance(t.eta, tuple)                                  # the scan's grain
    mus = [t.mu_t for t in tumors if LOOKS[t.look.name].mean_hu is None]
    assert min(mus) < scan.parenchyma_mean_hu - 60 and max(mus) > scan.parenchyma_mean_hu - 20
    for p in drawn:                           # one family per group of tumors (one liver's look)
        assert len({t.look.name for t in p.tumors if t.radius_mm >= 10}) <= 1 or p.kind == "satellite"


def test_lobes_touch_their_body_and_share_its_look(scan, drawn):
    pairs = [(body, lobe) for p in drawn for body, lobe in zip(p.tumors, p.tumors[1:])
             if lobe.look.lobe and not body.look.lobe]
    assert pairs, "no lobulated tumor in 60 samples"
    for body, lobe in pairs:
        gap = np.linalg.norm(np.subtract(lobe.center, body.center))
        assert 0.5 * body.radius_mm <= gap <= 0.95 * body.radius_mm
        assert 0.5 * body.radius_mm - 1e-3 <= lobe.radius_mm <= 0.8 * body.radius_mm + 1e-3
        assert (lobe.look.name, lobe.mu_t, lobe.texture_seed) == (body.look.name, body.mu_t,
                                                                   body.texture_seed)


def test_records_replay_to_the_same_bytes_and_paper_records_are_unchanged(scan, drawn):
    p = next(p for p in drawn if any(t.look.lobe for t in p.tumors))
    again = SampleParams.from_json(p.to_json())
    assert again == p
    a, b = synthesize(scan, p, NUMPY), synthesize(scan, again, NUMPY)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    lab = ndi.label(a.label == 2)[1]
    assert lab >= 1
    paper = sample_params(np.random.default_rng(0), scan, GeneratorConfig(
        profile="paper-train", negative_fraction=0.0, crop_size=(48, 48, 48)))
    assert all("look" not in t for t in paper.to_json()["tumors"])      # no new key
    packed = pack([p], [scan.scan_id])
    assert not paint.eligible(packed).any()             # painted by the array code, not fused
    for t, row in zip(p.tumors, packed.tumors):         # the look's numbers reach the rows
        assert LOOK_NAMES[int(row.look) - 1] == t.look.name
        assert (row.core_fraction, row.rim_hu, row.nodules) == (t.look.core_fraction,
                                                                t.look.rim_hu, t.look.nodules)


def _row(look: str, **kw):
    base = dict(eta=(2.0, 2.0, 2.0), sigma_b_mm=0.6, texture_seed=3, mu_t=60.0, sigma_p=8.0,
                half_axes_mm=(16.0, 16.0, 16.0), look=LOOK_NAMES.index(look) + 1,
                core_fraction=0.0, core_hu=0.0, rim_hu=0.0, rim_width_mm=0.0, nodules=0,
                nodule_hu_sd=0.0)
    return types.SimpleNamespace(**{**base, **kw})


def _q(shape=(41, 41, 41)):
    return np.sqrt(sum(((np.indices(shape)[a] - 20) / 16.0) ** 2 for a in range(3)))


def test_each_look_paints_what_its_family_says():
    q = _q()
    plain = looks_texture(NUMPY, _row("homogeneous"), q.shape, 1.0)
    necrotic = looks_texture(NUMPY, _row("necrotic", core_fraction=0.5, core_hu=10.0), q.shape, 1.0)
    assert necrotic[q < 0.3].mean() == pytest.approx(10.0, abs=3)             # fluid core
    assert necrotic[(q > 0.7) & (q < 1)].mean() == pytest.approx(60.0, abs=3)  # solid wall
    rim = looks_texture(NUMPY, _row("rim", rim_hu=40.0, rim_width_mm=2.0), q.shape, 1.0)
    band = (q > 0.8) & (q < 0.9)
    assert (rim - plain)[band].mean() > 30 and abs((rim - plain)[q < 0.5].mean()) < 1
    mosaic = looks_texture(NUMPY, _row("mosaic", nodules=5, nodule_hu_sd=15.0), q.shape, 1.0)
    cells = (mosaic - plain)[q < 0.6]
    assert cells.std() > 8                                   # cells of their own mean
    part = looks_texture(NUMPY, _row("rim", rim_hu=40.0, rim_width_mm=2.0), q.shape, 1.0,
                         lo=(5, 0, 10), hi=(30, 41, 20))
    assert np.array_equal(part, rim[5:30, :, 10:20])         # a part of the box is that part


def test_each_ablation_turns_one_factor_back_to_the_papers(scan):
    """``looks`` knobs, one factor each (the evidence experiment's ablation arms)."""
    from tumorforge.generator.config import LooksParams

    def tumors(**knobs):
        config = GeneratorConfig(profile="diverse", negative_fraction=0.0, crop_size=(48, 48, 48),
                                 looks=LooksParams(**knobs))
        return [t for i in range(25) for t in sample_params(
            np.random.default_rng(sample_seed(4, i)), scan, config).tumors]

    mu_p = scan.parenchyma_mean_hu
    assert all(30 <= t.mu_t <= mu_p - 10 for t in tumors(contrast="paper"))
    assert all(isinstance(t.eta, float) and 1.1 <= t.eta <= 1.5
               for t in tumors(texture_grid="paper"))
    assert all(0.6 <= t.sigma_c_mm <= 1.2 for t in tumors(margins="paper"))
    assert {t.look.name for t in tumors(families={"rim": 1.0})} <= {"rim"}
    assert not any(t.look.lobe for t in tumors(lobulated=0.0))
    with pytest.raises(ValueError, match="looks.contrast"):
        LooksParams(contrast="narrow")
    with pytest.raises(ValueError, match="looks.families"):
        LooksParams(families={"polka-dot": 1.0})
    assert "looks" not in GeneratorConfig().to_json()          # dataset ids of 0.7 jobs stay
