"""DDP with two CPU processes (Gloo) where one rank meets corrupt samples and the other does not
(issue 26): every rank joins every reduction, so training finishes (a timeout turns a regression
into a failure, not a hang) and both ranks end with the same weights; and a single-node run
started by ``launch_local`` listens on loopback only. One ``launch_local`` run serves both
(``torchrun`` itself is tested in test_trainer.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cluster_fixtures import healthy_manifest, write_dataset

# Runs under torchrun / launch_local in each rank. Rank 1's 1st and 4th samples come back from
# the reader with one bit flipped in their image, so the trainer's real integrity check (sha256
# against the shard record) marks them corrupt; rank 0 sees only good samples. With batch size 1
# and 2 micro-batches per step, rank 1 then has an all-corrupt micro-batch at step 1 (inside
# no_sync) and at step 2 (the synchronising one).
DRIVER = textwrap.dedent('''
    import json, os, sys
    import torch
    from tumorforge.manifests.dataset import zarr_format
    from tumorforge.trainer import train as T
    from tumorforge.trainer.config import load_config

    rank = int(os.environ["RANK"])
    source, out, listen_report = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    real_sample, calls = zarr_format.ZarrReader.sample, [0]

    def zarr_sample(self, i):
        key, image, label = real_sample(self, i)
        calls[0] += 1
        if rank == 1 and calls[0] in (1, 4):
            image = image.copy()
            image.flat[0] ^= 1
        return key, image, label

    zarr_format.ZarrReader.sample = zarr_sample
    models, real_build = [], T.build_model
    T.build_model = lambda *a: models.append(real_build(*a)) or models[-1]
    if listen_report:       # every listening socket of this rank, and the launcher's store
        real_step = torch.optim.AdamW.step
        def step(self, *a, **k):
            torch.optim.AdamW.step = real_step          # once, during the first step
            import psutil
            me, port = psutil.Process(), int(os.environ["MASTER_PORT"])
            found = [f"{c.laddr.ip}:{c.laddr.port}" for p in (me, me.parent())
                     for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
                     and (p is me or c.laddr.port == port)]
            with open(os.path.join(out, f"listen-{rank}.json"), "w") as f:
                json.dump(found, f)
            return real_step(self, *a, **k)
        torch.optim.AdamW.step = step
    cfg = load_config(None, {"sources": [{"url": source}], "out": out, "steps": 3,
                             "batch_size": 1, "accumulate": 2, "workers": 0, "log_every": 1,
                             "checkpoint_every": 3, "warmup_steps": 1, "lr": 1e-2,
                             "model": "unet-small", "device": "cpu", "seed": 5})
    summary = T.train(cfg, log=lambda *a: None)
    torch.save(models[0].state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"summary{rank}.json"), "w") as f:
        json.dump(summary, f)
''')


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    manifest = healthy_manifest(root / "scans", n_scans=2)
    write_dataset(manifest, root / "syn", samples=12, samples_per_shard=3, root_seed=1)
    return root / "syn"


def _ranks_agree(out):
    summaries = [json.loads((out / f"summary{r}.json").read_text()) for r in (0, 1)]
    assert [s["step"] for s in summaries] == [3, 3]
    assert [s["corrupt"] for s in summaries] == [0, 2]
    a, b = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3]
    return a


@pytest.fixture(scope="module")
def corrupt_run(dataset, tmp_path_factory):
    """One two-rank run of DRIVER started by ``launch_local`` (both tests below read it; a launch
    costs 20 s): its output folder and the launcher's listening sockets before and after."""
    import signal
    from tumorforge.cluster.job import listening_sockets
    from tumorforge.trainer import train as T
    tmp = tmp_path_factory.mktemp("corrupt-run")
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    out = tmp / "run"
    out.mkdir()
    # launch_local runs `python -m tumorforge.cluster ARGV`; here the driver stands in for it.
    real_popen = subprocess.Popen

    def popen(cmd, **kw):
        assert cmd[1:3] == ["-m", "tumorforge.cluster"]
        return real_popen([cmd[0], str(driver), str(dataset), str(out), "1"], **kw)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "MASTER_ADDR")}

    def listening():
        return {(ip, port) for _, _, ip, port in listening_sockets(os.getpid())}

    def hung(*_):           # launch_local's cleanup then stops the ranks
        pytest.fail("DDP training hung: a rank skipped a reduction the others waited in")
    before = listening()
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(240)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(T.subprocess, "Popen", popen)
            code = T.launch_local(2, ["train"], env=env)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out, before, listening()


@pytest.mark.slow
def test_a_rank_with_only_corrupt_micro_batches_does_not_hang_the_others(corrupt_run):
    """Rank 1 skips its corrupt samples (two of them, one a whole micro-batch inside no_sync and
    one the synchronising one) yet joins every reduction: the run ends in time, at step 3 on
    both ranks, with the same weights."""
    code, out, _, _ = corrupt_run
    assert code == 0
    _ranks_agree(out)


@pytest.mark.slow
def test_single_node_launch_listens_on_loopback_only(corrupt_run):
    """``launch_local`` hosts the rendezvous store on 127.0.0.1 and pins Gloo to the loopback
    interface; every listening socket of the launcher and of each rank (seen from inside the
    rank during training) is on 127.0.0.1."""
    code, out, before, after = corrupt_run
    assert code == 0
    for r in (0, 1):
        found = json.loads((out / f"listen-{r}.json").read_text())
        # the rank's own Gloo listener(s) and the launcher's store, all on loopback
        assert len(found) >= 2 and all(a.startswith("127.0.0.1:") for a in found), found
    assert after <= before                                    # the store went with the launch


@pytest.mark.slow
def test_ranks_started_by_hand_rendezvous_on_loopback(tmp_path):
    """WORLD_SIZE/RANK set without a launcher and no MASTER_ADDR: rank 0 hosts the store on
    127.0.0.1 only (torch's default binds every interface)."""
    import socket
    script = tmp_path / "pg.py"
    script.write_text(textwrap.dedent('''
        import os, sys, json, torch
        from tumorforge.cluster.job import listening_sockets
        from tumorforge.trainer.train import _distributed
        rank, world, _ = _distributed("cpu")
        t = torch.tensor([rank + 1.0])
        torch.distributed.all_reduce(t)
        found = [f"{ip}:{port}" for _, _, ip, port in listening_sockets(os.getpid())]
        torch.distributed.barrier()
        print(json.dumps({"sum": t.item(), "listen": found}))
        torch.distributed.destroy_process_group()
    '''))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items()
            if k not in ("MASTER_ADDR", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**base, "WORLD_SIZE": "2", "RANK": str(r),
                                   "MASTER_PORT": str(port)}) for r in (0, 1)]
    try:
        outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1])
                for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [o["sum"] for o in outs] == [3.0, 3.0]
    assert f"127.0.0.1:{port}" in outs[0]["listen"]
    assert all(a.startswith("127.0.0.1:") for o in outs for a in o["listen"]), outs


def test_train_flag_launches_local_ranks_without_the_flag(monkeypatch, tmp_path):
    """``tumorforge train --nproc-per-node N`` hands the rest of its arguments to the loopback
    launcher; a rank (RANK set) trains itself instead of launching again."""
    from tumorforge.cluster.front_door import main
    from tumorforge.trainer import train as T
    calls = []
    monkeypatch.setattr(T, "launch_local", lambda n, argv: calls.append((n, argv)) or 0)
    monkeypatch.delenv("RANK", raising=False)
    argv = ["train", "--source", str(tmp_path / "ds"), "--nproc-per-node", "2", "--steps", "3"]
    assert main(argv) == 0
    assert calls == [(2, ["train", "--source", str(tmp_path / "ds"), "--steps", "3"])]
    from tumorforge.trainer.cli import without_flag
    assert without_flag(["train", "--nproc-per-node=4", "x"], "--nproc-per-node") == ["train", "x"]
