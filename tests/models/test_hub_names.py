"""model.name=hf-hub:ORG/NAME: architecture and preprocessing from config.json in the Hugging Face cache, weights
from the cache (offline), clear errors when missing or gated."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from bcc_lightning.models import backbones
from bcc_lightning.models.backbones import build_backbone, describe_initialisation, resolve_name, resolve_preprocess
from bcc_lightning.utils.errors import UserError

REPO_ID = "someorg/tiny-vit"
NAME = f"hf-hub:{REPO_ID}"


def fake_hf_cache(cache: Path, repo_id: str = REPO_ID, weights: bool = True) -> dict[str, torch.Tensor]:
    """models--org--name/{refs/main, snapshots/<rev>/{config.json, model.safetensors}}, huggingface_hub's layout."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    config = {"architecture": "test_vit", "num_classes": 0, "num_features": 64,
              "pretrained_cfg": {"input_size": [3, 48, 48], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                                 "interpolation": "bicubic", "crop_pct": 1.0, "num_classes": 0}}
    (snapshot / "config.json").write_text(json.dumps(config))
    torch.manual_seed(3)
    state = timm.create_model("test_vit", num_classes=0).state_dict()
    if weights:
        save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return state


def test_hub_model_builds_offline_from_the_cache(hf_cache: Path) -> None:
    state = fake_hf_cache(hf_cache)
    assert resolve_name(NAME) == NAME
    pre = resolve_preprocess({"name": NAME})
    assert (pre.img_size, pre.mean, pre.std, pre.interpolation) == (48, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic")
    assert resolve_preprocess({"name": NAME, "img_size": 32}).img_size == 32
    backbone = build_backbone(NAME, pretrained=True)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in state.items())
    assert backbone(torch.zeros(1, 3, 32, 32)).shape == (1, 64)  # any input size (position embeddings resampled)
    init = describe_initialisation(NAME, "timm", True, None)
    assert init["kind"] == "pretrained" and init["file"].endswith("model.safetensors") and len(init["sha256"]) == 64
    assert backbones.arch_name(NAME) == "test_vit"
    random = build_backbone(NAME, pretrained=False)  # the architecture alone (a checkpoint supplies the tensors)
    assert not torch.equal(random.state_dict()["pos_embed"], state["pos_embed"])


def test_hub_model_with_a_local_weights_file(hf_cache: Path, tmp_path: Path) -> None:
    state = fake_hf_cache(hf_cache, weights=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    backbone = build_backbone(NAME, pretrained=True, weights=str(path))
    assert torch.equal(backbone.state_dict()["cls_token"], state["cls_token"])
    with pytest.raises(UserError, match="model.safetensors"):
        build_backbone(NAME, pretrained=True)  # config cached, weights not, offline


def test_not_cached_and_offline_says_what_to_download(hf_cache: Path) -> None:
    with pytest.raises(UserError) as info:
        resolve_preprocess({"name": "hf-hub:other/model"})
    message = str(info.value)
    assert "huggingface-cli download other/model" in message and "models--other--model" in message
    assert "model.weights" in message and "HF_HUB_OFFLINE=1" in message
    with pytest.raises(UserError, match="not a Hugging Face model id"):
        resolve_name("hf-hub:no-slash")


def test_gated_repo_says_token_and_licence(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        response = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/gated/model"))
        raise GatedRepoError("403 Client Error: access to model gated/model is restricted", response=response)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbones, "_reachable", lambda host, timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(UserError, match=r"needs a token \(huggingface-cli login.*accepted licence on the model page"):
        resolve_preprocess({"name": "hf-hub:gated/model"})
