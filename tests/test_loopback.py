"""The embedded Ray cluster listens on loopback only (issue 26, section 1).

Issue 12 measured Ray 2.60's servers on ``*`` and the host address and called loopback impossible;
the cause was Ray's ``ENABLE_RAY_CLUSTER`` switch, which rewrites 127.0.0.1 to the host address.
These tests run real jobs (`tumorforge generate` in subprocesses, tiny phantoms) and look at every
listening socket of the driver and all its descendants while they run.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from tumorforge.cluster.job import is_loopback, listening_sockets, private_ray_dir

pytestmark = pytest.mark.slow

FIXED_PORTS = {52365, 44217, 44227, 8265, 6379, 10001}   # Ray's defaults: agent HTTP, metrics,
                                                         # dashboard, GCS, client server


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from cluster_fixtures import healthy_manifest
    root = tmp_path_factory.mktemp("loopback")
    manifest = healthy_manifest(root, 2)
    spec = root / "job.yaml"
    spec.write_text(f"manifest: {manifest}\nsamples: 8\nsamples_per_shard: 4\nroot_seed: 3\n"
                    "backend: numpy\ngenerator:\n  crop_size: [32, 32, 32]\n"
                    "  size_mix: {tiny: 1.0, small: 1.0}\n  negative_fraction: 0.2\n"
                    "resources:\n  actors: 2\n")
    return root, spec


def _generate(spec, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    return subprocess.Popen([sys.executable, "-m", "tumorforge.cluster", "generate", str(spec),
                             "--out", str(out), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_every_listening_socket_of_an_embedded_job_is_on_loopback(job):
    """With today's Ray (2.60) and the switch off: GCS, raylet, the driver's and every worker's
    core worker, the dashboard agent (gRPC, HTTP, metrics), the runtime-env agent and the two
    Prometheus ports all on 127.0.0.1, and none on a fixed port (two jobs must not collide)."""
    root, spec = job
    driver = _generate(spec, root / "out")
    seen = set()
    while driver.poll() is None:
        seen.update(listening_sockets(driver.pid))
        time.sleep(0.2)
    text = driver.communicate()[0]
    assert driver.returncode == 0, text
    names = {name for _, name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, names                  # the cluster was seen...
    assert any("ShardWorker" in n for n in names), names             # ...and its writers
    wrong = sorted((name, ip, port) for _, name, ip, port in seen if not is_loopback(ip))
    assert wrong == [], wrong
    assert not {port for *_, port in seen} & FIXED_PORTS
    assert any(p.startswith("session_2") for p in os.listdir(private_ray_dir()))  # Ray's files
    print(f"{len(seen)} listening sockets in {len(names)} processes, all on loopback:")
    for pid, name, ip, port in sorted(seen, key=lambda s: (s[1], s[3])):
        print(f"  {name:<32} {ip}:{port}")


def test_ray_session_folders_are_private_to_this_user(job):
    """Ray makes its session folders 0777 (no sticky bit) under /tmp/ray; the embedded cluster's
    live under a 0700 folder of this user, so other users cannot enter them."""
    ray_dir = private_ray_dir()
    parent = os.path.dirname(ray_dir)
    st = os.lstat(parent)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    assert st.st_mode & 0o777 == 0o700
    longest = os.path.join(ray_dir, "session_2026-12-07_08-50-10_447036_4194304", "sockets",
                           "plasma_store.99")
    assert len(longest.encode()) <= 107                   # AF_UNIX path limit


def test_two_embedded_jobs_on_one_host_at_once_both_finish(job):
    """The agent HTTP port 52365 and the metrics ports 44217/44227 were fixed: the second of two
    embedded clusters on one host could not bind them. Now every port is picked free."""
    root, spec = job
    t0 = time.monotonic()
    drivers = [_generate(spec, root / f"twin{i}") for i in range(2)]
    texts = [d.communicate(timeout=600)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], texts
    for i in range(2):
        index = json.loads((root / f"twin{i}" / "index.json").read_text())
        assert index["samples"] == 8
    assert (root / "twin0" / "index.json").read_bytes() == \
        (root / "twin1" / "index.json").read_bytes()
    took = time.monotonic() - t0
    # Before, both exited 0 but the second cluster's agent HTTP server gave up on 52365 and both
    # Prometheus servers failed (EADDRINUSE, in the session logs): no port may collide now.
    ray_dir = private_ray_dir()
    sessions = [os.path.join(ray_dir, s) for s in os.listdir(ray_dir) if s.startswith("session_2")
                and os.stat(os.path.join(ray_dir, s)).st_mtime >= time.time() - took - 5]
    assert len(sessions) >= 2
    collisions = []
    for session in sessions:
        for dirpath, _, files in os.walk(os.path.join(session, "logs")):
            for name in files:
                with open(os.path.join(dirpath, name), errors="replace") as f:
                    collisions += [f"{name}: {line.strip()[:160]}" for line in f
                                   if "address already in use" in line.lower()]
    assert collisions == []
    print(f"two embedded jobs at once: {took:.1f} s")


CHECK = """
import ray
from tumorforge.cluster import job
import ray._private.services as services
job.start_embedded(ray)
print("NODE", ray._private.worker._global_node.node_ip_address,
      ray.get_runtime_context().gcs_address)
ray.shutdown()
# The switch is back as it was (the rest of the process is not changed), and the check fails
# closed: a Ray process found listening on every interface shuts the cluster down and raises.
import ray._private.ray_constants as rc
print("SWITCH", rc.ENABLE_RAY_CLUSTER)
found = job.listening_sockets
job.listening_sockets = lambda pid: found(pid) + [(1, "raylet", "0.0.0.0", 4242)]
try:
    job.start_embedded(ray)
    print("STARTED")
except job.JobError as exc:
    print("REFUSED", str(exc).splitlines()[0][:120], ray.is_initialized())
"""


def test_node_address_is_loopback_and_the_check_fails_closed():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    assert "NODE 127.0.0.1 127.0.0.1:" in out.stdout, out.stdout + out.stderr
    assert "SWITCH True" in out.stdout
    assert "REFUSED the embedded Ray cluster is not confined to loopback" in out.stdout, \
        out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("False")          # shut down after refusing
