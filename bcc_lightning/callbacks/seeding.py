"""Per-epoch seeding: a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def seed_for_epoch(seed: int, epoch: int) -> None:
    """Reseed every RNG from (seed, epoch): epoch N draws the same shuffle, augmentation and dropout whether the run
    went straight through or was resumed from a checkpoint."""
    value = (int(seed) * 1_000_003 + int(epoch)) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


class EpochSeeder(L.Callback):
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        seed_for_epoch(self.seed + trainer.global_rank, trainer.current_epoch)
