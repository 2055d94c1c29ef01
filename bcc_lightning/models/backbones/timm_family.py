"""timm's models by name (model.source=timm, the default): any `timm.list_models()` name or one of the original
project's three short names, ImageNet weights from the timm / Hugging Face cache or model.weights=PATH."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
from torch import nn

from bcc_lightning.models.backbones import hub
from bcc_lightning.models.backbones.registry import BackboneFamily, Options, register_family
from bcc_lightning.utils.errors import UserError

# Short names of the original project's three backbones -> timm names whose weights match the Keras/torchvision ones.
ALIASES = {
    "mobilenetv2": "mobilenetv2_100.ra_in1k",
    "densenet121": "densenet121.tv_in1k",
    "inceptionv3": "inception_v3.tv_in1k",
}
# Smallest input each architecture accepts (pooling stages collapse below it).
MIN_IMG_SIZE = {"inception_v3": 75}
# Known good Grad-CAM layers (the last feature map before pooling), by architecture prefix; others fall back to the
# transformer default or the last 4-D activation (reports/gradcam.py).
CAM_LAYERS = {
    "mobilenetv2": "bn2",
    "efficientnet": "bn2",
    "densenet": "features.norm5",
    "inception_v3": "Mixed_7c",
    "resnet": "layer4",
}


def create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm.create_model, headless; transformers (ViT, Swin, ...) accept any input size that model.img_size sets
    (position embeddings are interpolated), other families do not know the option and are built as they are."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True, **kwargs)
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)


def prefixed_cam_layer(backbone: nn.Module, arch: str, table: dict[str, str]) -> str | None:
    for prefix, path in table.items():
        if arch.startswith(prefix):
            return path
    return None


def _pretrained_hint(name: str, exc: Exception) -> UserError:
    return UserError(
        f"ImageNet weights for '{name}' could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        f"This machine is probably offline and the weights are not cached. Either (1) on a machine with internet run "
        f"`python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True).state_dict(), "
        f"'{name.split('.')[0]}.pth')\"`, copy the file here and pass model.weights=PATH; or (2) copy the Hugging Face "
        f"cache (~/.cache/huggingface/hub/models--timm--{name.replace('/', '--')}) here and set HF_HUB_OFFLINE=1; or "
        f"(3) train from scratch with model.pretrained=false."
    )


def _safe_cached(family: BackboneFamily, name: str, options: Options) -> Path | None:
    try:
        return family.cached_weights(name, options)
    except Exception:  # only decides whether to look for the network; loading itself fails clearly
        return None


@register_family("timm")
class TimmFamily(BackboneFamily):
    def resolve_name(self, name: str, options: Options) -> str:
        name = ALIASES.get(str(name).lower(), str(name))
        arch = name.split(".")[0]
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise UserError(
                f"Unknown backbone '{name}'.{hint} Use model=mobilenetv2|inceptionv3|densenet121 (or a pathology "
                f"preset such as model=uni), or any timm model name via model.name=<name> (list them with "
                f"`python -c \"import timm; print(timm.list_models())\"`).")
        return name

    def arch(self, name: str, options: Options) -> str:
        return self.resolve_name(name, options).split(".")[0]

    def data_config(self, name: str, options: Options) -> dict[str, Any]:
        pretrained_cfg = timm.models.get_pretrained_cfg(self.resolve_name(name, options))
        return timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {},
                                             use_test_size=False)

    def build(self, name: str, use_hub: bool, options: Options) -> tuple[nn.Module, str]:
        name = self.resolve_name(name, options)
        if use_hub and _safe_cached(self, name, options) is None and not hub.reachable("huggingface.co"):
            raise _pretrained_hint(name, ConnectionError("huggingface.co is unreachable and the weights are not "
                                                         "cached"))
        try:
            backbone = create(name, use_hub, **dict(options.get("model_args") or {}))
        except Exception as exc:
            if use_hub:
                raise _pretrained_hint(name, exc) from exc
            raise UserError(f"Cannot build backbone '{name}': {type(exc).__name__}: {exc}") from exc
        return backbone, name.split(".")[0]

    def cached_weights(self, name: str, options: Options) -> Path | None:
        cfg = timm.models.get_pretrained_cfg(self.resolve_name(name, options))
        if cfg is None or not cfg.hf_hub_id:
            return None
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        return None

    def cam_layer(self, backbone: nn.Module, arch: str) -> str | None:
        return prefixed_cam_layer(backbone, arch, CAM_LAYERS)

    def min_img_size(self, arch: str) -> int:
        return MIN_IMG_SIZE.get(arch, 32)
