"""A user's own folder of CT scans and liver masks (not a known dataset layout): its manifest
built and validated from another working directory, and what an empty or wrong layout says.
The scans are small synthetic volumes (tests/cluster_fixtures.py)."""

from __future__ import annotations

import json

import pytest

from tumorforge.cluster.front_door import main
from cluster_fixtures import liver_scan
from conftest import user_error, write_nifti


@pytest.fixture()
def own_folder(tmp_path):
    """``scans/ct/<id>.nii.gz`` and ``scans/masks/<id>_liver.nii.gz`` (0/1 liver masks)."""
    data = tmp_path / "scans"
    for s in range(2):
        image, label, affine = liver_scan(s)
        write_nifti(data / "ct" / f"p{s}.nii.gz", image, affine)
        write_nifti(data / "masks" / f"p{s}_liver.nii.gz", label, affine)
    return data


def test_own_folder_manifest_is_built_and_validated_from_elsewhere(own_folder, tmp_path,
                                                                  monkeypatch, capsys):
    """The first two of the five commands, run from another folder. All five run as a reader types
    them in tests/test_docs.py (the own-data page's shell blocks, on phantoms)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest = own_folder / "manifest.jsonl"
    # 1. The manifest, inside the data folder: paths relative to it, liver=1 by default.
    assert main(["manifest", "build", "--layout", "generic", str(own_folder),
                 "--image-pattern", "ct/{id}.nii.gz", "--label-pattern", "masks/{id}_liver.nii.gz",
                 "-o", str(manifest)]) == 0
    said = capsys.readouterr().out
    assert "label map: liver=1 (the default" in said and "2 scan(s) (2 healthy" in said
    assert "--allow-root" not in said
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [e["image"] for e in lines] == ["ct/p0.nii.gz", "ct/p1.nii.gz"]
    # 2. Validate it, from a folder that is not the data's.
    assert main(["manifest", "validate", str(manifest)]) == 0


def test_a_manifest_outside_its_data_says_which_root_to_allow(own_folder, tmp_path, capsys):
    manifest = tmp_path / "elsewhere" / "m.jsonl"
    assert main(["manifest", "build", "--layout", "generic", str(own_folder),
                 "--image-pattern", "ct/{id}.nii.gz", "--label-pattern", "masks/{id}_liver.nii.gz",
                 "-o", str(manifest)]) == 0
    said = capsys.readouterr().out
    assert f"--allow-root {own_folder}" in said
    assert all(json.loads(x)["image"].startswith(str(own_folder))
               for x in manifest.read_text().splitlines())
    assert main(["manifest", "validate", str(manifest), "--allow-root", str(own_folder)]) == 0


def test_a_wrong_layout_names_what_it_looked_for_and_the_layout_that_fits(tmp_path, capsys):
    from tumorforge.manifests.phantoms import write_layout
    write_layout("btcv", str(tmp_path / "btcv"), 1, seed=0, scale=0.15)
    message = user_error(capsys, ["manifest", "build", "--layout", "lits", str(tmp_path / "btcv"),
                                  "-o", str(tmp_path / "m.jsonl")])
    assert "no scans of the lits layout" in message and "volume-N.nii" in message
    assert "--layout btcv finds 1 scan(s) there" in message
    assert not (tmp_path / "m.jsonl").exists()           # nothing written
    message = user_error(capsys, ["manifest", "build", "--layout", "generic", str(tmp_path / "btcv"),
                                  "--image-pattern", "ct/{id}.nii", "--label-pattern",
                                  "seg/{id}.nii", "-o", str(tmp_path / "m.jsonl")])
    assert "ct/{id}.nii beside seg/{id}.nii" in message and "--layout btcv" in message


def test_build_and_validate_show_a_bar_on_a_terminal(own_folder, tmp_path, monkeypatch, capsys):
    """Scans are counted on a bar on stderr when it is a terminal (tqdm's own rule), and nothing
    is drawn into a log file."""
    import sys
    from tumorforge.manifests.progress import progress
    assert list(progress(iter([1, 2]), "x", "scan", 2, enabled=False)) == [1, 2]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["manifest", "build", "--layout", "generic", str(own_folder),
                 "--image-pattern", "ct/{id}.nii.gz", "--label-pattern", "masks/{id}_liver.nii.gz",
                 "-o", str(own_folder / "m.jsonl")]) == 0
    assert main(["manifest", "validate", str(own_folder / "m.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "build: 100%" in err and "validate: 100%" in err and "2/2" in err
