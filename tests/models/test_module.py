"""BCCClassifier's training metrics: what callbacks read at each epoch's end is that epoch's, over every step."""

from pathlib import Path

import lightning as L
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.models.module import BCCClassifier


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
