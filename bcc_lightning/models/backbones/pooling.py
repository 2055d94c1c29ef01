"""Token pooling: a transformer's tokens -> one embedding by the model's documented recipe.

Several pathology foundation models define their embedding otherwise than timm's default head: Virchow and Virchow2
concatenate the class token with the mean of the patch tokens (register tokens excluded), Midnight recommends the
same, others use the class token alone. Using the wrong one silently costs accuracy, so each preset names its recipe
(`model.pooling`) and this module applies it to the final-norm tokens of the encoder it wraps.
"""

from __future__ import annotations

import torch
from torch import nn

from bcc_lightning.utils.errors import UserError

# cls: the class token; mean: the mean of the patch tokens; cls_mean: both, concatenated (twice as wide).
POOLINGS = ("cls", "mean", "cls_mean")


def check_pooling(pooling: object) -> str | None:
    if pooling in (None, "", "none", "default"):
        return None
    if pooling not in POOLINGS:
        raise UserError(f"model.pooling={pooling!r} is not an embedding recipe: use cls (class token), mean (mean of "
                        f"the patch tokens, registers excluded), cls_mean (both, concatenated) or null (the family's "
                        f"own head).")
    return str(pooling)


def pool_tokens(tokens: torch.Tensor, pooling: str, prefix: int, has_class_token: bool = True) -> torch.Tensor:
    """(N, prefix + patches, C) -> (N, C) or (N, 2C). `prefix`: class + register tokens, which `mean` leaves out."""
    if pooling == "mean":
        return tokens[:, prefix:].mean(dim=1)
    if not has_class_token:
        raise UserError(f"model.pooling={pooling} needs a class token, and this backbone has none: use pooling=mean.")
    if pooling == "cls":
        return tokens[:, 0]
    return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1)


class TokenPooling(nn.Module):
    """An encoder whose `forward_features` returns its final-norm tokens, pooled by a recipe.

    The encoder's `blocks`, `patch_embed` and `num_prefix_tokens` show through, so Grad-CAM lays the tokens on their
    grid and attention rollout finds the blocks as for any ViT."""

    def __init__(self, encoder: nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.has_class_token = bool(getattr(encoder, "cls_token", None) is not None
                                    or getattr(encoder, "has_class_token", False))
        if pooling != "mean" and not self.has_class_token:
            raise UserError(f"model.pooling={pooling} needs a class token, and this backbone has none: use "
                            f"pooling=mean.")
        width = int(encoder.num_features)
        self.num_features = 2 * width if pooling == "cls_mean" else width

    @property
    def blocks(self) -> nn.Module:
        return self.encoder.blocks

    @property
    def patch_embed(self) -> nn.Module:
        return self.encoder.patch_embed

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.encoder.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(x)
        return pool_tokens(tokens, self.pooling, int(self.encoder.num_prefix_tokens), self.has_class_token)
