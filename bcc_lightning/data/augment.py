"""Training-time augmentation of the original project: rotation, flips, grayscale. No crops or tilts (lose cells)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class RandomRot90:
    """Rotate by a random multiple of 90 degrees: lossless, and cells have no preferred orientation."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        k = random.randrange(4)
        return torch.rot90(image, k, dims=(-2, -1)) if k else image


class RandomRotateReflect:
    """Rotate by a free angle in [-degrees, degrees], filling the corners by reflection instead of black."""

    def __init__(self, degrees: float) -> None:
        self.degrees = float(degrees)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        angle = random.uniform(-self.degrees, self.degrees)
        if abs(angle) < 1e-3:
            return image
        h, w = image.shape[-2:]
        rad = math.radians(abs(angle) % 90)
        # Pad enough that the rotated frame never reaches outside the padded image.
        pad_w = math.ceil((w * math.cos(rad) + h * math.sin(rad) - w) / 2) + 1
        pad_h = math.ceil((w * math.sin(rad) + h * math.cos(rad) - h) / 2) + 1
        pad_w, pad_h = min(pad_w, w - 1), min(pad_h, h - 1)  # reflect padding cannot exceed the image size
        padded = F.pad(image, [pad_w, pad_h, pad_w, pad_h], padding_mode="reflect")
        rotated = F.rotate(padded, angle, interpolation=v2.InterpolationMode.BILINEAR)
        return F.center_crop(rotated, [h, w])


@dataclass(frozen=True)
class AugmentConfig:
    rot90: bool = True
    rotation_degrees: float = 0.0
    hflip: float = 0.5
    vflip: float = 0.5
    grayscale: float = 0.0


def build_augment(cfg: AugmentConfig) -> list:
    """Transforms applied to uint8 CHW tensors of the training split only."""
    ops: list = []
    if cfg.rot90:
        ops.append(RandomRot90())
    if cfg.rotation_degrees > 0:
        ops.append(RandomRotateReflect(cfg.rotation_degrees))
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.vflip > 0:
        ops.append(v2.RandomVerticalFlip(cfg.vflip))
    if cfg.grayscale > 0:
        ops.append(v2.RandomGrayscale(cfg.grayscale))
    return ops
