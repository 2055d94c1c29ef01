"""Optimizer and learning-rate scheduler from plain config dicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from bcc_lightning.utils.errors import UserError

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}


def build_optimizer(params: Iterable, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    cfg.pop("backbone_lr_scale", None)  # applied by the module's parameter groups
    name = str(cfg.pop("name", "adam")).lower()
    if name not in OPTIMIZERS:
        raise UserError(f"Unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)} (optimizer=<name>).")
    if float(cfg.get("lr", 0)) <= 0:
        raise UserError(f"optimizer.lr must be positive (got {cfg.get('lr')}).")
    try:
        return OPTIMIZERS[name](params, **cfg)
    except TypeError as exc:
        raise UserError(f"Bad option for optimizer '{name}': {exc}. Check the optimizer.* keys.") from exc


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any] | None,
                    max_epochs: int) -> dict[str, Any] | None:
    """Lightning's lr_scheduler dict for `configure_optimizers`, or None."""
    if not cfg or cfg.get("name") in (None, "none"):
        return None
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name == "cosine":
        warmup = int(cfg.get("warmup_epochs", 0))
        total = max(1, int(max_epochs))
        floor = float(cfg.get("min_lr_ratio", 0.01))

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "epoch"}
    if name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=float(cfg.get("factor", 0.1)), patience=int(cfg.get("patience", 2)))
        return {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}
    if name == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(cfg.get("step_size", 5)), gamma=float(cfg.get("gamma", 0.1)))
        return {"scheduler": scheduler, "interval": "epoch"}
    raise UserError(f"Unknown scheduler '{name}'; choose scheduler=none|cosine|plateau|step.")
