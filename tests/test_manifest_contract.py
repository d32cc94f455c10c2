"""The manifest contract: strict reading, validation of drift, deterministic folds, the CLI."""

from __future__ import annotations

import json

import pytest

from tumorforge.cluster.front_door import build_parser, main
from tumorforge.manifests.build import build_manifest, validate_manifest
from tumorforge.manifests.schema import LabelMap, ManifestError, read_manifest
from tumorforge.manifests.split import assign_folds
from conftest import user_error


@pytest.fixture
def manifest(tmp_path, tiny_lits):
    out = tiny_lits / "manifest.jsonl"
    build_manifest("lits", str(tiny_lits), str(out))
    return out


def _rewrite_first(path, **changes):
    lines = path.read_text().splitlines()
    entry = json.loads(lines[0])
    entry.update(changes)
    for k, v in list(entry.items()):
        if v is KeyError:
            del entry[k]
    lines[0] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")


def test_roundtrip_reads_what_build_wrote(manifest):
    entries = read_manifest(str(manifest))
    assert [e.scan_id for e in entries] == ["lits-0", "lits-1", "lits-2"]
    assert [e.role for e in entries] == ["tumor", "tumor", "healthy"]
    assert entries[0].label_map == LabelMap(organ=(1,), tumor=(2,))
    assert entries[0].shape == (24, 20, 10) and entries[0].spacing_mm == (0.8, 0.8, 2.5)
    assert entries[0].orientation == "RAS"
    assert entries[2].tumor_volume_ml == 0 and entries[0].tumor_volume_ml > 0


@pytest.mark.parametrize("change, message", [
    (dict(schema_version=3), "schema_version 3 is not supported"),
    (dict(organ="spleen"), "unknown organ 'spleen'"),
    (dict(colour="red"), "unknown field(s) ['colour']"),
    (dict(role="sick"), "role must be one of"),
    (dict(shape=[24, 20]), "shape must be three positive integers"),
    (dict(sha256={"image": "abc"}), "sha256 must be"),
    (dict(label_map={"organ": []}), "label_map.organ is empty"),
    (dict(label_map={"liver": [1]}), "label_map must be an object with 'organ'"),
    (dict(spacing_mm=KeyError), "missing field(s) ['spacing_mm']"),
])
def test_reader_rejects_what_it_does_not_understand(manifest, change, message):
    _rewrite_first(manifest, **change)
    with pytest.raises(ManifestError) as info:
        read_manifest(str(manifest))
    assert message in str(info.value) and f"{manifest}:1" in str(info.value)


def test_validate_detects_changed_file(manifest, tiny_lits):
    assert validate_manifest(str(manifest))[1] == []
    path = tiny_lits / "volume-1.nii"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    _, problems = validate_manifest(str(manifest))
    assert len(problems) == 1 and problems[0][0] == "lits-1"
    assert problems[0][2].startswith("sha256 mismatch")


def test_validate_detects_recorded_role_drift(manifest):
    _rewrite_first(manifest, role="healthy")
    _, problems = validate_manifest(str(manifest))
    assert len(problems) == 1
    scan, file, problem = problems[0]
    assert (scan, problem) == ("lits-0", "role: manifest has healthy, file gives tumor")
    assert file.endswith("segmentation-0.nii")         # the label file decides the role


def _entries(n_tumor, n_healthy, tmp_path):
    from tumorforge.manifests.schema import ScanEntry
    return [ScanEntry(scan_id=f"s{i:02d}", image="a", label="b", label_map=LabelMap(organ=(1,)),
                      role="tumor" if i < n_tumor else "healthy", source="lits",
                      sha256={"image": "0" * 64, "label": "0" * 64}, shape=(1, 1, 1),
                      spacing_mm=(1.0, 1.0, 1.0), orientation="RAS", organ_volume_ml=1.0,
                      tumor_volume_ml=0.0) for i in range(n_tumor + n_healthy)]


def test_split_is_deterministic_order_free_and_stratified(tmp_path):
    entries = _entries(13, 7, tmp_path)
    a = {e.scan_id: e.fold for e in assign_folds(entries, 5, seed=3)}
    b = {e.scan_id: e.fold for e in assign_folds(list(reversed(entries)), 5, seed=3)}
    c = {e.scan_id: e.fold for e in assign_folds(entries, 5, seed=4)}
    assert a == b
    assert a != c
    sizes = [list(a.values()).count(k) for k in range(5)]
    assert sizes == [4, 4, 4, 4, 4]
    for role, n in (("tumor", 13), ("healthy", 7)):
        per_fold = [sum(1 for e in entries if e.role == role and a[e.scan_id] == k) for k in range(5)]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n


def test_split_command_writes_folds(manifest, capsys):
    before = manifest.read_bytes()
    out = manifest.parent / "folds.jsonl"
    assert main(["manifest", "split", str(manifest), "--folds", "3", "--seed", "1",
                 "--out", str(out)]) == 0
    assert sorted(e.fold for e in read_manifest(str(out))) == [0, 1, 2]
    assert manifest.read_bytes() == before                   # -o leaves the input alone
    with pytest.raises(SystemExit):                          # neither -o nor --in-place
        main(["manifest", "split", str(manifest), "--folds", "3"])
    assert "one of the arguments" in capsys.readouterr().err
    assert main(["manifest", "split", str(manifest), "--folds", "3", "--seed", "1",
                 "--in-place"]) == 0
    assert manifest.read_bytes() == out.read_bytes()
    assert "more than the 3 scans" in user_error(
        capsys, ["manifest", "split", str(manifest), "--folds", "4", "--in-place"])


def test_validate_command_prints_problem_table_and_fails(manifest, tiny_lits, capsys):
    assert main(["manifest", "validate", str(manifest)]) == 0
    (tiny_lits / "segmentation-2.nii").unlink()
    assert main(["manifest", "validate", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "lits-2" in out and "segmentation-2.nii" in out and "file not found" in out


def test_help_lists_subcommands_and_each_has_help(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    commands = ("demo", "manifest", "phantoms", "preview", "generate", "submit", "audit", "verify",
                "train", "evaluate", "compare", "robustness", "vtt", "bench")
    for name in commands:
        assert name in text
    nested = [["manifest", sub] for sub in ("build", "validate", "split", "merge")] + \
        [["vtt", "make"], ["vtt", "score"]] + [["bench", b] for b in ("generator", "loader", "train")]
    for argv in [[c] for c in commands if c not in ("manifest", "vtt", "bench")] + nested:
        argv = argv + ["--help"]
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 0
        assert "usage: tumorforge" in capsys.readouterr().out


def test_generic_layout_pairs_by_placeholder(tmp_path):
    from conftest import tiny_scan, write_nifti
    root = tmp_path / "any"
    for name in ("caseA", "caseB"):
        image, label = tiny_scan(seed=len(name))
        write_nifti(root / "ct" / f"{name}.nii.gz", image)
        write_nifti(root / "seg" / f"{name}_liver.nii.gz", (label > 0).astype("uint8") * 5)
    write_nifti(root / "ct" / "orphan.nii.gz", tiny_scan()[0])
    out = tmp_path / "g.jsonl"
    assert main(["manifest", "build", "--layout", "generic", str(root), "-o", str(out),
                 "--image-pattern", "ct/{id}.nii.gz", "--label-pattern", "seg/{id}_liver.nii.gz",
                 "--label-map", "liver=5", "--source", "mine"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["scan_id"] for x in lines] == ["mine-caseA", "mine-caseB"]
    assert lines[0]["label_map"]["organ"] == [5] and lines[0]["organ"] == "liver" and lines[0]["role"] == "healthy"
    rejected = (tmp_path / "g.rejected.jsonl").read_text()
    assert "mine-orphan" in rejected and "no label matching" in rejected


def test_merge_keeps_one_role_and_refuses_duplicate_ids(manifest, tmp_path, capsys):
    out = manifest.parent / "healthy.jsonl"
    assert main(["manifest", "merge", str(manifest), "-o", str(out), "--role", "healthy"]) == 0
    assert [e.scan_id for e in read_manifest(str(out))] == ["lits-2"]
    assert "lits-0 is in both" in user_error(
        capsys, ["manifest", "merge", str(manifest), str(manifest), "-o", str(out)])


def test_schema_1_lines_read_as_liver(manifest):
    """A manifest written before organs were data (schema 1: ``label_map.liver``,
    ``liver_volume_ml``) reads as the same scans in the liver, and writes back as schema 2."""
    entries = read_manifest(str(manifest))
    lines = [json.loads(t) for t in manifest.read_text().splitlines()]
    old = []
    for line in lines:
        line = dict(line, schema_version=1, liver_volume_ml=line.pop("organ_volume_ml"))
        line["label_map"] = {"liver" if k == "organ" else k: v for k, v in line["label_map"].items()}
        del line["organ"]
        old.append(json.dumps(line))
    manifest.write_text("\n".join(old) + "\n")
    again = read_manifest(str(manifest))
    assert again == entries
    assert {e.organ for e in again} == {"liver"} and again[0].to_json()["schema_version"] == 2
    # A schema-1 line with schema 2's names is refused: the versions do not mix.
    manifest.write_text(json.dumps(dict(json.loads(old[0]), label_map={"organ": [1]})) + "\n")
    with pytest.raises(ManifestError, match="label_map must be an object with 'liver'"):
        read_manifest(str(manifest))


def test_label_map_parse_names_the_organ():
    assert LabelMap.parse("liver=1,tumor=2") == LabelMap(organ=(1,), tumor=(2,))
    assert LabelMap.parse("organ=3,vessel=4") == LabelMap(organ=(3,), vessel=(4,))
    with pytest.raises(ValueError, match="names no liver value"):
        LabelMap.parse("tumor=2")
