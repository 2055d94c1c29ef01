"""torchvision's own architectures (model.source=torchvision): the exact networks of the original Keras/ImageNet
lineage, headless, with their ImageNet weights from the torch hub cache or model.weights=PATH."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcc_lightning.models.backbones import hub
from bcc_lightning.models.backbones.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneFamily,
    Options,
    register_family,
)
from bcc_lightning.models.backbones.timm_family import prefixed_cam_layer
from bcc_lightning.utils.errors import UserError

TORCHVISION_ALIASES = {"mobilenetv2": "mobilenet_v2", "densenet121": "densenet121", "inceptionv3": "inception_v3"}
CAM_LAYERS = {"densenet": "features.norm5", "inception_v3": "Mixed_7c", "resnet": "layer4"}


def _offline(arch: str, url: str, why: str) -> UserError:
    return UserError(
        f"ImageNet weights for torchvision '{arch}' are not on this machine ({why}). Download {url} elsewhere and "
        f"put it in $TORCH_HOME/hub/checkpoints/{Path(url).name} (TORCH_HOME defaults to ~/.cache/torch), or pass "
        f"model.weights=PATH to that file, or train from scratch with model.pretrained=false.")


def _looks_offline(exc: BaseException | None) -> bool:
    """A failed download (no network, no cache), as opposed to a bad configuration."""
    import urllib.error

    while exc is not None:
        if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)) or "HTTP" in type(exc).__name__:
            return True
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@register_family("torchvision")
class TorchvisionFamily(BackboneFamily):
    def arch(self, name: str, options: Options) -> str:
        return TORCHVISION_ALIASES.get(str(name).lower(), str(name))

    def resolve_name(self, name: str, options: Options) -> str:
        import torchvision

        arch = self.arch(name, options)
        available = torchvision.models.list_models(module=torchvision.models)
        if arch not in available:
            close = difflib.get_close_matches(arch, available, n=6, cutoff=0.5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise UserError(f"Unknown torchvision model '{name}'.{hint} With model.source=torchvision use a "
                            f"torchvision classification model name.")
        return arch

    def data_config(self, name: str, options: Options) -> dict[str, Any]:
        arch = self.arch(name, options)
        mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if arch == "inception_v3" else (IMAGENET_MEAN, IMAGENET_STD)
        size = 299 if arch == "inception_v3" else 224
        return {"input_size": (3, size, size), "mean": mean, "std": std, "interpolation": "bilinear"}

    def build(self, name: str, use_hub: bool, options: Options) -> tuple[nn.Module, str]:
        import torchvision

        arch = self.resolve_name(name, options)
        weights_enum = torchvision.models.get_model_weights(arch).DEFAULT if use_hub else None
        if (weights_enum is not None and self.cached_weights(name, options) is None
                and not hub.reachable("download.pytorch.org")):
            raise _offline(arch, weights_enum.url, "download.pytorch.org cannot be reached")
        kwargs: dict[str, Any] = {}
        if arch == "inception_v3":
            # The weights expect inputs in [-1, 1]: mean/std 0.5 above does what transform_input would. torchvision
            # refuses its weights without the auxiliary head, so it is built and then dropped (inference never uses
            # it).
            kwargs = {"aux_logits": use_hub, "init_weights": False, "transform_input": False}
        try:
            backbone = torchvision.models.get_model(arch, weights=weights_enum, **kwargs)
        except Exception as exc:
            if use_hub and _looks_offline(exc):
                raise _offline(arch, weights_enum.url, f"the download failed: {type(exc).__name__}") from exc
            raise UserError(f"Cannot build torchvision model '{arch}'{' with its ImageNet weights' if use_hub else ''}"
                            f": {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
        if arch == "inception_v3" and getattr(backbone, "AuxLogits", None) is not None:
            backbone.AuxLogits, backbone.aux_logits = None, False
        classifier = next(attr for attr in ("classifier", "fc", "head", "heads") if hasattr(backbone, attr))
        old = getattr(backbone, classifier)
        linear = old if isinstance(old, nn.Linear) else [m for m in old.modules() if isinstance(m, nn.Linear)][0]
        setattr(backbone, classifier, nn.Identity())
        backbone.num_features = linear.in_features
        return backbone, arch

    def cached_weights(self, name: str, options: Options) -> Path | None:
        import torchvision

        try:
            url = torchvision.models.get_model_weights(self.arch(name, options)).DEFAULT.url
        except Exception:  # not a torchvision name: build() says so clearly
            return None
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        return path if path.is_file() else None

    def cam_layer(self, backbone: nn.Module, arch: str) -> str | None:
        return prefixed_cam_layer(backbone, arch, CAM_LAYERS)

    def min_img_size(self, arch: str) -> int:
        return 75 if arch == "inception_v3" else 32
