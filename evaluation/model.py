"""Loading a trained model from a trainer checkpoint, with the preprocessing it was trained under,
and running it on crops."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from tumorforge.manifests.organs import DEFAULT_ORGAN, get_organ
from tumorforge.manifests.records import loads
from tumorforge.trainer.augment import window
from tumorforge.trainer.preprocessing import Preprocessing
from tumorforge.manifests.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used for evaluation; the message names the file."""


@dataclass(frozen=True)
class TrainedModel:
    """A model in eval mode and what its checkpoint says about it."""

    model: torch.nn.Module
    preprocessing: Preprocessing     # spacing, crop size, window and classes it was trained on
    config: dict                     # the training config it recorded
    checkpoint: str                  # the step-*.pt file it came from
    step: int

    @property
    def name(self) -> str:
        return self.config["model"]


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a device, else the CPU. Refuses ``cuda`` without one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda, but torch sees no CUDA device (use cpu or auto)")
    return torch.device(device)


def checkpoint_path(checkpoint: str) -> str:
    """``checkpoint`` itself, or the newest ``step-*.pt`` of a run folder (or its checkpoints/)."""
    from tumorforge.trainer import checkpoint as ckpt
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if not os.path.isdir(checkpoint):
        return checkpoint
    folder = checkpoint if ckpt.list_steps(checkpoint) else os.path.join(checkpoint, "checkpoints")
    steps = ckpt.list_steps(folder)
    if not steps:
        raise FileNotFoundError(f"{checkpoint}: no step-*.pt checkpoint found")
    return ckpt.path_for(folder, steps[-1])


def load_model(checkpoint: str, device: torch.device | str = "auto",
               organ: str = DEFAULT_ORGAN) -> TrainedModel:
    """The model of a ``trainer`` checkpoint (``OUT/checkpoints/step-*.pt`` or a run folder, whose
    newest checkpoint is taken) in eval mode on ``device``, with its preprocessing record. Its
    class names must be those of ``organ``'s record: a model of another organ is refused."""
    from tumorforge.trainer.models import build_model
    path = checkpoint_path(checkpoint)
    dev = pick_device(device) if isinstance(device, str) else device
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = json.loads(state["config"])
        step = int(state["step"])
    except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: not a trainer checkpoint ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None
    if "preprocessing" not in state:
        raise CheckpointError(f"{path}: no preprocessing record (spacing, crop size, window); the "
                              "checkpoint predates preprocessing records and must be retrained or "
                              "re-saved with one")
    try:
        where = f"{path}: preprocessing record"
        prep = Preprocessing.from_json(loads(state["preprocessing"], where), where)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    expected = get_organ(organ).classes
    if tuple(prep.class_names) != expected:
        raise CheckpointError(f"{path}: the model's classes are {list(prep.class_names)}; "
                              f"evaluation of the {organ} expects {list(expected)}")
    model = build_model(config["model"], len(prep.class_names))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit a {config['model']!r} model "
                              f"({_first_line(exc)})") from None
    return TrainedModel(model.to(dev).eval(), prep, config, path, step)


def _first_line(exc: Exception) -> str:
    # torch's errors run over many lines; the command line prints one.
    return (str(exc).splitlines() or [""])[0]


@torch.no_grad()
def predict_crop(model: torch.nn.Module, image_hu: np.ndarray, window_hu, device=None) -> np.ndarray:
    """Labels (0/1/2) for one ``(Z, Y, X)`` crop of HU values, same shape; ``window_hu`` is the
    model's training window; the crop's sides must suit the model."""
    device = device or next(model.parameters()).device
    x = window(torch.from_numpy(np.ascontiguousarray(image_hu))[None, None].to(device), window_hu)
    return model(x).argmax(1)[0].to(torch.uint8).cpu().numpy()
