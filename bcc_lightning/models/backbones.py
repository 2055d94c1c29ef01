"""Backbone name -> feature network + one-logit head; local weight loading; the backbone's preprocessing."""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
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


HF_PREFIXES = ("hf-hub:", "hf_hub:")
# Weight files a timm-format Hugging Face repo may hold, preferred first (safetensors: no pickled code).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                   "open_clip_pytorch_model.bin")


def is_hf_hub(name: str) -> bool:
    """`hf-hub:ORG/NAME[@REVISION]`: a timm-format model on the Hugging Face hub (architecture in its config.json)."""
    return str(name).lower().startswith(HF_PREFIXES)


def _hf_repo(name: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of an hf-hub name."""
    repo = str(name).split(":", 1)[1].strip()
    repo, _, revision = repo.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise UserError(f"model.name={name!r} is not a Hugging Face model id: write hf-hub:ORG/NAME (for example "
                        f"hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k), optionally with @REVISION.")
    return repo, revision or None


def _hf_offline() -> bool:
    from huggingface_hub import constants

    # The environment is read now as well: huggingface_hub reads it only once, when first imported.
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hf_missing(name: str, filename: str, why: str) -> UserError:
    repo, _ = _hf_repo(name)
    cache = _hf_cache_dir()
    return UserError(
        f"'{filename}' of backbone '{name}' is not in the Hugging Face cache {cache} and {why}. On a machine with "
        f"internet run `huggingface-cli download {repo} config.json model.safetensors` (or `python -c \"import timm; "
        f"timm.create_model('hf-hub:{repo}', pretrained=True)\"`), copy {cache}/models--{repo.replace('/', '--')} "
        f"into the same place here (HF_HUB_CACHE or HF_HOME/hub) and set HF_HUB_OFFLINE=1. Or name the architecture "
        f"itself (config.json's \"architecture\", e.g. model.name=vit_small_patch16_224) with model.weights=<the "
        f"downloaded model.safetensors> and the input settings model.img_size/mean/std from its pretrained_cfg."
    )


def _hf_gated(name: str, exc: BaseException) -> UserError:
    repo, _ = _hf_repo(name)
    return UserError(
        f"Backbone '{name}' is gated or private on the Hugging Face hub ({type(exc).__name__}): it needs a token "
        f"(huggingface-cli login, or HF_TOKEN) and an accepted licence on the model page "
        f"https://huggingface.co/{repo}. Accept the terms there, log in, and run again (or download it on a machine "
        f"that has access and copy the cache here with HF_HUB_OFFLINE=1)."
    )


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def hf_hub_file(name: str, filename: str, required: bool = True) -> Path | None:
    """A file of an hf-hub repo: from the cache, else downloaded when online. Offline and not cached: a UserError
    naming what to download (or None when not `required`); gated repos: a UserError about tokens and licences."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    repo, revision = _hf_repo(name)
    found = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(found, str):
        return Path(found)
    if found is not None:  # the cache records that the repo has no such file
        if required:
            raise UserError(f"The Hugging Face repo {repo} has no '{filename}': is it a timm model (its files should "
                            f"include config.json and model.safetensors)?")
        return None
    offline = _hf_offline()
    if offline or not _reachable("huggingface.co"):
        if not required:
            return None
        raise _hf_missing(name, filename, "this machine is offline (HF_HUB_OFFLINE=1)" if offline
                          else "huggingface.co cannot be reached")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except GatedRepoError as exc:
        raise _hf_gated(name, exc) from exc
    except EntryNotFoundError as exc:
        if required:
            raise UserError(f"The Hugging Face repo {repo} has no '{filename}': is it a timm model (its files "
                            f"should include config.json and model.safetensors)?") from exc
        return None
    except RepositoryNotFoundError as exc:
        if _http_status(exc) in (401, 403):
            raise _hf_gated(name, exc) from exc
        raise UserError(f"The Hugging Face repo {repo} does not exist or is private (private repos need a token: "
                        f"huggingface-cli login). Check model.name={name!r}.") from exc
    except Exception as exc:
        if _http_status(exc) in (401, 403):
            raise _hf_gated(name, exc) from exc
        raise _hf_missing(name, filename, f"the download failed ({type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc


# hf-hub configs recorded in a checkpoint being loaded (name -> config): they answer before the Hugging Face cache,
# so a checkpoint rebuilds on a machine that never downloaded the repo, and as it was trained if the hub changed since.
_RECORDED_HF_CONFIGS: dict[str, dict[str, Any]] = {}


def hf_hub_record(name: str) -> dict[str, Any] | None:
    """What a checkpoint must keep to rebuild an hf-hub backbone without the hub: the timm architecture, its
    arguments and the pretrained config (input settings), as resolved from config.json now. None for other names."""
    if not is_hf_hub(name):
        return None
    config = hf_hub_config(name)
    return {"name": str(name), "architecture": config["architecture"], "model_args": dict(config["model_args"]),
            "pretrained_cfg": dict(config["pretrained_cfg"])}


@contextlib.contextmanager
def recorded_hf_hub_config(record: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, `hf_hub_config(record['name'])` answers from the record (see `hf_hub_record`)."""
    if not record or not record.get("name") or not record.get("architecture"):
        yield
        return
    name = str(record["name"])
    previous = _RECORDED_HF_CONFIGS.get(name)
    _RECORDED_HF_CONFIGS[name] = {"architecture": str(record["architecture"]),
                                  "model_args": dict(record.get("model_args") or {}),
                                  "pretrained_cfg": dict(record.get("pretrained_cfg") or {}),
                                  "file": "recorded in the checkpoint"}
    try:
        yield
    finally:
        if previous is None:
            _RECORDED_HF_CONFIGS.pop(name, None)
        else:
            _RECORDED_HF_CONFIGS[name] = previous


def hf_hub_config(name: str) -> dict[str, Any]:
    """The timm config.json of an hf-hub model: {'architecture', 'pretrained_cfg', 'model_args'}."""
    recorded = _RECORDED_HF_CONFIGS.get(str(name))
    if recorded is not None:
        if not timm.is_model(recorded["architecture"]):
            raise UserError(f"The checkpoint of backbone '{name}' names the timm architecture "
                            f"{recorded['architecture']!r}, which this timm {timm.__version__} does not know: install "
                            f"the timm version the checkpoint was written with (or newer).")
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in recorded.items()}
    path = hf_hub_file(name, "config.json")
    assert path is not None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read {path} ({exc}); delete it from the Hugging Face cache and download it "
                        f"again.") from exc
    arch = raw.get("architecture") or raw.get("arch")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise UserError(f"{path} names no timm architecture (architecture={arch!r}); model.name=hf-hub:... takes "
                        f"timm-format repos (config.json with \"architecture\" and \"pretrained_cfg\"), such as "
                        f"those under huggingface.co/timm. Upgrade timm if the architecture is newer than it.")
    pretrained_cfg = raw.get("pretrained_cfg")
    if not isinstance(pretrained_cfg, Mapping):  # older timm configs keep the data settings at the top level
        pretrained_cfg = {k: raw[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k in raw}
    return {"architecture": arch, "pretrained_cfg": dict(pretrained_cfg),
            "model_args": dict(raw.get("model_args") or {}), "file": str(path)}


def resolve_name(name: str) -> str:
    if is_hf_hub(name):
        _hf_repo(name)  # checks the form only: the cache or the hub is asked when the model is built
        return str(name)
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


def _create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm.create_model, headless; transformers (ViT, Swin, ...) accept any input size that model.img_size sets
    (position embeddings are interpolated), other families do not know the option and are built as they are."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True, **kwargs)
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)


def _hf_weights_state(name: str) -> tuple[dict[str, torch.Tensor], Path]:
    for filename in HF_WEIGHT_FILES:
        path = hf_hub_file(name, filename, required=False)
        if path is not None:
            return _read_state_dict(path), path
    raise _hf_missing(name, "model.safetensors", "no weight file of the repo could be found or downloaded")


def _build_hf_hub(name: str, use_hub: bool) -> tuple[nn.Module, str]:
    """An hf-hub model: the architecture (and its arguments) from config.json in the cache; the weights from the
    cache (read without unpickling code) and passed through timm's own filters (position embedding resizing)."""
    config = hf_hub_config(name)
    arch = config["architecture"]
    overlay: dict[str, Any] = {}
    if use_hub:
        state, path = _hf_weights_state(name)
        overlay = {"state_dict": state, "source": "", "hf_hub_id": None, "url": "", "file": None}
        log.info("Loading %s weights from %s", name, path)
    try:
        backbone = _create(arch, use_hub, pretrained_cfg_overlay=overlay or None, **config["model_args"])
    except Exception as exc:
        raise UserError(f"Cannot build backbone '{name}' (architecture {arch} from its config.json"
                        f"{', weights from the Hugging Face cache' if use_hub else ''}): {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}. The files in the cache may belong to "
                        f"another timm version, or be incomplete: download them again.") from exc
    return backbone, arch


def _build_timm(name: str, use_hub: bool) -> tuple[nn.Module, str]:
    name = resolve_name(name)
    if is_hf_hub(name):
        return _build_hf_hub(name, use_hub)
    if use_hub and _cached_weights_file(name, "timm") is None and not _reachable("huggingface.co"):
        raise _pretrained_hint(name, ConnectionError("huggingface.co is unreachable and the weights are not cached"))
    try:
        backbone = _create(name, use_hub)
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
    if is_hf_hub(name):
        return timm.data.resolve_data_config(pretrained_cfg=hf_hub_config(name)["pretrained_cfg"],
                                             use_test_size=False)
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
        if is_hf_hub(name):
            for filename in HF_WEIGHT_FILES:
                found = hf_hub_file(name, filename, required=False)
                if found is not None:
                    return found
            return None
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

    # hf-hub names also record their architecture (hf_hub_record): the checkpoint then rebuilds without the cache.
    hub = {"hf_hub": hf_hub_record(name)} if source == "timm" and is_hf_hub(name) else {}
    if weights:
        path = Path(weights).expanduser().resolve()
        return {"kind": "ImageNet", "file": str(path), "sha256": sha256_file(path), **hub}
    if not pretrained:
        return {"kind": "random", **hub}
    path = _cached_weights_file(name, source)
    if hub:
        # Hub models are not necessarily ImageNet-trained (pathology foundation models, CLIP, ...): name the repo.
        return {"kind": "pretrained", "source": f"{name} (Hugging Face cache)", "file": str(path) if path else None,
                "sha256": sha256_file(path) if path else None, **hub}
    return {"kind": "ImageNet", "source": f"{source} hub cache", "file": str(path) if path else None,
            "sha256": sha256_file(path) if path else None}


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


def arch_name(name: str, source: str = "timm") -> str:
    """The architecture behind a model name: timm's (densenet121 for densenet121.tv_in1k) or torchvision's."""
    if source == "torchvision":
        return TORCHVISION_ALIASES.get(name.lower(), name)
    if is_hf_hub(name):
        return hf_hub_config(name)["architecture"]
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
