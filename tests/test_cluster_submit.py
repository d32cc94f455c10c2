"""`tumorforge submit` through the Ray Jobs API of a local single-node cluster with a dashboard."""

from __future__ import annotations

import os
import sys
import time

import pytest
import yaml

from tumorforge.cluster.audit import verify
from tumorforge.cluster.front_door import main
from tumorforge.manifests.dataset.reader import Dataset
from cluster_fixtures import healthy_manifest
from conftest import _free_port


@pytest.mark.slow
def test_submit_runs_the_job_on_the_cluster(tmp_path, capsys):
    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    if ray.is_initialized():
        ray.shutdown()
    # The job's driver runs the `tumorforge` script on the cluster: it must find this environment.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ctx = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=_free_port(), log_to_driver=False)
    try:
        address = f"http://{ctx.dashboard_url}"
        manifest = healthy_manifest(tmp_path / "scans", n_scans=2)
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        # The job folder becomes the driver's working directory: modules there named like
        # tumorforge's stages must not be run instead of tumorforge's.
        (job_dir / "trainer.py").write_text("raise SystemExit('shadowed by trainer.py')\n")
        (job_dir / "cluster").mkdir()
        (job_dir / "cluster" / "__init__.py").write_text("raise SystemExit('shadowed')\n")
        out = tmp_path / "ds"
        (job_dir / "job.yaml").write_text(yaml.safe_dump({
            "manifest": str(manifest), "output": str(out), "samples": 4, "samples_per_shard": 2,
            "generator": {"crop_size": [32, 32, 32], "size_mix": {"tiny": 1.0}},
            "resources": {"actors": 1}}))
        deadline = time.time() + 60
        while True:          # the dashboard's job service can take a moment to come up
            try:
                assert main(["submit", str(job_dir / "job.yaml"), "--address", address]) == 0
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        job_id = capsys.readouterr().out.split()[1]
        client = JobSubmissionClient(address)
        deadline = time.time() + 240
        while client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                    JobStatus.STOPPED):
            assert time.time() < deadline, client.get_job_logs(job_id)[-2000:]
            time.sleep(1)
        logs = client.get_job_logs(job_id)
        assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-2000:]
        assert verify(Dataset(str(out))) == [] and "index:" in logs
    finally:
        ray.shutdown()


def test_entrypoint_names_no_bare_python():
    from tumorforge.cluster.cli import submit_entrypoint
    assert submit_entrypoint("job.yaml") == \
        "tumorforge generate job.yaml --address auto --no-progress"
    assert submit_entrypoint("my job.yaml", "/opt/env/bin/python3") == \
        "/opt/env/bin/python3 -m tumorforge.cluster generate 'my job.yaml' --address auto --no-progress"
