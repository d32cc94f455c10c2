"""Issue 15: scans without labels enter as an image list; ``manifest label-liver`` gives them liver
masks (from a model, here a stand-in segmenter seam, or from another tool's mask folder), rejects
bad masks with the reason, and writes a manifest generation can use. Phantom BTCV scans
(simulated CT) stand in for an image-only dataset: their labels are the truth, never read by the
command."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tumorforge.cluster.front_door import main
from tumorforge.evaluation.label_liver import label_liver
from tumorforge.manifests.phantoms.anatomy import LIVER_CODE
from tumorforge.manifests.schema import default_roots, read_images, read_manifest
from conftest import user_error


@pytest.fixture(scope="module")
def images(phantom_root, tmp_path_factory):
    root, _ = phantom_root
    out = tmp_path_factory.mktemp("images") / "images.jsonl"
    assert main(["manifest", "build", "--layout", "generic", str(root / "btcv"),
                 "--image-pattern", "RawData/Training/img/img{id}.nii.gz", "--source", "pct",
                 "-o", str(out)]) == 0
    return root, out


def _truth(entry, root):
    """The phantom's own liver (BTCV label 6), as a model that segments perfectly would give."""
    label = entry.image.replace("/img/img", "/label/label")
    return np.asarray(nib.load(label).dataobj) == LIVER_CODE


def test_an_image_only_dataset_becomes_an_image_list(images):
    root, path = images
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 and all(x["kind"] == "image-only" for x in lines)
    assert [x["scan_id"] for x in lines] == ["pct-0001", "pct-0002"]
    with pytest.raises(Exception, match="kind"):
        read_manifest(str(path))                   # not a manifest: nothing can synthesize yet
    assert len(read_images(str(path), default_roots(str(path), [str(root)]))) == 2


def test_model_masks_pass_or_are_rejected_with_the_reason(images, tmp_path):
    root, path = images
    entries = {e.scan_id: e for e in read_images(str(path), default_roots(str(path), [str(root)]))}
    volumes = {}

    def segmenter(image, affine):
        scan_id = next(s for s, e in entries.items()
                       if nib.load(e.image).shape == image.shape and np.array_equal(
                           np.asarray(nib.load(e.image).dataobj), image))
        mask = _truth(entries[scan_id], root)
        volumes[scan_id] = mask.sum() * np.prod(nib.load(entries[scan_id].image).header.get_zooms())
        if scan_id == "pct-0002":        # a model unsure of this one
            return mask, {"liver_largest_fraction": 0.99, "liver_confidence": 0.55}
        return mask, {"liver_largest_fraction": 0.98, "liver_confidence": 0.93}

    out = tmp_path / "labelled.jsonl"
    truth = tmp_path / "truth.jsonl"             # the phantoms' own labels, to score the masks
    assert main(["manifest", "build", "--layout", "btcv", str(root / "btcv"), "-o",
                 str(truth)]) == 0
    truth.write_text(truth.read_text().replace('"btcv-', '"pct-'))
    result = label_liver(str(path), str(out), segmenter=segmenter, min_ml=100, max_ml=5000,
                         allow_roots=[str(root)], truth=str(truth), log=lambda *a: None)
    assert {k: v["liver_dice_vs_truth"] for k, v in result.checks.items()} == \
        {"pct-0001": 1.0, "pct-0002": 1.0}
    assert [e.scan_id for e in result.entries] == ["pct-0001"]
    assert "low confidence: mean liver probability 0.55" in result.rejections[0].problem
    manifest = read_manifest(str(out), default_roots(str(out), [str(root)]))
    entry = manifest[0]
    assert entry.role == "healthy" and entry.label_map.organ == (1,)
    assert abs(entry.organ_volume_ml - volumes["pct-0001"] / 1000) < 0.01
    mask = np.asarray(nib.load(entry.label).dataobj)
    assert np.array_equal(mask == 1, _truth(entries["pct-0001"], root))
    assert entry.label.startswith(str(tmp_path / "liver-masks"))
    # The other checks, each with its reason.
    for report, words in (({"liver_largest_fraction": 0.6, "liver_confidence": 0.9},
                           "fragmented liver: the largest component holds 60%"),):
        bad = label_liver(str(path), str(tmp_path / "frag.jsonl"),
                          segmenter=lambda im, af, r=report: (np.zeros(im.shape, bool) | True, r),
                          min_ml=0, max_ml=1e9, allow_roots=[str(root)], log=lambda *a: None)
        assert all(words in r.problem for r in bad.rejections) and not bad.entries
    tiny = label_liver(str(path), str(tmp_path / "tiny.jsonl"),
                       segmenter=lambda im, af: (np.zeros(im.shape, bool), {}),
                       allow_roots=[str(root)], log=lambda *a: None)
    assert all("liver volume 0 mL outside the plausible 600-4000 mL" in r.problem
               for r in tiny.rejections)


def test_masks_from_another_tool_and_one_line_errors(images, tmp_path, capsys):
    root, path = images
    entries = read_images(str(path), default_roots(str(path), [str(root)]))
    masks = tmp_path / "totalseg"
    first = entries[0]
    img = nib.load(first.image)
    case = masks / "img0001"                      # TotalSegmentator: <case>/liver.nii.gz
    case.mkdir(parents=True)
    nib.save(nib.Nifti1Image(_truth(first, root).astype(np.uint8), img.affine),
             str(case / "liver.nii.gz"))
    other = masks / "pct-0002.nii.gz"             # on a wrong grid
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), str(other))
    out = tmp_path / "from-masks.jsonl"
    assert main(["manifest", "label-liver", str(path), "--masks", str(masks), "-o", str(out),
                 "--min-ml", "100", "--allow-root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "1 scan(s) with liver masks" in text and "does not match image shape" in text
    assert [e.scan_id for e in read_manifest(str(out), default_roots(str(out), [str(root)]))] \
        == ["pct-0001"]
    for args, words in (([], "exactly one of --checkpoint"),
                        (["--masks", str(tmp_path / "nope")], "no such folder")):
        message = user_error(capsys, ["manifest", "label-liver", str(path), "-o", str(out),
                                      "--allow-root", str(root), *args])
        assert message.startswith("manifest label-liver: ") and words in message
