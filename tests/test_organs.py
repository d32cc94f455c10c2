"""Organs as table entries: the liver's record is the paper's defaults, and a registered organ's
record reaches the generator configuration, the dataset id, the training preprocessing, the model's
output channels and evaluation's class check, with no other code edited."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from tumorforge.generator.config import GeneratorConfig, PaperParams, ReleasedParams
from tumorforge.manifests.organs import ORGANS, Organ, OrganError, SizePreset, TumorPrior, get_organ
from tumorforge.manifests.records import RecordError
from tumorforge.trainer.preprocessing import Preprocessing

TOY = Organ(name="toy", classes=("background", "toy", "lesion"), training_window_hu=(-50.0, 150.0),
            sizes={"tiny": SizePreset(3.0, (0.5, 1.0), (1, 2)),
                   "small": SizePreset(6.0, (1.0, 2.0), (1, 2)),
                   "medium": SizePreset(12.0, (2.0, 4.0), (1, 1)),
                   "large": SizePreset(24.0, (4.0, 8.0), (1, 1))},
            tumor_prior=TumorPrior(low_hu=20.0, below_parenchyma_hu=15.0),
            vessel_b_hu=25.0, erosion_mm=2.0, inside_share=0.8)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(ORGANS, "toy", TOY)
    return TOY


def test_the_liver_record_is_the_papers_defaults():
    liver = get_organ("liver")
    config = GeneratorConfig()
    assert config == GeneratorConfig.for_organ("liver") and config.organ == "liver"
    assert "organ" not in config.to_json()                 # liver records are what they were
    p = PaperParams()
    assert (p.vessel_b_hu, p.mu_t_low_hu, p.mu_t_below_parenchyma_hu, p.inside_share) == (
        15.0, 30.0, 10.0, 0.9) == (liver.vessel_b_hu, liver.tumor_prior.low_hu,
                                   liver.tumor_prior.below_parenchyma_hu, liver.inside_share)
    assert ReleasedParams().erosion_mm == liver.erosion_mm == 5.0
    assert config.sizes["large"].radius_mm == 32.0 and liver.classes[1] == "liver"
    with pytest.raises(OrganError, match="unknown organ 'spleen'; expected one of liver"):
        get_organ("spleen")


def test_a_registered_organ_configures_the_generator_and_its_own_dataset_id(toy):
    from cluster_fixtures import small_spec
    config = GeneratorConfig.for_organ("toy", crop_size=(32, 32, 32))
    assert (config.paper.vessel_b_hu, config.paper.mu_t_low_hu, config.paper.inside_share,
            config.released.erosion_mm, config.sizes["small"].radius_mm) == (25.0, 20.0, 0.8,
                                                                            2.0, 6.0)
    assert config.to_json()["organ"] == "toy"
    assert GeneratorConfig.from_json(config.to_json()) == config
    liver = small_spec("/m.jsonl", "/o")
    mine = dataclasses.replace(liver, generator=dataclasses.replace(liver.generator, organ="toy"))
    assert liver.identity() != mine.identity()             # so the dataset ids differ
    with pytest.raises(ValueError, match="organ 'nowhere'"):
        GeneratorConfig(organ="nowhere")


def _dataset(url, organ, spacing=(2.0, 2.0, 2.0), crop=(32, 32, 32)):
    index = SimpleNamespace(spacing_mm=spacing, crop_size=crop, organ=organ)
    return SimpleNamespace(url=url, index=index, dataset_id=f"id-{url}")


def test_class_names_and_window_flow_from_the_datasets_organ(toy):
    prep = Preprocessing.of_datasets([_dataset("a", "toy"), _dataset("b", "toy")])
    assert prep.class_names == TOY.classes and prep.window_hu == TOY.training_window_hu
    assert Preprocessing.of_datasets([_dataset("c", "liver")]).class_names == \
        ORGANS["liver"].classes
    with pytest.raises(RecordError, match="b holds liver tumors but a holds toy tumors"):
        Preprocessing.of_datasets([_dataset("a", "toy"), _dataset("b", "liver")])


def test_the_model_has_one_output_per_class_and_evaluation_checks_them(toy, tmp_path):
    torch = pytest.importorskip("torch")
    from tumorforge.evaluation.model import CheckpointError, load_model
    from tumorforge.trainer import checkpoint as ckpt
    from tumorforge.trainer.models import build_model
    prep = Preprocessing.of_datasets([_dataset("a", "toy")])
    model = build_model("unet-small", len(prep.class_names))
    assert model.eval()(torch.zeros(1, 1, 32, 32, 32)).shape[1] == len(TOY.classes)
    state = {"model": model.state_dict(), "config": json.dumps({"model": "unet-small"}),
             "preprocessing": json.dumps(prep.to_json())}
    path = ckpt.save(str(tmp_path), 0, state, keep=1)
    assert load_model(path, "cpu", organ="toy").preprocessing.class_names == TOY.classes
    with pytest.raises(CheckpointError, match=r"classes are \['background', 'toy', 'lesion'\]; "
                                              r"evaluation of the liver expects"):
        load_model(path, "cpu")


def test_a_manifest_entry_names_a_registered_organ(toy, tmp_path):
    from tumorforge.manifests.schema import read_manifest
    line = {"scan_id": "t-0", "image": "a.nii", "label": "b.nii", "organ": "toy",
            "label_map": {"organ": [3], "tumor": [4]}, "role": "healthy", "source": "mine",
            "sha256": {"image": "0" * 64, "label": "1" * 64}, "shape": [4, 4, 4],
            "spacing_mm": [1, 1, 1], "orientation": "RAS", "organ_volume_ml": 1.0,
            "tumor_volume_ml": 0.0, "schema_version": 2}
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n")
    entry = read_manifest(str(tmp_path / "m.jsonl"))[0]
    assert entry.organ == "toy" and entry.label_map.organ == (3,)
