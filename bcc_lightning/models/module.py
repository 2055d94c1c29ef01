"""LightningModule: backbone + one-logit head, BCE-with-logits loss, torchmetrics per stage."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
import torchmetrics.classification
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryPrecisionRecallCurve

from bcc_lightning.data.preprocess import Preprocess
from bcc_lightning.models.backbones import (
    Head,
    arch_name,
    build_backbone,
    describe_initialisation,
    resolve_preprocess,
)
from bcc_lightning.models.finite_loss import FiniteLossGuard
from bcc_lightning.models.optim import build_optimizer, build_scheduler
from bcc_lightning.reports.metrics import METRICS
from bcc_lightning.utils.config import log

# torchmetrics >= 1.8 can rank raw logits (normalization=None); older versions apply a sigmoid to any batch outside
# [0, 1], which in float32 saturates to exactly 1.0 above a logit of ~16.7 and ties the scores.
_RAW_LOGITS = "normalization" in inspect.signature(BinaryPrecisionRecallCurve.__init__).parameters


def _metrics(prefix: str) -> tuple[MetricCollection, MetricCollection]:
    """The registry's training-time metrics (those with a torchmetric), logged as <prefix><logger name>: one
    collection fed probabilities (threshold metrics), one fed the logits (ranking metrics such as AUROC)."""
    # validate_args=False: the checks (torch.unique + a Python `if`) stall a GPU once per metric per step, and the
    # labels come from our own folder scan, always 0/1.
    probs, ranks = {}, {}
    for spec in METRICS.values():
        if spec.torchmetric and spec.logger:
            kind = getattr(torchmetrics.classification, spec.torchmetric)
            if spec.ranks:
                ranks[spec.logger] = kind(validate_args=False, **({"normalization": None} if _RAW_LOGITS else {}))
            else:
                probs[spec.logger] = kind(validate_args=False)
    return MetricCollection(probs, prefix=prefix), MetricCollection(ranks, prefix=prefix)


def _ranked(logits: torch.Tensor) -> torch.Tensor:
    """What the ranking metrics get: the logits themselves where torchmetrics ranks them raw; otherwise float64
    probabilities (saturating only above a logit of ~37), or float32 where the device has no float64 (MPS)."""
    if _RAW_LOGITS:
        return logits
    return torch.sigmoid(logits.double() if logits.device.type != "mps" else logits)


class PixelNormalise(nn.Module):
    """Pixel values on the 0-255 scale (uint8 or float) -> the backbone's input (its mean/std). The one place that
    normalises: training, evaluation, predict, Grad-CAM and the exported graph all come through here. Its buffers
    are not persistent: they follow from the checkpoint's preprocessing, so checkpoints hold no extra keys."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.std


class BCCClassifier(L.LightningModule):
    """Benign (0) vs malignant (1). Every constructor argument is a plain dict, saved in checkpoints.

    `model`: name, pretrained, weights, img_size, mean, std, dropout, hidden, channels_last.
    `optimizer`: name + keyword arguments of the torch optimizer. `scheduler`: name + options, or None.
    `data_info`: facts about the training data (root, class names, synthetic flag) kept for reports.
    `preprocess`: the input the model was trained on (`Preprocess.to_dict()`); None resolves it from `model`
    (checkpoints written before it was stored). `initialisation`: how the backbone's weights began
    (`describe_initialisation`), recorded when the weights are loaded.
    """

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 pos_weight: float | None = None, data_info: dict[str, Any] | None = None,
                 preprocess: dict[str, Any] | None = None, initialisation: dict[str, Any] | None = None,
                 load_weights: bool = True) -> None:
        super().__init__()
        # `model` is the config's model group, or the hyperparameters of a checkpoint written by an older version
        # that lacks newer keys (source, channels_last, ...): hence get() with the values those versions implied.
        if preprocess is None:
            preprocess = resolve_preprocess(model).to_dict()
        if initialisation is None and load_weights:
            initialisation = describe_initialisation(model["name"], str(model.get("source") or "timm"),
                                                     bool(model.get("pretrained")), model.get("weights"), model)
        self.save_hyperparameters(ignore=["load_weights"])
        source = str(model.get("source") or "timm")
        self.backbone = build_backbone(model["name"], pretrained=bool(model.get("pretrained")),
                                       weights=model.get("weights"), load_weights=load_weights, source=source,
                                       options=model)
        self.head = Head(self.backbone.num_features, int(model.get("hidden") or 0), float(model.get("dropout") or 0))
        self.backbone_arch = arch_name(model["name"], source, model)
        self.preprocess = Preprocess.from_dict(preprocess)
        self.freeze_backbone = bool(model.get("freeze_backbone"))
        unfreeze = model.get("unfreeze_at_epoch")
        self.unfreeze_at_epoch = None if unfreeze is None else int(unfreeze)
        self._set_frozen(self.freeze_backbone and self.unfreeze_at_epoch != 0)
        self.channels_last = bool(model.get("channels_last", True))
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        # Loaders ship uint8 pixels (4x less to copy between processes and to the GPU); they are normalised here,
        # on the model's device.
        self.normalise = PixelNormalise(self.preprocess.mean, self.preprocess.std)
        weight = None if pos_weight is None else torch.tensor([float(pos_weight)])
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
        # *_metrics take probabilities, *_rank_metrics the logits (AUROC): see _metrics.
        self.train_metrics, self.train_rank_metrics = _metrics("train/")
        self.val_metrics, self.val_rank_metrics = _metrics("val/")
        self.test_metrics, self.test_rank_metrics = _metrics("test/")
        self.finite_guard = FiniteLossGuard()
        self._train_metrics_logged = False

    def _set_frozen(self, frozen: bool) -> None:
        """Frozen: no gradients for the backbone and its BatchNorm statistics stay as loaded (eval mode)."""
        self.frozen = frozen
        for param in self.backbone.parameters():
            param.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> BCCClassifier:
        super().train(mode)
        if getattr(self, "frozen", False):
            self.backbone.eval()  # Lightning switches modules to train mode each epoch; keep frozen BN frozen
        return self

    def on_train_start(self) -> None:
        # A fit resumed mid-epoch skips on_train_epoch_start: log the metric objects in that epoch too.
        self._train_metrics_logged = False

    def on_train_epoch_start(self) -> None:
        self.train_metrics.reset()  # Lightning computed last epoch's values when that epoch ended
        self.train_rank_metrics.reset()
        self._train_metrics_logged = False
        # Derived from the epoch, so that a resumed run is frozen or not exactly as the original was.
        before_unfreeze = self.unfreeze_at_epoch is None or self.current_epoch < self.unfreeze_at_epoch
        frozen = self.freeze_backbone and before_unfreeze
        if frozen != self.frozen:
            self._set_frozen(frozen)
            if not frozen:
                self.backbone.train()
                log.info("Epoch %d: backbone unfrozen (two-stage fine-tuning)", self.current_epoch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> malignant logits (N,): uint8 pixels (normalised here) or normalised floats."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # before the cast: the copy moves bytes, not floats
        if x.dtype == torch.uint8:
            x = self.normalise(x)
        features = self.backbone(x)
        # The head in fp32 whatever the autocast: a bf16 logit has 8 mantissa bits, so sigmoid would give only a
        # few hundred distinct probabilities and ties would distort AUROC and threshold choice.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.float()).squeeze(-1)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, probabilities) of one batch; the stage's metrics are updated here."""
        images, labels = batch
        logits = self(images).float()  # loss and metrics in fp32 even under bf16 autocast
        loss = self.loss_fn(logits, labels)
        self.finite_guard.check(loss, (stage, self.current_epoch, self.global_step))
        logits, target = logits.detach(), labels.int()
        probs = torch.sigmoid(logits)
        getattr(self, f"{stage}_metrics").update(probs, target)
        getattr(self, f"{stage}_rank_metrics").update(_ranked(logits), target)
        return loss, probs

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        bs = batch[1].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=bs)
        # Logged as metric objects: Lightning computes and resets them when the epoch ends, before any callback
        # (History, checkpoints) reads them. Once per epoch is enough (the objects accumulate every update above),
        # and cheaper: each log call moves the metric to the device, and AUROC's state is a list that grows by a
        # tensor a step, so logging every step costs O(steps) Python per step (tests/models/test_module.py checks
        # the epoch values against sklearn).
        if not self._train_metrics_logged:
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=bs)
            self.log_dict(self.train_rank_metrics, on_step=False, on_epoch=True, batch_size=bs)
            self._train_metrics_logged = True
        return loss

    def on_train_epoch_end(self) -> None:
        self.finite_guard.flush()

    def on_validation_epoch_start(self) -> None:
        self.finite_guard.flush()  # the training steps before this validation
        self.val_metrics.reset()
        self.val_rank_metrics.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, _ = self._step(batch, "val")
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch[1].shape[0],
                 sync_dist=True)  # averaged over every rank's shard under DDP

    def on_validation_epoch_end(self) -> None:
        self.finite_guard.flush()
        # The sanity check's few batches must not count towards epoch 0: compute nothing, just forget them.
        if not self.trainer.sanity_checking:
            values = {**self.val_metrics.compute(), **self.val_rank_metrics.compute()}
            self.log_dict(values)
            self.log("val/acc_prog", values[f"val/{METRICS['accuracy'].logger}"], prog_bar=True, logger=False)
        self.val_metrics.reset()
        self.val_rank_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_rank_metrics.reset()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, _ = self._step(batch, "test")
        self.log("test/loss", loss, on_step=False, on_epoch=True, batch_size=batch[1].shape[0], sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.finite_guard.flush()
        self.log_dict({**self.test_metrics.compute(), **self.test_rank_metrics.compute()})
        self.test_metrics.reset()
        self.test_rank_metrics.reset()

    def configure_optimizers(self) -> Any:
        options = dict(self.hparams.optimizer)
        scale = float(options.pop("backbone_lr_scale", 1.0))
        lr = float(options.get("lr", 0))
        # Every parameter is in the optimizer from the start (frozen ones get no gradient, so no update): unfreezing
        # later needs no new optimizer, and resuming restores one consistent state.
        groups = [{"params": list(self.backbone.parameters()), "lr": lr * scale, "name": "backbone"},
                  {"params": list(self.head.parameters()), "lr": lr, "name": "head"}]
        optimizer = build_optimizer(groups, options)
        max_epochs = self.trainer.max_epochs if self._trainer is not None else 1
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, max_epochs or 1)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
