"""hf-hub checkpoints describe their own architecture: a probe and a fine-tune made from model.name=hf-hub:ORG/NAME
load and evaluate with an empty Hugging Face cache."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch

from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config, run_in, tiny_train_config
from tests.models.test_hub_names import NAME, fake_hf_cache

OVERRIDES = [f"model.name={NAME}", "model.pretrained=true", "model.img_size=32", "logger=none", "report.grid_size=0",
             "report.cam_per_group=1", "data.audit=off"]


def test_hub_checkpoints_load_and_evaluate_without_the_cache(demo_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from bcc_lightning.tasks import evaluate, probe, train

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = fake_hf_cache(tmp_path / "hub")
    run_in(tmp_path / "probe", probe.run, tiny_train_config(demo_root, [
        "experiment=linear_probe", *OVERRIDES, "probe.cache=null", "probe.Cs=[1.0]", "probe.knn_k=[1]",
        "probe.few_shot=null"]))
    run_in(tmp_path / "train", train.run, tiny_train_config(demo_root, [
        *OVERRIDES, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]))
    probe_ckpt = json.loads((tmp_path / "probe" / "metrics.json").read_text())["checkpoint"]
    train_ckpt = json.loads((tmp_path / "train" / "metrics.json").read_text())["checkpoint"]
    record = torch.load(probe_ckpt, weights_only=True)["hyper_parameters"]["initialisation"]["hf_hub"]
    assert record["architecture"] == "test_vit" and record["pretrained_cfg"]["input_size"] == [3, 48, 48]

    # Another machine: an empty cache, offline. Without the record the architecture could not be found.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    for ckpt in (probe_ckpt, train_ckpt):
        model = load_checkpoint(ckpt)
        assert model.backbone_arch == "test_vit" and model.hparams.model["name"] == NAME
    probed = load_checkpoint(probe_ckpt)
    assert torch.equal(probed.backbone.state_dict()["pos_embed"], state["pos_embed"])  # the hub's weights, kept
    result = run_in(tmp_path / "eval", evaluate.run, compose_config("eval", [
        f"ckpt={probe_ckpt}", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true",
        "report.grid_size=0", "report.cam_per_group=1"]))
    first = json.loads((tmp_path / "probe" / "metrics.json").read_text())["metrics"]
    assert result["metrics"]["auroc"] == pytest.approx(first["auroc"], abs=1e-6)

    # A checkpoint written before the record still needs the cache, and says so.
    raw = torch.load(probe_ckpt, weights_only=True)
    del raw["hyper_parameters"]["initialisation"]["hf_hub"]
    with pytest.raises(UserError, match="huggingface-cli download someorg/tiny-vit"):
        load_checkpoint(probe_ckpt, raw)
