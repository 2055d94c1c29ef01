"""The Hugging Face hub and its local cache, shared by the families that read from it (hf-hub, transformers):
files from the cache (offline) or downloaded when online, clear errors for missing and gated repos, and the
configs a checkpoint recorded so that it rebuilds without the cache."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from bcc_lightning.models.backbones.weights import read_state_dict
from bcc_lightning.utils.errors import UserError

HF_PREFIXES = ("hf-hub:", "hf_hub:")
# Weight files a Hugging Face repo may hold, preferred first (safetensors: no pickled code).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                   "open_clip_pytorch_model.bin")


def connectable(host: str, timeout: float = 3.0) -> bool:
    """Whether a download host answers at all: an offline machine learns in a second, not after a minute of retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def reachable(host: str, timeout: float = 3.0) -> bool:
    """`connectable`, looked up as the package's `_reachable` at call time: the one switch that tests flip to act
    offline or online without a network (monkeypatch.setattr(backbones, "_reachable", ...))."""
    package = sys.modules.get(__package__ or "")
    return getattr(package, "_reachable", connectable)(host, timeout)


def is_hf_hub(name: str) -> bool:
    """`hf-hub:ORG/NAME[@REVISION]`: a timm-format model on the Hugging Face hub (architecture in its config.json)."""
    return str(name).lower().startswith(HF_PREFIXES)


def hf_repo(name: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of `hf-hub:ORG/NAME[@REV]` or a bare `ORG/NAME[@REV]` (transformers names)."""
    repo = str(name).split(":", 1)[1].strip() if is_hf_hub(name) else str(name).strip()
    repo, _, revision = repo.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise UserError(f"model.name={name!r} is not a Hugging Face model id: write hf-hub:ORG/NAME (for example "
                        f"hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k), optionally with @REVISION.")
    return repo, revision or None


def hf_offline() -> bool:
    from huggingface_hub import constants

    # The environment is read now as well: huggingface_hub reads it only once, when first imported.
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_missing(name: str, filename: str, why: str) -> UserError:
    repo, _ = hf_repo(name)
    cache = hf_cache_dir()
    return UserError(
        f"'{filename}' of backbone '{name}' is not in the Hugging Face cache {cache} and {why}. On a machine with "
        f"internet run `huggingface-cli download {repo} config.json model.safetensors` (or `python -c \"import timm; "
        f"timm.create_model('hf-hub:{repo}', pretrained=True)\"`), copy {cache}/models--{repo.replace('/', '--')} "
        f"into the same place here (HF_HUB_CACHE or HF_HOME/hub) and set HF_HUB_OFFLINE=1. Or name the architecture "
        f"itself (config.json's \"architecture\", e.g. model.name=vit_small_patch16_224) with model.weights=<the "
        f"downloaded model.safetensors> and the input settings model.img_size/mean/std from its pretrained_cfg."
    )


def hf_gated(name: str, exc: BaseException) -> UserError:
    repo, _ = hf_repo(name)
    return UserError(
        f"Backbone '{name}' is gated or private on the Hugging Face hub ({type(exc).__name__}): it needs a token "
        f"(huggingface-cli login, or HF_TOKEN) and an accepted licence on the model page "
        f"https://huggingface.co/{repo}. Accept the terms there, log in, and run again (or download it on a machine "
        f"that has access and copy the cache here with HF_HUB_OFFLINE=1)."
    )


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _no_such_file(repo: str, filename: str) -> UserError:
    return UserError(f"The Hugging Face repo {repo} has no '{filename}': is it a timm model (its files should "
                     f"include config.json and model.safetensors), or does model.source name the wrong family?")


def hf_hub_file(name: str, filename: str, required: bool = True) -> Path | None:
    """A file of a hub repo: from the cache, else downloaded when online. Offline and not cached: a UserError
    naming what to download (or None when not `required`); gated repos: a UserError about tokens and licences."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    repo, revision = hf_repo(name)
    found = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(found, str):
        return Path(found)
    if found is not None:  # the cache records that the repo has no such file
        if required:
            raise _no_such_file(repo, filename)
        return None
    offline = hf_offline()
    if offline or not reachable("huggingface.co"):
        if not required:
            return None
        raise hf_missing(name, filename, "this machine is offline (HF_HUB_OFFLINE=1)" if offline
                         else "huggingface.co cannot be reached")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except GatedRepoError as exc:
        raise hf_gated(name, exc) from exc
    except EntryNotFoundError as exc:
        if required:
            raise _no_such_file(repo, filename) from exc
        return None
    except RepositoryNotFoundError as exc:
        if _http_status(exc) in (401, 403):
            raise hf_gated(name, exc) from exc
        raise UserError(f"The Hugging Face repo {repo} does not exist or is private (private repos need a token: "
                        f"huggingface-cli login). Check model.name={name!r}.") from exc
    except Exception as exc:
        if _http_status(exc) in (401, 403):
            raise hf_gated(name, exc) from exc
        raise hf_missing(name, filename, f"the download failed ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc


def hf_weights_file(name: str) -> Path | None:
    """The repo's weight file in the cache (or downloaded), the safest format first; None when there is none."""
    for filename in HF_WEIGHT_FILES:
        path = hf_hub_file(name, filename, required=False)
        if path is not None:
            return path
    return None


def hf_weights_state(name: str, prefixes: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    path = hf_weights_file(name)
    if path is None:
        raise hf_missing(name, "model.safetensors", "no weight file of the repo could be found or downloaded")
    return (read_state_dict(path) if prefixes is None else read_state_dict(path, prefixes)), path


def hf_json(name: str, filename: str = "config.json") -> tuple[dict[str, Any], Path]:
    path = hf_hub_file(name, filename)
    assert path is not None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read {path} ({exc}); delete it from the Hugging Face cache and download it "
                        f"again.") from exc
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a JSON object; delete it from the Hugging Face cache and download it again.")
    return raw, path


# Hub configs recorded in a checkpoint being loaded (name -> config): they answer before the Hugging Face cache,
# so a checkpoint rebuilds on a machine that never downloaded the repo, and as it was trained if the hub changed since.
_RECORDED: dict[str, dict[str, Any]] = {}


def recorded_config(name: str) -> dict[str, Any] | None:
    """The config a checkpoint being loaded recorded for this hub name (see `recorded_hf_hub_config`), or None."""
    recorded = _RECORDED.get(str(name))
    return None if recorded is None else {k: (dict(v) if isinstance(v, dict) else v) for k, v in recorded.items()}


@contextlib.contextmanager
def recorded_hf_hub_config(record: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, the hub families answer `record['name']`'s config from the record (see each family's
    `record`), not from the Hugging Face cache."""
    if not record or not record.get("name") or not record.get("architecture"):
        yield
        return
    name = str(record["name"])
    previous = _RECORDED.get(name)
    _RECORDED[name] = {"architecture": str(record["architecture"]),
                       "model_args": dict(record.get("model_args") or {}),
                       "pretrained_cfg": dict(record.get("pretrained_cfg") or {}),
                       "file": "recorded in the checkpoint"}
    try:
        yield
    finally:
        if previous is None:
            _RECORDED.pop(name, None)
        else:
            _RECORDED[name] = previous
