"""Visual Turing Test: a blinded packet that gives nothing away, and scoring exactly as Table 2."""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest

from tumorforge.evaluation import cli, vtt
from tumorforge.manifests.build import build_manifest

N_REAL, N_SYNTHETIC, SEED = 2, 2, 3


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run ``tumorforge vtt ...`` through a parser of our own; returns (exit code, stdout)."""
    parser = argparse.ArgumentParser(prog="tumorforge")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


def _make_argv(data, out, seed=SEED):
    return ["vtt", "make", "--real", str(data / "lits.jsonl"), "--healthy", str(data / "btcv.jsonl"),
            "--out", str(out), "--n-real", str(N_REAL), "--n-synthetic", str(N_SYNTHETIC),
            "--seed", str(seed), "--margin", "16"]


def _small_scan(seed: int, tumor: bool):
    """cluster_fixtures' ellipsoid liver (76 x 66 x 68 mm: every case is resampled to 1 mm, and
    a phantom's full-size liver costs ten times the voxels), with a round 16 mm lesion (-40 HU,
    label 2) if ``tumor``."""
    from cluster_fixtures import liver_scan
    image, label, affine = liver_scan(seed)
    if tumor:
        ax = [(np.arange(n) - n / 2) * s for n, s in zip(image.shape, (1.0, 1.0, 2.0))]
        x, y, z = np.meshgrid(*ax, indexing="ij")
        lesion = ((x - 14) ** 2 + (y + 10) ** 2 + z ** 2 < 8 ** 2) & (label == 1)
        label[lesion] = 2
        image[lesion] -= 40
    return image, label, affine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """LiTS-layout scans (cases 0-2 with tumors, case 3 tumor-free) and two healthy BTCV-layout
    ones (liver code 6), small synthetic volumes."""
    from conftest import write_nifti
    root = tmp_path_factory.mktemp("vtt-data")
    for n in range(4):
        image, label, affine = _small_scan(n, tumor=n != 3)
        write_nifti(root / "lits" / f"volume-{n}.nii", image, affine)
        write_nifti(root / "lits" / f"segmentation-{n}.nii", label, affine)
    for n in (1, 2):
        image, label, affine = _small_scan(10 + n, tumor=False)
        write_nifti(root / "btcv" / "img" / f"img{n:04d}.nii.gz", image, affine)
        write_nifti(root / "btcv" / "label" / f"label{n:04d}.nii.gz", label * 6, affine)
    build_manifest("lits", str(root / "lits"), str(root / "lits.jsonl"))
    build_manifest("btcv", str(root / "btcv"), str(root / "btcv.jsonl"))
    return root


@pytest.fixture(scope="module")
def packet(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vtt-packet") / "packet"
    code, stdout = _cli(_make_argv(data, out))
    assert code == 0
    return out, stdout


def _case_ids(out):
    return sorted(name[:-len(".nii.gz")] for name in os.listdir(out / "cases"))


def _key(out):
    return json.loads((out / "key" / "answer_key.json").read_text())


@pytest.mark.slow
def test_packet_mixes_real_and_synthetic_under_random_ids(packet):
    out, _ = packet
    ids = _case_ids(out)
    key = _key(out)
    assert len(ids) == N_REAL + N_SYNTHETIC and sorted(key) == ids
    assert all(re.fullmatch(r"case-[0-9a-f]{6}", c) for c in ids)
    truths = sorted(rec["truth"] for rec in key.values())
    assert truths == ["real"] * N_REAL + ["synthetic"] * N_SYNTHETIC
    for case_id, rec in key.items():
        assert not any(word in case_id for word in (rec["source_scan"], "lits", "btcv", "real", "syn"))
        assert rec["source_scan"].startswith("lits-" if rec["truth"] == "real" else "btcv-")
        assert rec["source_scan"] != "lits-3"          # the tumor-free LiTS case is not "real"
        # the synthetic cases are the default profile's, as every command's
        assert rec["params"]["profile"] == ("real" if rec["truth"] == "real" else "released")
    # Each scan appears once: the same anatomy twice would tell a reader both are synthetic.
    assert len({rec["source_scan"] for rec in key.values()}) == len(key)


@pytest.mark.slow
def test_every_case_has_tumor_voxels_and_labels_only_in_the_key(packet):
    out, _ = packet
    for case_id in _case_ids(out):
        label = np.asarray(nib.load(out / "key" / "labels" / f"{case_id}.label.nii.gz").dataobj)
        assert (label == 2).any(), case_id
        image = nib.load(out / "cases" / f"{case_id}.nii.gz")
        assert image.shape == label.shape
    public = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out)
                    for f in files if not os.path.relpath(d, out).startswith("key"))
    assert public == sorted(["README.txt", "answer_sheet.csv", "key_sha256.txt"]
                            + [f"cases/{c}.nii.gz" for c in _case_ids(out)])


@pytest.mark.slow
def test_all_cases_share_one_grid(packet):
    out, _ = packet
    for case_id in _case_ids(out):
        img = nib.load(out / "cases" / f"{case_id}.nii.gz")
        assert img.get_data_dtype() == np.int16
        assert img.header.get_zooms() == (1.0, 1.0, 1.0)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        # No scanner origin: the first voxel sits at (0, 0, 0) for every case.
        np.testing.assert_array_equal(img.affine, np.eye(4))
        np.testing.assert_array_equal(img.header.get_qform(), np.eye(4))


@pytest.mark.slow
def test_headers_and_gzip_streams_carry_no_hint(packet, data):
    out, _ = packet
    scan_ids = [json.loads(line)["scan_id"] for m in ("lits.jsonl", "btcv.jsonl")
                for line in (data / m).read_text().splitlines()]
    forbidden = [s.encode() for s in scan_ids + ["lits", "btcv", "tumorforge", "synthetic",
                                                 "real", "tumor", "nibabel"]]
    for case_id in _case_ids(out):
        path = out / "cases" / f"{case_id}.nii.gz"
        raw = path.read_bytes()
        assert raw[3] == 0, "gzip header has flags (a file name or comment)"
        assert raw[4:8] == b"\0\0\0\0", "gzip header carries a modification time"
        hdr = nib.load(path).header
        for field in ("descrip", "aux_file", "db_name", "intent_name"):
            assert hdr[field].item() == b"", (case_id, field)
        assert not list(hdr.extensions)
        with gzip.open(path) as f:
            head = f.read(352 + 64).lower()      # header, extension flag, first voxels
        assert not any(word in head for word in forbidden), case_id


@pytest.mark.slow
def test_printed_hash_is_the_key_hash_and_the_sheet_lists_the_cases(packet):
    out, stdout = packet
    digest = hashlib.sha256((out / "key" / "answer_key.json").read_bytes()).hexdigest()
    assert f"answer key sha256: {digest}" in stdout
    assert (out / "key_sha256.txt").read_text().strip() == digest
    with open(out / "answer_sheet.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["case_id", "answer", "confidence", "comment"]
    assert [r[0] for r in rows[1:]] == _case_ids(out)
    assert all(r[1:] == ["", "", ""] for r in rows[1:])
    readme = (out / "README.txt").read_text()
    assert "real, synthetic, unsure" in readme


@pytest.mark.slow
def test_same_seed_gives_identical_packet(packet, data, tmp_path):
    out, _ = packet
    again = tmp_path / "again"
    _cli(_make_argv(data, again))
    assert _case_ids(again) == _case_ids(out)
    for case_id in _case_ids(out):
        assert ((again / "cases" / f"{case_id}.nii.gz").read_bytes()
                == (out / "cases" / f"{case_id}.nii.gz").read_bytes())
    assert (again / "key_sha256.txt").read_text() == (out / "key_sha256.txt").read_text()


@pytest.mark.slow
def test_make_refuses_impossible_requests(data, tmp_path, packet):
    with pytest.raises(vtt.VTTError, match=r"lits.jsonl: 4 real cases asked for, but only 3"):
        vtt.make_packet(str(data / "lits.jsonl"), str(data / "btcv.jsonl"), str(tmp_path / "a"),
                        4, 1, 0)
    with pytest.raises(vtt.VTTError, match=r"btcv.jsonl: 3 synthetic cases .* only 2"):
        vtt.make_packet(str(data / "lits.jsonl"), str(data / "btcv.jsonl"), str(tmp_path / "b"),
                        1, 3, 0)
    with pytest.raises(vtt.VTTError, match="not empty"):
        vtt.make_packet(str(data / "lits.jsonl"), str(data / "btcv.jsonl"), str(packet[0]), 1, 1, 0)
    with pytest.raises(SystemExit):
        _cli(_make_argv(data, tmp_path / "c") + ["--size-mix", "enormous"])


# ---------------------------------------------------------------------------------------------
# Scoring: Table 2 of the paper


def _reader(counts: dict) -> tuple[dict, list[dict]]:
    """A key and answer rows with ``counts[(truth, answer)]`` cases each."""
    key, rows = {}, []
    for (truth, answer), n in sorted(counts.items()):
        for _ in range(n):
            case_id = f"case-{len(key):06x}"
            key[case_id] = {"truth": truth, "source_scan": "x", "seed": 0, "index": len(key)}
            rows.append({"case_id": case_id, "answer": answer, "confidence": "", "comment": ""})
    return key, rows


# 20 real and 30 synthetic cases each (Section 5.1). The junior reader's one unsure case is
# synthetic (20 real answered definitely); the senior gave 19 judgments on the 30 synthetic cases.
JUNIOR = {("real", "real"): 5, ("real", "synthetic"): 15, ("synthetic", "real"): 21,
          ("synthetic", "synthetic"): 8, ("synthetic", "unsure"): 1}
SENIOR = {("real", "real"): 10, ("real", "synthetic"): 2, ("real", "unsure"): 8,
          ("synthetic", "real"): 7, ("synthetic", "synthetic"): 12, ("synthetic", "unsure"): 11}


@pytest.mark.parametrize("counts, unsure, rates, unsure_wrong", [
    (JUNIOR, 1, (26.5, 27.6, 25.0), (26.0, 26.7, 25.0)),
    (SENIOR, 19, (71.0, 63.2, 83.3), (44.0, 40.0, 50.0)),
])
def test_score_reproduces_table_2(counts, unsure, rates, unsure_wrong):
    key, rows = _reader(counts)
    result = vtt.score_answers(rows, key)
    assert result["unsure"] == unsure and result["cases"] == 50
    got = tuple(round(100 * result[m]["value"], 1) for m in ("accuracy", "sensitivity", "specificity"))
    assert got == rates
    got = tuple(round(100 * result[f"{m}_unsure_wrong"]["value"], 1)
                for m in ("accuracy", "sensitivity", "specificity"))
    assert got == unsure_wrong
    for name in ("accuracy", "sensitivity", "specificity"):
        lo, hi = result[name]["ci95"]
        assert lo < result[name]["value"] < hi
    # Both readers are away from chance: the junior significantly below it (fooled), the senior above.
    assert result["p_value_vs_chance"] < 0.05
    table = vtt.format_report(result)
    assert re.search(r"real\s+%d\s+%d\s+%d" % tuple(counts.get(("real", a), 0) for a in vtt.ANSWERS),
                     table)


def test_wilson_interval_known_values():
    lo, hi = vtt.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.27753, abs=1e-5)       # z^2 / (n + z^2)
    lo, hi = vtt.wilson(8, 29)
    assert (lo, hi) == pytest.approx((1 - vtt.wilson(21, 29)[1], 1 - vtt.wilson(21, 29)[0]))
    assert vtt.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert vtt.wilson(0, 0) is None


def test_answers_tolerate_case_and_whitespace():
    key, rows = _reader({("real", "real"): 1, ("synthetic", "synthetic"): 1, ("real", "unsure"): 1})
    for row, pad in zip(rows, (" ", "\t", "  ")):
        row["answer"] = pad + row["answer"].capitalize() + pad
    rows[0]["answer"] = rows[0]["answer"].upper()
    result = vtt.score_answers(rows, key)
    assert result["accuracy"]["value"] == 1.0 and result["unsure"] == 1


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[1].update(answer="maybe"), r"row 2 \(line 3\): case case-000001: answer 'maybe'"),
    (lambda rows: rows[2].update(case_id="case-ffffff"), r"row 3 \(line 4\): case 'case-ffffff' is not in"),
    (lambda rows: rows.append(dict(rows[0])), r"row 4 \(line 5\): case case-000000 is answered a second"),
    (lambda rows: rows[0].update(answer=""), r"1 case\(s\) of the key have no answer: case-000000"),
    (lambda rows: rows.pop(), r"1 case\(s\) of the key have no answer: case-000002"),
])
def test_bad_answers_are_refused_naming_the_row(edit, message):
    key, rows = _reader({("real", "real"): 2, ("synthetic", "synthetic"): 1})
    edit(rows)
    with pytest.raises(vtt.VTTError, match=message):
        vtt.score_answers(rows, key)


@pytest.mark.slow
def test_score_cli_checks_the_key_hash_and_writes_json(packet, tmp_path):
    out, _ = packet
    key = _key(out)
    answers = tmp_path / "reader.csv"
    with open(answers, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "answer", "confidence", "comment"])
        for case_id in sorted(key):
            w.writerow([case_id, key[case_id]["truth"], "5", "looks it"])
    key_path = str(out / "key" / "answer_key.json")
    digest = (out / "key_sha256.txt").read_text().strip()
    code, stdout = _cli(["vtt", "score", str(answers), "--key", key_path, "--expect-sha256", digest,
                         "--json", str(tmp_path / "r.json")])
    assert code == 0 and "sha256 matches" in stdout and "100.0%" in stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["accuracy"]["k"] == len(key) and result["confusion"]["real"]["real"] == N_REAL

    with pytest.raises(vtt.VTTError, match="differs from the expected"):
        _cli(["vtt", "score", str(answers), "--key", key_path, "--expect-sha256", "0" * 64])
    answers.write_text(answers.read_text().replace(",real,", ",fake,", 1))
    with pytest.raises(vtt.VTTError, match=r"reader.csv row \d+ \(line \d+\): .*answer 'fake'"):
        _cli(["vtt", "score", str(answers), "--key", key_path])


@pytest.mark.slow
def test_packet_says_when_real_and_synthetic_come_from_other_datasets(packet):
    """Here every real case is LiTS and every synthetic one BTCV: the packet warns and records it."""
    out, stdout = packet
    assert "warning: real and synthetic cases are not drawn from comparable sources" in stdout
    sources = json.loads((out / "key" / "packet.json").read_text())["sources"]
    assert sources["comparable"] is False and sources["shared_datasets"] == []
    assert set(sources["real_cases"]) == {"lits"} and set(sources["synthetic_cases"]) == {"btcv"}


def test_comparable_pools_prefer_the_datasets_both_manifests_hold():
    from types import SimpleNamespace as S
    real = [S(source="lits", scan_id=f"lits-{i}") for i in range(3)] + [S(source="msd",
                                                                         scan_id="msd-1")]
    healthy = [S(source="lits", scan_id="lits-9"), S(source="btcv", scan_id="btcv-1")]
    r, h, record = vtt.comparable_pools(real, healthy, 2, 1, False)
    assert record["comparable"] and {e.source for e in r} == {e.source for e in h} == {"lits"}
    r, h, record = vtt.comparable_pools(real, healthy, 2, 2, False)      # too few shared
    assert not record["comparable"] and len(h) == 2 and "fewer than" in record["warning"]


@pytest.mark.slow
def test_several_readers_are_scored_with_their_agreement(packet, tmp_path):
    """Fleiss' kappa: two readers who agree on half of four cases, answering real and synthetic
    equally often, agree no better than chance (hand-worked: observed 0.5, chance 0.5, kappa 0);
    readers who agree on everything have kappa 1. The CLI scores each sheet and the agreement."""
    a = {"c1": "real", "c2": "synthetic", "c3": "real", "c4": "synthetic"}
    b = {"c1": "real", "c2": "synthetic", "c3": "synthetic", "c4": "real"}
    result = vtt.fleiss_kappa([a, b])
    assert (result["observed_agreement"], result["chance_agreement"]) == (0.5, 0.5)
    assert result["fleiss_kappa"] == 0.0
    assert vtt.fleiss_kappa([a, a, a])["fleiss_kappa"] == 1.0
    out, _ = packet
    key = _key(out)
    sheets = []
    for n, flip in enumerate((False, True)):
        path = tmp_path / f"reader{n}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "answer"])
            for case_id in sorted(key):
                truth = key[case_id]["truth"]
                w.writerow([case_id, ({"real": "synthetic", "synthetic": "real"}[truth]
                                      if flip else truth)])
        sheets.append(str(path))
    code, stdout = _cli(["vtt", "score", *sheets, "--key", str(out / "key" / "answer_key.json"),
                         "--json", str(tmp_path / "r.json")])
    assert code == 0 and stdout.count("accuracy") >= 4 and "Fleiss' kappa" in stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["agreement"]["fleiss_kappa"] < 0             # they always disagree
    assert [r["accuracy"]["value"] for r in result["readers"].values()] == [1.0, 0.0]
