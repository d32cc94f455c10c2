"""Issue 30, manifests: the pancreas and the kidney in the organ table, and ``manifest build
--layout msd-pancreas`` (MSD Task07_Pancreas) and ``--layout kits`` (KiTS19/KiTS23) on tiny
hand-made scans in those layouts: organ, label map, roles, relative paths, a KiTS23 cyst that is
not a tumor, and what a wrong layout says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tumorforge.cluster.front_door import main
from tumorforge.manifests.organs import OrganError, get_organ
from conftest import tiny_scan, user_error, write_nifti


def _msd_task(root, task, organ, names):
    """``root/task/{imagesTr,labelsTr}/<name>.nii.gz`` and its dataset.json; every other case is
    tumor-free."""
    for n, name in enumerate(names):
        image, label = tiny_scan(tumor=n % 2 == 0, seed=n)
        write_nifti(root / task / "imagesTr" / f"{name}.nii.gz", image)
        write_nifti(root / task / "labelsTr" / f"{name}.nii.gz", label)
    (root / task / "dataset.json").write_text(json.dumps({
        "name": task, "labels": {"0": "background", "1": organ, "2": "cancer"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
                     for n in names]}))


def _kits_case(root, case, tumor=False, cyst=False, seed=0):
    """``root/case/{imaging,segmentation}.nii.gz``: a 0/1 'kidney' with an optional tumor (2) and
    an optional cyst (3) at the other end of it."""
    image, label = tiny_scan(tumor=tumor, seed=seed)
    if cyst:
        i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in label.shape], indexing="ij")
        label[((i + 0.3) ** 2 + j ** 2 + k ** 2 < 0.05) & (label == 1)] = 3
    write_nifti(root / case / "imaging.nii.gz", image)
    write_nifti(root / case / "segmentation.nii.gz", label)
    return label


def _build(layout, root, out):
    assert main(["manifest", "build", "--layout", layout, str(root), "-o", str(out)]) == 0
    return {e["scan_id"]: e for e in map(json.loads, out.read_text().splitlines())}


def test_the_pancreas_and_the_kidney_are_organs_of_the_table():
    for name in ("pancreas", "kidney"):
        organ = get_organ(name)
        assert organ.classes == ("background", name, "tumor")
        assert organ.training_window_hu == (-175.0, 250.0) and organ.erosion_mm == 0.0
        assert [organ.sizes[t].radius_mm for t in ("tiny", "small", "medium", "large")] == \
            [4.0, 8.0, 16.0, 32.0]
    assert get_organ("liver").training_window_hu == (-21.0, 189.0)
    with pytest.raises(OrganError) as caught:
        get_organ("spleen")
    assert str(caught.value) == ("organ: unknown organ 'spleen'; expected one of liver, pancreas, "
                                 "kidney")


def test_msd_pancreas_and_msd_each_read_their_own_task(tmp_path, capsys):
    root = tmp_path / "msd"
    _msd_task(root, "Task07_Pancreas", "pancreas", ["pancreas_001", "pancreas_004"])
    _msd_task(root, "Task03_Liver", "liver", ["liver_0"])
    found = _build("msd-pancreas", root, root / "pancreas.jsonl")
    assert sorted(found) == ["msd-Task07_Pancreas-pancreas_001", "msd-Task07_Pancreas-pancreas_004"]
    first = found["msd-Task07_Pancreas-pancreas_001"]
    second = found["msd-Task07_Pancreas-pancreas_004"]
    assert first["organ"] == second["organ"] == "pancreas"
    assert first["label_map"] == {"organ": [1], "tumor": [2], "vessel": []}
    assert (first["role"], second["role"]) == ("tumor", "healthy")
    assert first["image"] == "Task07_Pancreas/imagesTr/pancreas_001.nii.gz"
    assert first["label"] == "Task07_Pancreas/labelsTr/pancreas_001.nii.gz"
    assert "2 scan(s) (1 healthy, 1 with tumor)" in capsys.readouterr().out
    liver = _build("msd", root, root / "liver.jsonl")
    assert list(liver) == ["msd-Task03_Liver-liver_0"] and liver["msd-Task03_Liver-liver_0"][
        "organ"] == "liver"
    assert main(["manifest", "validate", str(root / "pancreas.jsonl")]) == 0


def test_kits23_cysts_are_kidney_never_tumor(tmp_path, capsys):
    root = tmp_path / "kits23" / "dataset"
    with_both = _kits_case(root, "case_00000", tumor=True, cyst=True)
    _kits_case(root, "case_00001", cyst=True, seed=1)
    _kits_case(root, "case_00002", seed=2)
    (root / "kits23.json").write_text("[]")
    found = _build("kits", root, root / "kits.jsonl")
    assert sorted(found) == ["kits23-case_00000", "kits23-case_00001", "kits23-case_00002"]
    case = found["kits23-case_00000"]
    assert case["organ"] == "kidney" and case["source"] == "kits23"
    assert case["label_map"] == {"organ": [1, 3], "tumor": [2], "vessel": []}
    assert case["image"] == "case_00000/imaging.nii.gz"
    assert case["label"] == "case_00000/segmentation.nii.gz"
    assert [found[k]["role"] for k in sorted(found)] == ["tumor", "healthy", "healthy"]
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000
    assert (with_both == 3).any()
    assert case["tumor_volume_ml"] == round(np.count_nonzero(with_both == 2) * voxel_ml, 3)
    assert case["organ_volume_ml"] == round(np.count_nonzero(with_both) * voxel_ml, 3)
    assert main(["manifest", "validate", str(root / "kits.jsonl")]) == 0


def test_kits19_is_told_by_its_kits_json_and_defines_no_cyst(tmp_path, capsys):
    root = tmp_path / "kits19" / "data"
    _kits_case(root, "case_00000", tumor=True)
    _kits_case(root, "case_00001", cyst=True, seed=1)           # a 3 KiTS19 does not define
    write_nifti(root / "case_00210" / "imaging.nii.gz", tiny_scan(seed=3)[0])   # a test case
    (root / "kits.json").write_text("[]")
    out = root / "kits.jsonl"
    found = _build("kits", root, out)
    assert list(found) == ["kits19-case_00000"]
    assert found["kits19-case_00000"]["label_map"] == {"organ": [1], "tumor": [2], "vessel": []}
    rejected = {r["scan_id"]: r["problem"] for r in
                map(json.loads, (root / "kits.rejected.jsonl").read_text().splitlines())}
    assert "unexpected label value(s) [3]; kits19 defines [0, 1, 2]" in \
        rejected["kits19-case_00001"]
    assert "no segmentation.nii.gz" in rejected["kits19-case_00210"]


def test_a_wrong_layout_names_the_organ_layout_that_fits(tmp_path, capsys):
    pancreas = tmp_path / "pancreas"
    _msd_task(pancreas, "Task07_Pancreas", "pancreas", ["pancreas_001", "pancreas_004"])
    message = user_error(capsys, ["manifest", "build", "--layout", "msd", str(pancreas),
                                  "-o", str(tmp_path / "m.jsonl")])
    assert "no scans of the msd layout" in message and "Task03_Liver dataset.json" in message
    assert "--layout msd-pancreas finds 2 scan(s) there" in message
    _kits_case(tmp_path / "kits", "case_00000", tumor=True)
    message = user_error(capsys, ["manifest", "build", "--layout", "lits", str(tmp_path / "kits"),
                                  "-o", str(tmp_path / "m.jsonl")])
    assert "--layout kits finds 1 scan(s) there" in message
    message = user_error(capsys, ["manifest", "build", "--layout", "msd-pancreas",
                                  str(tmp_path / "kits"), "-o", str(tmp_path / "m.jsonl")])
    assert "Task07_Pancreas" in message and "--layout kits finds 1 scan(s) there" in message
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("name", ["label-organ", "label-liver"])
def test_label_organ_and_its_old_name_both_answer(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["manifest", name, "--help"])
    assert done.value.code == 0
    assert "usage: tumorforge manifest label-organ" in capsys.readouterr().out   # one command


@pytest.mark.parametrize("layout", ["msd-pancreas", "kits"])
def test_the_organ_phantoms_build_with_their_truth(layout, tmp_path, capsys):
    """The phantoms in these layouts (``tumorforge phantoms``): every case is kept, its role is
    the truth's (a KiTS case whose only lesions are cysts is healthy) and its organ volume the
    truth's (cysts inside the kidney)."""
    from tumorforge.manifests.phantoms import write_layout
    cases = write_layout(layout, tmp_path / layout, 4, seed=7, scale=0.15)
    found = _build(layout, tmp_path / layout, tmp_path / layout / "m.jsonl")
    assert len(found) == len(cases) == 4
    for case, entry in zip(cases, (found[k] for k in sorted(found))):
        assert entry["organ"] == case["organ"] and entry["scan_id"].endswith(case["case"])
        assert entry["role"] == ("tumor" if case["has_tumor"] else "healthy")
        assert entry["organ_volume_ml"] == case["organ_volume_ml"]
    if layout == "kits":
        assert any(not c["has_tumor"] and any(les["kind"] == "cyst" for les in c["lesions"])
                   for c in cases)


def test_a_scan_of_another_organ_is_refused_not_painted_as_liver(tmp_path, capsys):
    """A kidney manifest under the default (liver) configuration is one line naming the scan and
    both organs, from generate (before any cluster starts) and from preview (as it prepares the
    scan); until the generator has per-organ rules nothing paints liver tumors into a kidney."""
    for n in range(2):
        _kits_case(tmp_path / "kits", f"case_0000{n}", seed=n)
    manifest = tmp_path / "kits.jsonl"
    _build("kits", tmp_path / "kits", manifest)
    said = user_error(capsys, ["generate", "--manifest", str(manifest), "--out",
                               str(tmp_path / "ds"), "--samples", "2", "--no-progress"])
    assert "is a kidney scan, but the generator is configured for liver tumors" in said
    assert str(manifest) in said and not (tmp_path / "ds").exists()
    said = user_error(capsys, ["preview", "--manifest", str(manifest), "--out",
                               str(tmp_path / "pv"), "--crop-size", "16,16,16"])
    assert "case_00000 is a kidney scan" in said and "configured for liver tumors" in said


def test_organ_flag_configures_the_organs_tumors(tmp_path, capsys):
    """``--organ kidney`` alone takes the kidney's record: its sizes and counts (under `released`
    too), priors and the window's low end for negative crops; then a kidney scan previews."""
    from tumorforge.generator.config import GeneratorConfig
    kidney = GeneratorConfig.from_json({"organ": "kidney"})
    assert kidney == GeneratorConfig.for_organ("kidney")
    assert kidney.released.counts["medium"] == (1, 1) and kidney.released.counts["tiny"] == (1, 3)
    assert kidney.released.negative_threshold_hu == -175.0
    assert GeneratorConfig.from_json({"organ": "kidney", "released": {"delta_hu": [40, 90]}}
                                     ).released.counts == kidney.released.counts   # merged
    assert GeneratorConfig.from_json({}) == GeneratorConfig()                     # liver as was
    for n in range(2):
        _kits_case(tmp_path / "kits", f"case_0000{n}", seed=n)
    manifest = tmp_path / "kits.jsonl"
    _build("kits", tmp_path / "kits", manifest)
    out = tmp_path / "pv"
    assert main(["preview", "--manifest", str(manifest), "--organ", "kidney", "--out", str(out),
                 "--crop-size", "16,16,16", "--size-mix", "tiny", "--backend", "numpy"]) == 0
    [params] = out.glob("*.params.json")
    config = json.loads(params.read_text())["config"]
    assert config["organ"] == "kidney" and config["released"]["counts"]["tiny"] == [1, 3]


def test_a_liver_model_is_refused_on_kidney_scans(tmp_path, capsys):
    """evaluate reads the organ from the manifest and checks the checkpoint's classes against
    it: a liver model on a KiTS manifest is one line naming both, before any scan is read."""
    pytest.importorskip("torch")
    from types import SimpleNamespace
    from tumorforge.trainer import checkpoint as ckpt
    from tumorforge.trainer.models import build_model
    from tumorforge.trainer.preprocessing import Preprocessing
    index = SimpleNamespace(spacing_mm=(2.0, 2.0, 2.0), crop_size=(32, 32, 32), organ="liver")
    prep = Preprocessing.of_datasets([SimpleNamespace(url="a", index=index, dataset_id="id-a")])
    model = build_model("unet-small", len(prep.class_names))
    path = ckpt.save(str(tmp_path / "run"), 0, {
        "model": model.state_dict(), "config": json.dumps({"model": "unet-small"}),
        "preprocessing": json.dumps(prep.to_json())}, keep=1)
    for n in range(2):
        _kits_case(tmp_path / "kits", f"case_0000{n}", tumor=True, seed=n)
    manifest = tmp_path / "kits.jsonl"
    _build("kits", tmp_path / "kits", manifest)
    said = user_error(capsys, ["evaluate", "--checkpoint", str(path), "--manifest", str(manifest),
                               "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert "the model's classes are ['background', 'liver', 'tumor']" in said
    assert "evaluation of the kidney expects ['background', 'kidney', 'tumor']" in said


def test_an_experiment_names_its_organ_once(tmp_path, capsys):
    """``organ:`` in an experiment spec reaches every arm's generator configuration; a liver
    spec's record (and spec_sha256) is what it was; an arm's generator naming another organ, or
    an organ not in the table, is one line."""
    import yaml
    from tumorforge.cluster.experiment import load_spec
    base = {"name": "x", "annotated": "a.jsonl", "healthy": "h.jsonl", "folds": [0],
            "arms": [{"name": "syn", "profile": "released"}]}
    liver = tmp_path / "liver.yaml"
    liver.write_text(yaml.safe_dump(base))
    assert "organ" not in load_spec(str(liver)).to_json()
    kidney = tmp_path / "kidney.yaml"
    kidney.write_text(yaml.safe_dump({**base, "organ": "kidney"}))
    spec = load_spec(str(kidney))
    assert spec.organ == "kidney" and spec.to_json()["organ"] == "kidney"
    assert spec.sha256 != load_spec(str(liver)).sha256
    for bad, says in (({**base, "organ": "kidney", "generator": {"organ": "liver"}},
                       "generator names organ 'liver' but the experiment's organ is 'kidney'"),
                      ({**base, "organ": "spleen"}, "unknown organ 'spleen'")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        message = user_error(capsys, ["experiment", str(path)])
        assert message.startswith("experiment: ") and says in message


@pytest.mark.parametrize("organ", ["pancreas", "kidney"])
def test_bench_generator_runs_on_the_phantoms_organ(organ, tmp_path, capsys):
    """``bench generator --organ`` benchmarks tumors in that organ of the built-in phantom."""
    report = tmp_path / "bench.json"
    assert main(["bench", "generator", "--organ", organ, "--phantom-scale", "0.15",
                 "--crop-size", "32,32,32", "--backend", "numpy", "--samples", "2",
                 "--json", str(report)]) == 0
    assert f"built-in phantom, scale 0.15, {organ})" in capsys.readouterr().out
    assert report.exists()
