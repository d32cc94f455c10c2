"""Small healthy scans and a manifest for generation-job tests (synthetic volumes, not patient data)."""

from __future__ import annotations

import numpy as np

from conftest import write_nifti
from tumorforge.manifests.build import build_manifest
from tumorforge.manifests.schema import LabelMap


def liver_scan(seed: int, shape=(90, 80, 40), spacing=(1.0, 1.0, 2.0)):
    """An ellipsoid liver (~100 HU) in fat with a bright vessel; 0/1 label; LPS storage."""
    rng = np.random.default_rng(seed)
    ax = [(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*ax, indexing="ij")
    liver = (x / 38) ** 2 + (y / 33) ** 2 + (z / 34) ** 2 < 1
    image = np.where(liver, 100.0 + seed, -90.0) + rng.normal(0, 10, shape)
    image[((y - 6) ** 2 + z ** 2 < 9) & liver] += 70
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    return image.astype(np.int16), liver.astype(np.uint8), affine


def healthy_manifest(root, n_scans: int = 3):
    """A generic-layout folder of n healthy scans and its manifest; returns the manifest path."""
    for s in range(n_scans):
        image, label, affine = liver_scan(s)
        write_nifti(root / "ct" / f"case{s}.nii.gz", image, affine)
        write_nifti(root / "seg" / f"case{s}.nii.gz", label, affine)
    manifest = root / "healthy.jsonl"
    build_manifest("generic", str(root), str(manifest), image_pattern="ct/{id}.nii.gz",
                   label_pattern="seg/{id}.nii.gz",
                   label_map=LabelMap(organ=(1,)),
                   source="toy")
    return manifest


def small_spec(manifest, output, **kw):
    """A fast job: 32^3 crops of tiny and small tumors."""
    from tumorforge.cluster.spec import JobSpec, Resources
    from tumorforge.generator.config import GeneratorConfig
    gen = GeneratorConfig(crop_size=(32, 32, 32), size_mix={"tiny": 1.0, "small": 1.0},
                          negative_fraction=0.2)
    defaults = dict(manifest=str(manifest), output=str(output), samples=14, samples_per_shard=4,
                    root_seed=3, generator=gen, resources=Resources(actors=2, scan_retries=1))
    defaults.update(kw)
    return JobSpec(**defaults)


def tiny_job_spec(root, manifest, **fields):
    """``root/job.yaml`` for ``tumorforge generate``: the numpy backend and small_spec's generator
    (32^3 crops of tiny and small tumors), with ``fields`` (top-level spec fields; ``resources`` a
    mapping) on top. Returns its path."""
    import yaml
    obj = {"manifest": str(manifest), "backend": "numpy",
           "generator": {"crop_size": [32, 32, 32], "size_mix": {"tiny": 1.0, "small": 1.0},
                         "negative_fraction": 0.2},
           **fields}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def write_dataset(manifest, output, **spec_kw):
    """A finished dataset written without Ray (the writer and index code of a job, run inline)."""
    return write_inline(small_spec(manifest, output, **spec_kw))


def write_job_inline(job_yaml, output):
    """The dataset the job file ``job_yaml`` (read as `tumorforge generate JOB --out OUTPUT` reads
    it) makes, written without Ray; returns its dataset id."""
    from tumorforge.cluster.spec import load_spec
    return write_inline(load_spec(str(job_yaml), {"output": str(output)}))


def write_inline(spec):
    """The dataset of ``spec`` written by a job's writer and index code run in this process, shard
    after shard (no Ray); returns its dataset id."""
    import dataclasses
    from tumorforge.cluster.job import _versions, _write_index, prepare_output
    from tumorforge.manifests.dataset.store import Objects
    from tumorforge.cluster.plan import make_plan
    from tumorforge.cluster.worker import ShardWorker
    from tumorforge.manifests.schema import read_manifest
    plan = make_plan(dataclasses.replace(spec), read_manifest(spec.manifest))
    out = Objects(spec.output)
    prepare_output(plan, out)
    worker = ShardWorker(plan)
    for shard in plan.shards:
        worker.write_shard(shard.index)
    _write_index(plan, out, _versions())
    return plan.dataset_id
