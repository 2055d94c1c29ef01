"""Backbone name -> feature network + one-logit head; local weight loading; the backbone's preprocessing."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from bcc_lightning.data.preprocess import Preprocess
from bcc_lightning.utils.errors import UserError

# Short names of the original project's three backbones -> timm names whose weights match the Keras/torchvision ones.
ALIASES = {
    "mobilenetv2": "mobilenetv2_100.ra_in1k",
    "densenet121": "densenet121.tv_in1k",
    "inceptionv3": "inception_v3.tv_in1k",
}
TORCHVISION_ALIASES = {"mobilenetv2": "mobilenet_v2", "densenet121": "densenet121", "inceptionv3": "inception_v3"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Smallest input each family accepts (pooling stages collapse below it).
MIN_IMG_SIZE = {"inception_v3": 75}
_PREFIXES = ("module.", "model.", "backbone.", "net.", "encoder.")
# Old torchvision DenseNet files name 'norm.1' what the model calls 'norm1'.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
log = logging.getLogger("bcc_lightning")


def resolve_name(name: str) -> str:
    name = ALIASES.get(name.lower(), name)
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise UserError(
            f"Unknown backbone '{name}'.{hint} Use model=mobilenetv2|inceptionv3|densenet121 or any timm model "
            f"name via model.name=<name> (list them with `python -c \"import timm; print(timm.list_models())\"`)."
        )
    return name


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a weights file without unpickling arbitrary objects."""
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
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        legacy = _DENSENET_LEGACY.match(key)
        if legacy:
            key = legacy.group(1) + legacy.group(2)
        cleaned[key] = value
    return cleaned


def load_backbone_weights(backbone: nn.Module, path: str | Path, arch: str) -> dict[str, int]:
    """Load a local state dict into a headless backbone; refuse files that do not fit the architecture."""
    path = Path(path).expanduser()
    state = _read_state_dict(path)
    own = backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in matched]
    unexpected = [k for k in state if k not in own]
    if len(matched) < 0.5 * len(own):
        raise UserError(
            f"Weights file {path} does not fit the backbone '{arch}': only {len(matched)} of its {len(own)} tensors "
            f"match by name and shape. Provide weights of the '{arch}' architecture (for example timm's "
            f"`timm.create_model('{arch}', pretrained=True).state_dict()` saved with torch.save), or change model.name."
        )
    backbone.load_state_dict(matched, strict=False)
    return {"loaded": len(matched), "missing": len(missing), "unexpected": len(unexpected)}


def _pretrained_hint(name: str, exc: Exception) -> UserError:
    return UserError(
        f"ImageNet weights for '{name}' could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        f"This machine is probably offline and the weights are not cached. Either (1) on a machine with internet run "
        f"`python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True).state_dict(), "
        f"'{name.split('.')[0]}.pth')\"`, copy the file here and pass model.weights=PATH; or (2) copy the Hugging Face "
        f"cache (~/.cache/huggingface/hub/models--timm--{name.replace('/', '--')}) here and set HF_HUB_OFFLINE=1; or "
        f"(3) train from scratch with model.pretrained=false."
    )


def _looks_offline(exc: BaseException) -> bool:
    """A failed download (no network, no cache), as opposed to a bad configuration."""
    import urllib.error

    while exc is not None:
        if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)) or "HTTP" in type(exc).__name__:
            return True
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Head(nn.Sequential):
    """The new top: dropout, an optional hidden dense layer, and one logit (malignant vs benign)."""

    def __init__(self, in_features: int, hidden: int = 0, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        if hidden:
            layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            in_features = hidden
        layers.append(nn.Linear(in_features, 1))
        super().__init__(*layers)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a download host answers at all: an offline machine learns in a second, not after a minute of retries."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _build_timm(name: str, use_hub: bool) -> tuple[nn.Module, str]:
    name = resolve_name(name)
    if use_hub and _cached_weights_file(name, "timm") is None and not _reachable("huggingface.co"):
        raise _pretrained_hint(name, ConnectionError("huggingface.co is unreachable and the weights are not cached"))
    try:
        backbone = timm.create_model(name, pretrained=use_hub, num_classes=0)
    except Exception as exc:
        if use_hub:
            raise _pretrained_hint(name, exc) from exc
        raise UserError(f"Cannot build backbone '{name}': {type(exc).__name__}: {exc}") from exc
    return backbone, name.split(".")[0]


def _torchvision_offline(arch: str, url: str, why: str) -> UserError:
    return UserError(
        f"ImageNet weights for torchvision '{arch}' are not on this machine ({why}). Download {url} elsewhere and "
        f"put it in $TORCH_HOME/hub/checkpoints/{Path(url).name} (TORCH_HOME defaults to ~/.cache/torch), or pass "
        f"model.weights=PATH to that file, or train from scratch with model.pretrained=false.")


def _build_torchvision(name: str, use_hub: bool) -> tuple[nn.Module, str]:
    """torchvision's own architectures (the exact ones of the original Keras/ImageNet lineage), headless."""
    import torchvision

    arch = TORCHVISION_ALIASES.get(name.lower(), name)
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=6, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise UserError(f"Unknown torchvision model '{name}'.{hint} With model.source=torchvision use a torchvision "
                        f"classification model name.")
    weights_enum = torchvision.models.get_model_weights(arch).DEFAULT if use_hub else None
    if (weights_enum is not None and _cached_weights_file(arch, "torchvision") is None
            and not _reachable("download.pytorch.org")):
        raise _torchvision_offline(arch, weights_enum.url, "download.pytorch.org cannot be reached")
    kwargs: dict[str, Any] = {}
    if arch == "inception_v3":
        # The weights expect inputs in [-1, 1]: mean/std 0.5 below does what transform_input would. torchvision
        # refuses its weights without the auxiliary head, so it is built and then dropped (inference never uses it).
        kwargs = {"aux_logits": use_hub, "init_weights": False, "transform_input": False}
    try:
        backbone = torchvision.models.get_model(arch, weights=weights_enum, **kwargs)
    except Exception as exc:
        if use_hub and _looks_offline(exc):
            raise _torchvision_offline(arch, weights_enum.url, f"the download failed: {type(exc).__name__}") from exc
        raise UserError(f"Cannot build torchvision model '{arch}'{' with its ImageNet weights' if use_hub else ''}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    if arch == "inception_v3" and getattr(backbone, "AuxLogits", None) is not None:
        backbone.AuxLogits, backbone.aux_logits = None, False
    classifier = next(attr for attr in ("classifier", "fc", "head", "heads") if hasattr(backbone, attr))
    old = getattr(backbone, classifier)
    linear = old if isinstance(old, nn.Linear) else [m for m in old.modules() if isinstance(m, nn.Linear)][0]
    setattr(backbone, classifier, nn.Identity())
    backbone.num_features = linear.in_features
    return backbone, arch


def _torchvision_data_config(arch: str) -> dict[str, Any]:
    mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if arch == "inception_v3" else (IMAGENET_MEAN, IMAGENET_STD)
    size = 299 if arch == "inception_v3" else 224
    return {"input_size": (3, size, size), "mean": mean, "std": std, "interpolation": "bilinear"}


def data_config_for(name: str, source: str = "timm") -> dict[str, Any]:
    """The input size, mean/std and interpolation of a backbone's weights, read from timm's pretrained config (or
    torchvision's fixed ones) without building the network."""
    if source == "torchvision":
        return _torchvision_data_config(TORCHVISION_ALIASES.get(name.lower(), name))
    name = resolve_name(name)
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    return timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {},
                                         use_test_size=False)


def resolve_preprocess(model_cfg: Mapping[str, Any]) -> Preprocess:
    """The preprocessing a model config implies (its weights' own, overridable by img_size/mean/std), known before
    the model exists: the data module is built with it once, and the model stores it in its checkpoint."""
    source = str(model_cfg.get("source") or "timm")
    return preprocess_for(data_config_for(model_cfg["name"], source), model_cfg.get("img_size"),
                          arch_name(model_cfg["name"], source), model_cfg.get("mean"), model_cfg.get("std"))


def build_backbone(name: str, pretrained: bool = False, weights: str | None = None, load_weights: bool = True,
                   source: str = "timm") -> nn.Module:
    """A headless network (pooled features, `num_features` wide); its input is `resolve_preprocess`'s.

    `load_weights=False` builds the architecture only (used when a checkpoint supplies every tensor).
    """
    if source not in ("timm", "torchvision"):
        raise UserError(f"model.source must be timm or torchvision; got {source!r}.")
    use_hub = bool(pretrained) and not weights and load_weights
    builder = _build_timm if source == "timm" else _build_torchvision
    backbone, arch = builder(name, use_hub)
    if weights and load_weights:
        info = load_backbone_weights(backbone, weights, arch)
        log.info("Loaded %d tensors from %s into %s (%d of the backbone's tensors missing, %d in the file unused)",
                 info["loaded"], weights, arch, info["missing"], info["unexpected"])
    elif use_hub:
        log.info("Loaded ImageNet weights for %s (%s)", arch, source)
    return backbone


def _cached_weights_file(name: str, source: str) -> Path | None:
    """The local file the hub loaders read ImageNet weights from (for the record), when it can be found."""
    try:
        if source == "torchvision":
            import torchvision

            arch = TORCHVISION_ALIASES.get(name.lower(), name)
            url = torchvision.models.get_model_weights(arch).DEFAULT.url
            path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            return path if path.is_file() else None
        cfg = timm.models.get_pretrained_cfg(resolve_name(name))
        if cfg is None or not cfg.hf_hub_id:
            return None
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    except Exception:  # the record is best effort; loading itself already succeeded or failed clearly
        return None
    return None


def describe_initialisation(name: str, source: str, pretrained: bool, weights: str | None) -> dict[str, Any]:
    """How the backbone's weights began: ImageNet from a named file (with its sha256) or from the hub cache, or
    random. Recorded in the checkpoint, metrics.json, the report and the export sidecar."""
    from bcc_lightning.utils.atomic_io import sha256_file

    if weights:
        path = Path(weights).expanduser().resolve()
        return {"kind": "ImageNet", "file": str(path), "sha256": sha256_file(path)}
    if not pretrained:
        return {"kind": "random"}
    path = _cached_weights_file(name, source)
    return {"kind": "ImageNet", "source": f"{source} hub cache", "file": str(path) if path else None,
            "sha256": sha256_file(path) if path else None}


def initialisation_text(init: Mapping[str, Any] | None) -> str:
    """'ImageNet (file, sha256 …)', 'random', or 'unknown' for checkpoints that predate the record."""
    if not init:
        return "unknown (checkpoint written before initialisations were recorded)"
    if init.get("kind") != "ImageNet":
        return str(init.get("kind", "unknown"))
    sha = init.get("sha256")
    return f"ImageNet ({init.get('file') or init.get('source')}{', sha256 ' + sha[:12] if sha else ''})"


def arch_name(name: str, source: str = "timm") -> str:
    """The architecture behind a model name: timm's (densenet121 for densenet121.tv_in1k) or torchvision's."""
    if source == "torchvision":
        return TORCHVISION_ALIASES.get(name.lower(), name)
    return resolve_name(name).split(".")[0]


def preprocess_for(data_config: Mapping[str, Any], img_size: int | None, arch: str,
                   mean: Any = None, std: Any = None) -> Preprocess:
    """Input size, mean/std and interpolation from the weights' own config, overridable from the model config."""
    size = int(img_size) if img_size else int(data_config["input_size"][-1])
    minimum = MIN_IMG_SIZE.get(arch, 32)
    if size < minimum:
        raise UserError(f"model.img_size={size} is too small for {arch}; it needs at least {minimum} px.")
    return Preprocess(
        img_size=size,
        mean=tuple(float(x) for x in (mean or data_config["mean"])),
        std=tuple(float(x) for x in (std or data_config["std"])),
        interpolation=str(data_config.get("interpolation", "bilinear")),
    )
