"""The eager core of inference: the TTA views, their logits from the PyTorch model, and the probabilities.

It imports neither the exporter nor the fast path, so that both can build on it: models.export checks its graphs
against `view_logits` (the eager path predict runs), and models.inference runs the same loop with the ONNX Runtime
forward pass put in.

With TTA the probability is the mean over the 8 views of sigmoid(logit / T) and the spread is their standard
deviation; without TTA there is one view, so the probability is sigmoid(logit / T), as in the exported graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from bcc_lightning.utils.device import autocast_for

TTA_VIEWS = 8


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
def view_logits(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device, precision: Any = "auto",
                tta: bool = False, forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits (float32, on CPU) of shape (N, V): V = 8 dihedral views with TTA, else 1.

    forward: what scores one view (a batch on `device`); the model itself unless the caller brings another path to
    the same logits (models.inference's ONNX Runtime session)."""
    model.eval().to(device)
    score = forward or model
    out = []
    with autocast_for(device, precision):
        for images in batches:
            images = images.to(device, non_blocking=True)
            views = dihedral_views(images) if tta else iter((images,))
            out.append(torch.stack([_fp32(score(view)) for view in views], dim=1))
            # kept on the device: a copy per batch would make the host wait for every batch
    return torch.cat(out).cpu() if out else torch.empty(0, TTA_VIEWS if tta else 1)


def view_probabilities(view_logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor,
                                                                                     torch.Tensor | None]:
    """(probability, spread), float64: mean over views of sigmoid(logit / T), and the views' standard deviation
    (None for one view). float64 from the logit on: sigmoid of a float32 logit rounds to exactly 1.0 above ~16.7,
    which would tie the most confident images (and clip their log loss)."""
    probs = torch.sigmoid(view_logits.double() / float(temperature))
    spread = probs.std(dim=1, unbiased=False) if probs.shape[1] > 1 else None
    return probs.mean(dim=1), spread
