"""One error boundary (issue 26): every user-caused error is a ``UserError``; the front door prints
it as one line, exits 2, shows no traceback, and the command writes nothing. Each malformed spec,
config or record below is built by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import user_error
from tumorforge.manifests.errors import UserError, one_line

JOB = {"manifest": "m.jsonl", "output": "OUT", "samples": 4}


def _job(tmp_path, **changes) -> list[str]:
    spec = {**JOB, "output": str(tmp_path / "out"), **changes}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return ["generate", str(path)]


@pytest.mark.parametrize("changes, words", [
    ({"samples": "four"}, "samples: expected int, found str 'four'"),
    ({"samples": 0}, "samples must be >= 1"),
    ({"sampels": 4}, "unknown field(s) ['sampels']"),
    ({"formats": ["zarr", "tar"]}, "formats ['zarr', 'tar']"),
    ({"resources": {"actor": 2}}, "resources: unknown field(s) ['actor']"),
    ({"resources": {"actors": "2"}}, "resources: actors: expected int"),
    ({"generator": {"sizes": {"tiny": {"sigma_e_mm": [1, 2], "count": [1, 2]}}}},
     "generator: sizes: tiny: missing field(s) ['radius_mm']"),
    ({"generator": {"paper": {"eta": "fine"}}}, "generator: paper: eta: expected a list"),
    ({"generator": {"multifocal_counts": {"tiny": [2]}}},
     "generator: multifocal_counts: tiny: expected 2 values, found 1"),
    ({"generator": {"negative_fraction": 3}}, "negative_fraction 3 is not in [0, 1]"),
    ({"generator": {"profile": "papr"}}, "profile 'papr'"),
])
def test_malformed_job_spec_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, changes,
                                                                   words):
    message = user_error(capsys, _job(tmp_path, **changes))
    assert message.startswith("generate: ") and words in message, message
    assert str(tmp_path / "job.yaml") in message           # names the file
    assert not (tmp_path / "out").exists()


def test_job_spec_that_is_not_yaml_or_not_a_mapping(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("samples: [1,\n")
    assert "not valid YAML" in user_error(capsys, ["generate", str(path)])
    path.write_text("- 1\n- 2\n")
    assert "expected a mapping" in user_error(capsys, ["generate", str(path)])
    assert "cannot read the job spec" in user_error(capsys, ["generate", str(tmp_path / "no.yaml")])


@pytest.mark.parametrize("config, words", [
    ({"sizes": {"small": {"sigma_e_mm": [1, 2], "count": [3, 10]}}}, "missing field(s) ['radius_mm']"),
    ({"crop_size": [96, 96]}, "crop_size: expected 3 values, found 2"),
    ({"released": {"counts": {"tiny": [3, "ten"]}}}, "released: counts: tiny[1]: expected int"),
    ({"paper": {"capsule": 1}}, "paper: unknown field(s) ['capsule']"),
])
def test_malformed_generator_config_is_one_line(tmp_path, capsys, config, words):
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "preview"
    message = user_error(capsys, ["preview", "--manifest", str(tmp_path / "m.jsonl"),
                                  "--generator-config", str(path), "--out", str(out)])
    assert message.startswith("preview: ") and words in message and str(path) in message
    assert not out.exists()


def test_experiment_checks_every_arms_generator_before_any_work(tmp_path, capsys):
    """A typo in one arm's generator section used to surface as a traceback after the other arms
    had run for minutes; now the spec is checked whole first."""
    spec = {"name": "x", "annotated": "a.jsonl", "healthy": "h.jsonl", "folds": [0],
            "out": str(tmp_path / "exp"),
            "arms": [{"name": "real", "profile": "real"},
                     {"name": "syn", "profile": "paper-train",
                      "generator": {"sizes": {"tiny": {"radius": 4}}}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    message = user_error(capsys, ["experiment", str(path)])
    assert message.startswith("experiment: ") and "arm 'syn'" in message and "radius" in message
    assert not (tmp_path / "exp").exists()
    spec["arms"][1]["generator"] = {}
    spec["folds"] = ["zero"]
    path.write_text(yaml.safe_dump(spec))
    assert "folds[0]: expected int" in user_error(capsys, ["experiment", str(path)])


def test_training_config_typo_is_one_line(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"url": str(tmp_path / "ds")}], "stepz": 5,
                                    "out": str(tmp_path / "run")}))
    message = user_error(capsys, ["train", str(path)])
    assert message.startswith("train: ") and "stepz" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("index, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"format": "tumorforge.dataset/99"}), "newer tumorforge"),
])
def test_malformed_dataset_index_is_one_line(tmp_path, capsys, index, words):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "index.json").write_text(index)
    for argv in (["verify", str(tmp_path / "ds")], ["inspect", str(tmp_path / "ds")],
                 ["audit", str(tmp_path / "ds"), "--index", "0"],
                 ["bench", "loader", str(tmp_path / "ds")]):
        message = user_error(capsys, argv)
        assert words in message and "index.json" in message, (argv, message)


def test_malformed_synthesize_record_is_one_line(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "synthesize.json").write_text(json.dumps({"format": "x", "cases": 3}))
    message = user_error(capsys, ["stats", str(folder)])
    assert message.startswith("stats: ") and "synthesize.json" in message


def test_empty_message_still_says_something():
    """``str(exc).splitlines()[0]`` raised IndexError on an empty message (whole_scan, label-liver)."""
    assert one_line(UserError("")) == "UserError"
    assert one_line(ValueError("first\n\n  second  ")) == "first; second"
    assert len(one_line(UserError("x" * 5000))) == 2000


def test_user_errors_of_every_stage_share_the_base():
    from tumorforge.cluster.job import JobError, OperatorError
    from tumorforge.cluster.spec import SpecError
    from tumorforge.manifests.dataset.reader import DatasetError
    from tumorforge.manifests.nifti import ScanError
    from tumorforge.manifests.records import RecordError
    from tumorforge.manifests.schema import ManifestError
    from tumorforge.trainer.config import ConfigError
    from tumorforge.trainer.train import TrainError
    for cls in (JobError, OperatorError, SpecError, DatasetError, ScanError, RecordError,
                ManifestError, ConfigError, TrainError):
        assert issubclass(cls, UserError) and cls.exit_code == 2, cls


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    """The installed entry point, not only ``main``: one stderr line, exit 2, no traceback."""
    argv = _job(tmp_path, samples="four")
    done = subprocess.run([sys.executable, "-m", "tumorforge.cluster", *argv], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("generate: "), done.stderr
    assert not (tmp_path / "out").exists()


def test_version_is_the_package_version_and_names_the_generator_output_version():
    import tomllib
    from pathlib import Path
    from tumorforge.cluster.front_door import version_text
    from tumorforge.generator import GENERATOR_VERSION
    root = Path(__file__).resolve().parent.parent
    package = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert version_text() == f"tumorforge {package} (generator output version {GENERATOR_VERSION})"


def test_bench_loader_on_damaged_zarr_metadata_is_one_line(tmp_path, capsys):
    """`bench loader` printed a traceback where `train` gave one line (red team, issue 26)."""
    from cluster_fixtures import healthy_manifest, write_dataset
    manifest = healthy_manifest(tmp_path, 1)
    ds = tmp_path / "ds"
    write_dataset(manifest, ds, formats=("zarr",))
    meta = ds / "dataset.zarr" / "image" / "zarr.json"
    obj = json.loads(meta.read_text())
    obj["data_type"] = "int32"
    meta.write_text(json.dumps(obj))
    for argv in (["bench", "loader", str(ds), "--workers", "0", "--batches", "1"],
                 ["train", "--source", str(ds), "--steps", "1", "--out", str(tmp_path / "run")]):
        message = user_error(capsys, argv)
        assert "zarr.json" in message, message


def test_sample_params_are_read_by_the_strict_checker():
    """A provenance record's parameters (what audit and replay regenerate from) name the tumor
    and field that is wrong, and a record written by the generator reads back equal."""
    from tumorforge.generator.params import SampleParams
    from tumorforge.manifests.records import RecordError
    tumor = {"kind": "tiny", "center": [1, 2, 3], "radius_mm": 4.0, "half_axes_mm": [4, 4, 4],
             "sigma_e_mm": 1, "deform_seed": 7}
    record = {"scan_id": "s", "profile": "released", "kind": "tiny", "crop_origin": [0, 0, 0],
              "crop_size": [32, 32, 32], "tumors": [tumor], "parenchyma_mean_hu": 100.0,
              "parenchyma_sd_hu": 20.0}
    params = SampleParams.from_json(record)
    assert params.tumors[0].center == (1, 2, 3)
    assert SampleParams.from_json(json.loads(json.dumps(params.to_json()))) == params
    for bad, words in ((dict(record, tumors=[{**tumor, "center": [1, 2]}]),
                        "tumors[0]: center: expected 3 values"),
                       (dict(record, tumors=[{k: v for k, v in tumor.items() if k != "kind"}]),
                        "tumors[0]: missing field(s) ['kind']"),
                       (dict(record, crop_size="32"), "crop_size: expected a list"),
                       (dict(record, extra=1), "unknown field(s) ['extra']")):
        with pytest.raises(RecordError) as exc:
            SampleParams.from_json(bad, "provenance of sample 3")
        assert str(exc.value).startswith("provenance of sample 3: ") and words in str(exc.value)
