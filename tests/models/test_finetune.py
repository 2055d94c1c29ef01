"""Pretrained weights from local files (timm and torchvision), offline errors, freezing, class imbalance."""

import json
import urllib.error
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.preprocess import Preprocess
from bcc_lightning.models.backbones import build_backbone
from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import make_folder, tiny_train_config, write_image

OPT = {"name": "adam", "lr": 1e-2}


@pytest.mark.parametrize(("name", "tv_name", "size"), [("mobilenetv2", "mobilenet_v2", 64),
                                                       ("densenet121", "densenet121", 64),
                                                       ("inceptionv3", "inception_v3", 80)])
def test_torchvision_backbones_load_local_weights(tmp_path: Path, name: str, tv_name: str, size: int) -> None:
    kwargs = {"aux_logits": False, "init_weights": False} if tv_name == "inception_v3" else {}
    torch.manual_seed(3)
    source = torchvision.models.get_model(tv_name, weights=None, **kwargs)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = BCCClassifier({"name": name, "source": "torchvision", "weights": str(tmp_path / "w.pth"),
                           "img_size": size}, OPT)
    own = model.backbone.state_dict()
    matched = [k for k in source.state_dict() if k in own]
    assert len(matched) > 0.9 * len(own)
    assert all(torch.equal(own[k], source.state_dict()[k]) for k in matched)
    assert model(torch.randn(2, 3, size, size)).shape == (2,)  # new one-logit head
    expected_mean = 0.5 if tv_name == "inception_v3" else 0.485
    assert model.preprocess.mean[0] == pytest.approx(expected_mean)


def test_legacy_densenet_keys_are_mapped(tmp_path: Path) -> None:
    source = torchvision.models.densenet121(weights=None)
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in source.state_dict().items()}
    torch.save(legacy, tmp_path / "old.pth")
    backbone = build_backbone("densenet121", source="torchvision", weights=str(tmp_path / "old.pth"))
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(backbone.state_dict()[key], source.state_dict()[key])


def test_torchvision_offline_error_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"densenet121-[0-9a-f]+\.pth.*hub/checkpoints.*model.pretrained=false"):
        build_backbone("densenet121", pretrained=True, source="torchvision")


def _fit(model: BCCClassifier, root: Path, epochs: int) -> None:
    dm = BCCDataModule(root, model.preprocess, batch_size=4, num_workers=0)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)


def test_freezing_really_freezes_then_unfreezes(demo_root: Path) -> None:
    torch.manual_seed(0)
    model = BCCClassifier({"name": "mobilenetv2", "img_size": 48, "freeze_backbone": True}, OPT)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    _fit(model, demo_root, epochs=1)
    for key, value in model.backbone.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(value, backbone_before[key]), key
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())

    torch.manual_seed(0)
    staged = BCCClassifier({"name": "mobilenetv2", "img_size": 48, "freeze_backbone": True, "unfreeze_at_epoch": 1},
                           {**OPT, "backbone_lr_scale": 0.1})
    initial = {k: v.clone() for k, v in staged.backbone.state_dict().items()}
    _fit(staged, demo_root, epochs=2)
    assert not staged.frozen
    assert any(not torch.equal(v, initial[k]) for k, v in staged.backbone.state_dict().items())
    groups = {g["name"]: g["lr"] for g in staged.trainer.optimizers[0].param_groups}
    assert groups["backbone"] == pytest.approx(1e-3) and groups["head"] == pytest.approx(1e-2)


def test_pos_weight_auto_and_balanced_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "data", per_class=3)
    for i in range(6):  # training split: 9 benign, 3 malignant
        write_image(root / "train" / "B" / f"extra{i}.png", seed=100 + i)
    monkeypatch.chdir(tmp_path)
    training.run(tiny_train_config(root, ["trainer.fast_dev_run=true", "logger=none", "model.pos_weight=auto",
                                          "report.cam_per_group=0", "report.grid_size=0"]))
    ckpt = json.loads((tmp_path / "metrics.json").read_text())["checkpoint"]
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["pos_weight"] == pytest.approx(9 / 3)
    assert load_checkpoint(ckpt).loss_fn.pos_weight.item() == pytest.approx(3.0)

    pre = Preprocess(img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    dm = BCCDataModule(root, pre, batch_size=12, num_workers=0, balanced_sampler=True, seed=1)
    loader = dm.train_dataloader()
    drawn = []
    for epoch in range(40):
        loader.sampler.set_epoch(epoch)
        drawn += [labels for _, labels in loader]
    drawn = torch.cat(drawn)
    assert abs(drawn.mean().item() - 0.5) < 0.08  # 9:3 on disk, about 1:1 drawn


def test_done_when_densenet_from_local_file(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    torch.save(timm.create_model("densenet121.tv_in1k").state_dict(), tmp_path / "densenet121.pth")
    monkeypatch.chdir(tmp_path)
    training.run(tiny_train_config(demo_root, ["model=densenet121", "model.pretrained=true",
                                               f"model.weights={tmp_path / 'densenet121.pth'}",
                                               "trainer.fast_dev_run=true", "logger=none", "report.cam_per_group=0"]))
    assert json.loads((tmp_path / "metrics.json").read_text())["model"] == "densenet121"


def test_torchvision_inceptionv3_with_imagenet_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """torchvision refuses its Inception weights without the auxiliary head: it is built, loaded, then dropped."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    file = Path(torchvision.models.Inception_V3_Weights.DEFAULT.url).name
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / file)
    backbone = build_backbone("inceptionv3", pretrained=True, source="torchvision")
    assert backbone.AuxLogits is None and backbone.num_features == 2048
    assert torch.equal(backbone.Conv2d_1a_3x3.conv.weight, reference.Conv2d_1a_3x3.conv.weight)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 299, 299)).shape == (1, 2048)


def test_imagenet_initialisation_is_the_default_and_is_recorded(tmp_path: Path) -> None:
    import timm

    from bcc_lightning.utils.atomic_io import sha256_file
    from tests.conftest import compose_config

    cfg = compose_config("train", ["model=densenet121"])
    assert cfg.model.pretrained is True  # the original recipe: ImageNet weights
    weights = tmp_path / "densenet121.pth"
    torch.save(timm.create_model("densenet121", num_classes=0).state_dict(), weights)
    model_cfg = {**dict(cfg.model), "weights": str(weights), "img_size": 64}
    model = BCCClassifier(model_cfg, dict(cfg.optimizer))
    init = model.hparams.initialisation
    assert init == {"kind": "ImageNet", "file": str(weights.resolve()), "sha256": sha256_file(weights)}
    scratch = BCCClassifier({**model_cfg, "weights": None, "pretrained": False}, dict(cfg.optimizer))
    assert scratch.hparams.initialisation == {"kind": "random"}
    rebuilt = BCCClassifier(**{**dict(model.hparams), "load_weights": False})
    assert rebuilt.hparams.initialisation == init  # a checkpoint keeps the record; nothing is re-read


def test_offline_without_cache_fails_fast_and_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bcc_lightning.models import backbones

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(backbones, "_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(UserError, match=r"model.weights=PATH.*model.pretrained=false"):
        build_backbone("densenet121", pretrained=True)
