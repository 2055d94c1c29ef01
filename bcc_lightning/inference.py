"""Batched inference shared by evaluation, predict and export checks: probabilities, optional TTA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from bcc_lightning.runtime import resolve_precision


def pick_device(accelerator: str = "auto") -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: Any) -> contextlib.AbstractContextManager:
    precision = str(resolve_precision(precision, device.type if device.type != "cuda" else "gpu"))
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def dihedral_views(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """The 8 flips/90-degree rotations of a batch: cells look the same in every orientation."""
    for k in range(4):
        rotated = torch.rot90(images, k, dims=(-2, -1))
        yield rotated
        yield torch.flip(rotated, dims=(-1,))


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                    precision: Any = "auto", tta: bool = False) -> torch.Tensor:
    """Malignant probabilities (float32, on CPU) for image batches: uint8 pixels, or floats already normalised."""
    model.eval().to(device)
    out = []
    with autocast_for(device, precision):
        for images in batches:
            images = images.to(device, non_blocking=True)
            if tta:
                probs = torch.stack([torch.sigmoid(model(v).float()) for v in dihedral_views(images)]).mean(0)
            else:
                probs = torch.sigmoid(model(images).float())
            out.append(probs)  # kept on the device: a copy per batch would make the host wait for every batch
    return torch.cat(out).cpu() if out else torch.empty(0)
