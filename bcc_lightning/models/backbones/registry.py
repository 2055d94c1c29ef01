"""The backbone registry: one `BackboneFamily` per way of building a network (timm, torchvision, hf-hub,
transformers, ...), each registered under the `model.source` that selects it.

A family says how to build a headless network, what input its weights expect (size, mean/std, interpolation), how
local weights load into it, where its weights live on this machine, and which layer Grad-CAM explains. Adding a
family is one module that subclasses `BackboneFamily` under `@register_family("name")` (files named `*_family.py`
in this package are imported by the package itself; a module elsewhere is named as `model.source=pkg.module:name`),
plus a `conf/model/<name>.yaml` that selects it.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from bcc_lightning.data.preprocess import Preprocess
from bcc_lightning.models.backbones.pooling import TokenPooling, check_pooling
from bcc_lightning.models.backbones.weights import load_backbone_weights
from bcc_lightning.utils.errors import UserError

log = logging.getLogger("bcc_lightning")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SOURCE = "timm"
Options = Mapping[str, Any]


class BackboneFamily:
    """One way of building backbones. `options` is the model config (name, arch, model_args, pooling, img_size, ...)
    so that a family can read the keys it knows and ignore the others."""

    name = ""
    # Model names with these prefixes belong to this family even under the default source (hf-hub:ORG/NAME).
    prefixes: tuple[str, ...] = ()
    # How pretrained weights are described in the run's record: "ImageNet" or "pretrained" (named by their source).
    pretrained_kind = "ImageNet"

    def resolve_name(self, name: str, options: Options) -> str:
        """The canonical model name; a UserError (with close matches) for a name the family does not know."""
        return str(name)

    def arch(self, name: str, options: Options) -> str:
        """The architecture behind a model name (recorded as the model's `backbone_arch`)."""
        return str(options.get("arch") or name)

    def data_config(self, name: str, options: Options) -> dict[str, Any]:
        """The weights' own input: {'input_size': (3, H, W), 'mean', 'std', 'interpolation'}, without building."""
        size = int(options.get("img_size") or 224)
        return {"input_size": (3, size, size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}

    def build(self, name: str, use_hub: bool, options: Options) -> tuple[nn.Module, str]:
        """(a headless network with `num_features`, its architecture). `use_hub`: load the family's own pretrained
        weights (from the local cache, or downloaded when online); otherwise random (a file or checkpoint follows)."""
        raise NotImplementedError

    def load_weights(self, network: nn.Module, path: str | Path, arch: str) -> dict[str, int]:
        """Load a local weights file (model.weights) into the network `build` returned."""
        return load_backbone_weights(network, path, arch)

    def finish(self, network: nn.Module, options: Options) -> nn.Module:
        """The network with its embedding recipe (`model.pooling`) applied; as built when there is none."""
        pooling = check_pooling(options.get("pooling"))
        if pooling is None:
            return network
        if not hasattr(network, "forward_features") or not hasattr(network, "num_prefix_tokens"):
            raise UserError(f"model.pooling={pooling} pools a transformer's tokens; backbone "
                            f"{options.get('name')!r} has none (it is not a ViT). Leave model.pooling unset.")
        return TokenPooling(network, pooling)

    def cached_weights(self, name: str, options: Options) -> Path | None:
        """The local file the family's pretrained weights are read from (for the record), when it can be found."""
        return None

    def record(self, name: str, options: Options) -> dict[str, Any] | None:
        """What a checkpoint must keep to rebuild this backbone without the hub (kept as initialisation['hf_hub'])."""
        return None

    def cam_layer(self, backbone: nn.Module, arch: str) -> str | None:
        """The dotted path (within the backbone) of the layer Grad-CAM weighs, when the family knows a good one."""
        return None

    def min_img_size(self, arch: str) -> int:
        """The smallest input the architecture accepts (pooling stages collapse below it)."""
        return 32


FAMILIES: dict[str, BackboneFamily] = {}
F = TypeVar("F", bound=type[BackboneFamily])


def register_family(name: str) -> Callable[[F], F]:
    """Class decorator: `@register_family("timm") class TimmFamily(BackboneFamily)` makes `model.source=timm` build
    with it. Registering a name twice replaces the earlier family (a test or a plugin may override one)."""

    def decorate(cls: F) -> F:
        family = cls()
        family.name = name
        FAMILIES[name] = family
        return cls

    return decorate


def family_names() -> list[str]:
    return sorted(FAMILIES)


def get_family(source: str | None, name: str = "") -> BackboneFamily:
    """The family `model.source` selects; under the default source, a name prefix (hf-hub:) may select another.
    `pkg.module:family` imports that module first (a family kept outside this package)."""
    source = str(source or DEFAULT_SOURCE)
    if source == DEFAULT_SOURCE:
        for family in FAMILIES.values():
            if family.prefixes and str(name).lower().startswith(family.prefixes):
                return family
    if source not in FAMILIES and ":" in source:
        module, _, family_name = source.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"model.source={source!r}: cannot import the module {module!r} that should register the "
                            f"backbone family {family_name!r} ({exc}). Is it on the Python path?") from exc
        if family_name not in FAMILIES:
            raise UserError(f"model.source={source!r}: the module {module!r} registers no family {family_name!r} "
                            f"(registered: {', '.join(family_names())}); decorate it with "
                            f"@register_family({family_name!r}).")
        return FAMILIES[family_name]
    if source not in FAMILIES:
        close = difflib.get_close_matches(source, family_names(), n=3, cutoff=0.5)
        raise UserError(f"model.source={source!r} is not a backbone family. Registered: {', '.join(family_names())}"
                        f"{f' (did you mean {close[0]}?)' if close else ''}; a family outside the package is named "
                        f"pkg.module:name.")
    return FAMILIES[source]


def _source(options: Options) -> str:
    return str(options.get("source") or DEFAULT_SOURCE)


def model_options(name: str, source: str | None, options: Options | None) -> dict[str, Any]:
    return {**dict(options or {}), "name": name, "source": source or (options or {}).get("source") or DEFAULT_SOURCE}


def resolve_name(name: str, source: str | None = None, options: Options | None = None) -> str:
    opts = model_options(name, source, options)
    return get_family(_source(opts), name).resolve_name(name, opts)


def data_config_for(name: str, source: str = DEFAULT_SOURCE, options: Options | None = None) -> dict[str, Any]:
    """The input size, mean/std and interpolation of a backbone's weights, known without building the network."""
    opts = model_options(name, source, options)
    return get_family(source, name).data_config(name, opts)


def arch_name(name: str, source: str = DEFAULT_SOURCE, options: Options | None = None) -> str:
    """The architecture behind a model name: timm's (densenet121 for densenet121.tv_in1k), torchvision's, ..."""
    opts = model_options(name, source, options)
    return get_family(source, name).arch(name, opts)


def preprocess_for(data_config: Mapping[str, Any], img_size: int | None, arch: str, mean: Any = None,
                   std: Any = None, minimum: int = 32, interpolation: str | None = None) -> Preprocess:
    """Input size, mean/std and interpolation from the weights' own config, overridable from the model config."""
    size = int(img_size) if img_size else int(data_config["input_size"][-1])
    if size < minimum:
        raise UserError(f"model.img_size={size} is too small for {arch}; it needs at least {minimum} px.")
    return Preprocess(
        img_size=size,
        mean=tuple(float(x) for x in (mean or data_config["mean"])),
        std=tuple(float(x) for x in (std or data_config["std"])),
        interpolation=str(interpolation or data_config.get("interpolation", "bilinear")),
    )


def resolve_preprocess(model_cfg: Options) -> Preprocess:
    """The preprocessing a model config implies (its weights' own, overridable by img_size/mean/std/interpolation),
    known before the model exists: the data module is built with it once, and the model stores it in its checkpoint."""
    name, source = model_cfg["name"], _source(model_cfg)
    family = get_family(source, name)
    opts = model_options(name, source, model_cfg)
    arch = family.arch(name, opts)
    return preprocess_for(family.data_config(name, opts), model_cfg.get("img_size"), arch, model_cfg.get("mean"),
                          model_cfg.get("std"), family.min_img_size(arch), model_cfg.get("interpolation"))


def build_backbone(name: str, pretrained: bool = False, weights: str | None = None, load_weights: bool = True,
                   source: str = DEFAULT_SOURCE, options: Options | None = None) -> nn.Module:
    """A headless network (pooled features, `num_features` wide); its input is `resolve_preprocess`'s.

    `load_weights=False` builds the architecture only (used when a checkpoint supplies every tensor). `options`:
    the rest of the model config (arch, model_args, pooling) for the families that read them.
    """
    opts = model_options(name, source, options)
    family = get_family(_source(opts), name)
    use_hub = bool(pretrained) and not weights and load_weights
    network, arch = family.build(name, use_hub, opts)
    if weights and load_weights:
        info = family.load_weights(network, weights, arch)
        log.info("Loaded %d tensors from %s into %s (%d of the backbone's tensors missing, %d in the file unused)",
                 info["loaded"], weights, arch, info["missing"], info["unexpected"])
    elif use_hub:
        log.info("Loaded pretrained weights for %s (%s)", arch, family.name)
    backbone = family.finish(network, opts)
    # Which family built it: Grad-CAM asks that family for its layer (`default_cam_layer`).
    backbone.backbone_family = family.name
    return backbone


def default_cam_layer(backbone: nn.Module, arch: str) -> str | None:
    """The layer the backbone's family names for Grad-CAM (a dotted path within the backbone), or None."""
    family = FAMILIES.get(str(getattr(backbone, "backbone_family", DEFAULT_SOURCE)))
    return None if family is None else family.cam_layer(backbone, arch)


def describe_initialisation(name: str, source: str, pretrained: bool, weights: str | None,
                            options: Options | None = None) -> dict[str, Any]:
    """How the backbone's weights began: from a named file (with its sha256) or the family's cache, or random.
    Recorded in the checkpoint, metrics.json, the report and the export sidecar; hub families add what a checkpoint
    needs to rebuild the network without the hub (initialisation['hf_hub'])."""
    from bcc_lightning.utils.atomic_io import sha256_file

    opts = model_options(name, source, options)
    family = get_family(_source(opts), name)
    record = family.record(name, opts)
    hub = {"hf_hub": record} if record else {}
    if weights:
        path = Path(weights).expanduser().resolve()
        # A hub family's file holds that model's own pretraining (a pathology foundation model), not ImageNet.
        kind = "pretrained" if family.pretrained_kind == "pretrained" else "ImageNet"
        source = {"source": name} if kind == "pretrained" else {}
        return {"kind": kind, **source, "file": str(path), "sha256": sha256_file(path), **hub}
    if not pretrained:
        return {"kind": "random", **hub}
    try:
        path = family.cached_weights(name, opts)
    except Exception:  # the record is best effort; loading itself already succeeded or failed clearly
        path = None
    sha = sha256_file(path) if path else None
    if family.pretrained_kind == "pretrained":
        # Hub models are not necessarily ImageNet-trained (pathology foundation models, CLIP, ...): name the repo.
        return {"kind": "pretrained", "source": f"{name} (Hugging Face cache)", "file": str(path) if path else None,
                "sha256": sha, **hub}
    return {"kind": "ImageNet", "source": f"{family.name} hub cache", "file": str(path) if path else None,
            "sha256": sha, **hub}


def initialisation_text(init: Mapping[str, Any] | None) -> str:
    """'ImageNet (file, sha256 …)', 'random', or 'unknown' for checkpoints that predate the record."""
    if not init:
        return "unknown (checkpoint written before initialisations were recorded)"
    if init.get("kind") not in ("ImageNet", "pretrained"):
        return str(init.get("kind", "unknown"))
    sha = init.get("sha256")
    if init.get("kind") == "pretrained":
        return f"pretrained {init.get('source')} ({init.get('file')}{', sha256 ' + sha[:12] if sha else ''})"
    return f"ImageNet ({init.get('file') or init.get('source')}{', sha256 ' + sha[:12] if sha else ''})"


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
