"""Robustness benchmark (evaluation/robustness.py) on small synthetic healthy scans, without a trained model
except for the CLI tests, which run an untrained U-Net checkpoint (with the preprocessing record
every trainer checkpoint carries) end to end."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json

import numpy as np
import pytest

from tumorforge.evaluation import robustness as rb
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.synthesize import synthesize
from tumorforge.generator.backend import get_backend
from tumorforge.manifests.errors import UserError

CROP = 48
CONFIG = GeneratorConfig(profile="paper-train", crop_size=(CROP,) * 3)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """Two small healthy scans (cluster_fixtures' ellipsoid livers: the benchmark works at 1 mm,
    where a phantom's full-size liver costs ten times the voxels), their manifest, prepared scans,
    a prior and depth maps."""
    from cluster_fixtures import healthy_manifest
    from tumorforge.generator.scans import load_prepared
    from tumorforge.manifests.schema import default_roots, read_manifest
    root = tmp_path_factory.mktemp("robustness")
    manifest = str(healthy_manifest(root, 2))
    entries = read_manifest(manifest, default_roots(manifest))
    scans = [load_prepared(e, CONFIG) for e in sorted(entries, key=lambda e: e.scan_id)]
    depths = {s.scan_id: rb.LiverDepth(s) for s in scans}
    prior = rb.estimate_prior(scans[0], CONFIG, samples=60, seed=0, depth=depths[scans[0].scan_id])
    return {"manifest": manifest, "scans": scans, "depths": depths, "prior": prior}


def _key(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.mark.slow
def test_prior_is_a_proper_distribution(healthy):
    prior = healthy["prior"]
    assert set(prior) == set(rb.DIMENSIONS)
    assert all(p.sigma > 0 and p.n > 60 for p in prior.values())
    assert 1.1 <= prior["texture"].mu <= 1.5            # eta ~ U(1.1, 1.5)
    assert 4.0 < prior["size"].mu < 32.0                 # radii of Table 6


@pytest.mark.slow
def test_oracle_scores_one_at_every_level(healthy):
    scans, prior, depths = healthy["scans"], healthy["prior"], healthy["depths"]
    by_id = {s.scan_id: s for s in scans}
    backend = get_backend("numpy")
    truth = {}
    for case in rb.plan_cases(scans, CONFIG, prior, rb.DIMENSIONS, 3, 1, seed=5, depths=depths):
        crop = synthesize(by_id[case.params.scan_id], case.params, backend)
        truth[_key(crop.image)] = crop.label
    cases = rb.run_sweep(scans, lambda image: truth[_key(image)], CONFIG, rb.DIMENSIONS, 3, 1,
                         seed=5, prior=prior, depths=depths)
    assert len(cases) == len(rb.DIMENSIONS) * 7
    rows = rb.summarize_dimensions(cases, prior, rb.DIMENSIONS, 3)
    assert all(r["n"] == 1 for r in rows)
    # A tumor shrunk to the floor r = 1.5 vanishes under the mask blur: nothing to score (n/a),
    # which the table must say instead of inventing a score. Every other level is perfect.
    vanished = {(c["dimension"], c["k"]) for c in cases if c["true_voxels"] == 0}
    assert vanished <= {("size", k) for k in (-3, -2, -1)}
    for r in rows:
        expected = None if (r["dimension"], r["k"]) in vanished else 1.0
        assert r["mean_dice"] == expected and r["detection_rate"] == expected, r
    assert all(c["fp_voxels"] == 0 for c in cases)


@pytest.mark.slow
def test_threshold_model_is_sensitive_to_intensity(healthy):
    def dark_is_tumor(image):
        # Tumor wherever the CT is darker than parenchyma but not fat: tumors brighter than the
        # cut become invisible to it.
        return np.where((image > -20) & (image < 60), 2, 0).astype(np.uint8)

    cases = rb.run_sweep(healthy["scans"], dark_is_tumor, CONFIG, ["intensity"], 2, 2, seed=1,
                         prior=healthy["prior"], depths=healthy["depths"])
    rows = rb.summarize_dimensions(cases, healthy["prior"], ["intensity"], 2)
    dice = {r["k"]: r["mean_dice"] for r in rows}
    assert dice[-2] > dice[0] > dice[2], dice


@pytest.mark.slow
def test_shift_moves_one_dimension_only(healthy):
    scans, prior, depths = healthy["scans"], healthy["prior"], healthy["depths"]
    scan = scans[1]
    base = rb.base_params(scan, CONFIG, seed=3, index=1)
    assert len(base.tumors) == 1
    t0 = base.tumors[0]
    # The crop is centered on the tumor.
    assert np.array_equal(np.asarray(base.crop_origin) + CROP // 2, t0.center)
    changed = {"size": {"radius_mm", "half_axes_mm", "gamma_max_mm"}, "shape": {"sigma_e_mm"},
               "texture": {"eta"}, "intensity": {"mu_t"},
               "location": {"center", "location_tries", "location_fallback", "location_reason",
                            "inside_fraction", "vessel_voxels"}}
    for dimension in rb.DIMENSIONS:
        for k in (-3, 1):
            case = rb.case_params(scan, CONFIG, prior, dimension, k, 3, 1, depths[scan.scan_id])
            t = case.params.tumors[0]
            target = prior[dimension].mu + k * prior[dimension].sigma
            assert case.target == pytest.approx(target, abs=1e-3)
            if dimension == "location":
                lo, hi = depths[scan.scan_id].range
                assert depths[scan.scan_id].at(t.center) == pytest.approx(case.value, abs=1e-3)
                assert case.value == pytest.approx(min(hi, max(lo, target)), abs=1.0)
                assert scan.organ[tuple(np.asarray(t.center) - scan.origin_vox)]
            else:
                lo, hi = rb.CLIP[dimension]
                used = min(hi if hi is not None else np.inf, max(lo, target))
                assert getattr(t, rb.PARAMETER[dimension]) == case.value
                assert case.value == pytest.approx(used, abs=1e-3)
            if dimension == "size":
                ratios = np.asarray(t.half_axes_mm) / t.radius_mm
                assert np.allclose(ratios, np.asarray(t0.half_axes_mm) / t0.radius_mm, atol=1e-3)
            same = {f.name for f in dataclasses.fields(t)} - changed[dimension]
            assert {n: getattr(t, n) for n in same} == {n: getattr(t0, n) for n in same}
            centered = dataclasses.replace(base, crop_origin=case.params.crop_origin, tumors=())
            assert dataclasses.replace(case.params, tumors=()) == centered
            assert (case.params.crop_origin == base.crop_origin) == (dimension != "location")
    # Clipping is recorded: r = mu - 3 sigma is negative here, so the floor 1.5 is used.
    clipped = rb.case_params(scan, CONFIG, prior, "size", -3, 3, 1, depths[scan.scan_id])
    assert clipped.target < 1.5 and clipped.value == 1.5


def _thresholder(image):
    return np.where(image < 50, 2, 0).astype(np.uint8)


def _sweep_to(out_dir, healthy, depths):
    examples: dict = {}
    cases = rb.run_sweep(healthy["scans"], _thresholder, CONFIG, ["location", "size"], 1, 2, seed=9,
                         prior=healthy["prior"], depths=depths, examples=examples)
    # One example per (dimension, level): the picture beside the heatmap.
    assert sorted(examples) == [(d, k) for d in ("location", "size") for k in (-1, 0, 1)]
    assert all(truth.any() for _, truth, _ in examples.values())
    return rb.write_report(str(out_dir), cases, healthy["prior"], ["location", "size"], 1,
                           {"seed": 9}, examples)


@pytest.mark.slow
def test_outputs_are_complete_and_reproducible(healthy, tmp_path):
    first = _sweep_to(tmp_path / "a", healthy, healthy["depths"])
    again = _sweep_to(tmp_path / "b", healthy, {})        # fresh depth maps, same seed
    for name in ("cases.jsonl", "cases.csv", "summary.json"):
        assert open(first[name], "rb").read() == open(again[name], "rb").read(), name

    def no_nan(token):
        raise ValueError(f"summary.json holds {token}")

    summary = json.loads(open(first["summary.json"]).read(), parse_constant=no_nan)
    assert summary["prior"]["size"]["mu"] == healthy["prior"]["size"].mu
    assert [(r["dimension"], r["k"]) for r in summary["table"]] == \
        [(d, k) for d in ("location", "size") for k in (-1, 0, 1)]
    assert open(first["heatmap.png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    report = open(first["report.md"]).read()
    assert "![heatmap](heatmap.png)" in report and "| size |" in report
    assert "![examples](examples.png)" in report
    assert open(first["examples.png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    lines = open(first["cases.csv"]).read().splitlines()
    assert lines[0].startswith("dimension,k,value") and len(lines) == 1 + 2 * 3 * 2
    # Each case's record regenerates it exactly.
    from tumorforge.generator.params import SampleParams
    record = json.loads(open(first["cases.jsonl"]).readline())
    params = SampleParams.from_json(record["params"])
    case = rb.case_params(healthy["scans"][record["index"] % 2], CONFIG, healthy["prior"],
                          record["dimension"], record["k"], record["seed"], record["index"])
    assert params == case.params


def _cli(argv):
    from tumorforge.evaluation import cli
    parser = argparse.ArgumentParser(prog="tumorforge")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["robustness", *argv])
    return args.func(args)


def _checkpoint(folder, crop=32, spacing=1.0, preprocessing=True) -> str:
    """An untrained U-Net (``unet-small``, the CPU one) saved by the trainer's checkpoint writer,
    with the preprocessing record of crops of ``crop`` voxels at ``spacing`` mm (or,
    ``preprocessing=False``, without one)."""
    import torch
    from tumorforge.manifests.organs import ORGANS
    liver = ORGANS["liver"]
    from tumorforge.trainer import checkpoint as ckpt
    from tumorforge.trainer.models import build_model
    from tumorforge.trainer.preprocessing import Preprocessing
    torch.manual_seed(0)
    state = {"model": build_model("unet-small", 3).state_dict(),
             "config": json.dumps({"model": "unet-small"})}
    if preprocessing:
        prep = Preprocessing(spacing_mm=(spacing,) * 3, crop_size=(crop,) * 3,
                             window_hu=liver.training_window_hu, class_names=liver.classes,
                             dataset_ids=("ds-robust",))
        state["preprocessing"] = json.dumps(prep.to_json())
    return ckpt.save(str(folder), 0, state, keep=1)


@pytest.mark.slow
def test_cli_end_to_end_with_an_untrained_checkpoint(healthy, tmp_path):
    checkpoint = _checkpoint(tmp_path / "run", crop=32)
    out = tmp_path / "bench"
    assert _cli(["--checkpoint", checkpoint, "--manifest", healthy["manifest"], "--out",
                 str(out), "--cases-per-level", "1", "--dimensions", "size,intensity",
                 "--prior-samples", "30", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "unet-small" and summary["step"] == 0
    # Crop size, spacing and window come from the checkpoint's preprocessing record.
    assert summary["generator_config"]["crop_size"] == [32, 32, 32]
    assert summary["inference"] == {"spacing_mm": [1.0, 1.0, 1.0], "window_hu": [-21.0, 189.0],
                                    "crop_size": [32, 32, 32], "dataset_ids": ["ds-robust"]}
    assert len(summary["table"]) == 14 and all(r["n"] == 1 for r in summary["table"])
    assert len((out / "cases.jsonl").read_text().splitlines()) == 14
    assert all((out / name).stat().st_size > 0 for name in ("cases.csv", "heatmap.png", "report.md"))


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint, argv, message", [
    ({"preprocessing": False}, [], "predates preprocessing records"),
    ({"spacing": 1.0}, ["--spacing", "2"], "trained on crops at [1.0, 1.0, 1.0] mm"),
])
def test_cli_refuses_a_checkpoint_that_does_not_fit(healthy, tmp_path, checkpoint, argv, message):
    path = _checkpoint(tmp_path / "run", **checkpoint)
    with pytest.raises(UserError) as exc:
        _cli(["--checkpoint", path, "--manifest", healthy["manifest"], "--out",
              str(tmp_path / "out"), "--device", "cpu", *argv])
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("argv, message", [
    (["--dimensions", "size,colour"], "colour"),
    (["--crop-size", "40"], "multiple of 16"),
    (["--cases-per-level", "0"], "--cases-per-level"),
    (["--profile", "released"], "paper"),
    (["--checkpoint", "/nonexistent/step.pt"], "does not exist"),
])
def test_cli_refuses_bad_input_with_a_clear_message(tmp_path, argv, message):
    base = {"--checkpoint": str(tmp_path / "missing.pt"), "--manifest": str(tmp_path / "m.jsonl"),
            "--out": str(tmp_path / "out"), "--crop-size": "48"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    with pytest.raises((UserError, SystemExit)) as exc:     # SystemExit: argparse refused it
        _cli([x for kv in base.items() for x in kv])
    assert message in str(exc.value)
