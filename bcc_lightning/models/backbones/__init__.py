"""Backbones: a registry of families (one module each: timm, torchvision, hf-hub, transformers) behind one set of
functions -- build a headless network, resolve its input, describe its initialisation, name its Grad-CAM layer.

`model.source` selects the family (timm by default; `hf-hub:` names select hf-hub). The pathology model zoo
(conf/model/uni.yaml, virchow2.yaml, ...) is presets over the hf-hub and transformers families, each with its
architecture, input and documented embedding recipe (`model.pooling`, applied by `pooling.TokenPooling`).
Adding a family: see registry.py's docstring and the README's development section.
"""

from __future__ import annotations

import importlib
import pkgutil

from bcc_lightning.models.backbones import hub
from bcc_lightning.models.backbones.hub import (
    HF_PREFIXES,
    HF_WEIGHT_FILES,
    hf_hub_file,
    is_hf_hub,
    recorded_hf_hub_config,
)
from bcc_lightning.models.backbones.pooling import POOLINGS, TokenPooling, pool_tokens
from bcc_lightning.models.backbones.registry import (
    FAMILIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneFamily,
    Head,
    arch_name,
    build_backbone,
    data_config_for,
    default_cam_layer,
    describe_initialisation,
    family_names,
    get_family,
    initialisation_text,
    preprocess_for,
    register_family,
    resolve_name,
    resolve_preprocess,
)
from bcc_lightning.models.backbones.weights import load_backbone_weights, read_state_dict

# Every *_family module of this package registers itself on import: a new family is one new file.
for _module in pkgutil.iter_modules(__path__):
    if _module.name.endswith("_family"):
        importlib.import_module(f"{__name__}.{_module.name}")

from bcc_lightning.models.backbones.hf_hub_family import hf_hub_config, hf_hub_record  # noqa: E402
from bcc_lightning.models.backbones.timm_family import ALIASES, MIN_IMG_SIZE  # noqa: E402
from bcc_lightning.models.backbones.torchvision_family import TORCHVISION_ALIASES  # noqa: E402

# The network check the hub families make before a download; tests replace it to act offline or online.
_reachable = hub.connectable

__all__ = [
    "ALIASES", "FAMILIES", "HF_PREFIXES", "HF_WEIGHT_FILES", "IMAGENET_MEAN", "IMAGENET_STD", "MIN_IMG_SIZE",
    "POOLINGS", "TORCHVISION_ALIASES", "BackboneFamily", "Head", "TokenPooling", "arch_name", "build_backbone",
    "data_config_for", "default_cam_layer", "describe_initialisation", "family_names", "get_family",
    "hf_hub_config", "hf_hub_file", "hf_hub_record", "initialisation_text", "is_hf_hub", "load_backbone_weights",
    "pool_tokens", "preprocess_for", "read_state_dict", "recorded_hf_hub_config", "register_family", "resolve_name",
    "resolve_preprocess",
]
