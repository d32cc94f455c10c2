"""``TumorSynthesisd``: the generator as a MONAI dictionary transform, on a small BTCV-style scan
(simulated CT) loaded the way a MONAI training pipeline loads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

monai = pytest.importorskip("monai")
from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, Orientationd,  # noqa: E402
                              Spacingd)

from tumorforge.generator.transform import TumorSynthesisd, synthesis_record  # noqa: E402

SMALL = {"crop_size": [32, 32, 32], "target_spacing_mm": [2.0, 2.0, 2.0]}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A BTCV-style scan (liver = 6; cluster_fixtures' ellipsoid liver in a 160 x 150 x 160 mm
    field, smaller than a phantom's, with fat more than 40 mm from the liver) as LoadImaged,
    EnsureChannelFirstd, Orientationd(RAS) and Spacingd(2 mm) give it."""
    from cluster_fixtures import liver_scan
    from conftest import write_nifti
    root = tmp_path_factory.mktemp("btcv")
    data, liver, affine = liver_scan(0, shape=(160, 150, 80))
    image = write_nifti(root / "img" / "img0001.nii.gz", data, affine)
    label = write_nifti(root / "label" / "label0001.nii.gz", liver * 6, affine)
    load = Compose([LoadImaged(("image", "label")), EnsureChannelFirstd(("image", "label")),
                    Orientationd(("image", "label"), axcodes="RAS"),
                    Spacingd(("image", "label"), pixdim=(2.0, 2.0, 2.0),
                             mode=("bilinear", "nearest"))])
    return load({"image": image, "label": label})


def _copy(d):
    return {k: v.clone() for k, v in d.items()}


def _paint(d, seed, **kw):
    t = TumorSynthesisd(("image", "label"), profile="paper", liver_values=(6,), tumor_values=(),
                        config=SMALL, **kw)
    t.set_random_state(seed)
    return t, t(_copy(d))


def test_paints_tumors_inside_the_liver_and_records_how(loaded):
    _, out = _paint(loaded, seed=3, size_mix={"medium": 1.0})
    image, label = out["image"], out["label"]
    assert image.shape == loaded["image"].shape and label.shape == loaded["label"].shape
    assert image.dtype == loaded["image"].dtype
    assert torch.equal(image.affine, loaded["image"].affine)
    liver = loaded["label"][0].numpy() == 6
    tumor = label[0].numpy() == 2
    assert tumor.sum() > 50 and (tumor & liver).sum() >= 0.9 * tumor.sum()
    assert set(np.unique(label[0].numpy())) <= {0, 1, 2}
    changed = image[0].numpy() != loaded["image"][0].numpy()
    assert changed.any() and not changed[~liver].all()
    # Far from the liver nothing moves: voxels synthesis did not touch keep their exact values.
    import scipy.ndimage as ndi
    far = ndi.distance_transform_edt(~liver) > 20
    assert not changed[far].any()
    record = synthesis_record(image)
    assert record["applied"] and record["params"]["kind"] == "medium"
    assert record["params"]["tumors"] and record["config"]["profile"] == "paper"


def test_default_profile_is_the_commands_default_released(loaded):
    """Without ``profile`` the transform paints what every command paints by default (issue 28:
    ``released``, chosen by the evidence experiment): one darkening texture over the union of the
    sample's tumors, labelled inside the liver."""
    from tumorforge.generator.config import DEFAULT_PROFILE
    t = TumorSynthesisd(("image", "label"), liver_values=(6,), tumor_values=(), config=SMALL,
                        size_mix={"medium": 1.0})
    t.set_random_state(5)
    out = t(_copy(loaded))
    record = synthesis_record(out["image"])
    assert DEFAULT_PROFILE == "released" and record["config"]["profile"] == "released"
    assert record["applied"] and record["params"]["released"] is not None
    tumor = out["label"][0].numpy() == 2
    liver = loaded["label"][0].numpy() == 6
    assert tumor.sum() > 20 and not (tumor & ~liver).any()
    darker = out["image"][0].numpy() < loaded["image"][0].numpy()
    assert darker[tumor].mean() > 0.5          # released tumors darken the liver


@pytest.mark.slow
def test_seeded_like_any_monai_randomizable_and_replayable(loaded):
    t, a = _paint(loaded, seed=11)
    _, b = _paint(loaded, seed=11)
    _, c = _paint(loaded, seed=12)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    again = t.replay(_copy(loaded), synthesis_record(a["image"]))
    assert torch.equal(again["image"], a["image"]) and torch.equal(again["label"], a["label"])
    forged = dict(synthesis_record(a["image"]), seed=synthesis_record(a["image"])["seed"] + 1)
    with pytest.raises(ValueError, match="not what its seed draws"):
        t.replay(_copy(loaded), forged)


def test_prob_and_missing_liver_pass_the_sample_through(loaded):
    _, out = _paint(loaded, seed=0, prob=0.0)
    assert torch.equal(out["image"], loaded["image"]) and not synthesis_record(out["image"])["applied"]
    empty = _copy(loaded)
    empty["label"] = torch.zeros_like(empty["label"])
    t = TumorSynthesisd(("image", "label"), liver_values=(6,), config=SMALL)
    out = t(empty)
    assert torch.equal(out["image"], loaded["image"])
    assert "no liver voxel" in synthesis_record(out["image"])["reason"]
    with pytest.raises(ValueError, match="no liver voxel"):
        TumorSynthesisd(("image", "label"), liver_values=(6,), config=SMALL,
                        allow_missing_liver=False)(_copy(empty))
    with pytest.raises(ValueError, match="keys"):
        TumorSynthesisd(("image",))


def test_in_a_compose_and_a_dataloader(loaded):
    """In a Compose under a two-worker DataLoader, as a user's training pipeline runs it: each
    batch has tumor voxels and the record of its sample, drawn from different seeds."""
    import json
    from monai.data import DataLoader, Dataset
    pipeline = Compose([TumorSynthesisd(("image", "label"), liver_values=(6,), tumor_values=(),
                                        config=SMALL, size_mix={"small": 1.0})])
    pipeline.set_random_state(5)
    ds = Dataset([_copy(loaded), _copy(loaded)], transform=pipeline)
    batches = list(DataLoader(ds, batch_size=1, num_workers=2))      # in worker processes
    assert len(batches) == 2 and all((b["label"] == 2).any() for b in batches)
    records = [json.loads(b["image"].meta["tumor_synthesis"][0]) for b in batches]
    assert all(r["applied"] for r in records)
    assert records[0]["seed"] != records[1]["seed"]           # MONAI seeds each worker apart


def test_the_readme_example_trains_a_plain_monai_unet(phantom_root, tmp_path, capsys):
    """cluster/examples/monai_transform_training.py (docs/how-to/monai-transform.md's example) runs: a MONAI UNet
    trained on healthy phantom scans whose tumors TumorSynthesisd paints on the fly."""
    import runpy
    from tumorforge.manifests.build import build_manifest
    root, _ = phantom_root
    manifest = tmp_path / "btcv.jsonl"
    build_manifest("btcv", str(root / "btcv"), str(manifest))
    example = runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "cluster" /
                                 "examples" / "monai_transform_training.py"))
    example["main"]([str(manifest), "--steps", "2", "--spacing", "4", "--crop", "32",
                     "--allow-root", str(root)])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ")]
    assert len(lines) == 2 and any(int(l.rsplit(" ", 1)[1]) > 0 for l in lines)


def test_prepared_once_in_a_cache_dataset_then_painted_each_epoch(loaded):
    """``PrepareTumorSynthesisd`` + ``TumorSynthesisd``: CacheDataset keeps the prepared scan (the
    preparation runs once per sample, not once per epoch), each epoch paints new tumors, a sample
    gets the bytes the one-step transform gives for the same seed, and the prepared scan never
    reaches the batch. Mismatched settings are refused."""
    from monai.data import CacheDataset, DataLoader
    from tumorforge.generator import transform as T
    calls = []
    real_prepare = T._Settings.prepare

    def counted(self, *a, **k):
        calls.append(1)
        return real_prepare(self, *a, **k)

    kw = dict(liver_values=(6,), tumor_values=(), config=SMALL, size_mix={"small": 1.0})
    T._Settings.prepare = counted
    try:
        pipeline = Compose([T.PrepareTumorSynthesisd(("image", "label"), **kw),
                            TumorSynthesisd(("image", "label"), **kw)])
        pipeline.set_random_state(3)
        ds = CacheDataset([_copy(loaded)], transform=pipeline, progress=False)
        assert len(calls) == 1                       # prepared when the cache was filled
        epochs = [next(iter(DataLoader(ds, batch_size=1))) for _ in range(2)]
        assert len(calls) == 1                       # and never again
    finally:
        T._Settings.prepare = real_prepare
    assert all(T.PREPARED_KEY not in b for b in epochs)
    seeds = [json.loads(b["image"].meta["tumor_synthesis"][0])["seed"] for b in epochs]
    assert seeds[0] != seeds[1] and all((b["label"] == 2).any() for b in epochs)
    # The same seed, one step: the same bytes.
    one = TumorSynthesisd(("image", "label"), **kw)
    record = json.loads(epochs[0]["image"].meta["tumor_synthesis"][0])
    again = one.replay(_copy(loaded), record)
    assert torch.equal(again["image"], epochs[0]["image"][0])
    assert torch.equal(again["label"], epochs[0]["label"][0])
    other = T.PrepareTumorSynthesisd(("image", "label"), **{**kw, "liver_values": (6, 7)})
    with pytest.raises(ValueError, match="prepared .* with other settings"):
        one(other(_copy(loaded)))


@pytest.mark.slow
def test_bench_transform_reports_both_ways(tmp_path, capsys):
    """``tumorforge bench transform`` runs both pipelines on one phantom scan and reports ms per
    sample for each (the figures themselves are in docs/how-to/monai-transform.md, not asserted here)."""
    from tumorforge.cluster.front_door import main
    out = tmp_path / "bench.json"
    assert main(["bench", "transform", "--samples", "1", "--phantom-scale", "0.15",
                 "--spacing", "3,3,3", "--crop-size", "32,32,32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["one_step_ms_per_sample"] > 0 and report["cached_ms_per_sample"] > 0
    assert report["cached_preparation_ms_once"] > 0 and report["profile"] == "released"
    assert "CacheDataset" in capsys.readouterr().out
