"""Grad-CAM overlays that explain the *predicted* class of a one-logit model.

With one logit z, malignant evidence is +z and benign evidence is -z. Explaining +z for a benign prediction (as the
original Keras code did) shows where the model saw malignancy, not why it said benign.

Transformers have no 4-D feature map: for ViTs Grad-CAM weighs the tokens entering the last block's attention
(blocks[-1].norm1), with the class/register tokens dropped and the patch tokens laid out on their grid; Swin's
channels-last maps are turned channels-first. ViTs can also be explained by attention rollout (Abnar & Zuidema 2020),
which is class-agnostic. Each overlay records which method and layer drew it (item['cam_method']).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from bcc_lightning.data.preprocess import Preprocess, to_pixels
from bcc_lightning.models.backbones import default_cam_layer
from bcc_lightning.utils.errors import UserError


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


ROLLOUT_NAMES = ("rollout", "attention_rollout")


def is_vit(backbone: nn.Module) -> bool:
    """A timm VisionTransformer-like network: patch tokens (plus prefix tokens) through `blocks`."""
    return hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed") and hasattr(backbone, "num_prefix_tokens")


def is_nhwc(backbone: nn.Module) -> bool:
    """Networks whose feature maps are channels-last (N, H, W, C), as timm's Swin."""
    return str(getattr(backbone, "output_fmt", "")).upper() == "NHWC"


def token_grid(backbone: nn.Module, img_size: int) -> tuple[int, int]:
    """The patch grid (h, w) a ViT lays its tokens on for a square input of `img_size`."""
    patch_embed = backbone.patch_embed
    if hasattr(patch_embed, "dynamic_feat_size"):
        return tuple(int(v) for v in patch_embed.dynamic_feat_size((img_size, img_size)))  # type: ignore[return-value]
    patch = patch_embed.patch_size
    patch = patch if isinstance(patch, (tuple, list)) else (patch, patch)
    return math.ceil(img_size / patch[0]), math.ceil(img_size / patch[1])


class TokensToMap:
    """(N, prefix + h*w, C) tokens -> (N, C, h, w): what Grad-CAM needs to weigh and upsample a ViT's tokens."""

    def __init__(self, prefix: int, grid: tuple[int, int]) -> None:
        self.prefix, self.grid = prefix, grid

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() == 4:  # already a map (a layer before the tokens are flattened)
            return tokens
        patches = tokens[:, self.prefix:, :]
        h, w = self.grid
        if patches.shape[1] != h * w:  # e.g. a layer of another resolution: fall back to a square grid
            h = w = math.isqrt(patches.shape[1])
            patches = patches[:, : h * w]
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """Swin's channels-last maps (N, H, W, C) -> (N, C, H, W)."""
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


@dataclass
class CamPlan:
    """How an explanation is drawn: the method, the layer (module and dotted name), the reshape, the text."""

    method: str  # "gradcam" or "rollout"
    layer: nn.Module | None
    layer_name: str
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    description: str


def _name_of(backbone: nn.Module, layer: nn.Module) -> str:
    return next((name for name, module in backbone.named_modules() if module is layer), type(layer).__name__)


def plan_cam(model: nn.Module, arch: str, img_size: int, override: str | None = None) -> CamPlan:
    """The method, layer and reshape for this backbone. `override`: a dotted module path, or 'rollout' (ViTs)."""
    backbone = model.backbone
    if override and override.lower() in ROLLOUT_NAMES:
        if not is_vit(backbone):
            raise UserError(f"cam_layer={override} (attention rollout) needs a ViT backbone; {arch!r} is not one. "
                            f"Leave cam_layer unset for Grad-CAM.")
        h, w = token_grid(backbone, img_size)
        return CamPlan("rollout", None, "blocks.*.attn", None,
                       f"attention rollout over {len(backbone.blocks)} blocks (Abnar & Zuidema 2020; "
                       f"class-agnostic, ViT tokens on a {h}x{w} grid)")
    layer = find_target_layer(model, arch, img_size, override)
    name = _name_of(backbone, layer)
    if is_vit(backbone):
        grid = token_grid(backbone, img_size)
        prefix = int(backbone.num_prefix_tokens)
        return CamPlan("gradcam", layer, name, TokensToMap(prefix, grid),
                       f"Grad-CAM on {name} (ViT tokens reshaped to {grid[0]}x{grid[1]}"
                       f"{f', {prefix} prefix token(s) dropped' if prefix else ''})")
    if is_nhwc(backbone):
        return CamPlan("gradcam", layer, name, nhwc_to_nchw,
                       f"Grad-CAM on {name} (Swin channels-last map turned channels-first)")
    return CamPlan("gradcam", layer, name, None, f"Grad-CAM on {name}")


def _default_transformer_layer(backbone: nn.Module) -> nn.Module | None:
    """ViT: the last block's first norm (its output are the tokens the last attention mixes, with gradients that
    still reach the pooled token). Swin and other channels-last nets: the final norm over the last stage's map."""
    if is_vit(backbone) and len(backbone.blocks) and hasattr(backbone.blocks[-1], "norm1"):
        return backbone.blocks[-1].norm1
    if is_nhwc(backbone):
        norm = getattr(backbone, "norm", None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            return norm
        layers = getattr(backbone, "layers", None) or getattr(backbone, "stages", None)
        if layers is not None and len(layers):
            return layers[-1]
    return None


def find_target_layer(model: nn.Module, arch: str, img_size: int, override: str | None = None) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: configured, known for the family, the transformer default, or
    the last 4-D output."""
    backbone = model.backbone
    if override:
        try:
            return _get(model, override) if override.startswith(("backbone.", "head.")) else _get(backbone, override)
        except (AttributeError, IndexError, TypeError) as exc:
            raise UserError(f"cam_layer={override!r} is not a module of backbone {arch!r}; use a dotted path such as "
                            f"'features.norm5' (list them with print(model.backbone)).") from exc
    path = default_cam_layer(backbone, arch)  # the family's known good layer (models/backbones/*_family.py)
    if path:
        try:
            return _get(backbone, path)
        except (AttributeError, IndexError):
            pass
    transformer_layer = _default_transformer_layer(backbone)
    if transformer_layer is not None:
        return transformer_layer
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


def compute_cams(model: nn.Module, images: torch.Tensor, predicted: list[int], layer: nn.Module,
                 reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at the input tensor's size, each for its predicted class.
    `reshape_transform` turns a transformer layer's output into (N, C, h, w) (see plan_cam)."""
    from pytorch_grad_cam import GradCAM

    model.eval()
    # A frozen backbone (probes, freeze_backbone) has no parameter that wants gradients, so its activations would
    # carry none: switch them on for this computation only.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        with torch.enable_grad(), GradCAM(model=_Float32(model), target_layers=[layer],
                                          reshape_transform=reshape_transform) as cam:
            return cam(input_tensor=images, targets=[PredictedClassTarget(p) for p in predicted])
    finally:
        for param in frozen:
            param.requires_grad_(False)


def _attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The (N, heads, T, T) attention weights of a timm Attention for input tokens x: recomputed from its own
    projections, because the fused kernel it runs never materialises them."""
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def attention_rollout(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) of a ViT: per block the head-averaged attention plus the residual
    identity, rows renormalised, multiplied through the blocks; the class token's row over the patch tokens (the
    mean over patch rows when there is no class token). Maps (N, H, W) in [0, 1] at the input's size."""
    backbone = model.backbone
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(_attention_probs(module, inputs[0]).mean(dim=1).float())

    attns = [getattr(block, "attn", None) for block in backbone.blocks]
    if not attns or any(a is None or not all(hasattr(a, k) for k in ("qkv", "num_heads", "scale")) for a in attns):
        raise UserError("Attention rollout needs timm's standard ViT attention (qkv projections) in every block; "
                        "this backbone has another kind. Leave report.cam_layer unset to use Grad-CAM instead.")
    handles = [a.register_forward_pre_hook(hook) for a in attns]
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    prefix = int(backbone.num_prefix_tokens)
    tokens = captured[0].shape[-1]
    result = torch.eye(tokens, device=captured[0].device).expand(captured[0].shape[0], tokens, tokens)
    for attention in captured:
        mixed = attention + torch.eye(tokens, device=attention.device)
        result = (mixed / mixed.sum(dim=-1, keepdim=True)) @ result
    relevance = result[:, 0, prefix:] if prefix else result[:, :, :].mean(dim=1)
    h, w = token_grid(backbone, images.shape[-1])
    if relevance.shape[-1] != h * w:
        h = w = math.isqrt(relevance.shape[-1])
        relevance = relevance[:, : h * w]
    maps = relevance.reshape(-1, 1, h, w)
    maps = torch.nn.functional.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = maps.flatten(1).min(dim=1).values.view(-1, 1, 1)
    high = maps.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return ((maps - low) / (high - low + 1e-7)).cpu().numpy()


def explain(model: nn.Module, images: torch.Tensor, predicted: list[int], plan: CamPlan) -> np.ndarray:
    """The maps `plan` describes (Grad-CAM for the predicted class, or attention rollout)."""
    if plan.method == "rollout":
        return attention_rollout(model, images)
    assert plan.layer is not None
    return compute_cams(model, images, predicted, plan.layer, plan.reshape)


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Heatmap (jet) over the original image, resized to the image's own size."""
    from matplotlib import colormaps

    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(image.size, Image.Resampling.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(np.uint8(np.clip((1 - alpha) * base + alpha * colours, 0, 1) * 255))


def save_overlays(model: nn.Module, items: list[dict[str, Any]], pre: Preprocess, outdir: Path, arch: str,
                  layer_path: str | None = None, device: torch.device | None = None,
                  method: str = "gradcam") -> list[Path]:
    """Write one side-by-side PNG (image | explanation) per item {path, image, label, prob, predicted}; the model sees
    the same uint8 pixels as in evaluation (`to_pixels`). Each item gets 'cam_method' (what drew the map, for the
    report) and 'cam_layer'. method='rollout' (or layer_path='rollout') draws attention rollout for ViTs."""
    from bcc_lightning.utils.atomic_io import atomic_write

    if not items:
        return []
    device = device or torch.device("cpu")
    model = model.to(device)
    if method not in ("gradcam", *ROLLOUT_NAMES):
        raise UserError(f"CAM method {method!r} is unknown: use gradcam, or rollout (attention rollout, ViTs only).")
    plan = plan_cam(model, arch, pre.img_size, "rollout" if method in ROLLOUT_NAMES else layer_path)
    batch = torch.stack([to_pixels(item["image"], pre) for item in items]).to(device)
    cams = explain(model, batch, [item["predicted"] for item in items], plan)
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
        item["cam_method"] = plan.description
        item["cam_layer"] = plan.layer_name
        written.append(target)
    return written
