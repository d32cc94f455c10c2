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
from conftest import user_error


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
    # The job's driver joins with `--address auto`, which reads the cluster's address file as
    # `ray start` leaves it; without one Ray takes any gcs_server running on this host, and under
    # pytest-xdist that can be the other worker's cluster (the driver then waits for it forever).
    node = ray._private.worker._global_node
    ray._private.utils.write_ray_address(node.gcs_address, node._ray_params.temp_dir)
    address_file = ray._private.utils.get_ray_address_file(node._ray_params.temp_dir)
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
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        # --wait follows the job's logs and exits with its status.
        assert main(["submit", str(job_dir / "job.yaml"), "--address", address, "--wait"]) == 0
        text = capsys.readouterr().out
        job_id = text.split()[1]
        assert "index:" in text and f"job {job_id} succeeded" in text
        assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
        assert verify(Dataset(str(out))) == []
        # A job that fails on the cluster (its manifest is missing there) is reported failed.
        (job_dir / "bad.yaml").write_text(yaml.safe_dump({
            "manifest": str(tmp_path / "nowhere.jsonl"), "output": str(tmp_path / "bad"),
            "samples": 2}))
        assert main(["submit", str(job_dir / "bad.yaml"), "--address", address, "--wait"]) == 1
        captured = capsys.readouterr()
        assert "nowhere.jsonl" in captured.out and " failed: " in captured.err
    finally:
        ray.shutdown()
        os.remove(address_file)         # a later ray.init would join the address it names


def test_unreachable_cluster_missing_bucket_and_dataset_are_one_line_exit_2(tmp_path, capsys,
                                                                          s3_server):
    """Operator errors: an address nobody listens on (generate and submit), an output bucket that
    does not exist (moto S3, simulated), a benchmark of a dataset that is not there: one line on
    stderr naming what and where, exit 2, no traceback; nothing starts a cluster."""
    import ray
    manifest = healthy_manifest(tmp_path / "scans", n_scans=1)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"manifest": str(manifest), "output": str(tmp_path / "ds"),
                                   "samples": 2}))
    port = _free_port()
    s3_job = tmp_path / "s3.yaml"
    s3_job.write_text(yaml.safe_dump({"manifest": str(manifest), "samples": 2,
                                      "output": "s3://no-such-bucket/ds"}))
    cases = [(["generate", str(job), "--address", f"127.0.0.1:{port}"],
              f"cannot reach the Ray cluster at 127.0.0.1:{port}"),
             (["submit", str(job), "--address", f"http://127.0.0.1:{port}"],
              f"cannot reach the Ray cluster at http://127.0.0.1:{port}"),
             (["generate", str(s3_job)], "bucket 'no-such-bucket' does not exist"),
             (["bench", "loader", str(tmp_path / "missing")], "no index.json")]
    for argv, words in cases:
        assert words in user_error(capsys, argv)
    assert not ray.is_initialized()


def test_a_cluster_refusing_the_token_is_one_line_with_the_hint(monkeypatch, capfd):
    """Joining a cluster that wants a token: Ray logs its retries straight to file descriptor 2
    (measured against the embedded cluster: 20 lines of `Unauthenticated: ... InvalidAuthToken`
    over 20 s, then `ConnectionError: Failed to connect`). The seam: a ray.init that does the
    same. The operator sees one line with the hint, nothing of Ray's noise."""
    import ray
    from tumorforge.cluster import job

    def refusing_init(**kw):
        os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server: "
                    b"Unauthenticated: RPC error: InvalidAuthToken: Authentication token is "
                    b"missing or incorrect\n")
        raise ConnectionError("Failed to connect to Ray cluster at 10.1.2.3:6379")

    monkeypatch.setattr(ray, "init", refusing_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(job, "check_reachable", lambda address: None)
    with pytest.raises(job.OperatorError) as exc:
        job._init_ray("10.1.2.3:6379")
    message = str(exc.value)
    assert message.startswith("cannot join the Ray cluster at 10.1.2.3:6379: ConnectionError")
    assert "token authentication" in message and "RAY_AUTH_TOKEN" in message
    assert "InvalidAuthToken" not in capfd.readouterr().err          # Ray's noise captured


def test_entrypoint_names_no_bare_python():
    from tumorforge.cluster.cli import submit_entrypoint
    assert submit_entrypoint("job.yaml") == \
        "tumorforge generate job.yaml --address auto --no-progress"
    assert submit_entrypoint("my job.yaml", "/opt/env/bin/python3") == \
        "/opt/env/bin/python3 -m tumorforge.cluster generate 'my job.yaml' --address auto --no-progress"
