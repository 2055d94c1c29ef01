"""Hugging Face `transformers` vision encoders (model.source=transformers, model.name=ORG/NAME): Phikon (ViT),
Phikon-v2 and Midnight (DINOv2), Hibou (DINOv2 with registers). The architecture comes from the model config
(`model.arch` = the transformers model_type, `model.model_args` = its config values), so presets build without the
cache; otherwise from config.json in the cache. Weights are read from the Hugging Face cache (offline) by
transformers itself (safetensors, or a weights-only torch file); no repository code is ever run
(trust_remote_code stays off: Hibou's own code is replaced by transformers' Dinov2WithRegisters)."""

from __future__ import annotations

import inspect
import logging
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
from bcc_lightning.models.backbones.weights import load_state, read_state_dict
from bcc_lightning.utils.errors import UserError

log = logging.getLogger("bcc_lightning")
# preprocessor_config.json's resample (PIL codes) -> our interpolation names.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise UserError("model.source=transformers needs the transformers package: `pip install transformers` (or "
                        "`pip install -e .[dev]`).") from exc
    return transformers


class TransformersEncoder(nn.Module):
    """A transformers vision model as a headless backbone: final-norm tokens from `forward_features`, the class
    token from `forward` (model.pooling chooses another recipe). `blocks`, `patch_embed` and `num_prefix_tokens`
    follow timm's names so that Grad-CAM lays the tokens on their grid."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # ViT's tanh pooler is not part of any preset's embedding (and would get no gradient)
        self.model = model
        config = model.config
        self.num_features = int(config.hidden_size)
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.has_class_token = True
        # ViT interpolates its position embeddings only when asked (DINOv2 always does): any model.img_size works.
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    @property
    def blocks(self) -> nn.Module:
        layers = getattr(self.model, "layers", None)
        return layers if layers is not None else self.model.encoder.layer

    @property
    def patch_embed(self) -> nn.Module:
        return self.model.embeddings.patch_embeddings

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        return self.model(pixel_values=x, **kwargs).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]


@register_family("transformers")
class TransformersFamily(BackboneFamily):
    pretrained_kind = "pretrained"

    def config(self, name: str, options: Options) -> Any:
        """The transformers config: pinned by the model config (presets), else recorded in the checkpoint being
        loaded, else config.json from the cache (model.model_args override its values)."""
        auto = _transformers().AutoConfig
        args = dict(options.get("model_args") or {})
        try:
            if options.get("arch"):
                return auto.for_model(str(options["arch"]), **args)
            recorded = hub.recorded_config(name)
            if recorded is not None:
                return auto.for_model(recorded["architecture"], **recorded["model_args"])
            raw, path = hub.hf_json(name)
            model_type = raw.pop("model_type", None)
            if not model_type:
                raise UserError(f"{path} has no model_type: is {name} a transformers model? timm-format repos are "
                                f"named model.name=hf-hub:{name} (model.source=timm).")
            for key in ("auto_map", "architectures", "transformers_version", "_name_or_path"):
                raw.pop(key, None)  # remote code is never run; the rest describes the architecture
            return auto.for_model(model_type, **{**raw, **args})
        except UserError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"Cannot make a transformers config for backbone '{name}' (model.arch="
                            f"{options.get('arch')!r}): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}. "
                            f"Upgrade transformers, or check model.arch/model.model_args.") from exc

    def resolve_name(self, name: str, options: Options) -> str:
        hub.hf_repo(name)
        return str(name)

    def arch(self, name: str, options: Options) -> str:
        return str(options.get("arch") or self.config(name, options).model_type)

    def data_config(self, name: str, options: Options) -> dict[str, Any]:
        config = self.config(name, options)
        size = int(getattr(config, "image_size", 224) or 224)
        data: dict[str, Any] = {"input_size": (3, size, size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                "interpolation": "bicubic"}
        if not options.get("arch") and hub.recorded_config(name) is None:
            path = hub.hf_hub_file(name, "preprocessor_config.json", required=False)
            if path is not None:
                import json

                pre = json.loads(path.read_text(encoding="utf-8"))
                data["mean"] = tuple(pre.get("image_mean") or data["mean"])
                data["std"] = tuple(pre.get("image_std") or data["std"])
                data["interpolation"] = _RESAMPLE.get(pre.get("resample"), data["interpolation"])
        return data

    def build(self, name: str, use_hub: bool, options: Options) -> tuple[nn.Module, str]:
        transformers = _transformers()
        self.resolve_name(name, options)
        config = self.config(name, options)
        if use_hub:
            weights = hub.hf_weights_file(name)
            if weights is None:
                raise hub.hf_missing(name, "model.safetensors", "no weight file of the repo could be found")
            log.info("Loading %s weights from %s", name, weights)
            try:
                # The snapshot folder, read by transformers itself: it knows how its own names changed across versions.
                model, info = transformers.AutoModel.from_pretrained(
                    str(weights.parent), config=config, local_files_only=True, output_loading_info=True)
            except Exception as exc:
                raise UserError(f"Cannot load backbone '{name}' from {weights.parent} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:300] if str(exc) else ''}). The files may be incomplete "
                                f"or of another architecture than model.arch={config.model_type}: download them "
                                f"again.") from exc
            # transformers only warns about tensors the file lacks and leaves them random: refuse that here.
            missing = sorted(str(k) for k in info.get("missing_keys") or () if not str(k).startswith("pooler."))
            missing += sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
            if missing:
                raise UserError(f"The weights of backbone '{name}' in {weights.parent} do not fit model.arch="
                                f"{config.model_type} with model.model_args as configured: {len(missing)} tensors "
                                f"are missing or of another shape (e.g. {', '.join(missing[:3])}). Check the preset "
                                f"against the repo's config.json, or download the files again.")
        else:
            model = transformers.AutoModel.from_config(config)
        return TransformersEncoder(model), str(config.model_type)

    def load_weights(self, network: nn.Module, path: str | Path, arch: str) -> dict[str, int]:
        """A state dict file in the installed transformers' names (as `model.state_dict()` saves it)."""
        inner = network.model if isinstance(network, TransformersEncoder) else network
        path = Path(path).expanduser()
        prefix = f"{getattr(inner, 'base_model_prefix', '') or 'model'}."
        return load_state(inner, read_state_dict(path, ("module.", prefix)), str(path), arch)

    def cached_weights(self, name: str, options: Options) -> Path | None:
        return hub.hf_weights_file(name)

    def record(self, name: str, options: Options) -> dict[str, Any] | None:
        if options.get("arch"):
            return None  # the model config (kept in the checkpoint) pins the architecture
        config = self.config(name, options).to_dict()
        model_type = config.pop("model_type")
        return {"name": str(name), "architecture": model_type,
                "model_args": {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool, list))}}

    def cam_layer(self, backbone: nn.Module, arch: str) -> str | None:
        # The tokens entering the last block's attention (timm's ViT default is the same norm under another name).
        block = getattr(backbone, "blocks", None)
        if block is None or not len(block):
            return None
        norm = getattr(block[-1], "layernorm_before", None) or getattr(block[-1], "norm1", None)
        return next((name for name, module in backbone.named_modules() if module is norm), None)
