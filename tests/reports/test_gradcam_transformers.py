"""Grad-CAM and attention rollout for transformer backbones (timm's tiny test_vit, a tiny Swin)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from bcc_lightning.data.preprocess import Preprocess
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.reports.gradcam import attention_rollout, compute_cams, plan_cam, save_overlays
from bcc_lightning.utils.errors import UserError

SIZE = 32


def _vit() -> BCCClassifier:
    torch.manual_seed(0)
    model = {"name": "test_vit", "pretrained": False, "img_size": SIZE, "channels_last": False}
    return BCCClassifier(model, {"name": "adam", "lr": 1e-3}).eval()


class _TinySwin(nn.Module):
    """A two-stage Swin (timm has no test_swin): the CAM code only needs .backbone and a one-logit forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = timm.create_model("swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1),
                                          num_heads=(1, 2), window_size=4, img_size=SIZE, num_classes=0)
        self.head = nn.Linear(self.backbone.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = (x.float() - 127.5) / 64
        return self.head(self.backbone(x)).squeeze(-1)


def _pixels(n: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8))


def _check_maps(model: nn.Module, arch: str) -> str:
    plan = plan_cam(model, arch, SIZE)
    x = _pixels()
    malignant = compute_cams(model, x, [1, 1], plan.layer, plan.reshape)
    benign = compute_cams(model, x, [0, 0], plan.layer, plan.reshape)
    assert malignant.shape == benign.shape == (2, SIZE, SIZE)
    assert all(np.ptp(m) > 0.1 for m in malignant) and all(np.ptp(m) > 0.1 for m in benign)  # not constant
    assert np.abs(malignant - benign).mean() > 0.05  # +logit and -logit point at different evidence
    return plan.description


def test_vit_gradcam_has_input_size_and_depends_on_the_sign() -> None:
    model = _vit()
    text = _check_maps(model, model.backbone_arch)
    grid = SIZE // model.backbone.patch_embed.patch_size[0]
    last = len(model.backbone.blocks) - 1
    assert text == f"Grad-CAM on blocks.{last}.norm1 (ViT tokens reshaped to {grid}x{grid}, 1 prefix token(s) dropped)"


def test_swin_gradcam_turns_channels_last_maps_around() -> None:
    model = _TinySwin().eval()
    assert "Swin channels-last" in _check_maps(model, "swin_tiny_patch4_window7_224")


def test_attention_rollout_and_overlays_record_the_method(tmp_path) -> None:
    model = _vit()
    maps = attention_rollout(model, _pixels())
    assert maps.shape == (2, SIZE, SIZE) and all(np.ptp(m) > 0.1 for m in maps)
    pre = Preprocess(SIZE, (0.5,) * 3, (0.5,) * 3)
    rng = np.random.default_rng(1)
    items = [{"path": tmp_path / f"img{i}.png", "predicted": i % 2,
              "image": Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))} for i in range(2)]
    written = save_overlays(model, items, pre, tmp_path / "cams", model.backbone_arch)
    assert all(p.is_file() for p in written)
    assert items[0]["cam_method"].startswith("Grad-CAM on blocks.") and items[0]["cam_layer"].endswith("norm1")
    save_overlays(model, items, pre, tmp_path / "rollout", model.backbone_arch, layer_path="rollout")
    assert items[0]["cam_method"].startswith("attention rollout")


def test_rollout_refuses_cnns() -> None:
    model = BCCClassifier({"name": "test_efficientnet", "pretrained": False, "img_size": SIZE},
                          {"name": "adam", "lr": 1e-3})
    with pytest.raises(UserError, match="needs a ViT"):
        plan_cam(model, model.backbone_arch, SIZE, "rollout")
    assert plan_cam(model, model.backbone_arch, SIZE).description.startswith("Grad-CAM on ")
