"""What the backbone expects of its input, and the one path from a file to the uint8 pixels that loaders ship.

`Preprocess` is stored in every checkpoint's hyperparameters, so evaluation, predict, export and serving reproduce
training's input exactly, without rebuilding anything from the current config.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from bcc_lightning.data.imageio import ImageDecodeError, load_pixels, load_rgb
from bcc_lightning.data.stain import StainNormaliser
from bcc_lightning.utils.errors import UserError


@dataclass(frozen=True)
class Preprocess:
    """Input size (square), mean/std on the 0-1 scale and the resize interpolation."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    # Fitted stain normalisation (StainNormaliser.state()), applied after resizing; None: none.
    stain_norm: dict[str, Any] | None = field(default=None, hash=False)
    # Which resize implementation: "tensor" (torchvision's uint8 kernel: 2-4x faster than Pillow's on microscope-sized
    # images, within one grey level of it) or "pil" (what checkpoints made before it was recorded used). Stored in
    # the checkpoint, so every path that reads a checkpoint resizes as its training did.
    resize: str = "tensor"

    def to_dict(self) -> dict[str, Any]:
        """Plain containers, as weights-only checkpoints require."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(img_size=int(data["img_size"]), mean=tuple(float(x) for x in data["mean"]),
                   std=tuple(float(x) for x in data["std"]), interpolation=str(data.get("interpolation", "bilinear")),
                   stain_norm=data.get("stain_norm"), resize=str(data.get("resize", "pil")))

    def fingerprint(self) -> str:
        """What changes the pixels a loader ships (the decoded-image cache's key includes it)."""
        return json.dumps([self.img_size, self.interpolation, self.stain_norm, self.resize], sort_keys=True)


@functools.lru_cache(maxsize=4)
def _normaliser(state: str) -> StainNormaliser:
    return StainNormaliser.from_state(json.loads(state))


# Interpolations whose uint8 tensor kernel matches Pillow's within one level; others (nearest, box...) resize in PIL.
TENSOR_RESIZE = ("bilinear", "bicubic")


def resize_op(pre: Preprocess) -> v2.Resize:
    # The whole image to the square input: no crop, so no cell at the border is lost.
    return v2.Resize((pre.img_size, pre.img_size), interpolation=v2.InterpolationMode(pre.interpolation),
                     antialias=True)


def _tensor_resize(pre: Preprocess) -> bool:
    return pre.resize == "tensor" and pre.interpolation in TENSOR_RESIZE


def resize_pixels(image: Image.Image | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Decoded RGB image (PIL, or uint8 (3, H, W)) -> uint8 (3, S, S) by the preprocessing's resize implementation."""
    if _tensor_resize(pre):
        return resize_op(pre)(image if isinstance(image, torch.Tensor) else v2.functional.pil_to_tensor(image))
    if isinstance(image, torch.Tensor):
        image = v2.functional.to_pil_image(image)
    return v2.functional.pil_to_tensor(resize_op(pre)(image))


def apply_stain_norm(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """The preprocessing's stain normalisation on uint8 (3, H, W) pixels (unchanged without one)."""
    if not pre.stain_norm:
        return pixels
    return _normaliser(json.dumps(pre.stain_norm, sort_keys=True))(pixels)


def to_pixels(image: Image.Image | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Decoded RGB image -> uint8 CHW tensor at the input size (stain-normalised when the preprocessing says so):
    what loaders ship and the model normalises. Training, evaluation, predict and Grad-CAM all come through here."""
    return apply_stain_norm(resize_pixels(image, pre), pre)


def read_pixels(path: str | Path, pre: Preprocess) -> torch.Tensor:
    """One file -> uint8 CHW tensor at the input size, or ImageDecodeError: what training (streamed or cached),
    evaluation and predict all read. Decoded as a tensor where the resize takes one (no copy out of PIL)."""
    return to_pixels(load_pixels(path) if _tensor_resize(pre) else load_rgb(path), pre)


def decode_resized(path: Path, pre: Preprocess) -> torch.Tensor:
    """read_pixels for training data (the part of the pipeline the cache stores): a bad file is a UserError."""
    try:
        return read_pixels(path, pre)
    except ImageDecodeError as exc:
        raise UserError(f"Cannot read a training image: {exc}. Remove or replace the file (bcc-prepare lists and "
                        f"skips unreadable files) and run again.") from exc


def decode_hwc(path: Path, pre: Preprocess) -> np.ndarray:
    """decode_resized as an (S, S, 3) array: one row of the decoded-image cache."""
    return decode_resized(path, pre).permute(1, 2, 0).numpy()


def with_stain_norm(pre: Preprocess, method: str | None, train_paths: list[Path],
                    reference: str | Path | None = None, sample: int = 64) -> Preprocess:
    """`pre` with stain normalisation fitted on (an even sample of) the training images, or on one reference image;
    unchanged when `method` is None. The fitted state travels in the checkpoint with the rest of the input."""
    if not method:
        return pre
    if reference:
        images = [decode_resized(Path(reference).expanduser(), pre)]
    else:
        step = max(1, len(train_paths) // sample)
        images = [decode_resized(path, pre) for path in train_paths[::step][:sample]]
    state = StainNormaliser(str(method)).fit(images).state()
    return replace(pre, stain_norm=state)
