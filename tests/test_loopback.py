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
    from cluster_fixtures import healthy_manifest, tiny_job_spec
    root = tmp_path_factory.mktemp("loopback")
    spec = tiny_job_spec(root, healthy_manifest(root, 2), samples=8, samples_per_shard=4,
                         root_seed=3, resources={"actors": 1})
    return root, spec


def _generate(spec, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    return subprocess.Popen([sys.executable, "-m", "tumorforge.cluster", "generate", str(spec),
                             "--out", str(out), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def test_two_embedded_jobs_on_one_host_at_once_both_finish_listening_on_loopback_only(job):
    """Two embedded jobs on one host at once, every listening socket of both drivers and all their
    descendants watched while they run.

    Every socket on loopback: with today's Ray (2.60) and the switch off, GCS, raylet, the
    driver's and every worker's core worker, the dashboard agent (gRPC, HTTP, metrics), the
    runtime-env agent and the two Prometheus ports all listen on 127.0.0.1, and none on a fixed
    port. Both finish: the agent HTTP port 52365 and the metrics ports 44217/44227 were fixed, so
    the second of two embedded clusters on one host could not bind them; now every port is picked
    free, and the two clusters share none of Ray's default ports."""
    root, spec = job
    t0 = time.monotonic()
    drivers = [_generate(spec, root / f"twin{i}") for i in range(2)]
    seen = [set(), set()]
    while any(d.poll() is None for d in drivers):
        for d, found in zip(drivers, seen):
            found.update(listening_sockets(d.pid))
        time.sleep(0.2)
    texts = [d.communicate(timeout=600)[0] for d in drivers]
    took = time.monotonic() - t0
    assert [d.returncode for d in drivers] == [0, 0], texts
    for i in range(2):
        index = json.loads((root / f"twin{i}" / "index.json").read_text())
        assert index["samples"] == 8
    assert (root / "twin0" / "index.json").read_bytes() == \
        (root / "twin1" / "index.json").read_bytes()

    for found in seen:                                    # each job's own cluster and writers
        names = {name for _, name, _, _ in found}
        assert {"gcs_server", "raylet"} <= names, names
        assert any("ShardWorker" in n for n in names), names
    every = seen[0] | seen[1]
    wrong = sorted((name, ip, port) for _, name, ip, port in every if not is_loopback(ip))
    assert wrong == [], wrong
    # A fixed port would be bound by the same server of both clusters (or the second could not
    # start); a free port picked at random may be 44217 or 52365 by chance (they lie in Linux's
    # ephemeral range 32768-60999; CI saw it once), so only a port both clusters bound counts.
    ports = [{port for *_, port in found} for found in seen]
    assert not ports[0] & ports[1] & FIXED_PORTS
    ports = [{port for *_, port in found} for found in seen]
    assert not ports[0] & ports[1], sorted(ports[0] & ports[1])      # no port shared

    # Before, both exited 0 but the second cluster's agent HTTP server gave up on 52365 and both
    # Prometheus servers failed (EADDRINUSE, in the session logs): no port may collide now.
    ray_dir = private_ray_dir()
    sessions = [os.path.join(ray_dir, s) for s in os.listdir(ray_dir) if s.startswith("session_2")
                and os.stat(os.path.join(ray_dir, s)).st_mtime >= time.time() - took - 5]
    assert len(sessions) >= 2                                          # Ray's files are there
    collisions = []
    for session in sessions:
        for dirpath, _, files in os.walk(os.path.join(session, "logs")):
            for name in files:
                with open(os.path.join(dirpath, name), errors="replace") as f:
                    collisions += [f"{name}: {line.strip()[:160]}" for line in f
                                   if "address already in use" in line.lower()]
    assert collisions == []
    print(f"two embedded jobs at once: {took:.1f} s; {len(every)} listening sockets in "
          f"{len({(pid, name) for pid, name, _, _ in every})} processes, all on loopback:")
    for pid, name, ip, port in sorted(every, key=lambda s: (s[1], s[3])):
        print(f"  {name:<32} {ip}:{port}")


CHECK = """
import ray
import ray._private.ray_constants as rc
from tumorforge.cluster import job
# One start. The fail-closed check runs after ray.init and reads the addresses Ray reports and the
# listening sockets of every process Ray started; here it also finds a raylet listening on every
# interface. The node and GCS addresses are printed from inside the check (the cluster is up).
found = job.listening_sockets
def with_a_wildcard_listener(pid):
    if not printed:
        printed.append(pid)
        print("NODE", ray._private.worker._global_node.node_ip_address,
              ray.get_runtime_context().gcs_address, flush=True)
    return found(pid) + [(1, "raylet", "0.0.0.0", 4242)]
printed = []
job.listening_sockets = with_a_wildcard_listener
try:
    job.start_embedded(ray)
    print("STARTED")
except job.JobError as exc:
    print("REFUSED", str(exc))
# The switch is back as it was (the rest of the process is not changed), and the cluster is shut
# down after refusing.
print("SWITCH", rc.ENABLE_RAY_CLUSTER)
print("INITIALIZED", ray.is_initialized())
"""


def test_node_address_is_loopback_and_the_check_fails_closed():
    """The node and GCS addresses are 127.0.0.1, and a Ray process found listening on every
    interface makes start_embedded shut the cluster down and raise. The refusal names that one
    listener and nothing else: the real addresses (node, GCS, raylet) and every real listening
    socket of Ray's processes passed the same check, in the same start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    said = out.stdout + out.stderr
    assert "NODE 127.0.0.1 127.0.0.1:" in out.stdout, said
    assert "REFUSED the embedded Ray cluster is not confined to loopback (pid 1 (raylet): " \
           "0.0.0.0:4242); refusing to run" in out.stdout, said
    assert "STARTED" not in out.stdout
    assert "SWITCH True" in out.stdout, said
    assert out.stdout.rstrip().endswith("INITIALIZED False"), said       # shut down after refusing
