"""timm-format models on the Hugging Face hub (`model.name=hf-hub:ORG/NAME[@REV]`, under the default source): the
architecture from config.json in the cache, or pinned by the model config (`model.arch` + `model.model_args`, as the
pathology presets do, so that they build without the cache); the weights from the cache, read without unpickling
code and passed through timm's own filters (position embedding resizing)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
from torch import nn

from bcc_lightning.models.backbones import hub
from bcc_lightning.models.backbones.registry import BackboneFamily, Options, register_family
from bcc_lightning.models.backbones.timm_family import create
from bcc_lightning.utils.errors import UserError


def _mlp_layers() -> dict[str, type[nn.Module]]:
    from timm.layers import GluMlp, Mlp, SwiGLU, SwiGLUPacked

    return {"mlp": Mlp, "glu_mlp": GluMlp, "swiglu": SwiGLU, "swiglu_packed": SwiGLUPacked}


def timm_model_args(args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Config values -> timm arguments: `mlp_layer: swiglu_packed` names a layer class (a YAML file cannot hold one);
    `act_layer: silu` timm resolves itself."""
    out = dict(args or {})
    if isinstance(out.get("mlp_layer"), str):
        layers = _mlp_layers()
        if out["mlp_layer"] not in layers:
            raise UserError(f"model.model_args.mlp_layer={out['mlp_layer']!r} is not one of {', '.join(layers)}.")
        out["mlp_layer"] = layers[out["mlp_layer"]]
    return out


def hf_hub_config(name: str) -> dict[str, Any]:
    """The timm config.json of an hf-hub model: {'architecture', 'pretrained_cfg', 'model_args', 'file'}; a
    checkpoint's recorded config answers first (see hub.recorded_hf_hub_config)."""
    recorded = hub.recorded_config(name)
    if recorded is not None:
        if not timm.is_model(recorded["architecture"]):
            raise UserError(f"The checkpoint of backbone '{name}' names the timm architecture "
                            f"{recorded['architecture']!r}, which this timm {timm.__version__} does not know: install "
                            f"the timm version the checkpoint was written with (or newer).")
        return recorded
    raw, path = hub.hf_json(name)
    arch = raw.get("architecture") or raw.get("arch")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise UserError(f"{path} names no timm architecture (architecture={arch!r}); model.name=hf-hub:... takes "
                        f"timm-format repos (config.json with \"architecture\" and \"pretrained_cfg\"), such as "
                        f"those under huggingface.co/timm. Upgrade timm if the architecture is newer than it; a "
                        f"transformers repo is read with model.source=transformers.")
    pretrained_cfg = raw.get("pretrained_cfg")
    if not isinstance(pretrained_cfg, Mapping):  # older timm configs keep the data settings at the top level
        pretrained_cfg = {k: raw[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k in raw}
    return {"architecture": arch, "pretrained_cfg": dict(pretrained_cfg),
            "model_args": dict(raw.get("model_args") or {}), "file": str(path)}


def hf_hub_record(name: str) -> dict[str, Any] | None:
    """What a checkpoint must keep to rebuild an hf-hub backbone without the hub: the timm architecture, its
    arguments and the pretrained config (input settings), as resolved from config.json now. None for other names."""
    if not hub.is_hf_hub(name):
        return None
    config = hf_hub_config(name)
    return {"name": str(name), "architecture": config["architecture"], "model_args": dict(config["model_args"]),
            "pretrained_cfg": dict(config["pretrained_cfg"])}


@register_family("hf-hub")
class HfHubFamily(BackboneFamily):
    prefixes = hub.HF_PREFIXES
    pretrained_kind = "pretrained"

    def config(self, name: str, options: Options) -> dict[str, Any]:
        """The architecture and its arguments: pinned by the model config (presets), else config.json's, to which
        model.model_args add."""
        if options.get("arch"):
            arch = str(options["arch"])
            if not timm.is_model(arch):
                raise UserError(f"model.arch={arch!r} is not a timm architecture of timm {timm.__version__}; "
                                f"upgrade timm or check the model config.")
            pretrained = timm.models.get_pretrained_cfg(arch)
            return {"architecture": arch, "model_args": dict(options.get("model_args") or {}),
                    "pretrained_cfg": pretrained.to_dict() if pretrained else {}, "file": "the model config"}
        config = hf_hub_config(name)
        config["model_args"] = {**config["model_args"], **dict(options.get("model_args") or {})}
        return config

    def resolve_name(self, name: str, options: Options) -> str:
        hub.hf_repo(name)  # checks the form only: the cache or the hub is asked when the model is built
        return str(name)

    def arch(self, name: str, options: Options) -> str:
        return str(options["arch"]) if options.get("arch") else self.config(name, options)["architecture"]

    def data_config(self, name: str, options: Options) -> dict[str, Any]:
        config = self.config(name, options)
        data = timm.data.resolve_data_config(pretrained_cfg=config["pretrained_cfg"], use_test_size=False)
        size = config["model_args"].get("img_size")
        if options.get("arch") and isinstance(size, int):
            data["input_size"] = (3, size, size)  # a preset's own size, not the architecture's default tag
        return data

    def build(self, name: str, use_hub: bool, options: Options) -> tuple[nn.Module, str]:
        self.resolve_name(name, options)
        config = self.config(name, options)
        arch = config["architecture"]
        overlay: dict[str, Any] = {}
        if use_hub:
            state, path = hub.hf_weights_state(name)
            overlay = {"state_dict": state, "source": "", "hf_hub_id": None, "url": "", "file": None}
            hub_log(name, path)
        try:
            backbone = create(arch, use_hub, pretrained_cfg_overlay=overlay or None,
                              **timm_model_args(config["model_args"]))
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"Cannot build backbone '{name}' (architecture {arch} from {config['file']}"
                            f"{', weights from the Hugging Face cache' if use_hub else ''}): {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}. The files in the cache may belong "
                            f"to another timm version or another architecture, or be incomplete: download them "
                            f"again.") from exc
        return backbone, arch

    def cached_weights(self, name: str, options: Options) -> Path | None:
        return hub.hf_weights_file(name)

    def record(self, name: str, options: Options) -> dict[str, Any] | None:
        # A preset pins the architecture in the model config, which the checkpoint keeps: nothing more to record.
        return None if options.get("arch") else hf_hub_record(name)


def hub_log(name: str, path: Path) -> None:
    import logging

    logging.getLogger("bcc_lightning").info("Loading %s weights from %s", name, path)
