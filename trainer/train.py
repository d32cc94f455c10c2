"""The training loop: streaming data, DiceCE, AdamW with warmup + cosine, bf16 on GPU, gradient
accumulation, DDP under torchrun, atomic checkpoints and exact resume, JSON-lines and TensorBoard logs.

Exact resume: a checkpoint holds the model, optimizer, scheduler, step, RNG states and how many
batches the loader had delivered; a resumed run skips exactly those samples (zarr sources) and
augments step s with the generator seeded by (seed, s), so on the CPU its loss trajectory equals
an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch

from tumorforge.manifests.conventions import ORGAN, TUMOR, dice
from tumorforge.manifests.records import RecordError

from . import checkpoint
from .augment import augment, window
from .config import TrainConfig
from .data import MixedStream, SampleStream, Source, collate, open_source
from .models import build_model
from .preprocessing import Preprocessing
from tumorforge.manifests.errors import UserError

METRICS = "metrics.jsonl"


class TrainError(UserError, RuntimeError):
    pass


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


LOOPBACK = "127.0.0.1"


def _distributed(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("device cuda asked for, but torch sees no CUDA device")
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        _init_process_group("nccl" if cuda else "gloo", rank, world)
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _is_loopback(addr: str) -> bool:
    import ipaddress
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _loopback_interface() -> str:
    """The name of the interface that holds 127.0.0.1 (``lo`` on Linux, ``lo0`` on macOS)."""
    try:
        import psutil
        for name, addrs in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addrs):
                return name
    except Exception:            # no psutil, or no interface list: the usual name
        pass
    return "lo0" if sys.platform == "darwin" else "lo"


def _pin_to_loopback(env) -> None:
    """Gloo's and NCCL's own sockets (the ranks' connections to each other) listen on the
    interface these name; on one node that is loopback, unless the operator chose otherwise."""
    lo = _loopback_interface()
    env.setdefault("GLOO_SOCKET_IFNAME", lo)
    env.setdefault("NCCL_SOCKET_IFNAME", lo)


def _loopback_listener(port: int) -> tuple[int, int]:
    """A listening TCP socket on 127.0.0.1:``port`` (0: any free port), detached: its file
    descriptor, for ``TCPStore(master_listen_fd=...)``, and its port. torch's store otherwise
    binds every interface whatever host name it is given."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise TrainError(f"cannot listen on {LOOPBACK}:{port} for the ranks' rendezvous "
                         f"({exc.strerror}); set MASTER_PORT to a free port") from None
    return sock.getsockname()[1], sock.detach()


def _loopback_store(port: int, world: int, host: bool, **kw):
    from torch.distributed import TCPStore
    timeout = datetime.timedelta(minutes=30)     # torch's default process-group timeout
    if host:
        _, fd = _loopback_listener(port)
        return TCPStore(LOOPBACK, port, world, True, timeout=timeout, master_listen_fd=fd,
                        use_libuv=True, **kw)
    return TCPStore(LOOPBACK, port, world, False, timeout=timeout)


def _init_process_group(backend: str, rank: int, world: int) -> None:
    """Join the ranks. Single-node runs stay on loopback:

    - under ``launch_local`` (``python -m tumorforge.trainer.train --nproc-per-node N ...``) or
      ``torchrun`` the launcher hosts the store (``TORCHELASTIC_USE_AGENT_STORE``); ours listens
      on 127.0.0.1, torchrun's on every interface (torch has no option to change that);
    - started by hand (``WORLD_SIZE``/``RANK`` set, no launcher), ``MASTER_ADDR`` defaults to
      127.0.0.1 and rank 0 hosts the store on 127.0.0.1:``MASTER_PORT`` only;
    - on one node (``LOCAL_WORLD_SIZE`` = ``WORLD_SIZE``, or a loopback ``MASTER_ADDR``) the
      backends' own sockets are pinned to the loopback interface unless GLOO_SOCKET_IFNAME /
      NCCL_SOCKET_IFNAME say otherwise.
    A multi-node run uses the operator's ``MASTER_ADDR`` as given; securing that address
    (a private network, a firewall) is the operator's job: the store has no authentication."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        if os.environ.get("LOCAL_WORLD_SIZE") == str(world):
            _pin_to_loopback(os.environ)
        torch.distributed.init_process_group(backend=backend)
        return
    addr = os.environ.setdefault("MASTER_ADDR", LOOPBACK)
    if not _is_loopback(addr):
        torch.distributed.init_process_group(backend=backend)
        return
    _pin_to_loopback(os.environ)
    port = int(os.environ.get("MASTER_PORT", "29500"))
    store = _loopback_store(port, world, rank == 0, multi_tenant=True)
    torch.distributed.init_process_group(backend=backend, store=store, rank=rank,
                                         world_size=world)


def launch_local(nproc: int, argv: list[str], env: dict | None = None) -> int:
    """Run ``python -m tumorforge.cluster ARGV`` as ``nproc`` DDP ranks on this machine, as
    ``torchrun --standalone`` does, but with the rendezvous store (hosted here) and the ranks'
    sockets on 127.0.0.1 only. Returns the first non-zero exit status of a rank (the others are
    stopped then), or 0."""
    if nproc < 1:
        raise TrainError(f"--nproc-per-node {nproc}: expected at least 1")
    port, fd = _loopback_listener(0)
    from torch.distributed import TCPStore
    store = TCPStore(LOOPBACK, port, nproc, True, timeout=datetime.timedelta(minutes=30),
                     master_listen_fd=fd, use_libuv=True, wait_for_workers=False,
                     multi_tenant=True)
    base = dict(os.environ if env is None else env)
    base.update(WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR=LOOPBACK,
                MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    base.setdefault("OMP_NUM_THREADS", "1")      # as torchrun: ranks do not oversubscribe
    _pin_to_loopback(base)
    procs = [subprocess.Popen([sys.executable, "-m", "tumorforge.cluster", *argv],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(nproc)]
    status = 0
    try:
        while procs:
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                if code and not status:
                    status = code
                    for other in procs:
                        other.terminate()
            time.sleep(0.2)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        del store
    return status


@torch.no_grad()
def validate(model, val: Source, n: int, device, prep: Preprocessing) -> dict:
    """Mean organ and tumor Dice over the first ``n`` crops of the held-out dataset, keyed
    ``val_dice_<class name>`` (the organ counts its tumor voxels: label >= ORGAN)."""
    stream = SampleStream(open_source(val), seed=0, rank=0, world=1)
    model.eval()
    organ, tumor = prep.class_names[ORGAN], prep.class_names[TUMOR]
    scores: dict[str, list[float]] = {organ: [], tumor: []}
    for i in range(min(n, len(stream.ds))):
        s = stream.load(i)
        if s["corrupt"]:
            continue
        image = window(torch.from_numpy(s["image"])[None, None].to(device), prep.window_hu)
        pred = model(image).argmax(1)[0].cpu()
        truth = torch.from_numpy(s["label"]).long()
        for name, cls in ((organ, ORGAN), (tumor, TUMOR)):
            d = dice(pred >= cls, truth >= cls) if cls == ORGAN else dice(pred == cls, truth == cls)
            if d is not None:
                scores[name].append(d)
    model.train()
    return {f"val_dice_{k}": (round(float(np.mean(v)), 5) if v else None) for k, v in scores.items()}



def eta_text(elapsed_s: float, done: int, left: int) -> str:
    """The time the ``left`` steps take at this run's pace so far (``done`` steps in
    ``elapsed_s``), as ``1h02m``, ``3m05s`` or ``42s``."""
    if left <= 0:
        return "0s"
    if done <= 0:
        return "?"
    seconds = int(round(elapsed_s / done * left))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else \
        f"{secs}s"

def train(cfg: TrainConfig, resume: bool = False, log=print, stop_after: int | None = None) -> dict:
    """Train to ``cfg.steps`` (or stop after ``stop_after`` steps, as if interrupted)."""
    from monai.losses import DiceCELoss
    from torch.utils.data import DataLoader

    rank, world, device = _distributed(cfg.device)
    ckpt_dir = os.path.join(cfg.out, "checkpoints")
    if not resume and checkpoint.list_steps(ckpt_dir):
        raise TrainError(f"{ckpt_dir} already holds checkpoints: pass --resume to continue that "
                         "run, or choose another --out")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    step, batches, corrupt = 0, 0, 0
    state = checkpoint.load_latest(ckpt_dir) if resume else None
    if state is not None:
        step, batches, corrupt = state["step"], state["batches"], state["corrupt"]
    stream = MixedStream(list(cfg.sources), cfg.seed, rank, world, cfg.batch_size,
                         start_batches=batches, resample=cfg.resample,
                         shuffle_buffer=cfg.shuffle_buffer, transforms=cfg.transforms)
    try:
        preprocessing = Preprocessing.of_datasets(stream.datasets)
    except RecordError as exc:
        raise TrainError(str(exc)) from None
    # One output channel per class of the data's organ: the class names travel with the model.
    model = build_model(cfg.model, len(preprocessing.class_names)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, partial(_warmup_cosine, warmup=cfg.warmup_steps, total=cfg.steps))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state["loader"] != _loader_signature(cfg, world):
            raise TrainError(f"checkpoint step {step} was made with loader {state['loader']}; "
                             f"this run has {_loader_signature(cfg, world)}: exact resume needs "
                             "the same sources, batch size, workers and world size")
        log(f"resumed from step {step} ({batches} batches consumed)")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    # Lineage: the checkpoint's config names each source's dataset id and size, as found when it
    # was opened (a dataset can grow under its id).
    saved_config = cfg.to_json()
    for src, ds in zip(saved_config["sources"], stream.datasets):
        src["dataset_id"], src["samples"] = ds.dataset_id, len(ds)
    loader = DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        collate_fn=collate, persistent_workers=cfg.workers > 0)
    if rank == 0:
        for line in _header(cfg, model, device, world, stream.datasets, preprocessing):
            log(line)
        for warning in cfg.warnings():
            log(f"warning: {warning}")
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, RESOLVED_CONFIG), "w") as f:
            json.dump({**saved_config, "resolved": {"device": str(device), "world": world,
                                                    "preprocessing": preprocessing.to_json()}},
                      f, indent=1, sort_keys=True)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    bf16 = device.type == "cuda" and cfg.bf16
    os.makedirs(cfg.out, exist_ok=True)
    metrics = open(os.path.join(cfg.out, METRICS), "a") if rank == 0 else None
    tb = _tensorboard(cfg.out) if rank == 0 else None
    it = iter(loader)
    shown = None                 # the last micro-batch (image, label, logits), for TensorBoard
    t_run = time.perf_counter()
    samples_run, first_step = 0, step
    while step < cfg.steps and (stop_after is None or step < stop_after):
        t0 = time.perf_counter()
        wait, seen, loss_sum = 0.0, 0, 0.0
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.accumulate):
            tw = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - tw
            batches += 1
            bad = batch["corrupt"]
            for key in (k for k, b in zip(batch["key"], bad.tolist()) if b):
                corrupt += 1
                log(f"step {step + 1}: skipped corrupt sample {key} ({corrupt} so far)")
                if metrics:
                    metrics.write(json.dumps({"event": "corrupt_sample", "key": key,
                                              "step": step + 1}) + "\n")
            keep = ~bad
            # DDP: gradients are all-reduced in the last micro-batch's backward only, and every
            # rank joins every forward and backward (buffers are broadcast in the forward,
            # gradients reduced in the backward): a rank that skipped one would hang the rest.
            sync = (net.no_sync() if world > 1 and micro < cfg.accumulate - 1
                    else contextlib.nullcontext())
            if not keep.any():
                if world == 1:
                    continue
                # All corrupt on this rank: a forward of its zero placeholder and a zero loss
                # that still reaches every parameter, so this rank adds nothing but joins.
                with sync:
                    image = window(batch["image"][:1].to(device, non_blocking=True),
                                   preprocessing.window_hu)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        logits = net(image)
                    (logits.float().sum() * 0.0).backward()
                continue
            image = window(batch["image"][keep].to(device, non_blocking=True),
                           preprocessing.window_hu)
            label = batch["label"][keep].to(device, non_blocking=True).long()
            image, label = augment(image, label, cfg.seed, step * cfg.accumulate + micro)
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = net(image)
                loss = loss_fn(logits.float(), label) / cfg.accumulate
                loss.backward()
            shown = (image, label, logits)
            loss_sum += loss.detach()
            seen += int(keep.sum())
        opt.step()
        sched.step()
        step += 1
        if world > 1:            # the logged loss is the mean over ranks
            loss_sum = torch.as_tensor(loss_sum, device=device, dtype=torch.float32)
            torch.distributed.all_reduce(loss_sum)
            loss_sum = loss_sum / world
        loss_sum = float(loss_sum)
        samples_run += seen
        dt = time.perf_counter() - t0
        record = {"step": step, "loss": loss_sum, "lr": sched.get_last_lr()[0],
                  "samples_per_s": round(seen * world / dt, 4), "data_wait_s": round(wait, 5),
                  "step_s": round(dt, 5), "corrupt_total": corrupt}
        if cfg.val is not None and step % cfg.val_every == 0:
            record.update(validate(model, cfg.val, cfg.val_samples, device, preprocessing))
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps or "val_dice_liver" in record):
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            for k, v in record.items():
                if k != "step" and v is not None:
                    tb.add_scalar(k, v, step)
            eta = eta_text(time.perf_counter() - t_run, step - first_step, cfg.steps - step)
            log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in record.items()) + f" eta {eta}")
        if rank == 0 and (step == 1 or step % cfg.checkpoint_every == 0 or step == cfg.steps):
            if shown is not None:
                _tensorboard_images(tb, *shown, step)
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            checkpoint.save(ckpt_dir, step, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "batches": batches, "corrupt": corrupt,
                "loader": _loader_signature(cfg, world), "config": json.dumps(saved_config),
                "preprocessing": json.dumps(preprocessing.to_json())},
                cfg.keep)
    if metrics:
        metrics.close()
        tb.close()
        plot_curves(os.path.join(cfg.out, METRICS), os.path.join(cfg.out, CURVES))
    if world > 1:
        torch.distributed.destroy_process_group()
    elapsed = time.perf_counter() - t_run
    return {"rank": rank, "world": world, "step": step, "batches": batches, "corrupt": corrupt, "seconds": round(elapsed, 3),
            "samples_per_s": round(samples_run * world / max(elapsed, 1e-9), 4)}


def _loader_signature(cfg: TrainConfig, world: int) -> str:
    sources = [(s.url, s.weight, s.format) for s in cfg.sources]
    return json.dumps({"sources": sources, "batch_size": cfg.batch_size, "workers": cfg.workers,
                       "world": world, "seed": cfg.seed, "resample": cfg.resample})


RESOLVED_CONFIG = "config.json"
CURVES = "curves.png"


def _header(cfg: TrainConfig, model, device, world: int, datasets, preprocessing) -> list[str]:
    """What the run is, printed before the first step."""
    params = sum(p.numel() for p in model.parameters())
    lines = [f"training {cfg.model} ({params / 1e6:.2f} M parameters) on {device}"
             f"{f' x {world} ranks' if world > 1 else ''}, seed {cfg.seed}"]
    for src, ds in zip(cfg.sources, datasets):
        lines.append(f"  source {src.url} ({src.format}, weight {src.weight:g}): dataset "
                     f"{ds.dataset_id}, {len(ds):,} samples of {'x'.join(map(str, ds.crop_shape))}")
    lines.append(f"  schedule: {cfg.steps} steps of {cfg.batch_size} x {cfg.accumulate} x {world} "
                 f"samples, AdamW lr {cfg.lr:g}, warmup {cfg.warmup_steps} steps then cosine; "
                 f"checkpoint every {cfg.checkpoint_every}, keep {cfg.keep}")
    lines.append(f"  preprocessing: spacing {list(preprocessing.spacing_mm)} mm, window "
                 f"{list(preprocessing.window_hu)} HU; {cfg.workers} loader worker(s)"
                 f"{f', transforms {cfg.transforms}' if cfg.transforms else ''}")
    lines.append(f"  writing to {cfg.out}: checkpoints/, {METRICS}, {RESOLVED_CONFIG}, {CURVES}, "
                 "tensorboard/")
    return lines


def _tensorboard_images(tb, image, label, logits, step: int) -> None:
    """The middle axial slice of the batch's first crop: image, label and prediction side by
    side (grey; liver 0.5, tumor 1.0)."""
    if tb is None:
        return
    with torch.no_grad():
        z = image.shape[2] // 2
        img = image[0, 0, z].float().cpu()
        lab = label[0, 0, z].float().cpu() / 2
        pred = logits[0].argmax(0)[z].float().cpu() / 2
        tb.add_image("sample/image_label_prediction", torch.cat([img, lab, pred], 1)[None], step)


def plot_curves(metrics_path: str, out_png: str) -> str | None:
    """Loss (and validation Dice, when the run validated) over steps, from ``metrics.jsonl``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = []
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                rows.append(row)
    if not rows:
        return None
    names = sorted({k[len("val_dice_"):] for r in rows for k in r if k.startswith("val_dice_")})
    val = [r for r in rows if any(r.get(f"val_dice_{n}") is not None for n in names)]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("DiceCE loss")
    ax.set_title("training loss")
    if val:
        ax = axes[0][1]
        for name in names:
            pts = [(r["step"], r[f"val_dice_{name}"]) for r in val
                   if r.get(f"val_dice_{name}") is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.set_title("validation Dice")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _tensorboard(out: str):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(os.path.join(out, "tensorboard"))

