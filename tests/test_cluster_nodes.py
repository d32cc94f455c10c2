"""A node that disappears mid-job loses and duplicates nothing (two-node cluster on one machine)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tumorforge.cluster.audit import verify
from tumorforge.manifests.dataset.reader import Dataset
from tumorforge.cluster.job import run_job
from tumorforge.cluster.spec import Resources
from cluster_fixtures import healthy_manifest, small_spec

pytestmark = pytest.mark.slow


def test_removing_a_node_mid_job(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        manifest = healthy_manifest(tmp_path / "scans")
        out = tmp_path / "ds"
        spec = small_spec(manifest, out, samples=40, samples_per_shard=2,
                          resources=Resources(actors=2))
        box = {}
        thread = threading.Thread(target=lambda: box.update(
            result=run_job(spec, progress=False, log=lambda *a: None)))
        thread.start()
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "_commits").glob("*.json"))
                                             if (out / "_commits").exists() else []) < 3:
            time.sleep(0.05)
        cluster.remove_node(worker)
        thread.join(timeout=300)
        assert not thread.is_alive()
        result = box["result"]
        assert result.ok and result.actor_restarts >= 1
        ds = Dataset(str(out))
        assert verify(ds) == [] and len(set(ds.keys)) == 40
        index = json.loads((out / "index.json").read_text())
        assert index["samples"] == 40 and len(index["shards"]["record_bytes"]) == len(ds.shards)
    finally:
        ray.shutdown()
        cluster.shutdown()
