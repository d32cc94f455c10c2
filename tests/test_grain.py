"""Grain: the correlation length of HU (generator/grain.py), and the ``paper-grain`` tumor model
whose texture is shaped to each scan's parenchyma grain (issue 28, item 1)."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import scipy.ndimage as ndi

from tumorforge.generator.backend import get_backend
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.grain import (axis_grain_mm, grain_mm, grid_for_grain, grid_for_scan,
                                       interior)
from tumorforge.generator.params import PaperTumor, SampleParams
from tumorforge.generator.prepare import prepare_scan
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.generator.synthesize import synthesize
from tumorforge.generator.texture import paper_texture
from tumorforge.manifests.records import RecordError

from generator_fixtures import liver_volume

NUMPY = get_backend("numpy")


def _texture(eta, spacing=1.0, shape=(72, 72, 72), seed=11):
    row = types.SimpleNamespace(eta=eta, sigma_b_mm=0.6, texture_seed=seed, mu_t=0.0, sigma_p=1.0)
    return paper_texture(NUMPY, row, shape, spacing)


@pytest.mark.parametrize("spacing", [1.0, 2.0])
@pytest.mark.parametrize("length", [1.6, 2.5, 4.0])
def test_the_grid_chosen_for_a_grain_paints_that_grain(length, spacing):
    """grid_for_grain inverts the texture's own correlation: a texture painted with the spacing it
    returns measures the asked length (within 12 %: one 72^3 field is a sample of the noise)."""
    eta = grid_for_grain(length, spacing, 0.6)
    if length < 1.3 * spacing:
        pytest.skip("finer than the voxel allows")
    field = _texture(eta, spacing)
    got = grain_mm(field, np.ones(field.shape, bool), (spacing,) * 3)
    assert got == pytest.approx(length, rel=0.12)


def test_per_axis_grids_paint_an_anisotropic_grain():
    """One spacing per axis: a texture as smooth along S as a resampled thick-slice scan."""
    want = (1.6, 1.6, 4.0)
    eta = tuple(grid_for_grain(v, 1.0, 0.6) for v in want)
    field = _texture(eta)
    got = axis_grain_mm(field, np.ones(field.shape, bool), (1.0,) * 3)
    assert got == pytest.approx(want, rel=0.15)


def test_finer_than_the_blur_allows_is_clamped_to_one_voxel():
    assert grid_for_grain(0.0, 1.0, 0.6) == 1.0
    assert grid_for_grain(0.3, 2.0, 0.6) == 2.0
    assert grid_for_scan((None, None, None), 1.0, 1.0, 0.6, fallback_mm=1.3) == (1.3, 1.3, 1.3)
    filled = grid_for_scan((2.0, None, 4.0), 1.0, 1.0, 0.6, fallback_mm=1.3)
    assert filled[1] == grid_for_grain(3.0, 1.0, 0.6)


def test_slow_shading_is_not_grain():
    """White noise (sd 10 HU) on a shading of 1 HU per mm along i, several times a liver's: about
    its global mean, neighbours correlate at 0.75 (the shading), a grain of 1.3 mm; about each
    block's mean only the shading inside a block (20 mm: 33 HU^2 against the noise's 100) is
    left."""
    rng = np.random.default_rng(0)
    shape = (60, 60, 60)
    image = rng.normal(0, 10, shape) + np.arange(shape[0])[:, None, None]
    centred = image - image.mean()
    rho = (centred[:-1] * centred[1:]).mean() / centred.var()
    assert 1.1 < 1 / np.sqrt(-2 * np.log(rho))                       # the global-mean reading
    assert max(axis_grain_mm(image, np.ones(shape, bool), (1.0,) * 3)) < 0.7
    assert axis_grain_mm(image, np.zeros(shape, bool), (1.0,) * 3) == (None, None, None)


@pytest.fixture(scope="module")
def scan():
    image, label, affine = liver_volume()          # white noise, 2 mm slices resampled to 1 mm
    return prepare_scan("toy", image, label, affine, organ_values=(1,))


def test_a_prepared_scan_knows_its_parenchyma_grain(scan):
    """The hand-made liver's noise is white in-plane and linearly interpolated from 2 mm slices
    along S: grain short in-plane, longer along S."""
    gi, gj, gk = scan.parenchyma_grain_mm
    assert gi < 0.6 and gj < 0.6
    assert gk > 0.7


@pytest.fixture(scope="module")
def soft_scan():
    """A liver whose noise is spatially correlated (sd 12 HU smoothed with sigma 1.5 mm, as a soft
    reconstruction kernel makes it), 2 mm slices: grain about 2-3 mm, coarser than paper-train's
    fixed 1.1-1.5 mm grid paints."""
    image, label, affine = liver_volume()
    rng = np.random.default_rng(3)
    noise = ndi.gaussian_filter(rng.normal(0, 1, image.shape), (1.5, 1.5, 0.75))
    image = np.where(label == 1, 100 + 12 * noise / noise.std(), -90).astype(np.int16)
    return prepare_scan("soft", image, label, affine, organ_values=(1,))


def _tumor_grain(scan, profile, seeds=range(3)):
    """Per axis, the mean grain ratio (tumor core over the parenchyma around it) of medium tumors
    synthesized with ``profile``, and the last sample's record."""
    config = GeneratorConfig(profile=profile, size_mix={"medium": 1.0}, negative_fraction=0.0,
                             crop_size=(64, 64, 64))
    ratios = []
    for i in seeds:
        p = sample_params(np.random.default_rng(sample_seed(5, i)), scan, config)
        crop = synthesize(scan, p, NUMPY)
        image, label = crop.image, crop.label
        core = ndi.binary_erosion(label == 2, iterations=2)
        paren = interior((label == 1) & ~ndi.binary_dilation(label == 2, iterations=3))
        ratios.append(np.array(axis_grain_mm(image, core, (1.0,) * 3))
                      / np.array(axis_grain_mm(image, paren, (1.0,) * 3)))
    return p, np.mean(ratios, axis=0)


def test_paper_grain_tumors_are_as_grainy_as_the_scan(scan, soft_scan):
    """The tumor texture of ``paper-grain`` follows the scan: its grain along each axis is the
    parenchyma's times a factor in [0.8, 1.25] (target 0.8-1.25, the fidelity report's); on the
    same scan ``paper-train``'s fixed grid paints a grain half the parenchyma's, the cue issue 28
    found a network could learn tumors by."""
    p, ratio = _tumor_grain(soft_scan, "paper-grain")
    assert all(isinstance(t.eta, tuple) and len(t.eta) == 3 for t in p.tumors)
    assert np.all((0.75 <= ratio) & (ratio <= 1.3)), ratio
    _, fixed = _tumor_grain(soft_scan, "paper-train")
    assert np.all(fixed < 0.7), fixed
    # On the toy liver of white noise and 2 mm slices the grid is finer in-plane than along S.
    q = sample_params(np.random.default_rng(0), scan, GeneratorConfig(
        profile="paper-grain", size_mix={"medium": 1.0}, negative_fraction=0.0))
    assert all(t.eta[0] < t.eta[2] and t.eta[1] < t.eta[2] for t in q.tumors)


def test_scan_matched_records_round_trip_and_old_ids_stay():
    config = GeneratorConfig(profile="paper-grain")
    assert "grain_scale" not in GeneratorConfig().to_json()["paper"]     # ids of 0.7 jobs stay
    assert GeneratorConfig.from_json(config.to_json()) == config
    odd = dataclasses.replace(config.paper, grain_scale=(1.0, 1.0))
    assert GeneratorConfig(paper=odd).to_json()["paper"]["grain_scale"] == [1.0, 1.0]
    image, label, affine = liver_volume(shape=(80, 70, 30))
    small = prepare_scan("small", image, label, affine, organ_values=(1,), config=GeneratorConfig(
        crop_size=(32, 32, 32)))
    p = sample_params(np.random.default_rng(1), small, GeneratorConfig(
        profile="paper-grain", crop_size=(32, 32, 32), negative_fraction=0.0))
    again = SampleParams.from_json(p.to_json())
    assert again == p and isinstance(again.tumors[0].eta, tuple)
    bad = {**p.to_json()["tumors"][0], "eta": [1.0, 2.0]}
    with pytest.raises(RecordError, match="eta"):
        PaperTumor(**bad)
