"""``tumorforge bench loader`` and ``bench train``: what the reader delivers and what training eats."""

from __future__ import annotations

import time

import torch


def bench_loader(url: str, fmt: str, workers: int, batch_size: int, batches: int, warmup: int = 2
                 ) -> dict:
    """Samples per second delivered by the DataLoader over one dataset."""
    from torch.utils.data import DataLoader
    from .data import MixedStream, Source, collate
    stream = MixedStream([Source(url=url, format=fmt)], seed=0, batch_size=batch_size)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    corrupt = 0
    for _ in range(batches):
        corrupt += int(next(it)["corrupt"].sum())
    dt = time.perf_counter() - t0
    return {"benchmark": "loader", "url": url, "format": fmt, "workers": workers,
            "batch_size": batch_size, "samples": batches * batch_size, "seconds": round(dt, 3),
            "samples_per_second": round(batches * batch_size / dt, 3), "corrupt": corrupt}


def bench_train(model_name: str, batch_size: int, steps: int, crop: int, device: str,
                warmup: int = 2) -> dict:
    """Training samples per second of one model on random crops (forward, DiceCE, backward, step)."""
    from monai.losses import DiceCELoss
    from tumorforge.manifests.organs import DEFAULT_ORGAN, ORGANS
    from .models import build_model
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    torch.manual_seed(0)
    model = build_model(model_name, len(ORGANS[DEFAULT_ORGAN].classes)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.rand(batch_size, 1, crop, crop, crop, device=dev)
    y = torch.randint(0, 3, (batch_size, 1, crop, crop, crop), device=dev)
    bf16 = dev.type == "cuda"

    def one():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss_fn(out.float(), y).backward()
        opt.step()
    for _ in range(warmup):
        one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"benchmark": "train", "model": model_name, "device": str(dev), "batch_size": batch_size,
            "crop": crop, "steps": steps, "seconds": round(dt, 3),
            "samples_per_second": round(steps * batch_size / dt, 3),
            "threads": torch.get_num_threads()}
