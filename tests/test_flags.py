"""Every field of the generator config, the job spec and the training config is a flag, and a
flag overrides the file it is given with."""

from __future__ import annotations

import dataclasses

import pytest

from tumorforge.cluster.front_door import build_parser
from tumorforge.cluster.spec import JobSpec, Resources, load_spec
from tumorforge.generator.config import GeneratorConfig, PaperParams, ReleasedParams
from tumorforge.manifests.flags import DEST
from tumorforge.trainer.config import TrainConfig, load_config


def _dests(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest for a in sub._actions}


def _fields(cls, prefix="") -> set[str]:
    out = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING
                                    else f.default):
            out |= _fields(type(f.default_factory()), f"{prefix}{f.name}.")
        else:
            out.add(f"{DEST}{prefix}{f.name}")
    return out


def test_every_config_field_is_a_flag():
    generate = _dests("generate")
    assert _fields(GeneratorConfig, "generator.") <= generate
    assert {f"{DEST}generator.paper.{f.name}" for f in dataclasses.fields(PaperParams)} <= generate
    assert {f"{DEST}generator.released.{f.name}" for f in dataclasses.fields(ReleasedParams)} <= generate
    job = {f"{DEST}job.{f.name}" for f in dataclasses.fields(JobSpec)
           if f.name not in ("generator", "resources", "allow_roots")}
    assert job <= generate and "allow_root" in generate
    assert {f"{DEST}resources.{f.name}" for f in dataclasses.fields(Resources)} <= generate
    assert {f"{DEST}train.{f.name}" for f in dataclasses.fields(TrainConfig)} <= _dests("train")


def test_generate_flags_override_the_job_file(tmp_path):
    from tumorforge.cluster.cli import _spec_overrides
    job = tmp_path / "job.yaml"
    job.write_text("manifest: m.jsonl\noutput: o\nsamples: 5\ngenerator:\n  profile: released\n"
                   "  paper: {sigma_b_mm: 0.9, eta: [1.2, 1.4]}\nresources: {actors: 4, scan_retries: 1}\n")
    args = build_parser().parse_args([
        "generate", str(job), "--out", "elsewhere", "--seed", "5", "--crop-size", "64",
        "--spacing", "1.5", "--paper-sigma-b-mm", "0.7", "--size-mix", "tiny=1,satellite=1",
        "--actors", "3", "--formats", "zarr", "--allow-root", "/data"])
    spec = load_spec(args.job, _spec_overrides(args))
    assert spec.output == "elsewhere" and spec.root_seed == 5 and spec.manifest == "m.jsonl"
    g = spec.generator
    assert g.profile == "released" and g.crop_size == (64, 64, 64)
    assert g.target_spacing_mm == (1.5, 1.5, 1.5)
    assert g.paper.sigma_b_mm == 0.7 and g.paper.eta == (1.2, 1.4)     # nested fields merge
    assert g.size_mix == {"tiny": 1.0} and g.scenario_mix == {"satellite": 1.0}
    assert spec.resources.actors == 3 and spec.resources.scan_retries == 1
    assert spec.formats == ("zarr",) and spec.allow_roots == ("/data",)


def test_train_flags_cover_fields_the_old_parser_forgot(tmp_path):
    from tumorforge.manifests.flags import config_overrides
    args = build_parser().parse_args([
        "train", "trainer/configs/cpu-small.yaml", "--warmup-steps", "7", "--weight-decay", "0.1",
        "--keep", "1", "--no-bf16", "--no-resample", "--source", "a,weight=2", "--source", "b",
        "--val", "c", "--out", str(tmp_path)])
    cfg = load_config(args.config, config_overrides(args, "train."))
    assert (cfg.warmup_steps, cfg.weight_decay, cfg.keep, cfg.bf16, cfg.resample) == \
        (7, 0.1, 1, False, False)
    assert [(s.url, s.weight) for s in cfg.sources] == [("a", 2.0), ("b", 1.0)]
    assert cfg.val.url == "c" and cfg.out == str(tmp_path) and cfg.steps == 900   # file kept


def test_help_shows_defaults(capsys):
    import pytest
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "--warmup-steps N" in text and "(default: 50)" in text


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--bogus"],
     "tumorforge generate: unrecognized arguments: --bogus (see tumorforge generate --help)"),
    (["generat"], "did you mean 'generate'? (see tumorforge --help)"),
    (["manifest", "spilt"], "did you mean 'split'? (see tumorforge manifest --help)"),
    (["train", "--steps", "x"],
     "tumorforge train: argument --steps: invalid int value: 'x' (see tumorforge train --help)"),
])
def test_a_usage_error_is_one_line_that_says_where_help_is(argv, expected, capsys):
    from tumorforge.cluster.front_door import main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_help_shows_defaults_without_python_reprs():
    """Empty defaults read "", preset tables their names; no dataclass repr reaches --help."""
    import re
    text = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    assert "(default: )" not in text and "SizePreset(" not in text
    assert not re.search(r"[A-Z][a-z]+[A-Z][a-zA-Z]*\(", text), text
    assert 'presets tiny, small, medium, large' in re.sub(r"\s+", " ", text)


def test_top_help_lists_every_command_once_grouped_by_stage():
    from tumorforge.cluster.front_door import STAGES
    parser = build_parser()
    text = parser.format_help()
    commands = sorted(parser._subparsers._group_actions[0].choices)
    listed = [name for _, names in STAGES for name in names]
    assert sorted(listed) == commands
    lines = text.splitlines()
    for stage, names in STAGES:
        at = lines.index(f"{stage}:")
        assert [ln.split()[0] for ln in lines[at + 1:at + 1 + len(names)]] == list(names)


def test_print_config_writes_yaml_that_runs_back_to_the_same_spec(tmp_path, capsys):
    """``--print-config`` prints the effective job spec / training config (file and flags merged)
    and runs nothing; that YAML, passed back, gives the same spec."""
    from tumorforge.cluster.front_door import main
    from tumorforge.manifests.flags import config_yaml
    job = tmp_path / "job.yaml"
    job.write_text("manifest: m.jsonl\noutput: ds\nsamples: 10\ngenerator: {profile: paper}\n")
    assert main(["generate", str(job), "--samples", "12", "--crop-size", "64,64,64",
                 "--print-config"]) == 0
    printed = capsys.readouterr().out
    again = tmp_path / "again.yaml"
    again.write_text(printed)
    spec = load_spec(str(again), {})
    assert spec.samples == 12 and spec.generator.crop_size == (64, 64, 64)
    assert spec.generator.profile == "paper" and not (tmp_path / "ds").exists()
    assert config_yaml(spec.to_json()) == printed

    assert main(["train", "--source", "s3://b/ds", "--steps", "7", "--out", str(tmp_path / "r"),
                 "--print-config"]) == 0
    printed = capsys.readouterr().out
    again.write_text(printed)
    cfg = load_config(str(again), {})
    assert cfg.steps == 7 and cfg.sources[0].url == "s3://b/ds"
    assert config_yaml(cfg.to_json()) == printed and not (tmp_path / "r").exists()
