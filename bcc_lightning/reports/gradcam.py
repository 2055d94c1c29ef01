"""Grad-CAM overlays that explain the *predicted* class of a one-logit model.

With one logit z, malignant evidence is +z and benign evidence is -z. Explaining +z for a benign prediction (as the
original Keras code did) shows where the model saw malignancy, not why it said benign.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from bcc_lightning.data.preprocess import Preprocess, to_pixels
from bcc_lightning.utils.errors import UserError

# Known good layers (the last feature map before pooling); other backbones use the last 4-D activation.
TARGET_LAYERS = {
    "mobilenetv2": "bn2",
    "efficientnet": "bn2",
    "densenet": "features.norm5",
    "inception_v3": "Mixed_7c",
    "resnet": "layer4",
}


class PredictedClassTarget:
    """Grad-CAM target: +logit when the prediction is malignant, -logit when it is benign."""

    def __init__(self, predicted: int) -> None:
        self.sign = 1.0 if predicted == 1 else -1.0

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return self.sign * model_output


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)  # type: ignore[index]
    return module


def find_target_layer(model: nn.Module, arch: str, img_size: int, override: str | None = None) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: configured, known for the family, or the last 4-D output."""
    backbone = model.backbone
    if override:
        try:
            return _get(model, override) if override.startswith(("backbone.", "head.")) else _get(backbone, override)
        except (AttributeError, IndexError, TypeError) as exc:
            raise UserError(f"cam_layer={override!r} is not a module of backbone {arch!r}; use a dotted path such as "
                            f"'features.norm5' (list them with print(model.backbone)).") from exc
    for prefix, path in TARGET_LAYERS.items():
        if arch.startswith(prefix):
            try:
                return _get(backbone, path)
            except AttributeError:
                break
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: seen.append(mod) if torch.is_tensor(out)
                                     and out.dim() == 4 and min(out.shape[-2:]) > 1 else None)
             for m in backbone.modules()]
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, img_size, img_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        raise UserError(f"Backbone {arch!r} has no 4-D feature map for Grad-CAM; set cam_layer=<module path>.")
    return seen[-1]


class _Float32(nn.Module):
    """Grad-CAM needs plain fp32 (N,) logits in channels-first memory."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


def compute_cams(model: nn.Module, images: torch.Tensor, predicted: list[int], layer: nn.Module) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at the input tensor's size, each for its predicted class."""
    from pytorch_grad_cam import GradCAM

    model.eval()
    with torch.enable_grad(), GradCAM(model=_Float32(model), target_layers=[layer]) as cam:
        return cam(input_tensor=images, targets=[PredictedClassTarget(p) for p in predicted])


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Heatmap (jet) over the original image, resized to the image's own size."""
    from matplotlib import colormaps

    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(image.size, Image.Resampling.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(np.uint8(np.clip((1 - alpha) * base + alpha * colours, 0, 1) * 255))


def save_overlays(model: nn.Module, items: list[dict[str, Any]], pre: Preprocess, outdir: Path, arch: str,
                  layer_path: str | None = None, device: torch.device | None = None) -> list[Path]:
    """Write one side-by-side PNG (image | Grad-CAM) per item {path, image, label, prob, predicted}; the model sees
    the same uint8 pixels as in evaluation (`to_pixels`)."""
    from bcc_lightning.utils.atomic_io import atomic_write

    if not items:
        return []
    device = device or torch.device("cpu")
    model = model.to(device)
    layer = find_target_layer(model, arch, pre.img_size, layer_path)
    batch = torch.stack([to_pixels(item["image"], pre) for item in items]).to(device)
    cams = compute_cams(model, batch, [item["predicted"] for item in items], layer)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for item, cam in zip(items, cams):
        image = item["image"]
        if max(image.size) > 512:
            scale = 512 / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
        combined = Image.new("RGB", (image.width * 2 + 4, image.height), "white")
        combined.paste(image, (0, 0))
        combined.paste(overlay(image, cam), (image.width + 4, 0))
        name = item.get("name") or Path(item["path"]).stem
        target = outdir / f"{name}.png"
        atomic_write(target, lambda tmp, im=combined: im.save(tmp, format="PNG"))
        item["cam_file"] = target
        item["cam"] = cam
        written.append(target)
    return written
