"""Batched inference shared by evaluation, predict and bench: probabilities, optional TTA."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from bcc_lightning.utils.device import autocast_for


def dihedral_views(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """The 8 flips/90-degree rotations of a batch: cells look the same in every orientation."""
    for k in range(4):
        rotated = torch.rot90(images, k, dims=(-2, -1))
        yield rotated
        yield torch.flip(rotated, dims=(-1,))


def _probability(logits: torch.Tensor) -> torch.Tensor:
    """sigmoid in fp32 outside autocast: a bf16 sigmoid collapses probabilities near 0 and 1 into a few values."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return torch.sigmoid(logits.float())


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
                probs = torch.stack([_probability(model(v)) for v in dihedral_views(images)]).mean(0)
            else:
                probs = _probability(model(images))
            out.append(probs)  # kept on the device: a copy per batch would make the host wait for every batch
    return torch.cat(out).cpu() if out else torch.empty(0)
