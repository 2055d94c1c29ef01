"""Local weight files -> a backbone: read tensors without unpickling code, refuse files that do not fit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcc_lightning.utils.errors import UserError

# Wrappers that training scripts put around a model's own names (DataParallel, Lightning, eva, ...).
PREFIXES = ("module.", "model.", "backbone.", "net.", "encoder.")
# Old torchvision DenseNet files name 'norm.1' what the model calls 'norm1'.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def read_state_dict(path: Path, prefixes: tuple[str, ...] = PREFIXES) -> dict[str, torch.Tensor]:
    """Read tensors from a weights file without unpickling arbitrary objects; wrapper prefixes stripped."""
    if not path.is_file():
        raise UserError(f"Weights file {path} does not exist. Check model.weights, or set model.pretrained=false.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"Cannot read weights file {path} ({type(exc).__name__}: {exc}). It must be a PyTorch state dict "
            f"(.pth/.pt/.bin) or a .safetensors file; files that need arbitrary pickled code are refused for safety."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise UserError(f"Weights file {path} holds a {type(state).__name__}, not a state dict of tensors.")
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        legacy = _DENSENET_LEGACY.match(key)
        if legacy:
            key = legacy.group(1) + legacy.group(2)
        cleaned[key] = value
    return cleaned


def load_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], origin: str, arch: str) -> dict[str, int]:
    """Copy the tensors that match by name and shape; refuse a state dict that matches less than half."""
    own = backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in matched]
    unexpected = [k for k in state if k not in own]
    if len(matched) < 0.5 * len(own):
        raise UserError(
            f"Weights file {origin} does not fit the backbone '{arch}': only {len(matched)} of its {len(own)} tensors "
            f"match by name and shape. Provide weights of the '{arch}' architecture (for example timm's "
            f"`timm.create_model('{arch}', pretrained=True).state_dict()` saved with torch.save), or change model.name."
        )
    backbone.load_state_dict(matched, strict=False)
    return {"loaded": len(matched), "missing": len(missing), "unexpected": len(unexpected)}


def load_backbone_weights(backbone: nn.Module, path: str | Path, arch: str) -> dict[str, int]:
    """Load a local state dict into a headless backbone; refuse files that do not fit the architecture."""
    path = Path(path).expanduser()
    return load_state(backbone, read_state_dict(path), str(path), arch)
