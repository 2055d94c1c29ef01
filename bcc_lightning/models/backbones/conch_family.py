"""CONCH (Mahmood Lab's CoCa vision-language model for pathology; model.source=conch, model.name=MahmoodLab/CONCH).

Its image encoder is rebuilt here -- timm's VisionTransformer as the trunk, CoCa's attentional pooler, a LayerNorm and
the optional contrastive projection -- under the names of the `visual.*` tensors of the published `pytorch_model.bin`,
so that file loads strictly without Mahmood Lab's `conch` package. The embedding is CONCH's
`encode_image(proj_contrast=False, normalize=False)`, the one its README prescribes for linear probes and TRIDENT's
conch_v1 uses: the pooler's single query over the trunk's final-norm tokens, then its LayerNorm (512 values).
`model.model_args.proj_contrast/normalize: true` give the retrieval embedding instead (projected, unit length).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from bcc_lightning.models.backbones import hub
from bcc_lightning.models.backbones.registry import BackboneFamily, Options, register_family
from bcc_lightning.models.backbones.weights import read_state_dict
from bcc_lightning.utils.errors import UserError

log = logging.getLogger("bcc_lightning")
ARCH = "conch_ViT-B-16"  # the one configuration CONCH publishes (open_clip_custom/model_configs/conch_ViT-B-16.json)
WEIGHTS = "pytorch_model.bin"
# OpenAI CLIP's mean/std, which CONCH's create_model_from_pretrained sets on its transform (bicubic, 448 px).
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# conch_ViT-B-16's vision tower (model.model_args may change them, e.g. a shallow trunk in tests), and the recipe.
DEFAULT_ARGS: dict[str, Any] = {
    "img_size": 448, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0,
    "embed_dim_contrast": 512, "attn_pooler_heads": 8, "n_queries_contrast": 1,
    "proj_contrast": False, "normalize": False,
}
# Tensors of `visual.*` that no image embedding uses: the captioning pooler fed the text decoder, whose weights Mahmood
# Lab removed from the public release. Keeping them would leave parameters without gradients when fine-tuning.
CAPTION_KEYS = ("attn_pool_caption.", "ln_caption.")


class AttentionalPooler(nn.Module):
    """CoCa's attentional pooler: learned queries attend over the trunk's (normalised) tokens."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        # kdim != d_model: torch keeps separate q/k/v projections (q_proj_weight, ...), as the published file does.
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, context_dim) -> (N, n_queries, d_model)."""
        context = self.ln_k(tokens)
        query = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(query, context, context, need_weights=False)[0]


class ConchImageEncoder(nn.Module):
    """CONCH's vision tower as a headless backbone. `forward`: the embedding; `forward_features`: the trunk's
    final-norm tokens (model.pooling=cls/mean pools those instead). `blocks`, `patch_embed` and `num_prefix_tokens`
    show the trunk's, so Grad-CAM lays the tokens on their grid and attention rollout finds the blocks."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 embed_dim_contrast: int, attn_pooler_heads: int, n_queries_contrast: int, proj_contrast: bool,
                 normalize: bool) -> None:
        super().__init__()
        # As CONCH builds it: a plain ViT whose forward is forward_features; dynamic_img_size lets any model.img_size
        # run on the 448 px position embedding the weights carry.
        self.trunk = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                       num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0, dynamic_img_size=True)
        self.attn_pool_contrast = AttentionalPooler(embed_dim_contrast, embed_dim, attn_pooler_heads,
                                                    n_queries_contrast)
        self.ln_contrast = nn.LayerNorm(embed_dim_contrast)
        if proj_contrast:
            self.proj_contrast = nn.Parameter(embed_dim ** -0.5 * torch.randn(embed_dim_contrast, embed_dim_contrast))
        else:
            self.register_parameter("proj_contrast", None)
        self.normalize = bool(normalize)
        self.num_features = int(embed_dim_contrast)
        self.num_prefix_tokens = int(self.trunk.num_prefix_tokens)
        self.has_class_token = True

    @property
    def blocks(self) -> nn.Module:
        return self.trunk.blocks

    @property
    def patch_embed(self) -> nn.Module:
        return self.trunk.patch_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.ln_contrast(self.attn_pool_contrast(self.forward_features(x))[:, 0])
        if self.proj_contrast is not None:
            pooled = pooled @ self.proj_contrast
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def conch_args(options: Options) -> dict[str, Any]:
    """The encoder's arguments: conch_ViT-B-16's, with model.model_args on top (unknown keys refused)."""
    given = dict(options.get("model_args") or {})
    unknown = sorted(set(given) - set(DEFAULT_ARGS))
    if unknown:
        raise UserError(f"model.model_args has keys the CONCH family does not know: {', '.join(unknown)}. It takes "
                        f"{', '.join(DEFAULT_ARGS)} (conch_ViT-B-16's vision tower and encode_image's options).")
    return {**DEFAULT_ARGS, **given}


def conch_visual_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """(the image encoder's tensors, how many were skipped): `visual.*` of the whole CoCa model's file, prefix removed
    (the text tower and logit scale are skipped), or a file holding the image encoder alone; the captioning pooler
    is skipped either way."""
    if any(key.startswith("visual.") for key in state):
        visual = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
    else:
        visual = dict(state)
    kept = {key: value for key, value in visual.items() if not key.startswith(CAPTION_KEYS)}
    return kept, len(state) - len(kept)


def load_conch_state(network: ConchImageEncoder, state: Mapping[str, torch.Tensor], origin: str) -> dict[str, int]:
    """Load strictly: every tensor of the encoder from the file, by name and shape, and nothing else of `visual.*`
    left over, so a file of another model (or another configuration) is refused, never loaded in part."""
    visual, skipped = conch_visual_state(state)
    if network.proj_contrast is None and "proj_contrast" in visual:
        visual.pop("proj_contrast")  # only the retrieval embedding (model_args.proj_contrast=true) projects
        skipped += 1
    own = network.state_dict()
    missing = [key for key in own if key not in visual]
    unexpected = [key for key in visual if key not in own]
    reshaped = [f"{key} {tuple(visual[key].shape)} vs {tuple(own[key].shape)}" for key in own
                if key in visual and visual[key].shape != own[key].shape]
    if missing or unexpected or reshaped:
        found = "; ".join(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})" for what, keys in
                          (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if keys)
        raise UserError(f"Weights file {origin} is not CONCH's image encoder as the model.model_args describe it: "
                        f"{found}. Use Mahmood Lab's pytorch_model.bin (huggingface.co/MahmoodLab/CONCH) as "
                        f"downloaded (its text tower is skipped), and leave the preset's model.model_args as they are.")
    network.load_state_dict(visual, strict=True)
    return {"loaded": len(own), "missing": 0, "unexpected": skipped}


def _cache_spellings(repo: str) -> list[str]:
    """The repo as named, then the other capitalisations the Hugging Face cache holds it under: the hub ignores case,
    and CONCH's own loader and TRIDENT download MahmoodLab/conch where the model card says MahmoodLab/CONCH."""
    own = f"models--{repo.replace('/', '--')}"
    cache = Path(hub.hf_cache_dir())
    others = sorted(p.name for p in cache.glob("models--*") if p.name.lower() == own.lower() and p.name != own) \
        if cache.is_dir() else []
    return [repo] + [name[len("models--"):].replace("--", "/", 1) for name in others]


@register_family("conch")
class ConchFamily(BackboneFamily):
    pretrained_kind = "pretrained"

    def resolve_name(self, name: str, options: Options) -> str:
        hub.hf_repo(name)  # the form only: the cache is read when the model is built
        return str(name)

    def arch(self, name: str, options: Options) -> str:
        arch = str(options.get("arch") or ARCH)
        if arch != ARCH:
            raise UserError(f"model.arch={arch!r}: the CONCH family builds {ARCH} only (the one configuration Mahmood "
                            f"Lab publishes); set model.arch={ARCH} or leave it unset.")
        return arch

    def data_config(self, name: str, options: Options) -> dict[str, Any]:
        size = int(conch_args(options)["img_size"])
        return {"input_size": (3, size, size), "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic"}

    def build(self, name: str, use_hub: bool, options: Options) -> tuple[nn.Module, str]:
        self.resolve_name(name, options)
        arch = self.arch(name, options)
        network = ConchImageEncoder(**conch_args(options))
        if use_hub:
            path = self.cached_weights(name, options)
            if path is None:
                raise self._missing(name)
            log.info("Loading %s weights from %s", name, path)
            load_conch_state(network, read_state_dict(path, ("module.",)), str(path))
        return network, arch

    def load_weights(self, network: nn.Module, path: str | Path, arch: str) -> dict[str, int]:
        """Mahmood Lab's pytorch_model.bin as downloaded (or a file of the image encoder alone), loaded strictly."""
        path = Path(path).expanduser()
        if not isinstance(network, ConchImageEncoder):
            raise UserError(f"model.weights={path}: the CONCH family loads weights into its own encoder only.")
        return load_conch_state(network, read_state_dict(path, ("module.",)), str(path))

    def cached_weights(self, name: str, options: Options) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        repo, revision = hub.hf_repo(name)
        for spelling in _cache_spellings(repo):
            found = try_to_load_from_cache(spelling, WEIGHTS, revision=revision)
            if isinstance(found, str):
                return Path(found)
        return hub.hf_hub_file(name, WEIGHTS, required=False)  # downloaded when online; a gated repo says so

    def cam_layer(self, backbone: nn.Module, arch: str) -> str | None:
        # The tokens entering the last block's attention, as for timm's ViTs: the pooler attends to all of them.
        blocks = getattr(backbone, "blocks", None)
        if blocks is None or not len(blocks):
            return None
        norm = blocks[-1].norm1
        return next((name for name, module in backbone.named_modules() if module is norm), None)

    def _missing(self, name: str) -> UserError:
        repo, _ = hub.hf_repo(name)
        cache = hub.hf_cache_dir()
        why = "this machine is offline" if hub.hf_offline() else "it could not be downloaded"
        return UserError(
            f"CONCH's weights ({WEIGHTS} of {repo}) are not in the Hugging Face cache {cache}, and {why}. CONCH is "
            f"gated: accept its terms on https://huggingface.co/{repo} and log in (hf auth login); then, on a "
            f"connected machine, run `hf download {repo} {WEIGHTS}`, copy {cache}/models--{repo.replace('/', '--')} "
            f"into the same place here (HF_HUB_CACHE or HF_HOME/hub) and set HF_HUB_OFFLINE=1. Or pass "
            f"model.weights=<the downloaded {WEIGHTS}> (its text tower is skipped), or model.pretrained=false.")
