"""Stain colour: augmentation (HED and HSV jitter) and normalisation (Macenko, Reinhard).

What breaks classifiers in pathology is the next lab's stain and scanner. Jitter in stain space (Tellez et al. 2019)
teaches the model to ignore it; normalisation maps every image onto the training split's stain before the model
sees it. Both work on uint8 (3, H, W) tensors, the loaders' currency.

Normalisation uses torchstain's Macenko and Reinhard implementations, fitted on a mosaic of training images. Its
fitted state is plain numbers, stored with the preprocessing in every checkpoint, so evaluation, predict and export
apply exactly what training used. Glass-only or blank tiles (too little stained tissue to estimate stain vectors)
pass through unchanged and are counted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from bcc_lightning.utils.errors import UserError

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical-density space, as scikit-image uses.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
METHODS = ("macenko", "reinhard")
# A tile is "blank" when fewer than this share of its pixels have any optical density above Macenko's beta (0.15).
MIN_TISSUE_FRACTION = 0.05
_MOSAIC_SIDE = 1024


def hed_jitter(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Scale and shift the haematoxylin, eosin and DAB concentrations: c' = c * a + b with a ~ U(1-s, 1+s) and
    b ~ U(-s, s) per stain (Tellez et al. 2019, "HED-light" is s = 0.05). uint8 (3, H, W) in and out."""
    if strength <= 0:
        return image
    alpha = 1 + (torch.rand(3, generator=generator, dtype=torch.float64) * 2 - 1) * strength
    beta = (torch.rand(3, generator=generator, dtype=torch.float64) * 2 - 1) * strength
    rgb = image.to(torch.float64).permute(1, 2, 0).reshape(-1, 3)
    od = -torch.log(torch.clamp(rgb, min=1.0) / 255.0)  # optical density, 0 for white
    hed = od @ _HED_FROM_RGB  # not clipped at 0: the round trip stays exact when a = 1, b = 0
    od = (hed * alpha + beta) @ _RGB_FROM_HED
    out = torch.clamp(255.0 * torch.exp(-od), 0, 255).round().to(torch.uint8)
    return out.reshape(image.shape[1], image.shape[2], 3).permute(2, 0, 1).contiguous()


def hsv_jitter(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Hue shift in [-s/2, s/2] of a turn, saturation and brightness scaled by [1-s, 1+s]. uint8 in and out."""
    if strength <= 0:
        return image
    draws = torch.rand(3, generator=generator).tolist()
    hue = (draws[0] * 2 - 1) * strength / 2
    saturation = 1 + (draws[1] * 2 - 1) * strength
    value = 1 + (draws[2] * 2 - 1) * strength
    image = F.adjust_hue(image, max(-0.5, min(0.5, hue)))
    image = F.adjust_saturation(image, max(0.0, saturation))
    return F.adjust_brightness(image, max(0.0, value))


def tissue_fraction(image: torch.Tensor, beta: float = 0.15, io: float = 240.0) -> float:
    """Share of pixels with some stain (optical density above `beta` in any channel), as Macenko counts them."""
    od = -torch.log((image.to(torch.float32) + 1) / io)
    return float((od >= beta).any(dim=0).float().mean())


def _mosaic(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tiles of the training images side by side (each resized to a common height): one reference 'image'."""
    if not images:
        raise UserError("Stain normalisation needs training images to fit on, and the training split is empty.")
    per_side = max(1, math.isqrt(len(images)))
    side = max(32, _MOSAIC_SIDE // per_side)
    tiles = [F.resize(img, [side, side], antialias=True) for img in images]
    rows = [torch.cat(tiles[i:i + per_side], dim=2) for i in range(0, len(tiles) - len(tiles) % per_side or 1,
                                                                   per_side)]
    rows = [r for r in rows if r.shape[2] == rows[0].shape[2]]
    return torch.cat(rows, dim=1)


class StainNormaliser:
    """Macenko or Reinhard normalisation towards a reference fitted on training images (or one reference image).

    `state()` is plain lists and floats (weights-only checkpoints), `from_state` rebuilds it. Calling it on a uint8
    (3, H, W) image returns the normalised image; blank tiles and images torchstain cannot decompose come back
    unchanged and are counted in `passed_through`.
    """

    def __init__(self, method: str) -> None:
        if method not in METHODS:
            raise UserError(f"data.stain_norm must be one of {', '.join(METHODS)} or null; got {method!r}.")
        from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

        self.method = method
        self._impl: Any = TorchMacenkoNormalizer() if method == "macenko" else TorchReinhardNormalizer()
        self.fitted = False
        self.normalised = 0
        self.passed_through = 0

    def fit(self, images: Sequence[torch.Tensor]) -> StainNormaliser:
        reference = _mosaic([img for img in images if tissue_fraction(img) >= MIN_TISSUE_FRACTION] or list(images))
        try:
            self._impl.fit(reference)
        except Exception as exc:  # eigh / lstsq on a degenerate reference
            raise UserError(f"Cannot fit {self.method} stain normalisation on the training images ({exc}); they may "
                            f"be blank or unstained. Use data.stain_norm=null, or a reference image with stained "
                            f"tissue.") from exc
        self.fitted = True
        return self

    def state(self) -> dict[str, Any]:
        if self.method == "macenko":
            return {"method": "macenko", "he": self._impl.HERef.tolist(), "max_c": self._impl.maxCRef.tolist()}
        return {"method": "reinhard", "means": self._impl.target_means.tolist(),
                "stds": self._impl.target_stds.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StainNormaliser:
        normaliser = cls(str(state["method"]))
        if normaliser.method == "macenko":
            normaliser._impl.HERef = torch.tensor(state["he"], dtype=torch.float32)
            normaliser._impl.maxCRef = torch.tensor(state["max_c"], dtype=torch.float32)
        else:
            normaliser._impl.target_means = torch.tensor(state["means"], dtype=torch.float32)
            normaliser._impl.target_stds = torch.tensor(state["stds"], dtype=torch.float32)
        normaliser.fitted = True
        return normaliser

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if tissue_fraction(image) < MIN_TISSUE_FRACTION:
            self.passed_through += 1
            return image
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.method == "macenko":
                    out = self._impl.normalize(image, stains=False)[0].permute(2, 0, 1)
                else:
                    out = self._impl.normalize(image).permute(2, 0, 1)
        except Exception:  # torch.linalg errors on nearly uniform tiles: leave them as they are
            self.passed_through += 1
            return image
        self.normalised += 1
        return torch.clamp(out, 0, 255).to(torch.uint8).contiguous()
