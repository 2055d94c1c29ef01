"""The pathology model zoo (conf/model/<preset>.yaml): each preset's architecture, input and embedding recipe,
checked against the values on its model card (and TRIDENT / eva), with random weights -- no download."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import save_file

from bcc_lightning.models.backbones import (
    TokenPooling,
    build_backbone,
    describe_initialisation,
    initialisation_text,
    resolve_preprocess,
)
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.utils.config import config_dir
from tests.conftest import compose_config

IMAGENET = (0.485, 0.456, 0.406)
# preset: (hub name, family, embedding width, recipe, mean[0], interpolation, gated, published size in M parameters)
ZOO: dict[str, tuple[str, str, int, str | None, float, str, bool, float]] = {
    "uni": ("hf-hub:MahmoodLab/UNI", "timm", 1024, "cls", 0.485, "bilinear", True, 303),
    "uni2_h": ("hf-hub:MahmoodLab/UNI2-h", "timm", 1536, "cls", 0.485, "bilinear", True, 681),
    "virchow": ("hf-hub:paige-ai/Virchow", "timm", 2560, "cls_mean", 0.485, "bicubic", True, 631),
    "virchow2": ("hf-hub:paige-ai/Virchow2", "timm", 2560, "cls_mean", 0.485, "bicubic", True, 631),
    "h_optimus_0": ("hf-hub:bioptimus/H-optimus-0", "timm", 1536, "cls", 0.707223, "bilinear", False, 1134),
    "h_optimus_1": ("hf-hub:bioptimus/H-optimus-1", "timm", 1536, "cls", 0.707223, "bilinear", True, 1134),
    "prov_gigapath": ("hf-hub:prov-gigapath/prov-gigapath", "timm", 1536, "cls", 0.485, "bicubic", True, 1134),
    "phikon": ("owkin/phikon", "transformers", 768, "cls", 0.485, "bilinear", False, 86),
    "phikon_v2": ("owkin/phikon-v2", "transformers", 1024, "cls", 0.485, "bilinear", False, 303),
    "hibou_l": ("histai/hibou-L", "transformers", 1024, "cls", 0.7068, "bicubic", True, 303),
    "kaiko_vitl14": ("hf-hub:1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms", "timm",
                     1024, "cls", 0.5, "bilinear", False, 304),
    "midnight": ("kaiko-ai/midnight", "transformers", 3072, "cls_mean", 0.5, "bilinear", False, 1134),
    "lunit_vits8": ("hf-hub:1aurent/vit_small_patch8_224.lunit_dino", "timm", 384, "cls", 0.70322989, "bilinear",
                    False, 21.7),
    # CONCH: its own attentional pooler (no token recipe); size: ViT-B/16 at 448 + contrastive pooler (no captioning).
    "conch": ("MahmoodLab/CONCH", "conch", 512, None, 0.48145466, "bicubic", True, 87.6),
}
NATIVE_SIZE = {"conch": 448}  # the others take 224
DEPTH_KEY = {"timm": "depth", "transformers": "num_hidden_layers", "conch": "depth"}


def presets(*overrides: str) -> dict[str, dict[str, Any]]:
    """Every preset's model config, composed as `python train.py model=<preset>` would (one Hydra context)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return {key: OmegaConf.to_container(compose("train", [f"model={key}", *overrides]).model, resolve=True)
                for key in ZOO}


@pytest.fixture(scope="module")
def zoo() -> dict[str, dict[str, Any]]:
    return presets()


def shallow(model: dict[str, Any], depth: int = 1, **args: Any) -> dict[str, Any]:
    """The preset with fewer blocks (the embedding's width and recipe do not depend on depth)."""
    key = DEPTH_KEY[model["source"]]
    return {**model, "model_args": {**model["model_args"], key: depth, **args}}


def test_every_preset_says_what_its_card_says(zoo: dict[str, dict[str, Any]]) -> None:
    assert sorted(zoo) == sorted(ZOO)
    for key, (name, source, dim, pooling, mean0, interpolation, gated, _) in ZOO.items():
        model = zoo[key]
        assert (model["name"], model["source"], model["pooling"]) == (name, source, pooling), key
        assert model["zoo"]["embedding_dim"] == dim and model["zoo"]["gated"] is gated, key
        assert model["zoo"]["hub_id"] == name.split(":")[-1] and model["zoo"]["licence"], key
        pre = resolve_preprocess(model)  # offline, no cache: a preset needs no config.json
        assert (pre.img_size, pre.interpolation) == (NATIVE_SIZE.get(key, 224), interpolation), key
        assert pre.mean[0] == pytest.approx(mean0) and len(pre.std) == 3, key
    # The register tokens that Virchow2's recipe leaves out of the mean, and the models that have them.
    assert zoo["virchow2"]["model_args"]["reg_tokens"] == 4 and "reg_tokens" not in zoo["virchow"]["model_args"]
    assert zoo["uni2_h"]["model_args"]["reg_tokens"] == 8 and zoo["hibou_l"]["model_args"]["num_register_tokens"] == 4


@pytest.mark.parametrize("key", sorted(ZOO))
def test_every_preset_embeds_at_its_native_size_with_the_documented_width(key: str,
                                                                         zoo: dict[str, dict[str, Any]]) -> None:
    """Random weights, one block (the full depth is the slow test below), the preset's native input."""
    model = shallow(zoo[key])
    torch.manual_seed(0)
    backbone = build_backbone(model["name"], source=model["source"], options=model).eval()
    size = resolve_preprocess(model).img_size
    with torch.inference_mode():
        out = backbone(torch.randn(1, 3, size, size))
    assert out.shape == (1, ZOO[key][2]) == (1, backbone.num_features)
    assert torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(ZOO))
def test_every_preset_full_depth_matches_its_published_size(key: str, zoo: dict[str, dict[str, Any]]) -> None:
    model = zoo[key]
    backbone = build_backbone(model["name"], source=model["source"], options=model).eval()
    params = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert params == pytest.approx(ZOO[key][7], rel=0.02), f"{key}: {params:.1f}M parameters"
    with torch.inference_mode():
        out = backbone(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, ZOO[key][2])


def _tokens(backbone: TokenPooling, x: torch.Tensor) -> torch.Tensor:
    return backbone.encoder.forward_features(x)


def test_recipes_pool_the_right_tokens(zoo: dict[str, dict[str, Any]]) -> None:
    """Virchow2: class token ++ mean of the patch tokens, its 4 registers left out; UNI2-h: the class token alone;
    Midnight (transformers): class token ++ mean of all patch tokens."""
    x = torch.randn(2, 3, 56, 56)
    for key, prefix in (("virchow2", 5), ("uni2_h", 9), ("midnight", 1), ("hibou_l", 5)):
        model = shallow(zoo[key])
        torch.manual_seed(1)
        backbone = build_backbone(model["name"], source=model["source"], options=model).eval()
        assert isinstance(backbone, TokenPooling) and backbone.num_prefix_tokens == prefix, key
        with torch.inference_mode():
            tokens, out = _tokens(backbone, x), backbone(x)
        assert tokens.shape[1] == prefix + (56 // backbone.patch_embed.patch_size[0]) ** 2, key
        expected = tokens[:, 0] if ZOO[key][3] == "cls" else torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], -1)
        torch.testing.assert_close(out, expected)
        # The registers do not reach the mean: a recipe that included them would differ.
        if ZOO[key][3] == "cls_mean" and prefix > 1:
            assert not torch.allclose(out[:, tokens.shape[2]:], tokens[:, 1:].mean(1))


def _fake_snapshot(cache: Path, repo: str) -> Path:
    """huggingface_hub's layout: models--ORG--NAME/{refs/main, snapshots/<rev>/...}."""
    revision = "f" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    return snapshot


def test_virchow2_loads_from_a_fake_hf_cache(hf_cache: Path, zoo: dict[str, dict[str, Any]]) -> None:
    """Weights as Paige publishes them (timm names, safetensors) in the cache, read offline into the preset."""
    model = shallow(zoo["virchow2"], depth=2, embed_dim=96, num_heads=2)  # SwiGLU needs an even hidden width
    torch.manual_seed(2)
    published = build_backbone(model["name"], options=model).encoder.state_dict()
    snapshot = _fake_snapshot(hf_cache, "paige-ai/Virchow2")
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_huge_patch14_224"}))
    save_file({k: v.contiguous() for k, v in published.items()}, str(snapshot / "model.safetensors"))
    backbone = build_backbone(model["name"], pretrained=True, options=model)
    assert all(torch.equal(backbone.encoder.state_dict()[k], v) for k, v in published.items())
    assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 192)  # 2 x 96: class token ++ patch mean
    init = describe_initialisation(model["name"], "timm", True, None, model)
    assert init["kind"] == "pretrained" and init["file"].endswith("model.safetensors") and "hf_hub" not in init
    # The same file named by model.weights is still the model's own pretraining, never called ImageNet.
    named = describe_initialisation(model["name"], "timm", True, str(snapshot / "model.safetensors"), model)
    assert named["kind"] == "pretrained"
    assert initialisation_text(named).startswith("pretrained hf-hub:paige-ai/Virchow2")


def test_phikon_loads_from_a_fake_hf_cache(hf_cache: Path, zoo: dict[str, dict[str, Any]]) -> None:
    """A transformers repo (config.json + model.safetensors as save_pretrained writes them), read offline."""
    model = shallow(zoo["phikon"], hidden_size=32, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(3)
    published = build_backbone(model["name"], source="transformers", options=model).encoder.model
    snapshot = _fake_snapshot(hf_cache, "owkin/phikon")
    published.save_pretrained(str(snapshot), safe_serialization=True)
    backbone = build_backbone(model["name"], pretrained=True, source="transformers", options=model)
    for key, value in published.state_dict().items():
        assert torch.equal(backbone.encoder.model.state_dict()[key], value), key
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(backbone(x), published(pixel_values=x).last_hidden_state[:, 0])


def test_linear_probe_with_virchow2_composes_and_picks_its_recipe() -> None:
    cfg = compose_config("train", ["experiment=linear_probe", "model=virchow2"])
    assert cfg.model.name == "hf-hub:paige-ai/Virchow2" and cfg.model.pooling == "cls_mean"
    assert cfg.model.freeze_backbone and cfg.model.pretrained
    model_cfg = shallow(OmegaConf.to_container(cfg.model, resolve=True), embed_dim=96, num_heads=2)
    model = BCCClassifier({**model_cfg, "pretrained": False}, OmegaConf.to_container(cfg.optimizer))
    assert model.head[-1].in_features == 192  # the head reads class token ++ patch mean
    assert model.preprocess.img_size == 224 and model.preprocess.interpolation == "bicubic"
    # A checkpoint rebuilds it from its own hyperparameters: no config, no cache.
    rebuilt = BCCClassifier(**dict(model.hparams), load_weights=False)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randint(0, 256, (1, 3, 56, 56), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x), rebuilt.eval()(x))


def test_gradcam_lays_pooled_tokens_on_their_grid(zoo: dict[str, dict[str, Any]]) -> None:
    from bcc_lightning.reports.gradcam import plan_cam

    for key in ("virchow2", "phikon"):
        model_cfg = shallow(zoo[key])
        model = BCCClassifier({**model_cfg, "pretrained": False, "channels_last": False}, {"name": "adam", "lr": 1e-3})
        plan = plan_cam(model, model.backbone_arch, 224)
        assert plan.method == "gradcam" and plan.reshape is not None, key
        assert ("layernorm_before" if key == "phikon" else "norm1") in plan.layer_name, key


def test_the_embedding_cache_key_follows_the_recipe(tmp_path: Path, zoo: dict[str, dict[str, Any]]) -> None:
    """Same files, weights and preprocessing, another recipe: other features, so another cache entry."""
    from bcc_lightning.data.embeddings import embedding_recipe, embeddings_key

    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    key = lambda model: embeddings_key([image], model["name"], "sha", {"img_size": 224}, embedding_recipe(model))  # noqa: E731
    virchow2 = zoo["virchow2"]
    assert key(virchow2) != key({**virchow2, "pooling": "cls"}) != key({**virchow2, "pooling": "mean"})
    assert key(virchow2) != key({**virchow2, "model_args": {**virchow2["model_args"], "reg_tokens": 0}})
    plain = {"name": "mobilenetv2", "source": "timm", "arch": None, "model_args": {}, "pooling": None}
    assert embedding_recipe(plain) == {}  # configs without a recipe keep the keys their caches were written under
    assert key(plain) == embeddings_key([image], "mobilenetv2", "sha", {"img_size": 224})


def test_transformers_weights_of_another_shape_are_refused(hf_cache: Path, zoo: dict[str, dict[str, Any]]) -> None:
    """transformers would only warn and leave the unmatched tensors random; the family refuses."""
    from bcc_lightning.utils.errors import UserError

    model = shallow(zoo["phikon"], hidden_size=32, num_attention_heads=2, intermediate_size=64)
    published = build_backbone(model["name"], source="transformers", options={**model, "model_args": {
        **model["model_args"], "num_hidden_layers": 2}}).encoder.model
    published.save_pretrained(str(_fake_snapshot(hf_cache, "owkin/phikon")), safe_serialization=True)
    build_backbone(model["name"], pretrained=True, source="transformers", options=model)  # extra tensors: fine
    with pytest.raises(UserError, match="do not fit model.arch=vit"):
        build_backbone(model["name"], pretrained=True, source="transformers",
                       options={**model, "model_args": {**model["model_args"], "num_hidden_layers": 3}})


def _tiny_conch(zoo: dict[str, dict[str, Any]], **args: Any) -> dict[str, Any]:
    """CONCH's preset with a narrow, one-block trunk (the loading and the recipe do not depend on the width)."""
    return shallow(zoo["conch"], embed_dim=64, num_heads=2, embed_dim_contrast=32, attn_pooler_heads=2, **args)


def _conch_release(encoder: torch.nn.Module, path: Path, drop: str | None = None) -> None:
    """A pytorch_model.bin laid out as Mahmood Lab publishes it: the whole CoCa model's state dict -- visual.* with
    the contrastive projection and the captioning pooler, text.*, logit_scale; no text_decoder.* (not released)."""
    width, trunk = encoder.num_features, encoder.trunk.embed_dim
    state = {f"visual.{key}": value for key, value in encoder.state_dict().items()}
    state.update({"visual.proj_contrast": torch.randn(width, width),
                  "visual.attn_pool_caption.query": torch.randn(4, trunk),
                  "visual.attn_pool_caption.attn.in_proj_weight": torch.randn(3 * trunk, trunk),
                  "visual.ln_caption.weight": torch.ones(trunk), "visual.ln_caption.bias": torch.zeros(trunk),
                  "text.token_embedding.weight": torch.randn(16, 8), "text.positional_embedding": torch.randn(4, 8),
                  "text.text_projection": torch.randn(8, width), "logit_scale": torch.tensor(2.659)})
    state.pop(drop or "", None)
    torch.save(state, path)


@pytest.mark.parametrize("spelling", ["MahmoodLab/CONCH", "MahmoodLab/conch"])
def test_conch_loads_strictly_from_a_fake_hf_cache(spelling: str, hf_cache: Path,
                                                   zoo: dict[str, dict[str, Any]]) -> None:
    """The model card's spelling, or CONCH's own loader's (and TRIDENT's): the hub ignores case, the cache does not.
    The text tower, logit scale and captioning pooler are skipped; every tensor of the encoder comes from the file."""
    model = _tiny_conch(zoo)
    torch.manual_seed(4)
    published = build_backbone(model["name"], source="conch", options=model)
    _conch_release(published, _fake_snapshot(hf_cache, spelling) / "pytorch_model.bin")
    backbone = build_backbone(model["name"], pretrained=True, source="conch", options=model).eval()
    for key, value in published.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(backbone(x), published.eval()(x))
    init = describe_initialisation(model["name"], "conch", True, None, model)
    assert init["kind"] == "pretrained" and f"models--{spelling.replace('/', '--')}" in init["file"]
    # The retrieval recipe takes the file's projection too, and gives unit vectors.
    retrieval = build_backbone(model["name"], pretrained=True, source="conch",
                               options=_tiny_conch(zoo, proj_contrast=True, normalize=True)).eval()
    with torch.inference_mode():
        out = retrieval(x)
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=-1), torch.ones(2))


def test_conch_refuses_weights_that_do_not_fit(hf_cache: Path, tmp_path: Path, zoo: dict[str, dict[str, Any]]) -> None:
    from bcc_lightning.utils.errors import UserError

    model = _tiny_conch(zoo)
    snapshot = _fake_snapshot(hf_cache, "MahmoodLab/CONCH")
    with pytest.raises(UserError, match="hf download MahmoodLab/CONCH pytorch_model.bin"):
        build_backbone(model["name"], pretrained=True, source="conch", options=model)  # offline, not cached
    published = build_backbone(model["name"], source="conch", options=model)
    _conch_release(published, snapshot / "pytorch_model.bin", drop="visual.ln_contrast.weight")
    with pytest.raises(UserError, match=r"1 missing \(e\.g\. ln_contrast\.weight\)"):
        build_backbone(model["name"], pretrained=True, source="conch", options=model)
    # model.weights=PATH: the same strictness; a file of another configuration (two blocks) is refused, not half-loaded.
    deeper = tmp_path / "pytorch_model.bin"
    _conch_release(build_backbone(model["name"], source="conch", options=shallow(model, depth=2)), deeper)
    with pytest.raises(UserError, match=r"unexpected \(e\.g\. trunk\.blocks\.1\."):
        build_backbone(model["name"], weights=str(deeper), source="conch", options=model)


def test_linear_probe_with_conch_composes_at_448_with_its_own_pooler(zoo: dict[str, dict[str, Any]]) -> None:
    from bcc_lightning.reports.gradcam import plan_cam

    cfg = compose_config("train", ["experiment=linear_probe", "model=conch"])
    assert cfg.model.source == "conch" and cfg.model.pooling is None and cfg.model.freeze_backbone
    model_cfg = _tiny_conch({"conch": OmegaConf.to_container(cfg.model, resolve=True)})
    model = BCCClassifier({**model_cfg, "pretrained": False}, OmegaConf.to_container(cfg.optimizer))
    assert model.head[-1].in_features == 32  # the pooler's width (512 at full size)
    pre = model.preprocess
    assert (pre.img_size, pre.interpolation, pre.mean[0]) == (448, "bicubic", pytest.approx(0.48145466))
    rebuilt = BCCClassifier(**dict(model.hparams), load_weights=False)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x), rebuilt.eval()(x))
    plan = plan_cam(model, model.backbone_arch, 448)
    assert plan.layer_name == "trunk.blocks.0.norm1" and plan.reshape is not None  # tokens on the 28 x 28 grid
