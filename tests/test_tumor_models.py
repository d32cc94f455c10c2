"""Tumor models as table entries: a texture model registered from the user's own module (named in
``TUMORFORGE_PLUGINS``) runs through a generation job on an embedded Ray cluster, audit and the MONAI
transform's replay, with no tumorforge code edited; the built-in profiles keep their bytes."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap

import numpy as np
import pytest

from tumorforge.generator import tumor_models
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.tumor_models import (PLUGINS_ENV, TUMOR_MODELS, TumorModel,
                                               TumorModelError, register, tumor_model)

# A flat texture: every tumor voxel at its mean mu_t (no grain). Written as a user would.
PLUGIN = textwrap.dedent('''
    import dataclasses
    from tumorforge.generator.tumor_models import TUMOR_MODELS, register

    def flat_texture(backend, row, box_shape, spacing_mm, lo, hi):
        shape = tuple(int(b) - int(a) for a, b in zip(lo, hi))
        return backend.xp.full(shape, float(row.mu_t), backend.xp.float32)

    register(dataclasses.replace(TUMOR_MODELS["paper-train"], name="toy-flat", texture="flat",
                                 fused=False, builtin=False), texture=flat_texture)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The toy model's module on the path (and in PYTHONPATH, for Ray's worker processes)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_flat_model.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder),
                                                                   os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(PLUGINS_ENV, "toy_flat_model")
    yield "toy-flat"
    TUMOR_MODELS.pop("toy-flat", None)
    tumor_models.TEXTURES.pop("flat", None)
    tumor_models._plugins_loaded.discard("toy_flat_model")
    sys.modules.pop("toy_flat_model", None)


def test_registered_texture_paints_flat_tumors(plugin, tmp_path):
    from generator_fixtures import liver_volume
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.prepare import prepare_scan
    from tumorforge.generator.sample import sample_params
    from tumorforge.generator.synthesize import synthesize
    config = GeneratorConfig(profile=plugin, crop_size=(48, 48, 48), size_mix={"medium": 1.0},
                             negative_fraction=0.0)
    base = dataclasses.replace(config, profile="paper-train")
    image, label, affine = liver_volume()
    scan = prepare_scan("toy", image, label, affine, organ_values=(1,), config=base)
    toy = sample_params(np.random.default_rng(5), scan, config)
    ref = sample_params(np.random.default_rng(5), scan, base)
    # The same draws (the model reuses paper-train's steps), another texture.
    assert dataclasses.replace(toy, profile="paper-train") == ref
    a = synthesize(scan, toy, get_backend("numpy"))
    b = synthesize(scan, ref, get_backend("numpy"))
    assert np.array_equal(a.label, b.label) and (a.label == 2).sum() > 100
    core = a.image[a.label == 2].astype(float)
    assert core.std() < b.image[b.label == 2].astype(float).std()


def test_table_refuses_what_the_code_cannot_run(plugin):
    base = TUMOR_MODELS["paper-train"]
    with pytest.raises(TumorModelError, match="built in"):
        register(dataclasses.replace(base, builtin=False))
    with pytest.raises(TumorModelError, match="texture 'none' has no step"):
        register(dataclasses.replace(base, name="x", texture="none", fused=False, builtin=False))
    with pytest.raises(TumorModelError, match="kernels fuse only"):
        register(dataclasses.replace(base, name="x", texture="gaussian-grid", family="released",
                                     builtin=False))
    with pytest.raises(TumorModelError, match="unknown profile 'nope'"):
        tumor_model("nope")
    assert {"paper-train", "paper", "released", "real"} <= set(TUMOR_MODELS)


def test_built_in_identity_stays_out_of_the_dataset_id():
    from cluster_fixtures import small_spec
    spec = small_spec("/m.jsonl", "/o")
    assert "tumor_model" not in spec.identity()
    model = TumorModel("x", "paper", "organ-random", "s", "gaussian-grid", (), "tumor-centred",
                       fused=False)
    assert model.identity()["texture"] == "gaussian-grid" and "builtin" not in model.identity()


@pytest.mark.slow
def test_job_audit_and_replay_with_a_registered_model(plugin, tmp_path, capsys):
    """The toy model through a job (Ray actors import the plugin from the environment), audit's
    bit-exact regeneration and the MONAI transform's replay; its dataset id differs from the same
    spec with paper-train."""
    import ray
    from cluster_fixtures import healthy_manifest, small_spec
    from tumorforge.cluster.front_door import main
    from tumorforge.cluster.job import run_job
    from tumorforge.cluster.plan import make_plan
    from tumorforge.manifests.dataset.reader import Dataset
    from tumorforge.manifests.schema import read_manifest
    if ray.is_initialized():
        ray.shutdown()
    manifest = healthy_manifest(tmp_path / "scans", n_scans=2)
    gen = GeneratorConfig(profile=plugin, crop_size=(32, 32, 32), size_mix={"small": 1.0},
                          negative_fraction=0.0)
    spec = small_spec(manifest, tmp_path / "ds", generator=gen, samples=4, samples_per_shard=2)
    result = run_job(spec, progress=False, log=lambda *a: None)
    assert result.ok and result.written == 2
    entries = read_manifest(str(manifest))
    other = dataclasses.replace(spec, generator=dataclasses.replace(gen, profile="paper-train"))
    assert make_plan(spec, entries).dataset_id != make_plan(other, entries).dataset_id
    ds = Dataset(str(tmp_path / "ds"))
    _, _, provenance = ds.sample(1)
    assert provenance.params["profile"] == plugin
    assert main(["audit", str(tmp_path / "ds"), "--index", "1"]) == 0
    assert "AUDIT OK: bit-exact" in capsys.readouterr().out


def test_monai_transform_paints_and_replays_a_registered_model(plugin):
    """The MONAI transform takes the registered profile, records it, and replays the record."""
    torch = pytest.importorskip("torch")
    from monai.data import MetaTensor
    from generator_fixtures import liver_volume
    from tumorforge.generator.transform import TumorSynthesisd, synthesis_record
    image, label, affine = liver_volume(shape=(70, 60, 30), spacing=(2.0, 2.0, 4.0))
    data = {"image": MetaTensor(torch.from_numpy(image[None].astype(np.float32)),
                                affine=torch.from_numpy(affine)),
            "label": MetaTensor(torch.from_numpy(label[None].astype(np.float32)),
                                affine=torch.from_numpy(affine))}

    def fresh():
        return {k: v.clone() for k, v in data.items()}

    t = TumorSynthesisd(("image", "label"), profile=plugin, size_mix={"medium": 1.0},
                        config={"crop_size": [32, 32, 32], "target_spacing_mm": [2.0, 2.0, 2.0]})
    t.set_random_state(4)
    out = t(fresh())
    record = synthesis_record(out["image"])
    assert record["applied"] and record["config"]["profile"] == plugin
    assert (out["label"][0].numpy() == 2).sum() > 0
    again = t.replay(fresh(), record)
    assert torch.equal(again["image"], out["image"]) and torch.equal(again["label"], out["label"])


def test_a_texture_grid_finer_than_the_voxel_is_warned_about(capsys):
    """At 2 mm the paper's eta (1.1-1.5 mm) is below the voxel: the texture turns into per-voxel
    noise, and the commands say so on stderr; at 1 mm, or with the released texture, nothing."""
    from tumorforge.generator.options import print_warnings
    coarse = GeneratorConfig(profile="paper-train", target_spacing_mm=(2.0, 2.0, 2.0))
    assert len(coarse.warnings()) == 1 and "finer than the 2 mm voxel" in coarse.warnings()[0]
    assert GeneratorConfig().warnings() == []
    assert dataclasses.replace(coarse, profile="released").warnings() == []
    assert GeneratorConfig(target_spacing_mm=(2.0, 2.0, 2.0)).warnings() == []   # the default
    print_warnings(coarse)
    assert capsys.readouterr().err.startswith("warning: profile paper-train: the texture grid")
