"""BCCClassifier's training metrics: what callbacks read at each epoch's end is that epoch's, over every step."""

from pathlib import Path

import lightning as L
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.models.module import BCCClassifier, _metrics, _ranked
from bcc_lightning.reports.metrics import METRICS, metric_keys


class _Recording(BCCClassifier):
    """Keeps every training step's probabilities and labels, per epoch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.seen.append([])

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        loss, probs = super()._step(batch, stage)
        if stage == "train":
            self.seen[-1].append((probs.clone(), batch[1].clone()))
        return loss, probs


class _EpochEndReader(L.Callback):
    """Reads the logged training metrics where History and checkpoints read them (callbacks' epoch end)."""

    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.values.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def test_training_metrics_cover_every_step_of_their_epoch(demo_root: Path) -> None:
    """The metric objects are logged once per epoch, but updated every step: each epoch's train/acc, f1 and auroc
    equal sklearn's on all of that epoch's predictions (and only that epoch's)."""
    torch.manual_seed(0)
    model = _Recording({"name": "mobilenetv2", "img_size": 32}, {"name": "adam", "lr": 1e-2})
    reader = _EpochEndReader()
    dm = BCCDataModule(demo_root, model.preprocess, batch_size=8, num_workers=0)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[reader])
    trainer.fit(model, datamodule=dm)
    assert len(reader.values) == len(model.seen) == 3
    for logged, steps in zip(reader.values, model.seen):
        assert len(steps) == len(dm.train_dataloader())
        probs = torch.cat([p for p, _ in steps]).numpy()
        labels = torch.cat([y for _, y in steps]).int().numpy()
        predicted = (probs > 0.5).astype(int)
        assert logged["train/acc"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
        assert logged["train/f1"] == pytest.approx(f1_score(labels, predicted, zero_division=0), abs=1e-6)
        assert logged["train/auroc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-4)


def test_training_auroc_ranks_logits_that_a_float32_sigmoid_ties() -> None:
    """Logits above ~16.7 all give a float32 sigmoid of exactly 1.0 (AUROC 0.5 on the old input); the ranking
    metrics get the logits, so AUROC is sklearn's. The logged names are the registry's logger names."""
    logits, labels = torch.tensor([17.0, 18.0, 19.0, 20.0, 30.0, 40.0]), torch.tensor([0, 1, 0, 1, 1, 1])
    assert torch.sigmoid(logits).unique().numel() == 1
    by_probs, by_rank = _metrics("val/")
    by_probs.update(torch.sigmoid(logits), labels)
    by_rank.update(_ranked(logits), labels)
    values = {**by_probs.compute(), **by_rank.compute()}
    assert float(values["val/auroc"]) == pytest.approx(roc_auc_score(labels, logits.double()))  # 0.875
    assert set(values) == {f"val/{METRICS[k].logger}" for k in metric_keys("torchmetric")}
    assert {"val/acc", "val/recall", "val/auroc"} <= set(values)  # early stopping and history.csv read these
