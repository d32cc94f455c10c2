"""Loading a trained model from a trainer checkpoint, and running it on crops or whole scans."""

from __future__ import annotations

import json

import numpy as np
import torch

from tumorforge.trainer.augment import window
from tumorforge.trainer.models import build_model


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(checkpoint: str, device: torch.device | str = "auto") -> tuple[torch.nn.Module, dict]:
    """The model of a ``trainer`` checkpoint (``OUT/checkpoints/step-*.pt`` or a run folder, whose
    newest checkpoint is taken), in eval mode on ``device``; and the training config it recorded."""
    import os
    from tumorforge.trainer import checkpoint as ckpt
    path = checkpoint
    if os.path.isdir(path):
        folder = path if ckpt.list_steps(path) else os.path.join(path, "checkpoints")
        steps = ckpt.list_steps(folder)
        if not steps:
            raise FileNotFoundError(f"{checkpoint}: no step-*.pt checkpoint found")
        path = ckpt.path_for(folder, steps[-1])
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    model = build_model(config["model"])
    model.load_state_dict(state["model"])
    dev = pick_device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), {**config, "checkpoint": path, "step": int(state["step"])}


@torch.no_grad()
def predict_crop(model: torch.nn.Module, image_hu: np.ndarray, device=None) -> np.ndarray:
    """Labels (0/1/2) for one crop of HU values, same shape; the crop's sides must suit the model."""
    device = device or next(model.parameters()).device
    x = window(torch.from_numpy(np.ascontiguousarray(image_hu))[None, None].to(device))
    return model(x).argmax(1)[0].to(torch.uint8).cpu().numpy()
