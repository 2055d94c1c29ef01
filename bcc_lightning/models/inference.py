"""Batched inference shared by evaluation, predict, compare and bench: logits per TTA view, probabilities.

With TTA the probability is the mean over the 8 views of sigmoid(logit / T) and the spread is their standard
deviation; without TTA there is one view, so the probability is sigmoid(logit / T), as in the exported graph.
"""

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


def _fp32(logits: torch.Tensor) -> torch.Tensor:
    """Logits in fp32 outside autocast: a bf16 sigmoid collapses probabilities near 0 and 1 into a few values."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return logits.float()


@torch.no_grad()
def predict_view_logits(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                        precision: Any = "auto", tta: bool = False) -> torch.Tensor:
    """Logits (float32, on CPU) of shape (N, V): V = 8 dihedral views with TTA, else 1."""
    model.eval().to(device)
    out = []
    with autocast_for(device, precision):
        for images in batches:
            images = images.to(device, non_blocking=True)
            views = dihedral_views(images) if tta else iter((images,))
            out.append(torch.stack([_fp32(model(v)) for v in views], dim=1))
            # kept on the device: a copy per batch would make the host wait for every batch
    return torch.cat(out).cpu() if out else torch.empty(0, 8 if tta else 1)


def view_probabilities(view_logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor,
                                                                                     torch.Tensor | None]:
    """(probability, spread): mean over views of sigmoid(logit / T), and the views' standard deviation (None for
    one view)."""
    probs = torch.sigmoid(view_logits.float() / float(temperature))
    spread = probs.std(dim=1, unbiased=False) if probs.shape[1] > 1 else None
    return probs.mean(dim=1), spread


def predict_batches(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                    precision: Any = "auto", tta: bool = False, temperature: float = 1.0) -> torch.Tensor:
    """Malignant probabilities (float32, on CPU) for image batches: uint8 pixels, or floats already normalised."""
    return view_probabilities(predict_view_logits(model, batches, device, precision, tta), temperature)[0]
