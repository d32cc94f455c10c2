"""Generation jobs on an embedded Ray cluster: complete, resumable, fault tolerant, verifiable."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from tumorforge.cluster.audit import verify
from tumorforge.cluster.front_door import main
from tumorforge.manifests.dataset.reader import Dataset
from tumorforge.cluster.job import JobError, run_job
from tumorforge.cluster.plan import make_plan
from tumorforge.cluster.spec import Resources
from cluster_fixtures import healthy_manifest, small_spec
from tumorforge.manifests.schema import read_manifest
from conftest import user_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    return healthy_manifest(tmp_path_factory.mktemp("scans"))


@pytest.fixture(scope="module")
def reference(ray_local, scans, tmp_path_factory):
    """One uninterrupted run, the yardstick for the others."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    result = run_job(small_spec(scans, out), progress=False, log=lambda *a: None)
    assert result.ok and result.written == 4
    return out


def _shard_hashes(path) -> dict:
    return {k: v.digest for s in Dataset(str(path)).shards for k, v in s.files.items()}


def test_dataset_is_complete_and_consistent(reference):
    ds = Dataset(str(reference))
    assert len(ds) == 14 and [s.count for s in ds.shards] == [4, 4, 4, 2]
    assert len(set(ds.keys)) == 14 and all("." not in k for k in ds.keys)
    assert verify(ds) == []
    zarr_image, zarr_label, prov = ds.sample(9)
    tar = ds.reader("wds").read(ds.shard(2))
    key, tar_image, tar_label, tar_prov = tar[1]
    assert key == prov.key == ds.keys[9] and prov.index == 9 and prov.shard == 2
    assert np.array_equal(zarr_image, tar_image) and np.array_equal(zarr_label, tar_label)
    assert tar_prov["params"] == prov.params and zarr_image.shape == (32, 32, 32)
    assert prov.spawn_key == (9,) and prov.root_seed == 3
    kinds = {ds.sample(i)[2].params["kind"] for i in range(14)}
    assert kinds <= {"tiny", "small", "negative"} and len(kinds) >= 2
    report = json.loads((reference / "job_report.json").read_text())
    assert report["ok"] and report["samples_written"] == 14
    # The card for people, beside the index (verify above does not count it as an extra object).
    card = (reference / "DATASET.md").read_text()
    assert card.startswith(f"# Dataset {ds.dataset_id}")
    assert "14 samples in 4 shards of up to 4, formats: zarr, wds" in card
    assert "made from 3 scans (3 healthy)" in card
    assert "| toy | 3 | not known to tumorforge: check the source |" in card


def test_plan_is_a_pure_function(scans, tmp_path):
    entries = read_manifest(str(scans))
    spec = small_spec(scans, tmp_path / "a")
    a = make_plan(spec, entries)
    assert a.dataset_id == make_plan(dataclasses.replace(
        spec, output="s3://elsewhere/x", resources=Resources(actors=7)), entries).dataset_id
    assert a.dataset_id != make_plan(dataclasses.replace(spec, root_seed=4), entries).dataset_id
    changed = [dataclasses.replace(entries[0], sha256={"image": "f" * 64, "label": "0" * 64}),
               *entries[1:]]
    assert a.dataset_id != make_plan(spec, changed).dataset_id
    assert [(s.start, s.count) for s in a.shards] == [(0, 4), (4, 4), (8, 4), (12, 2)]
    uses = [s.scan_of(i) for s in a.shards for i in range(s.start, s.start + s.count)]
    assert set(uses) == {e.scan_id for e in entries}


def test_rerun_resumes_and_finishes_byte_identical(reference, scans, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    # Simulate a crash: two shards never committed, one left a half-written temporary behind.
    for k in (1, 3):
        (out / "_commits" / f"shard-00000{k}.json").unlink()
    (out / "index.json").unlink()
    tar = out / "wds" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:1000])          # a torn file from the dead writer
    (out / "wds" / "shard-000003.tar.tmp-deadbeef").write_bytes(b"partial")
    result = run_job(small_spec(scans, out), progress=False, log=lambda *a: None)
    assert result.ok and result.committed_before == 2 and result.written == 2
    assert _shard_hashes(out) == _shard_hashes(reference)
    assert (out / "index.json").read_bytes() == (reference / "index.json").read_bytes()
    assert not list(out.rglob("*.tmp-*"))
    again = run_job(small_spec(scans, out), progress=False, log=lambda *a: None)
    assert again.ok and again.written == 0 and again.committed_before == 4


def test_actor_dying_mid_shard_is_retried_without_loss(reference, scans, tmp_path, capsys):
    out = tmp_path / "ds"
    marker = tmp_path / "died-once"
    result = run_job(small_spec(scans, out), progress=True, log=lambda *a: None,
                     actor_env={"TUMORFORGE_FAULT": f"die_before_commit:2:{marker}"})
    assert marker.exists()                              # the actor really died on shard 2
    assert result.ok and result.actor_restarts == 1
    # The per-sample bar (a tally actor) survives the retry and ends at the job's sample count.
    assert "14/14" in capsys.readouterr().err
    assert _shard_hashes(out) == _shard_hashes(reference)
    assert verify(Dataset(str(out))) == []


def test_broken_scan_fails_its_shards_and_the_rest_completes(ray_local, tmp_path, capsys):
    manifest = healthy_manifest(tmp_path / "scans")
    broken = tmp_path / "scans" / "ct" / "case1.nii.gz"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])          # truncated after the manifest was built
    out = tmp_path / "ds"
    args = ["generate", "--manifest", str(manifest), "--output", str(out), "--samples", "14",
            "--samples-per-shard", "4", "--scans-per-shard", "1", "--crop-size", "32",
            "--size-mix", "tiny", "--scan-retries", "1", "--no-progress"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "FAILED shards" in text and "case1.nii.gz" in text and "toy-case1" in text
    report = json.loads((out / "job_report.json").read_text())
    assert report["failed"] and not (out / "index.json").exists()
    failed = {int(k) for k in report["failed"]}
    commits = {int(p.stem.split("-")[1]) for p in (out / "_commits").glob("*.json")}
    assert commits and commits.isdisjoint(failed) and commits | failed == {0, 1, 2, 3}
    broken.write_bytes(good)                            # fix the scan, rerun the same command
    assert main(args) == 0
    assert verify(Dataset(str(out))) == []


def test_output_of_another_dataset_is_refused(reference, scans, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    existing = Dataset(str(reference)).dataset_id
    other = small_spec(scans, out, root_seed=99)
    planned = make_plan(dataclasses.replace(other), read_manifest(str(scans))).dataset_id
    assert planned != existing
    with pytest.raises(JobError, match=rf"holds dataset {existing}, but this job plans {planned} "):
        run_job(other, progress=False, log=lambda *a: None)


def test_gpu_request_on_a_cpu_cluster_fails_fast(ray_local, scans, tmp_path):
    spec = small_spec(scans, tmp_path / "ds", backend="cupy",
                      resources=Resources(actors=1, gpus_per_actor=0.5))
    with pytest.raises(JobError, match="has 0 GPU"):
        run_job(spec, progress=False, log=lambda *a: None)


def test_verify_finds_corrupt_missing_and_extra_objects(reference, tmp_path, capsys):
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    assert main(["verify", str(out)]) == 0
    tar = out / "wds" / "shard-000000.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0x01                        # one flipped bit
    tar.write_bytes(bytes(data))
    shard = out / "dataset.zarr" / "image" / "c" / "1" / "0" / "0" / "0"
    shard.unlink()
    (out / "wds" / "shard-000099.tar").write_bytes(b"stray")
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "wds/shard-000000.tar" in text and "corrupt" in text
    assert "dataset.zarr/image/c/1/0/0/0" in text and "missing" in text
    assert "wds/shard-000099.tar" in text and "extra" in text
    # --shards checks those alone (the damage is in shards 0 and 1); --jobs finds what one does.
    assert main(["verify", str(out), "--shards", "2-3", "--no-progress"]) == 0
    assert "OK: 2 of 4 shard(s)" in capsys.readouterr().out
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["verify", str(out), "--json", str(one), "--no-progress"]) == 1
    assert main(["verify", str(out), "--json", str(two), "--jobs", "3", "--no-progress"]) == 1
    found = json.loads(one.read_text())
    assert not found["ok"] and found["shards_checked"] == [0, 1, 2, 3]
    assert json.loads(two.read_text())["problems"] == found["problems"]
    assert main(["verify", str(out), "--shards", "0", "--json", str(one), "--no-progress"]) == 1
    only = {p["object"] for p in json.loads(one.read_text())["problems"]}
    assert "wds/shard-000000.tar" in only and "wds/shard-000099.tar" not in only
    assert "--shards '9-x'" in user_error(capsys, ["verify", str(out), "--shards", "9-x"])


def test_audit_regenerates_bit_exact(reference, capsys):
    ds = Dataset(str(reference))
    assert main(["audit", str(reference), "--key", ds.keys[6]]) == 0
    text = capsys.readouterr().out
    assert "AUDIT OK: bit-exact" in text and "SeedSequence(3, spawn_key=(6,))" in text
    assert main(["audit", str(reference), "--index", "13", "--no-regenerate"]) == 0


def test_s3_output_through_a_local_endpoint(ray_local, scans, s3_server, reference):
    """Shards written to moto's S3 server (simulated object storage) match the local run."""
    import boto3
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="datasets")
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                      "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    url = "s3://datasets/run1"
    result = run_job(small_spec(scans, url), progress=False, log=lambda *a: None, actor_env=env)
    assert result.ok
    ds = Dataset(url)
    assert verify(ds) == []
    local = json.loads((reference / "index.json").read_text())
    assert ds.index.to_json()["shards"] == local["shards"]      # the shards' records, by hash
    image, label, prov = ds.sample(5)
    assert prov.index == 5 and image.shape == (32, 32, 32)


def test_example_job_file_and_flags(tmp_path):
    from tumorforge.cluster.spec import SpecError, load_spec
    spec = load_spec("cluster/examples/job.yaml", {"samples": 10, "resources": {"actors": 3}})
    assert spec.samples == 10 and spec.resources.actors == 3 and spec.samples_per_shard == 32
    assert spec.generator.size_mix["mix"] == 0.2 and spec.formats == ("zarr", "wds")
    bad = tmp_path / "bad.yaml"
    bad.write_text("manifest: m.jsonl\noutput: o\nsamples: 5\nsampels_per_shard: 3\n")
    with pytest.raises(SpecError, match=r"unknown field\(s\) \['sampels_per_shard'\]"):
        load_spec(str(bad), {})
    with pytest.raises(SpecError, match="needs backend cupy"):
        load_spec(None, {"manifest": "m", "output": "o", "samples": 1, "backend": "numpy",
                         "resources": {"gpus_per_actor": 1}})
    with pytest.raises(SpecError, match="gpu_memory_mb >= 0"):
        load_spec(None, {"manifest": "m", "output": "o", "samples": 1,
                         "resources": {"gpu_memory_mb": -1}})
    capped = load_spec(None, {"manifest": "m", "output": "o", "samples": 1, "backend": "cupy",
                              "resources": {"gpus_per_actor": 0.25, "gpu_memory_mb": 4096}})
    assert capped.resources.gpu_memory_mb == 4096
    assert capped.identity() == load_spec(None, {"manifest": "m", "output": "o", "samples": 1,
                                                 "backend": "cupy"}).identity()


def test_second_run_into_the_same_output_is_refused_while_the_first_holds_it(reference, scans,
                                                                              tmp_path):
    """Two runs into one output had no lock (the plan's check-then-write was a race, and one
    run's start-up cleanup could delete the other's temporaries)."""
    from tumorforge.manifests.dataset.names import LOCK
    from tumorforge.manifests.dataset.store import Objects, OutputLock
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    with OutputLock(Objects(str(out)), LOCK):               # a live run holds it
        with pytest.raises(JobError, match="another run .* is writing this output"):
            run_job(small_spec(scans, out), progress=False, log=lambda *a: None)
    result = run_job(small_spec(scans, out), progress=False, log=lambda *a: None)
    assert result.ok and not (out / LOCK).exists()          # released when the run ends


def test_real_profile_takes_negative_crops_from_healthy_scans_too(scans, tmp_path):
    """Issue 13 (fair arms): with healthy scans in its manifest, the real profile's negative
    samples (drawn as sample_params draws them) cycle through tumor and healthy scans, its
    positive samples through tumor scans only; without them the plan is what it was."""
    from tumorforge.cluster.plan import ShardPlan
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.sample import draws_negative
    entries = read_manifest(str(scans))
    tumor = [dataclasses.replace(e, role="tumor") for e in entries[:2]]
    gen = GeneratorConfig(profile="real", crop_size=(32, 32, 32), negative_fraction=0.5)
    spec = small_spec(scans, tmp_path / "r", generator=gen, samples=48, samples_per_shard=16)
    plan = make_plan(spec, tumor + entries[2:])
    assert set(plan.scans) == {e.scan_id for e in entries}
    tumor_ids = {e.scan_id for e in tumor}
    used = {True: set(), False: set()}
    for shard in plan.shards:
        assert shard.tumor_scans == 2 and set(shard.scans[2:]) == {entries[2].scan_id}
        for i in range(shard.start, shard.start + shard.count):
            negative = draws_negative(spec.root_seed, i, gen)
            used[negative].add(plan.scan_of(shard, i))
    assert used[False] == tumor_ids                       # positives: tumor scans only
    assert entries[2].scan_id in used[True] and used[True] & tumor_ids
    assert plan.to_json()["shards"][0]["tumor_scans"] == 2
    alone = make_plan(spec, tumor)
    assert all(s.tumor_scans == 0 and set(s.scans) <= tumor_ids for s in alone.shards)
    assert "tumor_scans" not in alone.to_json()["shards"][0]
    assert ShardPlan(0, 0, 4, ("a", "b", "h"), 2).scan_of(2) == "a"   # positives skip "h"


def test_dry_run_plans_calibrates_and_writes_nothing(reference, scans, tmp_path, capsys):
    """Issue 14: --dry-run prints the plan (the dataset id the job writes, samples per scan, scans
    it cannot use and why) and estimates from a few samples made here; nothing is written."""
    from tumorforge.cluster.dry_run import dry_run
    from tumorforge.manifests.schema import write_jsonl
    result = dry_run(small_spec(scans, tmp_path / "never"), read_manifest(str(scans)), calibrate=2)
    assert result.dataset_id == Dataset(str(reference)).dataset_id     # what the job wrote
    assert sum(result.samples_per_scan.values()) == 14 and result.unused == []
    assert result.calibration["bytes_per_sample"]["zarr"] > 0
    assert result.calibration["bytes_per_sample"]["wds"] > 0
    assert dry_run(small_spec(scans, reference), read_manifest(str(scans)),
                   calibrate=0).committed == 4                         # a finished dataset
    entries = read_manifest(str(scans))
    manifest = tmp_path / "m.jsonl"
    write_jsonl(str(manifest), [dataclasses.replace(entries[0], role="tumor"), *entries[1:]])
    out = tmp_path / "never"
    assert main(["generate", "--manifest", str(manifest), "--out", str(out), "--samples", "14",
                 "--samples-per-shard", "4", "--crop-size", "32,32,32", "--dry-run",
                 "--allow-root", str(scans.parent)]) == 0
    text = capsys.readouterr().out
    assert "nothing written" in text and \
        f"not used: scan {entries[0].scan_id}: role 'tumor'" in text
    assert "samples 14 in 4 shard(s) of 4" in text and "scans used: 2" in text
    assert "estimate:" in text and "GB written" in text and not out.exists()


def test_inspect_describes_a_dataset_from_its_provenance(reference, tmp_path, capsys):
    """Issue 14: inspect prints sizes, configuration, scans and how often, tumor counts and radii
    per size type from the provenance, and writes the histograms and a montage."""
    out = tmp_path / "inspect"
    assert main(["inspect", str(reference), "--out", str(out), "--montage", "2"]) == 0
    text = capsys.readouterr().out
    ds = Dataset(str(reference))
    assert f"dataset {ds.dataset_id}" in text and "samples 14 in 4 shard(s) of 4" in text
    assert "provenance read: 14 sample(s) of 4 shard(s)" in text and "scans: 3;" in text
    summary = json.loads((out / "inspect.json").read_text())
    assert sum(summary["kinds"].values()) == sum(summary["scans"].values()) == 14
    kinds = {ds.sample(i)[2].params["kind"] for i in range(14)}
    assert set(summary["kinds"]) == kinds
    assert set(summary["radius_mm"]) <= {"tiny", "small"} and summary["radius_mm"]
    assert 3.0 <= summary["radius_mm"].get("tiny", {"median": 4.0})["median"] <= 5.0
    assert summary["bytes"]["zarr"] > 0 and summary["bytes"]["wds"] > 0
    assert (out / "montage.png").stat().st_size > 1000 and (out / "histograms.png").exists()
    # The montage read back: a legend of the two contour colours under the panels, the yellow
    # orientation letters and the white 10 mm scale bar on them.
    from PIL import Image
    rgb = np.asarray(Image.open(out / "montage.png").convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    legend = slice(int(rgb.shape[0] * 0.93), None)
    assert ((g > 200) & (r < 80) & (b < 80))[legend].sum() > 10       # lime: liver contour
    assert ((r > 200) & (g < 60) & (b < 60))[legend].sum() > 10       # red: tumor contour
    assert ((r > 200) & (g > 200) & (b < 60)).sum() > 20              # yellow letters
    white = (r > 240) & (g > 240) & (b > 240)
    # the bar: a white line over the image (not the white page), so not white 5 px above or below
    bar = white[5:-5] & ~white[:-10] & ~white[10:]
    assert bar.sum(axis=1).max() > 8
    part = main(["inspect", str(reference), "--max-samples", "4", "--montage", "0"]) == 0
    assert part and "(evenly spaced; --max-samples reads more)" in capsys.readouterr().out
    message = user_error(capsys, ["inspect", str(tmp_path / "nothing")])
    assert message.startswith("inspect: ") and "index.json" in message
    # A texture grid finer than the voxel is said, as preview says it (this dataset has none).
    from tumorforge.cluster.inspect_dataset import _config_warnings, lines
    assert summary["warnings"] == []
    coarse = _config_warnings({"profile": "paper-train", "target_spacing_mm": [2.0, 2.0, 2.0]})
    assert len(coarse) == 1 and "finer than the 2 mm voxel" in coarse[0]
    assert f"  warning: {coarse[0]}" in lines({**summary, "warnings": coarse})


def test_a_dataset_grows_and_keeps_its_samples(reference, scans, tmp_path):
    """Issue 14: rerunning a job with more samples keeps the dataset id, every full shard's
    objects and every existing sample byte-identical, and adds shards; shrinking is refused."""
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    before = Dataset(str(out))
    objects = {k: (f.bytes, f.digest) for s in before.shards[:3] for k, f in s.files.items()}
    samples = [(h.key, h.image, h.label) for s in before.shards for h in s.samples]
    result = run_job(small_spec(scans, out, samples=22), progress=False, log=lambda *a: None)
    assert result.ok and result.dataset_id == before.dataset_id
    assert result.committed_before == 3 and result.written == 3     # shard 3 was partial
    grown = Dataset(str(out))
    assert len(grown) == 22 and len(grown.shards) == 6
    assert {k: (f.bytes, f.digest) for s in grown.shards[:3] for k, f in s.files.items()} == objects
    now = [(h.key, h.image, h.label) for s in grown.shards for h in s.samples]
    assert now[:14] == samples and verify(grown) == []
    with pytest.raises(JobError, match="grows a dataset, never shrinks"):
        run_job(small_spec(scans, out, samples=10), progress=False, log=lambda *a: None)


def test_repair_rewrites_exactly_the_bad_shards(reference, scans, tmp_path, capsys):
    """Issue 14: generate --repair verifies, rewrites only the shards verify finds bad (here a
    flipped bit in one tar and a deleted zarr chunk of another), byte-identical to the plan."""
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    tar = out / "wds" / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0x01
    tar.write_bytes(bytes(data))
    ds = Dataset(str(out))
    chunk = next(k for k in ds.shard_files(ds.shards[2], "zarr"))
    (out / chunk).unlink()
    untouched = {p: p.stat().st_mtime_ns for p in (out / "wds").iterdir()
                 if p.name != "shard-000001.tar"}
    untouched.pop(out / "wds" / "shard-000002.tar")
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps(small_spec(scans, out).to_json()))
    assert main(["generate", str(spec), "--repair", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "verify finds 2 bad shard(s) [1, 2]" in text and "repair: verify OK" in text
    assert _shard_hashes(out) == _shard_hashes(reference)
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched   # shards 0, 3 untouched


def test_scans_are_prepared_once_per_job_not_once_per_actor(reference, scans, tmp_path):
    """Issue 14: the job's actors share prepared scans (0.2.0 prepared each scan once per actor:
    4 preparations for 2 scans with 2 actors); a shared preparation synthesizes the same bytes."""
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.sample import sample_params, sample_seed
    from tumorforge.generator.scans import load_prepared, load_prepared_shared
    from tumorforge.generator.synthesize import synthesize
    from tumorforge.manifests.dataset.records import ShardCommit
    commits = [ShardCommit.from_json(json.loads(p.read_text()), str(p))
               for p in sorted((reference / "_commits").iterdir())]
    by_actor = {}
    for c in commits:
        by_actor[c.worker["pid"]] = max(by_actor.get(c.worker["pid"], 0),
                                        c.worker["scans_prepared"])
    used = {s for c in commits for s in c.scans}
    assert len(by_actor) == 2 and sum(by_actor.values()) == len(used) == 3
    entry = read_manifest(str(scans))[0]
    config = small_spec(scans, tmp_path).generator
    first, here = load_prepared_shared(entry, config, str(tmp_path / "cache"))
    again, here_again = load_prepared_shared(entry, config, str(tmp_path / "cache"))
    assert here and not here_again
    fresh = load_prepared(entry, config)
    params = sample_params(np.random.default_rng(sample_seed(3, 0)), again, config)
    a, b = (synthesize(s, params, get_backend("numpy")) for s in (again, fresh))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert again.stats() == fresh.stats() and again.spacing_mm == fresh.spacing_mm



def test_bench_generate_compares_a_job_with_the_generator_alone(ray_local, scans):
    """`tumorforge bench generate` runs the plan as a job and as synthesis alone in one run and
    splits the job's actor time into stages (here on the tiny scans, 32^3 crops)."""
    from tumorforge.cluster.bench_generate import bench_generate
    r = bench_generate(str(scans), samples=8, samples_per_shard=4, actors=2, crop=32,
                       log=lambda m: None)
    assert r["scans"] == 3 and r["end_to_end_samples_per_s"] > 0
    assert r["ceiling_samples_per_s"] > 0 and r["job_wall_s"] > 0
    shares = r["stage_share_of_actor_time"]
    assert set(shares) == {"load", "synthesize", "encode_write", "ray_and_driver"}
    assert abs(sum(shares.values()) - 1.0) < 0.005 or shares["ray_and_driver"] == 0.0
    assert r["largest_stage"] in shares and r["bytes_written"] > 0


def test_actors_get_a_skeleton_plan_and_each_shard_its_own_scans(reference, scans, tmp_path):
    """Issue 14: an actor holds the plan's id and spec only; each call brings the shard's layout
    and its scans' entries, and writes the same bytes as the job did."""
    from tumorforge.cluster.worker import ShardWorker
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    spec = dataclasses.replace(small_spec(scans, out), backend="numpy")
    plan = make_plan(spec, read_manifest(str(scans)))
    skeleton = plan.skeleton()
    assert skeleton.shards == () and skeleton.scans == {}
    assert skeleton.dataset_id == plan.dataset_id
    shard, entries = plan.task(2)
    assert set(entries) == set(shard.scans)
    record = ShardWorker(skeleton).write_shard(shard, entries)
    want = json.loads((reference / "_commits" / "shard-000002.json").read_text())["files"]
    assert {k: f.to_json() for k, f in record.files.items()} == want


def test_dataset_card_names_each_source_with_its_licence():
    from types import SimpleNamespace as NS
    from tumorforge.cluster.dataset_card import LICENCES, dataset_card
    from tumorforge.generator.config import GeneratorConfig
    scans = {f"{src}-{i}": NS(source=src, role="healthy") for src in ("lits", "btcv", "mine")
             for i in range(2)}
    plan = NS(spec=NS(generator=GeneratorConfig(), root_seed=5), scans=scans)
    index = NS(dataset_id="abc", samples=10, shard_count=2, samples_per_shard=5,
               formats=("zarr",))
    card = dataset_card(plan, index)
    assert f"| lits | 2 | {LICENCES['lits']} |" in card and "CC BY-NC-SA 4.0" in card
    assert "| mine | 2 | not known to tumorforge: check the source |" in card
    assert "profile `released`" in card and "root seed 5" in card
