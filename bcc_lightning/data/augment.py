"""The one augmentation: the original project's rotation, flips and grayscale (no crops or tilts: they lose cells),
plus stain colour jitter.

The loader draws a view per image per epoch; bcc-prepare writes augmented copies with the same function.

Every random choice comes from a generator seeded per (seed, epoch, position) by the sampler, so augmentation is
the same with or without loader workers, and after resuming from a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bcc_lightning.data.stain import hed_jitter, hsv_jitter


@dataclass(frozen=True)
class AugmentConfig:
    rot90: bool = True
    rotation_degrees: float = 0.0
    hflip: float = 0.5
    vflip: float = 0.5
    grayscale: float = 0.0
    # Stain colour jitter strengths (data/stain.py): HED scale/shift (Tellez et al. 2019; 0.05 is "light") and HSV.
    stain: float = 0.0
    hsv: float = 0.0


def rotate_reflect(image: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate by a free angle, filling the corners by reflection instead of black; same size out."""
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


def augment(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
            applied: list[str] | None = None) -> torch.Tensor:
    """One random view of a uint8 (3, H, W) image; the names of the ops applied are appended to `applied`."""
    names: list[str] = [] if applied is None else applied

    def chance(p: float) -> bool:
        return p > 0 and torch.rand((), generator=generator).item() < p

    if cfg.rot90:
        k = int(torch.randint(0, 4, (), generator=generator))
        if k:
            image = torch.rot90(image, k, dims=(-2, -1))
            names.append(f"rot{90 * k}")
    if cfg.rotation_degrees > 0:
        angle = (torch.rand((), generator=generator).item() * 2 - 1) * cfg.rotation_degrees
        image = rotate_reflect(image, angle)
        names.append(f"rotate{angle:+.1f}")
    if chance(cfg.hflip):
        image = torch.flip(image, dims=(-1,))
        names.append("hflip")
    if chance(cfg.vflip):
        image = torch.flip(image, dims=(-2,))
        names.append("vflip")
    if cfg.stain > 0:
        image = hed_jitter(image, cfg.stain, generator)
        names.append("hed")
    if cfg.hsv > 0:
        image = hsv_jitter(image, cfg.hsv, generator)
        names.append("hsv")
    if chance(cfg.grayscale):
        image = F.rgb_to_grayscale(image, num_output_channels=3)
        names.append("grayscale")
    return image.contiguous()
